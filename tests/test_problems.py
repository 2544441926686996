"""Problem formats, code extraction, plain data and judging (without running anything)."""

from __future__ import annotations

import json
import math
from pathlib import Path
from types import SimpleNamespace

import pytest

from qrl import problems
from qrl.data.records import DataError, UserError
from qrl.execution import harness
from qrl.problems import AssertTest, CallTest, IOTest
from qrl.problems.comparisons import as_json, json_equal

QRL = {
    "task_id": "py/017_run_length_encode",
    "language": "python",
    "difficulty": "easy",
    "split": "train",
    "prompt": "Write a Python function `run_length_encode(s: str) -> list` that ...",
    "entry_point": "run_length_encode",
    "reference_solution": "def run_length_encode(s):\n    return []\n",
    "tests": [
        {"args": ["aaab"], "expected": [["a", 3], ["b", 1]]},
        {"args": [""], "kwargs": {}, "expected": []},
    ],
}
HUMANEVAL = {
    "task_id": "HumanEval/0",
    "prompt": 'from typing import List\n\n\ndef add(a: int, b: int) -> int:\n    """Add."""\n',
    "canonical_solution": "    return a + b\n",
    "entry_point": "add",
    "test": (
        "METADATA = {}\n\n\ndef check(candidate):\n    import math\n    assert candidate(1, 2) == 3\n"
        "    assert 5 == candidate(2, 3)\n    assert candidate(0, 0) == 0, 'zero'\n    assert True\n"
        "    for i in range(3):\n        assert candidate(i, i) == 2 * i\n    assert abs(candidate(1, 1) - 2) < 1e-9\n"
    ),
}
MBPP = {
    "task_id": 11,
    "text": "Write a python function to remove first and last occurrence of a given character from the string.",
    "code": "def remove_Occ(s, ch):\n    return s\n",
    "test_list": ['assert remove_Occ("hello","l") == "heo"', 'assert remove_Occ("abcda","a") == "bcd"'],
    "test_setup_code": "",
    "challenge_test_list": [],
}
APPS = {
    "problem_id": 7,
    "question": "Read two integers and print their sum.",
    "input_output": json.dumps({"inputs": ["1 2\n", "10 20\n"], "outputs": ["3\n", "30\n"]}),
    "solutions": json.dumps(["a, b = map(int, input().split())\nprint(a + b)\n"]),
    "difficulty": "introductory",
}


def write_jsonl(path: Path, rows: list) -> Path:
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows))
    return path


# ------------------------------------------------------------------------------------------------ formats


def test_project_format(tmp_path: Path) -> None:
    (p,) = problems.load_problems(write_jsonl(tmp_path / "p.jsonl", [QRL]))
    assert (p.task_id, p.language, p.entry_point, p.difficulty, p.split) == (
        "py/017_run_length_encode", "python", "run_length_encode", "easy", "train"
    )  # fmt: skip
    assert p.tests == (CallTest(["aaab"], {}, [["a", 3], ["b", 1]]), CallTest([""], {}, []))
    assert p.reference == QRL["reference_solution"] and not p.completion_joins_prompt
    assert p.where == f"{tmp_path / 'p.jsonl'}:1" and p.source_format == "qrl"
    assert {p: 1}[p] == 1  # usable as a key (by task id), although its tests hold lists


def test_humaneval_format_counts_each_assert(tmp_path: Path) -> None:
    (p,) = problems.load_problems(write_jsonl(tmp_path / "he.jsonl", [HUMANEVAL]))
    assert p.completion_joins_prompt and p.source_format == "humaneval"
    assert p.reference == HUMANEVAL["prompt"] + HUMANEVAL["canonical_solution"]
    # `assert True` is dropped; the loop is one test; `== literal` asserts are compared outside the sandbox
    assert [t.compared_here for t in p.tests] == [True, True, True, False, False]
    assert [t.expected for t in p.tests[:3]] == [3, 5, 0]
    for literal in ("== 3", "5 ==", "== 0"):
        assert literal not in p.test_script  # expected values never reach the sandbox
    assert "check(__candidate__)" in p.test_script
    assert (
        not p.tests_in_process
    )  # two asserts are decided in the sandbox: the program gets a process of its own


