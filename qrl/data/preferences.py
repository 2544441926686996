"""The reward model's data: every accepted format, turned into preference pairs.

Formats, detected from the fields of the first record (or named with ``--data_format``):

- ``pairs``: ``prompt``, ``chosen``, ``rejected`` (the DPO format of ``data/preferences.jsonl``).
- ``rankings``: ``prompt``, ``responses`` best first, or ``responses`` with ``scores`` (higher is better);
  expanded into every pair of responses whose order is known (ties give no pair).
- ``demonstrations``: ``prompt``, ``completion`` (an expert answer), preferred over corrupted copies of
  itself (`corruptions`) and/or the policy's own answer (sampled elsewhere; see ``demonstration_pairs``).

Mined pairs (``mined_pairs``) come from scored answers to problems with tests. Everything here is
plain Python, without torch, so that it is fast to import and to test.
"""

from __future__ import annotations

import random
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from qrl.data.records import DataError, Record, is_messages, read_records, require_fields

FORMATS = ("pairs", "rankings", "demonstrations")
_FORMAT_FIELDS = {"pairs": ("prompt", "chosen", "rejected"), "rankings": ("prompt", "responses"),
                  "demonstrations": ("prompt", "completion")}

Text = str | list[dict[str, str]]  # plain text, or a list of {role, content} messages


def detect_format(record: Record) -> str:
    """The format a record's fields say it has, or one line saying what was expected."""
    keys = set(record.data)
    for name in FORMATS:
        if set(_FORMAT_FIELDS[name]) <= keys:
            return name
    hint = " (it looks like a problems file: use --mine_pairs_from)" if {"tests", "entry_point"} <= keys else ""
    raise DataError(
        f"{record.where}: unknown data format{hint}: expected prompt/chosen/rejected (pairs), prompt/responses "
        f"(rankings) or prompt/completion (demonstrations), got fields {', '.join(sorted(keys)) or 'none'}"
    )


def load_reward_data(path: str, data_format: str = "auto") -> tuple[str, list[Record]]:
    """The records of a file and their format (detected, or checked against the named one)."""
    records = read_records(path)
    fmt = detect_format(records[0]) if data_format == "auto" else data_format
    if fmt not in FORMATS:
        raise DataError(f"--data_format {fmt}: unknown format (known: auto, {', '.join(FORMATS)})")
    for record in records:
        require_fields(record, _FORMAT_FIELDS[fmt])
    return fmt, records


def _check_text(record: Record, name: str, value: Any) -> Text:
    if isinstance(value, str):
        if not value.strip():
            raise DataError(f"{record.where}: field '{name}' is empty")
        return value
    if is_messages(value):
        return value
    raise DataError(f"{record.where}: field '{name}' must be text or a list of {{role, content}} messages")


def _answer(prompt: Text, value: Text) -> Text:
    """An answer in the prompt's form: text stays text; with a conversational prompt, an assistant message."""
    if isinstance(prompt, list) and isinstance(value, str):
        return [{"role": "assistant", "content": value}]
    return value


def answer_text(value: Text) -> str:
    """The text of an answer, whether plain or messages."""
    return value if isinstance(value, str) else "".join(m["content"] for m in value)


def ranking_pairs(records: list[Record]) -> list[dict[str, Any]]:
    """Every ordered pair of a ranking: k responses give up to k(k-1)/2 pairs; equal scores give none."""
    rows = []
    for r in records:
        prompt = _check_text(r, "prompt", r.data["prompt"])
        responses = r.data["responses"]
        if not isinstance(responses, list) or len(responses) < 2:
            raise DataError(f"{r.where}: 'responses' must be a list of at least 2 answers")
        answers = [_answer(prompt, _check_text(r, f"responses[{i}]", x)) for i, x in enumerate(responses)]
        scores = r.data.get("scores")
        if scores is None:
            scores = list(range(len(answers), 0, -1))  # best first
        elif not (isinstance(scores, list) and len(scores) == len(answers)
                  and all(isinstance(s, (int, float)) and not isinstance(s, bool) for s in scores)):
            raise DataError(f"{r.where}: 'scores' must be a list of {len(answers)} numbers, one per response")
        for i in range(len(answers)):
            for j in range(len(answers)):
                if scores[i] > scores[j]:
                    rows.append({"prompt": prompt, "chosen": answers[i], "rejected": answers[j]})
    return rows


