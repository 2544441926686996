"""The shipped data (data/): it loads, its reference solutions pass their own tests through the real scorer, and the
preference files never use an evaluation problem's prompt. Q references run where a q interpreter exists."""

from __future__ import annotations

import json
import re
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest

from qrl import problems
from qrl.data.records import load_preferences
from qrl.execution.sandbox import default_workers
from qrl.rewards.test_cases import TestCaseReward

DATA = Path(__file__).resolve().parent.parent / "data"
PYTHON = DATA / "problems" / "python.jsonl"
BASICS = DATA / "problems" / "python_basics.jsonl"
LADDER = DATA / "ladder" / "python_ladder.jsonl"
Q = DATA / "q"
PREFERENCES = (DATA / "preferences.jsonl", DATA / "preferences_eval.jsonl")


@pytest.fixture(scope="module")
def python_problems() -> list[problems.Problem]:
    return problems.load_problems(PYTHON)


@pytest.fixture(scope="module")
def basics_problems() -> list[problems.Problem]:
    return problems.load_problems(BASICS)


@pytest.fixture(scope="module")
def q_problems() -> list[problems.Problem]:
    return problems.load_problems(Q)


@pytest.fixture(scope="module")
def python_scorer(python_problems: list[problems.Problem]) -> Iterator[TestCaseReward]:
    with TestCaseReward(python_problems, workers=default_workers()) as scorer:
        yield scorer


def test_python_problems_load(python_problems: list[problems.Problem]) -> None:
    assert len(python_problems) == 64
    assert {p.split for p in python_problems} == {"train", "eval"}
    assert sum(p.split == "eval" for p in python_problems) == 16
    assert all(p.language == "python" and p.reference and 4 <= len(p.tests) <= 8 for p in python_problems)


def test_python_references_pass_their_tests(python_problems: list[problems.Problem],
                                            python_scorer: TestCaseReward) -> None:  # fmt: skip
    results = python_scorer.score([(p, p.reference or "") for p in python_problems])
    failing = {r.task_id: f"{r.status}: {r.detail}" for r in results if not r.passed}
    assert not failing
    assert not python_scorer.reference_failures
    assert sum(r.tests_total for r in results) == sum(len(p.tests) for p in python_problems)


def test_python_basics_load(basics_problems: list[problems.Problem]) -> None:
    assert len(basics_problems) == 120
    assert sum(p.split == "train" for p in basics_problems) == 80
    assert sum(p.split == "eval" for p in basics_problems) == 40
    assert [p.task_id for p in basics_problems] == [f"basics/{i:03d}_{p.entry_point}" for i, p in
                                                     enumerate(basics_problems, 1)]  # fmt: skip
    assert all(p.language == "python" and p.difficulty == "easy" and p.reference and 4 <= len(p.tests) <= 6
               and p.prompt.startswith(f"Write a Python function `{p.entry_point}(") for p in basics_problems)  # fmt: skip


def test_python_basics_references_pass_and_empty_answers_fail(basics_problems: list[problems.Problem]) -> None:
    with TestCaseReward(basics_problems, workers=default_workers()) as scorer:
        results = scorer.score([(p, f"```python\n{p.reference}```") for p in basics_problems])
        # An answer that returns None for everything passes no problem: no problem's tests are all None.
        empty = scorer.score([(p, f"def {p.entry_point}(*args):\n    return None\n") for p in basics_problems])
        assert not scorer.reference_failures
    failing = {r.task_id: f"{r.status}: {r.detail}" for r in results if not r.passed}
    assert not failing
    assert sum(r.tests_total for r in results) == sum(len(p.tests) for p in basics_problems)
    assert not [r.task_id for r in empty if r.passed]


def test_ladder_loads_with_separate_held_out_functions_and_passing_references() -> None:
    """The ladder (data/ladder): 57 train and 48 eval problems, no function asked for in both splits, every reference
    passing its tests through the scorer and a None-returning answer passing none."""
    ladder = problems.load_problems(LADDER)
    train = [p for p in ladder if p.split == "train"]
    held_out = [p for p in ladder if p.split == "eval"]
    assert (len(train), len(held_out)) == (57, 48)
    assert not {p.entry_point for p in train} & {p.entry_point for p in held_out}
    assert all(p.prompt.startswith(f"Write a Python function `{p.entry_point}(") and 2 <= len(p.tests) <= 6
               for p in ladder)  # fmt: skip
    with TestCaseReward(ladder, workers=default_workers()) as scorer:
        results = scorer.score([(p, f"```python\n{p.reference}```") for p in ladder])
        empty = scorer.score([(p, f"def {p.entry_point}(*args):\n    return None\n") for p in ladder])
        assert not scorer.reference_failures
    assert not {r.task_id: f"{r.status}: {r.detail}" for r in results if not r.passed}
    assert not [r.task_id for r in empty if r.passed]