def test_mbpp_format(tmp_path: Path) -> None:
    (p,) = problems.load_problems(write_jsonl(tmp_path / "mbpp.jsonl", [MBPP]))
    assert (p.task_id, p.entry_point, p.source_format) == ("11", "remove_Occ", "mbpp")
    assert len(p.tests) == 2 and all(isinstance(t, AssertTest) and t.compared_here for t in p.tests)
    assert MBPP["test_list"][0] in p.prompt and MBPP["text"] in p.prompt
    assert (
        p.tests_in_process
    )  # every test is compared outside the sandbox: one process is as safe, and cheaper


def test_mbpp_tests_that_build_program_objects_run_in_process(tmp_path: Path) -> None:
    row = {
        "task_id": 601,
        "text": "Find the longest chain of pairs.",
        "code": "class Pair:\n    def __init__(self, a, b):\n        self.a, self.b = a, b\n\ndef chain(pairs, n):\n    return n\n",
        "test_list": ["assert chain([Pair(5, 24), Pair(15, 25)], 2) == 2"],
    }
    (p,) = problems.load_problems(write_jsonl(tmp_path / "m.jsonl", [row]))
    assert p.entry_point == "chain" and p.test_names == ("Pair",) and p.tests_in_process


@pytest.mark.parametrize(
    "row",
    [
        APPS,
        {"task_id": "cc", "description": "Sum.", "public_tests": {"input": ["1 2\n"], "output": ["3\n"]},
         "private_tests": {"input": ["10 20\n"], "output": ["30\n"]},
         "solutions": {"language": [2, 3], "solution": ["print 1", "a, b = map(int, input().split())\nprint(a + b)\n"]}},
        {"task_id": "io", "prompt": "Sum.", "inputs": ["1 2\n", "10 20\n"], "outputs": ["3\n", "30\n"],
         "reference_solution": "a, b = map(int, input().split())\nprint(a + b)\n"},
    ],
    ids=["apps", "codecontests", "inputs-outputs"],
)  # fmt: skip
def test_stdio_formats(tmp_path: Path, row: dict) -> None:
    (p,) = problems.load_problems(write_jsonl(tmp_path / "s.jsonl", [row]))
    assert p.source_format == "stdio" and p.entry_point is None
    assert p.tests == (IOTest("1 2\n", "3\n"), IOTest("10 20\n", "30\n"))
    assert p.reference == "a, b = map(int, input().split())\nprint(a + b)\n"
    assert "standard input" in p.prompt


def test_folder_json_and_forced_format(tmp_path: Path) -> None:
    folder = tmp_path / "set"
    folder.mkdir()
    write_jsonl(folder / "a.jsonl", [QRL])
    (folder / "b.json").write_text(json.dumps([HUMANEVAL]))
    loaded = problems.load_problems(folder)
    assert [p.task_id for p in loaded] == ["py/017_run_length_encode", "HumanEval/0"]
    assert loaded[1].where.endswith("b.json[0]")
    with pytest.raises(DataError, match="missing field.*'test_list'"):
        problems.load_problems(folder / "a.jsonl", format="mbpp")
    with pytest.raises(UserError, match="unknown problem format"):
        problems.load_problems(folder, format="codeforces")