# --- demonstrations ---------------------------------------------------------------------------------
_FENCE = re.compile(r"```[^\n]*\n(.*?)```", re.S)
_FLIPS = [("==", "!="), ("!=", "=="), ("<=", ">"), (">=", "<"), (" < ", " > "), (" > ", " < "), (" + ", " - "),
          (" - ", " + "), (" and ", " or "), (" or ", " and "), ("True", "False"), ("False", "True"),
          ("+ 1", "- 1"), ("- 1", "+ 1"), ("<", ">"), (">", "<"), ("+", "-"), ("*", "+"), ("=", "<>")]


def _code_span(text: str) -> tuple[int, int, str]:
    """Where the code is (inside the first fence, or the whole text), and the prose around the fence."""
    m = _FENCE.search(text)
    if not m:
        return 0, len(text), ""
    return m.start(1), m.end(1), (text[: m.start()] + text[m.end():]).strip()


def corruptions(text: str) -> dict[str, str]:
    """Worse copies of an expert answer, each broken in one way that a reward model should notice.

    ``truncated`` keeps the first half of the code's lines (or characters, for one line); ``flipped`` changes
    the first comparison, arithmetic or boolean operator (Python's first, then Q's terse ones); ``swapped``
    exchanges two adjacent lines of the body; ``no_code`` keeps the prose around the code and drops the code. A
    kind that would not change the text is left out.
    """
    start, end, prose = _code_span(text)
    code = text[start:end]
    lines = code.rstrip("\n").split("\n")
    found: dict[str, str] = {}
    if len(lines) >= 2:
        found["truncated"] = "\n".join(lines[: max(1, len(lines) // 2)]) + "\n"
    else:
        found["truncated"] = code[: max(1, len(code) // 2)]
    for old, new in _FLIPS:
        if old in code:
            found["flipped"] = code.replace(old, new, 1)
            break
    if len(lines) >= 3:
        k = len(lines) // 2
        swapped = lines[:]
        swapped[k - 1], swapped[k] = swapped[k], swapped[k - 1]
        found["swapped"] = "\n".join(swapped) + "\n"
    out = {kind: text[:start] + body + text[end:] for kind, body in found.items()}
    if prose:
        out["no_code"] = prose
    return {kind: t for kind, t in out.items() if t.strip() and t.strip() != text.strip()}


def demonstration_pairs(
    records: list[Record], negatives: str, policy_answers: Callable[[list[Text]], list[str]] | None = None
) -> tuple[list[dict[str, Any]], dict[str, int]]:
    """Each demonstration preferred over its corruptions and/or the policy's own answer to the same prompt.

    ``policy_answers`` samples one answer per prompt (needed for negatives ``policy`` and ``both``). A policy
    answer identical to the demonstration gives no pair. Returns the pairs and their counts by kind.
    """
    demos = []
    for r in records:
        prompt = _check_text(r, "prompt", r.data["prompt"])
        demos.append((prompt, _check_text(r, "completion", r.data["completion"])))
    rows, counts = [], {}

    def add(prompt: Text, chosen: Text, rejected: str, kind: str) -> None:
        rows.append({"prompt": prompt, "chosen": _answer(prompt, chosen), "rejected": _answer(prompt, rejected)})
        counts[kind] = counts.get(kind, 0) + 1

    if negatives in ("corrupt", "both"):
        for prompt, completion in demos:
            for kind, bad in corruptions(answer_text(completion)).items():
                add(prompt, completion, bad, kind)
    if negatives in ("policy", "both"):
        assert policy_answers is not None, "policy negatives need a model to sample from"
        for (prompt, completion), own in zip(demos, policy_answers([p for p, _ in demos]), strict=True):
            if own.strip() and own.strip() != answer_text(completion).strip():
                add(prompt, completion, own, "policy")
    return rows, counts


# --- pairs mined from test runs ---------------------------------------------------------------------
@dataclass
class ScoredAnswer:
    """One sampled answer with what its test run said about it."""

    text: str
    passed: int  # tests passed
    total: int  # tests run
    quality: float = 0.0  # code-quality score, only a tie-break

    @property
    def all_passed(self) -> bool:
        return self.total > 0 and self.passed == self.total

    def key(self) -> tuple[bool, int, float]:
        return (self.all_passed, self.passed, self.quality)


def why_better(a: ScoredAnswer, b: ScoredAnswer) -> str | None:
    """Why ``a`` is preferred over ``b``: passing over failing, more tests over fewer, then quality; or None."""
    if a.all_passed != b.all_passed:
        return "pass_over_fail" if a.all_passed else None
    if a.passed != b.passed:
        return "more_tests" if a.passed > b.passed else None
    if a.quality > b.quality:
        return "quality"
    return None


_REASON_RANK = {"pass_over_fail": 0, "more_tests": 1, "quality": 2}


def mined_pairs(answers: list[ScoredAnswer], max_pairs: int = 0) -> list[tuple[ScoredAnswer, ScoredAnswer, str]]:
    """Preference pairs among one problem's answers: duplicates removed, largest differences first."""
    unique: dict[str, ScoredAnswer] = {}
    for a in answers:
        if a.text.strip() and a.text.strip() not in unique:
            unique[a.text.strip()] = a
    items = list(unique.values())
    pairs = [(a, b, reason) for a in items for b in items if (reason := why_better(a, b))]
    pairs.sort(key=lambda p: (_REASON_RANK[p[2]], -(p[0].passed - p[1].passed), -(p[0].quality - p[1].quality)))
    return pairs[:max_pairs] if max_pairs else pairs


@dataclass
class MiningCounts:
    """What mining found, written beside the pairs so that a thin harvest is visible."""

    problems: int = 0
    samples: int = 0
    unique_samples: int = 0
    passing_samples: int = 0
    problems_with_a_passing_sample: int = 0
    problems_without_pairs: int = 0
    pairs: int = 0
    pairs_by_reason: dict[str, int] = field(default_factory=lambda: {r: 0 for r in _REASON_RANK})

    def add(self, answers: list[ScoredAnswer], pairs: list[tuple[ScoredAnswer, ScoredAnswer, str]]) -> None:
        self.problems += 1
        self.samples += len(answers)
        self.unique_samples += len({a.text.strip() for a in answers})
        passing = sum(a.all_passed for a in answers)
        self.passing_samples += passing
        self.problems_with_a_passing_sample += passing > 0
        self.problems_without_pairs += not pairs
        self.pairs += len(pairs)
        for _, _, reason in pairs:
            self.pairs_by_reason[reason] += 1


def seeded_split(items: list, fraction: float, seed: int) -> tuple[list, list]:
    """The one train/eval split: ``fraction`` of the items (at least one) held out by a seeded shuffle, both parts
    in the items' own order; nothing held out from fewer than two items or at a fraction of 0."""
    if len(items) < 2 or fraction <= 0:
        return list(items), []
    order = list(range(len(items)))
    random.Random(seed).shuffle(order)
    held = set(order[: max(1, round(len(items) * fraction))])
    return [x for i, x in enumerate(items) if i not in held], [x for i, x in enumerate(items) if i in held]


def split_by_prompt(rows: list[dict[str, Any]], fraction: float, seed: int) -> tuple[list[dict], list[dict]]:
    """Hold out whole prompts, so that pairs sharing a prompt never sit on both sides of the split."""
    groups: dict[str, list[dict]] = {}
    for row in rows:
        groups.setdefault(repr(row["prompt"]), []).append(row)
    if len(groups) < 2 or fraction <= 0:
        return rows, []
    train, held = seeded_split(list(groups), fraction, seed)
    return [r for k in train for r in groups[k]], [r for k in held for r in groups[k]]


def same_form(rows: list[dict[str, Any]], what: str) -> None:
    """TRL takes a dataset of text pairs or of conversational pairs, not a mix."""
    forms = {isinstance(r["prompt"], list) for r in rows}
    if len(forms) > 1:
        raise DataError(f"{what}: mixes plain-text and conversational (messages) prompts; use one form")
