"""The three forms of Q problem (see the package's docstring): MSML folders, q-expr JSONL and KX's Q-HumanEval, and
the tests they hold."""

from __future__ import annotations

import ast
import dataclasses
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from qrl.data.records import DataError, Record, read_text, require_fields
from qrl.problems import AssertTest, Problem, free_names, parse_humaneval, record_metadata, record_text


@dataclass(frozen=True)
class ScriptTest:
    """MSML: ``script`` (which ends in ``show result``) must make ``show result`` print ``expected``."""

    script: str
    expected: str
    name: str = ""  # the test script's file name

    @property
    def prefix(self) -> str:
        """The script without its final ``show result``: what runs in the program's q process."""
        return _SHOW_RESULT.sub("", self.script.rstrip())


@dataclass(frozen=True)
class ExprTest:
    """q-expr: the value of ``expr`` must match (``~``) the q value ``expected``."""

    expr: str
    expected: str


_SHOW_RESULT = re.compile(r"\bshow\s+result\s*;?\s*$")


def normalise_output(text: str) -> str:
    """Console text as compared: line ends unified, trailing spaces of each line and blank lines around dropped."""
    lines = text.replace("\r\n", "\n").replace("\r", "\n").split("\n")
    return "\n".join(line.rstrip() for line in lines).strip()



def load_msml(root: Path) -> list[Problem] | None:
    """Every problem folder (one holding ``problem_description.txt``) under ``root``; None if there is none."""
    folders = sorted({p.parent for p in root.rglob("problem_description.txt")})
    if not folders:
        return None
    return [_msml_problem(folder) for folder in folders]


_MSML_TEST = re.compile(r"q_test_case_(\d+)\.q")
_MSML_ANSWER = re.compile(r"q_exact_ans_test_case_(\d+)\.txt")
_SPLITS = {"train": "train", "eval": "eval", "test": "eval", "valid": "eval", "validation": "eval"}


def _msml_problem(folder: Path) -> Problem:
    scripts = {int(m[1]): p for p in folder.iterdir() if (m := _MSML_TEST.fullmatch(p.name))}
    answers = {int(m[1]): p for p in folder.iterdir() if (m := _MSML_ANSWER.fullmatch(p.name))}
    if not scripts:
        raise DataError(f"{folder}: no test scripts (q_test_case_N.q)")
    for n in sorted(set(scripts) ^ set(answers)):
        missing = f"q_exact_ans_test_case_{n}.txt" if n in scripts else f"q_test_case_{n}.q"
        raise DataError(f"{folder}: {missing} is missing (every test script needs its expected output)")
    tests = []
    for n in sorted(scripts):
        script = read_text(scripts[n])
        if not _SHOW_RESULT.search(script.rstrip()):
            raise DataError(f"{scripts[n]}: a test script must end in `show result;` (the MSML layout)")
        tests.append(ScriptTest(script, read_text(answers[n]), scripts[n].name))
    description = read_text(folder / "problem_description.txt")
    if not description.strip():
        raise DataError(f"{folder / 'problem_description.txt'}: empty")
    solution = folder / "q_solution.q"
    split = next((_SPLITS[p.name.lower()] for p in folder.parents if p.name.lower() in _SPLITS), None)
    return Problem(
        task_id=f"q/{folder.name}",
        prompt=description.strip(),
        tests=tuple(tests),  # type: ignore[arg-type] -- a Q test, run by the Q executor
        language="q",
        entry_point="solve",
        reference=read_text(solution) if solution.is_file() else None,
        split=split,
        source_format="msml",
        where=str(folder),
    )


def detect(data: dict) -> str | None:
    tests = data.get("tests")
    if isinstance(tests, str) and "entry_point" in data:
        return "q-humaneval"
    if isinstance(tests, list) and (
        data.get("language") == "q" or any(isinstance(t, dict) and "expr" in t for t in tests)
    ):
        return "q-expr"
    return None


_CALLED = re.compile(r"\s*([.A-Za-z][.\w]*)\s*\[")


def parse_q_expr(record: Record) -> Problem:
    require_fields(record, ("task_id", "prompt", "tests"))
    tests = record.data["tests"]
    if not isinstance(tests, list) or not tests:
        raise DataError(f"{record.where}: 'tests' must be a non-empty list")
    parsed = []
    for i, test in enumerate(tests):
        fields = ("expr", "expected")
        ok = isinstance(test, dict) and all(isinstance(test.get(k), str) and test[k].strip() for k in fields)
        if not ok:
            raise DataError(f"{record.where}: tests[{i}] must be an object with 'expr' and 'expected', both q text")
        parsed.append(ExprTest(test["expr"].strip(), test["expected"].strip()))
    entry_point = record.data.get("entry_point") or (m[1] if (m := _CALLED.match(parsed[0].expr)) else None)
    reference = record.data.get("reference_solution")
    return Problem(
        task_id=str(record.data["task_id"]),
        prompt=record_text(record, "prompt"),
        tests=tuple(parsed),  # type: ignore[arg-type]
        language="q",
        entry_point=entry_point,
        reference=reference if isinstance(reference, str) and reference.strip() else None,
        source_format="q-expr",
        where=record.where,
        **record_metadata(record),
    )


def parse_q_humaneval(record: Record) -> Problem:
    """KX's Q-HumanEval: the Python ``check(candidate)`` becomes one test per assert, as for HumanEval; the expected
    literals are normalised as the results will be (tuples as lists, bytes as text)."""
    require_fields(record, ("task_id", "prompt", "tests", "entry_point"))
    data = record.data
    setup = data.get("test_setup_code") or ""
    if not isinstance(setup, str):
        raise DataError(f"{record.where}: 'test_setup_code' must be Python code (a string)")
    view = Record({"task_id": data["task_id"], "prompt": data["prompt"], "test": data["tests"],
                   "entry_point": data["entry_point"]}, record.where)  # fmt: skip
    base = parse_humaneval(view)
    script = (setup.rstrip() + "\n" if setup.strip() else "") + base.test_script
    names = free_names(ast.parse(script)) - {base.entry_point}
    tests = tuple(
        AssertTest(t.text, q_plain(t.expected)) if t.compared_here else t
        for t in base.tests
        if isinstance(t, AssertTest)
    )
    solution = data.get("canonical_solution")
    return dataclasses.replace(
        base,
        tests=tests,
        language="q",
        reference=solution if isinstance(solution, str) and solution.strip() else None,
        setup=setup,
        completion_joins_prompt=False,  # the prompt is a skeleton with an empty body: the answer is the definition
        source_format="q-humaneval",
        test_script=script,
        test_names=tuple(sorted(names)),
        tests_in_process=all(t.compared_here for t in tests),
    )



def q_plain(value: Any) -> Any:
    """A value as Q-HumanEval compares it: q strings arrive as bytes and q lists as lists, so tuples become lists and
    bytes become text (UTF-8) on both sides."""
    if type(value) is bytes:
        return value.decode("utf-8", errors="replace")
    if type(value) in (list, tuple):
        return [q_plain(v) for v in value]
    if type(value) is dict:
        return {q_plain(k): q_plain(v) for k, v in value.items()}
    return value