@pytest.mark.parametrize(
    ("rows", "message"),
    [
        ([QRL, "{not json"], r"p\.jsonl:2: malformed JSON"),
        ([{**QRL, "tests": []}], r"p\.jsonl:1: 'tests' must be a non-empty list"),
        (
            [{**QRL, "tests": [{"args": [1]}]}],
            r"p\.jsonl:1: tests\[0\] must be an object with 'args' and 'expected'",
        ),
        ([{k: v for k, v in QRL.items() if k != "entry_point"}], r"p\.jsonl:1: missing field 'entry_point'"),
        ([{**QRL, "entry_point": "not a name"}], r"p\.jsonl:1: 'entry_point' must be a Python identifier"),
        ([QRL, QRL], r"p\.jsonl:2: task_id 'py/017_run_length_encode' already used at .*p\.jsonl:1"),
        ([{"foo": 1}], r"p\.jsonl:1: cannot tell the problem format"),
        ([{**HUMANEVAL, "test": "assert True\n"}], r"p\.jsonl:1: 'test' defines no check"),
        ([{**HUMANEVAL, "test": "def check(candidate):\n    pass\n"}], r"p\.jsonl:1: no assert statements"),
        ([{**MBPP, "test_list": ["assert ("]}], r"p\.jsonl:1: 'test_list' is not valid Python"),
        ([{**MBPP, "test_setup_code": "import ("}], r"p\.jsonl:1: 'test_setup_code' is not valid Python"),
        (
            [{**APPS, "input_output": '{"fn_name": "f", "inputs": [], "outputs": []}'}],
            r"p\.jsonl:1: call-based APPS",
        ),
        (
            [{**APPS, "input_output": '{"inputs": ["1"], "outputs": []}'}],
            r"p\.jsonl:1: inputs and outputs must be",
        ),
    ],
)
def test_bad_problem_files_name_file_and_line(tmp_path: Path, rows: list, message: str) -> None:
    with pytest.raises(DataError, match=message):
        problems.load_problems(write_jsonl(tmp_path / "p.jsonl", rows))


def test_missing_problem_file(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="no such file"):
        problems.load_problems(tmp_path / "nope.jsonl")


def test_load_completions(tmp_path: Path) -> None:
    path = write_jsonl(
        tmp_path / "c.jsonl", [{"task_id": 11, "completion": "x = 1"}, {"task_id": "a", "completion": ""}]
    )
    assert [(c.task_id, c.completion) for c in problems.load_completions(path)] == [
        ("11", "x = 1"),
        ("a", ""),
    ]
    with pytest.raises(DataError, match=r"c\.jsonl:1: missing field 'completion'"):
        problems.load_completions(write_jsonl(tmp_path / "c.jsonl", [{"task_id": 1}]))
    with pytest.raises(DataError, match=r"c\.jsonl:2: 'completion' must be a string"):
        problems.load_completions(write_jsonl(tmp_path / "c.jsonl", [{"task_id": 1, "completion": ""}, {"task_id": 1, "completion": 3}]))  # fmt: skip


# ------------------------------------------------------------------------------------------------ code from answers

FENCED = "Here is my answer:\n\n```python\ndef f(x):\n    return x + 1\n```\n\nIt adds one.\n"


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (FENCED, "def f(x):\n    return x + 1\n"),
        ("```\ndef f(x):\n    return 1\n```", "def f(x):\n    return 1\n"),
        ("~~~py\ndef f(x): return 2\n~~~", "def f(x): return 2\n"),
        ("```python\ndef f(x):\n    return 3\n", "def f(x):\n    return 3\n"),  # cut off: no closing fence
        ("```bash\npip install x\n```\n```python\ndef f(x): return 4\n```", "def f(x): return 4\n"),
        ("```python\nprint(f(1))\n```\n```python\ndef helper(): pass\ndef f(x): return 5\n```\n```python\nf(2)\n```",
         "def helper(): pass\ndef f(x): return 5\n"),
        ("Sure! Here it is:\ndef f(x):\n    return 6\nThis works because reasons.", "def f(x):\n    return 6\n"),
        ("def f(x):\n    return 7\n", "def f(x):\n    return 7\n"),
        ("```bash\nls\n```", ""),
        ("def f(x):\n    return 8\n```\n\nExample usage:\n```python\nprint(f(1))\n```", "def f(x):\n    return 8\n"),
        ("import math\n\ndef f(x):\n    return 9\n```\n\nIt uses `math`.", "import math\n\ndef f(x):\n    return 9\n"),
        ("Here:\ndef f(x):\n    return 10\n```\nDone.", "def f(x):\n    return 10\n"),
        ("Like so:\n```\ndef f(x):\n    return 11\n```", "def f(x):\n    return 11\n"),
    ],
    ids=["tagged", "untagged", "tilde", "unclosed", "other-language", "defines-entry", "prose", "plain", "none",
         "missing-opening-fence", "missing-opening-fence-prose-after", "prose-then-code-then-fence",
         "prose-then-bare-fence"],
)  # fmt: skip
def test_extract_code(text: str, expected: str) -> None:
    assert problems.extract_code(text, "python", entry_point="f") == expected