def test_problem_folder_keeps_train_and_eval_apart(python_problems: list[problems.Problem],
                                                  basics_problems: list[problems.Problem]) -> None:  # fmt: skip
    """``--train_data data/problems`` loads both files; no function is asked for in a train and an eval problem."""
    folder = problems.load_problems(DATA / "problems")
    assert len(folder) == len(python_problems) + len(basics_problems) == 184
    train = {p.entry_point for p in folder if p.split == "train"}
    held_out = {p.entry_point for p in folder if p.split == "eval"}
    assert len(train) == 128 and len(held_out) == 56 and not train & held_out
    assert len({p.prompt.strip() for p in folder}) == len(folder)


def _prompt(row: dict) -> str:
    prompt = row["prompt"]
    return (prompt if isinstance(prompt, str) else prompt[-1]["content"]).strip()


def _answer(row: dict, name: str) -> str:
    value = row[name]
    return value if isinstance(value, str) else value[-1]["content"]


def test_preferences_load_and_never_use_eval_prompts(python_problems: list[problems.Problem],
                                                     q_problems: list[problems.Problem]) -> None:  # fmt: skip
    train, held_out = (load_preferences(path) for path in PREFERENCES)
    assert len(train) == 57 and len(held_out) == 11
    eval_prompts = {p.prompt.strip() for p in python_problems + q_problems if p.split == "eval"}
    assert eval_prompts
    for path, rows in zip(PREFERENCES, (train, held_out), strict=True):
        for i, row in enumerate(rows):
            prompt = _prompt(row)
            assert not any(e in prompt or prompt in e for e in eval_prompts), f"{path}:{i + 1} uses an eval prompt"
    assert not {_prompt(r) for r in train} & {_prompt(r) for r in held_out}  # the held-out pairs are new prompts


def test_python_preference_answers_are_what_they_claim(python_problems: list[problems.Problem],
                                                       python_scorer: TestCaseReward) -> None:  # fmt: skip
    """Every Python ``chosen`` passes its problem's tests; every Python ``rejected`` does not (data/README.md)."""
    by_prompt = {p.prompt.strip(): p for p in python_problems}
    rows = [row for path in PREFERENCES for row in load_preferences(path) if _prompt(row) in by_prompt]
    assert len(rows) == 59  # 50 + 9 Python pairs
    items = [(by_prompt[_prompt(r)], _answer(r, name)) for r in rows for name in ("chosen", "rejected")]
    results = python_scorer.score(items)
    chosen, rejected = results[0::2], results[1::2]
    assert all(r.passed for r in chosen), [(r.task_id, r.detail) for r in chosen if not r.passed]
    assert not any(r.passed for r in rejected), [r.task_id for r in rejected if r.passed]


def test_q_folders_load_with_matching_files(q_problems: list[problems.Problem]) -> None:
    folders = sorted(p.parent for p in Q.rglob("problem_description.txt"))
    assert len(q_problems) == len(folders) >= 15
    assert {p.split for p in q_problems} == {"train", "eval"}
    for folder in folders:
        names = {f.name for f in folder.iterdir()}
        scripts = sorted(int(m[1]) for n in names if (m := re.fullmatch(r"q_test_case_(\d+)\.q", n)))
        answers = sorted(int(m[1]) for n in names if (m := re.fullmatch(r"q_exact_ans_test_case_(\d+)\.txt", n)))
        assert scripts == answers == list(range(1, len(scripts) + 1)) and len(scripts) >= 3, folder
        assert "q_solution.q" in names, f"{folder}: no reference solution"
        for n in scripts:
            script = (folder / f"q_test_case_{n}.q").read_text()
            assert "solve:" not in script, f"{folder}: test {n} defines solve (the harness prepends it)"
            assert re.search(r"result:solve\[.*\];\s*show result;\s*$", script), f"{folder}: test {n}"
            assert (folder / f"q_exact_ans_test_case_{n}.txt").read_text().strip(), f"{folder}: answer {n} is empty"
    for p in q_problems:
        assert p.language == "q" and p.source_format == "msml" and p.entry_point == "solve"
        assert p.reference and re.search(r"^solve\s*:", p.reference, re.MULTILINE)
        assert "`solve`" in p.prompt


def test_q_eval_and_train_are_separate(q_problems: list[problems.Problem]) -> None:
    train = {p.task_id for p in q_problems if p.split == "train"}
    held_out = {p.task_id for p in q_problems if p.split == "eval"}
    assert len(train) >= 12 and len(held_out) >= 3 and not train & held_out


def test_q_references_pass_with_real_q(q_problems: list[problems.Problem]) -> None:
    q = shutil.which("q")
    if q is None:
        pytest.skip("no q interpreter on PATH here: the shipped Q references were not run (install kdb+ to run them)")
    problems.configure_executors(q_binary=None)
    with TestCaseReward(q_problems, workers=default_workers(), timeout=10) as scorer:
        results = scorer.score([(p, p.reference or "") for p in q_problems])
    failing = {r.task_id: f"{r.status}: {r.detail}" for r in results if not r.passed}
    assert not failing, json.dumps(failing, indent=1)
