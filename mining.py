"""Preference pairs mined from test runs: sample answers, run their tests, prefer the better answer.

For each problem, ``--mine_samples`` answers are sampled from the policy (``--policy_model``, default
``--base_model``), each is scored in the sandbox, and pairs are formed by ``reward_data.mined_pairs``:
an answer that passes every test over one that does not, more tests passed over fewer, then the
code-quality score as a tie-break. The pairs are in the preference format (``prompt``/``chosen``/``rejected``,
conversational when the policy has a chat template) with what decided each pair beside them.
"""

from __future__ import annotations

import dataclasses
import json
from typing import Any, Callable

from data_loading import DataError, read_records, require_fields
from reward_data import MiningCounts, ScoredAnswer, mined_pairs
from run_config import Config
from run_files import RunFolder

Scorer = Callable[[dict[str, Any], list[str]], list[ScoredAnswer]]


def load_problems(path: str) -> list[dict[str, Any]]:
    """Problems with tests (``task_id``, ``prompt``, ``tests``, ...); every split is used."""
    problems = []
    for record in read_records(path):
        require_fields(record, ("task_id", "prompt", "tests"))
        if not isinstance(record.data["prompt"], str) or not record.data["prompt"].strip():
            raise DataError(f"{record.where}: field 'prompt' must be non-empty text")
        problems.append(record.data)
    return problems


def mine(cfg: Config, scorer: Scorer) -> tuple[list[dict[str, Any]], MiningCounts]:
    """Mined pairs for ``--mine_pairs_from`` and their counts; generation happens here, nothing is written."""
    from q_trl_training import _as_chat, load_tokenizer, resolve_base_model, sample_answers

    m = cfg.mining
    problems = load_problems(m.mine_pairs_from)
    model = resolve_base_model(m.policy_model or cfg.model.base_model)
    tokenizer = load_tokenizer(model)
    answers = sample_answers(model, [p["prompt"] for p in problems], m.mine_samples,
                             cfg.generation.max_completion_length, cfg.generation.temperature, cfg.model.seed)
    rows, counts = [], MiningCounts()
    for problem, texts in zip(problems, answers, strict=True):
        if m.mine_with_reference and problem.get("reference_solution"):
            texts = texts + [f"```python\n{problem['reference_solution']}```"]
        scored = scorer(problem, texts)
        pairs = mined_pairs(scored, m.mine_max_pairs)
        counts.add(scored, pairs)
        prompt = _as_chat(tokenizer, problem["prompt"])
        for chosen, rejected, reason in pairs:
            rows.append({
                "prompt": prompt, "chosen": _answer(prompt, chosen.text), "rejected": _answer(prompt, rejected.text),
                "task_id": problem["task_id"], "reason": reason, "tests": chosen.total,
                "chosen_passed": chosen.passed, "rejected_passed": rejected.passed,
                "chosen_quality": chosen.quality, "rejected_quality": rejected.quality,
            })
    if not rows:
        raise DataError(
            f"{m.mine_pairs_from}: mining found no pairs ({counts.samples} answers to {counts.problems} problems all "
            "scored the same); sample more with --mine_samples, raise --temperature, or add --mine_with_reference"
        )
    return rows, counts


def _answer(prompt, text: str):
    return [{"role": "assistant", "content": text}] if isinstance(prompt, list) else text


def write_mined(folder: RunFolder, rows: list[dict[str, Any]], counts: MiningCounts, source: str) -> None:
    """The pairs (reusable as --data_path or --preference_data) and their counts, in the run folder."""
    from run_files import atomic_write

    atomic_write(folder.mined_pairs, "".join(json.dumps(r) + "\n" for r in rows))
    folder.write_json(folder.mining_json, {"source": source, **dataclasses.asdict(counts)})
    folder.log_line(summary(counts) + f"; pairs in {folder.mined_pairs}")


def summary(counts: MiningCounts) -> str:
    by = ", ".join(f"{k} {v}" for k, v in counts.pairs_by_reason.items())
    return (f"mined {counts.pairs} pairs ({by}) from {counts.problems} problems: {counts.samples} answers, "
            f"{counts.passing_samples} passing all tests, {counts.problems_without_pairs} problems without a pair")


def sandbox_scorer() -> Scorer:
    """Scores answers by running their tests in the sandbox."""
    from data_loading import UserError

    raise UserError("--mine_pairs_from needs the sandbox (sandbox.py), which this version does not have yet")