def test_extract_code_q_blocks() -> None:
    assert problems.extract_code("```q\nf:{x+1}\n```\n```python\nx=1\n```", "q") == "f:{x+1}\n"
    stray = "solve:{x*2}\n```\nExample:\n```q\nsolve 3\n```"  # the opening fence forgotten
    assert problems.extract_code(stray, "q", entry_point="solve").strip() == "solve:{x*2}"


def test_humaneval_completions_join_the_prompt(tmp_path: Path) -> None:
    (p,) = problems.load_problems(write_jsonl(tmp_path / "he.jsonl", [HUMANEVAL]))
    body = "    return a + b\n"
    assert problems.program_code(p, body) == p.prompt + body
    full = "def add(a, b):\n    return a + b\n"
    assert problems.program_code(p, f"```python\n{full}```") == p.prompt.rstrip() + "\n\n" + full
    chat = f"Of course.\n{full}Hope that helps!"
    assert problems.program_code(p, chat) == p.prompt.rstrip() + "\n\n" + full
    (q,) = problems.load_problems(write_jsonl(tmp_path / "q.jsonl", [QRL]))
    assert problems.program_code(q, FENCED) == "def f(x):\n    return x + 1\n"


def test_programs_share_a_key_only_when_their_text_is_the_same(tmp_path: Path) -> None:
    """Layout can change what a program does (a line number in a traceback or frame): the key is the exact text."""
    (p,) = problems.load_problems(write_jsonl(tmp_path / "p.jsonl", [QRL]))
    a = problems.prepare(p, "def run_length_encode(s):\n    return []\n")
    b = problems.prepare(p, "```python\ndef run_length_encode(s):\n    return []\n```")  # the same program
    c = problems.prepare(p, "def run_length_encode(s):\n\n    return []\n")
    d = problems.prepare(p, "def run_length_encode(s):\n    return []  # nothing\n")
    assert a.key == b.key and len({a.key, c.key, d.key}) == 3
    bad = problems.prepare(p, "def run_length_encode(s:\n")
    assert bad.syntax_error and not bad.jobs
    assert problems.judge(bad, []).status == "syntax_error"


def test_unknown_language_is_a_clear_error(tmp_path: Path) -> None:
    (p,) = problems.load_problems(write_jsonl(tmp_path / "p.jsonl", [{**QRL, "language": "rust"}]))
    assert p.language == "rust"
    with pytest.raises(UserError, match="no executor for language 'rust'"):
        problems.prepare(p, "fn f() {}")


# ------------------------------------------------------------------------------------------------ plain data


class Liar:
    def __eq__(self, other: object) -> bool:
        return True

    __hash__ = object.__hash__


class SneakyInt(int):
    def __eq__(self, other: object) -> bool:
        return True

    __hash__ = int.__hash__


@pytest.mark.parametrize("value", [Liar(), SneakyInt(3), [1, SneakyInt(2)], {"a": Liar()}, (x for x in [1])])
def test_to_plain_refuses_anything_but_exact_builtins(value: object) -> None:
    with pytest.raises(TypeError):
        harness.to_plain(value)


def test_to_plain_accepts_numpy() -> None:
    np = pytest.importorskip("numpy")
    assert harness.to_plain(np.int64(3)) == 3 and type(harness.to_plain(np.int64(3))) is int
    assert harness.to_plain(np.arange(3).reshape(1, 3)) == [[0, 1, 2]]
    assert harness.to_plain([np.float32(0.5), np.bool_(True)]) == [0.5, True]


@pytest.mark.parametrize(
    "value",
    [None, True, 3, -(2**70), 1.5, float("inf"), "s", b"\x00b", 1 + 2j, [1, (2, 3)], {(1, 2): {3}}, frozenset({4}),
     {1: "a", "1": "b"}, [[[]]]],
)  # fmt: skip
def test_pack_round_trips_types(value: object) -> None:
    back = harness.unpack(json.loads(json.dumps(harness.pack(value))))
    assert back == value and type(back) is type(value)


def test_pack_round_trips_nan() -> None:
    assert math.isnan(harness.unpack(json.loads(json.dumps(harness.pack(float("nan"))))))


@pytest.mark.parametrize(
    "garbage", [{"x": 1}, {"t": 5}, {"d": [[1]]}, {"i": 5}, {"d": [[[1], 2]]}, {"a": 1, "b": 2}]
)
def test_unpack_rejects_garbage(garbage: object) -> None:
    with pytest.raises((ValueError, TypeError)):
        harness.unpack(garbage)


def test_harness_report_fd_matches_the_sandbox() -> None:
    from qrl.execution import sandbox

    assert harness.REPORT_FD == sandbox.REPORT_FD


# ------------------------------------------------------------------------------------------------ judging


def outcome(report: list[dict] | None = None, **fields: object) -> SimpleNamespace:
    base = {"status": "exited", "exit_code": 0, "stdout": "", "report": "", "cpu_time": 0.01, "wall_time": 0.02,
            "detail": ""}  # fmt: skip
    if report is not None:
        base["report"] = "".join(json.dumps(e) + "\n" for e in report)
    return SimpleNamespace(**{**base, **fields})


@pytest.fixture
def qrl(tmp_path: Path) -> problems.Problem:
    return problems.load_problems(write_jsonl(tmp_path / "p.jsonl", [QRL]))[0]


@pytest.fixture
def humaneval(tmp_path: Path) -> problems.Problem:
    return problems.load_problems(write_jsonl(tmp_path / "h.jsonl", [HUMANEVAL]))[0]


def test_judge_compares_call_results_as_json(qrl: problems.Problem) -> None:
    sub = problems.prepare(qrl, "def run_length_encode(s): pass")
    good = [{"e": "loaded"}, {"e": "test", "i": 0, "v": harness.pack([("a", 3), ("b", 1)])},
            {"e": "test", "i": 1, "v": []}, {"e": "done"}]  # fmt: skip
    assert problems.judge(sub, [outcome(good)]).status == "passed"  # tuples compare as JSON lists
    wrong = good[:2] + [{"e": "test", "i": 1, "v": [1]}, {"e": "done"}]
    verdict = problems.judge(sub, [outcome(wrong)])
    assert (verdict.status, verdict.tests_passed, verdict.tests_total) == ("failed", 1, 2)
    assert "expected [], got [1]" in verdict.detail


def test_judge_survives_an_answer_too_large_to_print(qrl: problems.Problem) -> None:
    """An integer of over 4300 digits cannot be repr'd: the verdict names it instead (this stopped an evaluation)."""
    sub = problems.prepare(qrl, "def run_length_encode(s): pass")
    huge = [{"e": "loaded"}, {"e": "test", "i": 0, "v": harness.pack(10**5000)},
            {"e": "test", "i": 1, "v": harness.pack([10**5000])}, {"e": "done"}]  # fmt: skip
    verdict = problems.judge(sub, [outcome(huge)])
    assert (verdict.status, verdict.tests_passed) == ("failed", 0)
    assert "got <int too large to print>" in verdict.detail or "got <list too large to print>" in verdict.detail


def test_judge_marks_answers_that_give_every_test_the_same_value(qrl: problems.Problem) -> None:
    sub = problems.prepare(qrl, "def run_length_encode(s): return []")
    same = [{"e": "loaded"}] + [{"e": "test", "i": i, "v": []} for i in range(2)] + [{"e": "done"}]
    verdict = problems.judge(sub, [outcome(same)])
    assert (verdict.status, verdict.tests_passed, verdict.same_value) == ("failed", 1, True)
    varied = same[:2] + [{"e": "test", "i": 1, "v": [1]}, {"e": "done"}]
    assert not problems.judge(sub, [outcome(varied)]).same_value
    raised = same[:2] + [{"e": "test", "i": 1, "error": "ValueError: x"}, {"e": "done"}]
    assert not problems.judge(sub, [outcome(raised)]).same_value  # one value given back: nothing to compare


def test_judge_never_takes_a_pass_on_word(humaneval: problems.Problem) -> None:
    sub = problems.prepare(humaneval, "    return a + b\n")
    forged = [{"e": "loaded"}] + [{"e": "test", "i": i, "ok": True} for i in range(5)] + [{"e": "done"}]
    verdict = problems.judge(sub, [outcome(forged)])
    assert verdict.tests_passed == 2  # the three `== literal` tests need a value to compare
    unfinished = [{"e": "loaded"}] + [{"e": "test", "i": i, "v": v} for i, v in enumerate([3, 5, 0])]
    assert problems.judge(sub, [outcome(unfinished)]).status == "runtime_error"


def test_in_process_programs_cannot_claim_an_infra_error(
    qrl: problems.Problem, humaneval: problems.Problem
) -> None:
    events = [{"e": "harness_error", "msg": "x"}, {"e": "done"}]
    assert problems.judge(
        problems.prepare(qrl, "def run_length_encode(s): pass"), [outcome(events)]
    ).status == (
        "runtime_error"
    )  # the program shared the harness's process: a masked reward must not be one write away
    assert (
        problems.judge(problems.prepare(humaneval, "    return 0\n"), [outcome(events)]).status
        == "infra_error"
    )
    forged = [{"e": "loaded"}] + [{"e": "test", "i": i, "ok": True} for i in range(2)] + [{"e": "done"}]
    assert (
        problems.judge(
            problems.prepare(qrl, "def run_length_encode(s): pass"), [outcome(forged)]
        ).tests_passed
        == 0
    )


@pytest.mark.parametrize(
    ("events", "fields", "status"),
    [
        ([{"e": "syntax_error", "msg": "x"}, {"e": "done"}], {}, "syntax_error"),
        ([{"e": "load_error", "msg": "x"}, {"e": "done"}], {}, "runtime_error"),
        ([{"e": "loaded"}, {"e": "output_limit"}, {"e": "done"}], {}, "output_limit"),
        ([{"e": "loaded"}, {"e": "test", "i": 0, "error": "MemoryError"}, {"e": "done"}], {}, "memory_limit"),
        ([{"e": "loaded"}], {"status": "timeout"}, "timeout"),
        ([], {"status": "infra_error"}, "infra_error"),
        ([{"e": "loaded"}] + [{"e": "test", "i": i, "error": "ValueError: x"} for i in range(2)] + [{"e": "done"}],
         {}, "runtime_error"),
        ([{"e": "loaded"}, {"e": "test", "i": 0, "v": [["a", 3], ["b", 1]]}, {"e": "died", "msg": "x"}, {"e": "done"}],
         {}, "runtime_error"),
    ],
)  # fmt: skip
def test_judge_statuses(qrl: problems.Problem, events: list, fields: dict, status: str) -> None:
    sub = problems.prepare(qrl, "def run_length_encode(s): pass")
    assert problems.judge(sub, [outcome(events, **fields)]).status == status


@pytest.mark.parametrize(
    "answer",
    [
        "Use it like this:\n```python\nprint(run_length_encode('aab'))\n```",  # example calls, no definition
        "```python\ndef encode(s):\n    return []\n```\n```python\nprint(encode('a'))\n```",  # another name
        "```python\nimport itertools\n```",
    ],
)
def test_an_answer_that_defines_no_entry_point_says_so(qrl: problems.Problem, answer: str) -> None:
    """Whatever the code that ran raised (a NameError from example calls, say), the detail names the cause."""
    sub = problems.prepare(qrl, answer)
    assert sub.missing_entry_point
    name_error = [{"e": "load_error", "msg": "NameError: name 'run_length_encode' is not defined"}, {"e": "done"}]
    verdict = problems.judge(sub, [outcome(name_error)])
    assert verdict.status == "runtime_error"
    assert verdict.detail == "the answer defines no function `run_length_encode`"
    other = [{"e": "load_error", "msg": "ModuleNotFoundError: No module named 'numpyy'"}, {"e": "done"}]
    detail = problems.judge(sub, [outcome(other)]).detail
    assert detail.startswith("the answer defines no function `run_length_encode`; the code that ran: Module")


@pytest.mark.parametrize(
    "answer",
    [
        "```python\ndef run_length_encode(s):\n    return []\n```",
        "```python\nrun_length_encode = lambda s: []\n```",
        "```python\nfrom collections import Counter as run_length_encode\n```",
        "```python\nfrom helpers import *\n```",
        "```python\nexec('def run_length_encode(s): return []')\n```",
        "```python\nclass Solution:\n    def run_length_encode(self, s):\n        return []\n```",
        "```python\ndef run_length_encode(s:\n```",  # does not parse: its syntax error says why
    ],
)
def test_an_answer_that_may_define_the_entry_point_keeps_its_own_detail(qrl: problems.Problem, answer: str) -> None:
    sub = problems.prepare(qrl, answer)
    assert not sub.missing_entry_point
    error = [{"e": "load_error", "msg": "NameError: name 'x' is not defined"}, {"e": "done"}]
    verdict = problems.judge(sub, [outcome(error)])
    assert "defines no function" not in verdict.detail
    assert verdict.status == "syntax_error" or verdict.detail == "NameError: name 'x' is not defined"


def test_the_missing_entry_point_is_named_only_when_no_test_passed(qrl: problems.Problem) -> None:
    sub = problems.prepare(qrl, "```python\nprint('hi')\n```")
    one = [{"e": "loaded"}, {"e": "test", "i": 0, "v": [["a", 3], ["b", 1]]},
           {"e": "test", "i": 1, "error": "NameError: x"}, {"e": "done"}]  # fmt: skip
    verdict = problems.judge(sub, [outcome(one)])
    assert verdict.tests_passed == 1 and "defines no function" not in verdict.detail


def test_judge_stdio_normalises_whitespace(tmp_path: Path) -> None:
    (p,) = problems.load_problems(write_jsonl(tmp_path / "s.jsonl", [APPS]))
    sub = problems.prepare(p, "print(3)")
    assert len(sub.jobs) == 2 and sub.jobs[1].stdin == b"10 20\n"
    ok = problems.judge(sub, [outcome(stdout="3  \n\n"), outcome(stdout=" 30")])
    assert ok.status == "passed" and ok.cpu_time == 0.02
    half = problems.judge(sub, [outcome(stdout="3\n"), outcome(stdout="31\n")])
    assert (half.status, half.tests_passed) == ("failed", 1)
    assert not half.same_value
    assert problems.judge(sub, [outcome(stdout="3\n"), outcome(stdout="3")]).same_value
    crash = problems.judge(sub, [outcome(exit_code=1), outcome(exit_code=1)])
    assert crash.status == "runtime_error"
    assert problems.judge(sub, [outcome(), outcome(status="timeout")]).status == "timeout"


@pytest.mark.parametrize(
    ("actual", "expected", "equal"),
    [
        (1.0000001, 1.0, True),
        (1.01, 1.0, False),
        (2, 2.0, True),  # a float expected takes an int within the tolerance
        (2.0, 2, False),  # an int expected needs an int
        (2.0000001, 2, False),
        (True, 1, False),
        (1, True, False),
        (1, 1.0000001, True),
        (10**400, 1.0, False),  # beyond any float: not close, and no OverflowError
        ([1, [2.0000000001]], [1, [2.0]], True),
        ([1, [2.0000000001]], [1, [2]], False),
        ({"a": 1}, {"a": 1, "b": 2}, False),
        ("1", 1, False),
        (None, None, True),
        (float("nan"), float("nan"), True),
    ],
)
def test_json_equality(actual: object, expected: object, equal: bool) -> None:
    assert json_equal(actual, expected) is equal


def test_results_become_json_like_data() -> None:
    assert as_json({1: (2, 3), None: True}) == {"1": [2, 3], "null": True}
