"""Q support: the three Q test forms, hostile programs, the missing-q and missing-PyKX errors, and the command line.

No q interpreter can be installed where these tests were written: the forms run against ``fake_q_STANDIN``, a small
stand-in executable that keeps only the q command line's contract the executor relies on (tests/q_standin.py). The
tests at the end run a real ``q`` and are skipped, with the reason, where there is none.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from q_standin import Q_STANDIN_NAME, build_pykx_standin, build_q_standin
from sandbox_helpers import wait_until_idle

from qrl import problems
from qrl.data.records import DataError, Record, UserError
from qrl.execution.sandbox import Sandbox
from qrl.languages import q as q_language
from qrl.languages.q import install as q_install
from qrl.rewards.test_cases import TestCaseReward

ROOT = Path(__file__).resolve().parent.parent
REAL_Q = shutil.which("q")
NO_REAL_Q = "no q interpreter on PATH here (install kdb+ to run the tests against real q)"


# ------------------------------------------------------------------------------------------------ fixtures


@pytest.fixture(scope="module")
def shared_dir() -> Iterator[Path]:
    """Outside /tmp: the sandbox gives every program a private /tmp, so q cannot live there."""
    folder = Path(tempfile.mkdtemp(prefix="qrl-q-tests-", dir="/var/tmp"))
    folder.chmod(0o755)
    yield folder
    shutil.rmtree(folder, ignore_errors=True)


@pytest.fixture(scope="module")
def standin(shared_dir: Path) -> Path:
    return build_q_standin(shared_dir / "bin")


@pytest.fixture
def use_standin(standin: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    monkeypatch.delenv("QHOME", raising=False)
    monkeypatch.delenv("QLIC", raising=False)
    problems.configure_executors(q_binary=str(standin))
    yield standin
    problems.configure_executors(q_binary=None)


@pytest.fixture(scope="module")
def box(shared_dir: Path) -> Iterator[Sandbox]:
    """One sandbox for the module; scorers borrow it (see ``scorer``)."""
    with Sandbox(2, preload=["qrl.execution.harness", "qrl.languages.q"], expose=[str(shared_dir)]) as sandbox:
        yield sandbox


def scorer(items: list[problems.Problem], box: Sandbox, timeout: float = 5.0) -> TestCaseReward:
    s = TestCaseReward(items, workers=box.workers, timeout=timeout, sandbox=box)
    s.close = lambda: None  # type: ignore[method-assign] -- the module's sandbox outlives each scorer
    return s


def msml_folder(root: Path, name: str, cases: list[tuple[str, str]], solution: str | None = "solve:{sum x}\n",
                description: str = "Write a q function `solve` that sums the longs x.") -> Path:  # fmt: skip
    folder = root / name
    folder.mkdir(parents=True)
    (folder / "problem_description.txt").write_text(description + "\n")
    if solution is not None:
        (folder / "q_solution.q").write_text(solution)
    for n, (args, expected) in enumerate(cases, start=1):
        (folder / f"q_test_case_{n}.q").write_text(f"result:solve[{args}]; show result;\n")
        (folder / f"q_exact_ans_test_case_{n}.txt").write_text(expected + "\n")
    return folder


@pytest.fixture
def sum_problem(tmp_path: Path) -> problems.Problem:
    msml_folder(tmp_path / "msml" / "train", "add_up", [("1 2 3", "6"), ("10 20", "30"), ("-5 5 0", "0")])
    (problem,) = problems.load_problems(tmp_path / "msml")
    return problem


def expr_problem(tests: list[tuple[str, str]], task_id: str = "qx/1", **extra: object) -> problems.Problem:
    data = {"task_id": task_id, "language": "q", "prompt": "Write solve.",
            "tests": [{"expr": e, "expected": x} for e, x in tests], **extra}  # fmt: skip
    return problems.parse_problem(Record(data, "test.jsonl:1"))


def score_one(s: TestCaseReward, problem: problems.Problem, completion: str):
    (result,) = s.score([(problem, completion)])
    return result


# ------------------------------------------------------------------------------------------------ loading


def test_msml_folder_loads(tmp_path: Path) -> None:
    msml_folder(tmp_path / "q" / "train", "add_up", [("1 2 3", "6"), ("4", "4")])
    msml_folder(tmp_path / "q" / "eval", "add_more", [("5 5", "10")], solution=None)
    loaded = {p.task_id: p for p in problems.load_problems(tmp_path / "q")}
    assert set(loaded) == {"q/add_up", "q/add_more"}
    p = loaded["q/add_up"]
    assert (p.language, p.source_format, p.entry_point, p.split) == ("q", "msml", "solve", "train")
    assert p.prompt.startswith("Write a q function `solve`") and p.reference == "solve:{sum x}\n"
    assert [t.expected.strip() for t in p.tests] == ["6", "4"]
    assert p.tests[0].prefix == "result:solve[1 2 3]; "
    assert loaded["q/add_more"].split == "eval" and loaded["q/add_more"].reference is None
    assert problems.load_problems(tmp_path / "q" / "eval", format="msml")[0].task_id == "q/add_more"
    (tmp_path / "q" / "more.jsonl").write_text(json.dumps({"task_id": "qx/1", "language": "q", "prompt": "p",
                                                            "tests": [{"expr": "f[]", "expected": "1"}]}) + "\n")
    assert len(problems.load_problems(tmp_path / "q")) == 3  # a folder's MSML problems and its data files
    assert len(problems.load_problems(tmp_path / "q", format="msml")) == 2


@pytest.mark.parametrize(
    ("breakage", "message"),
    [
        (lambda f: (f / "q_exact_ans_test_case_2.txt").unlink(), "q_exact_ans_test_case_2.txt is missing"),
        (lambda f: (f / "q_test_case_1.q").unlink(), "q_test_case_1.q is missing"),
        (lambda f: (f / "q_test_case_1.q").write_text("result:solve[1];\n"), "must end in `show result;`"),
        (lambda f: (f / "problem_description.txt").write_text("  \n"), "problem_description.txt: empty"),
    ],
    ids=["no-answer", "no-script", "no-show", "empty-description"],
)
def test_msml_folder_errors_name_the_file(tmp_path: Path, breakage, message: str) -> None:
    breakage(msml_folder(tmp_path / "q", "p", [("1", "1"), ("2", "2")]))
    with pytest.raises(DataError, match=message):
        problems.load_problems(tmp_path / "q")


def test_forcing_msml_on_another_folder_is_an_error(tmp_path: Path) -> None:
    (tmp_path / "x.jsonl").write_text("{}\n")
    with pytest.raises(DataError, match="not a folder in the msml layout"):
        problems.load_problems(tmp_path, format="msml")


def test_q_expression_problems_load(tmp_path: Path) -> None:
    rows = [{"task_id": "qx/1", "language": "q", "prompt": "Sum x.", "tests": [{"expr": "solve[1 2 3]", "expected": "6"}],
             "reference_solution": "solve:{sum x}"},
            {"task_id": "qx/2", "prompt": "Add.", "tests": [{"expr": "add[1;2]", "expected": "3"}]}]  # fmt: skip
    path = tmp_path / "q.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    first, second = problems.load_problems(path)
    assert (first.source_format, first.language, first.entry_point, first.reference) == (
        "q-expr", "q", "solve", "solve:{sum x}")  # fmt: skip
    assert first.tests == (q_language.ExprTest("solve[1 2 3]", "6"),)
    assert second.entry_point == "add" and second.language == "q"  # told apart by its tests, language or not
    path.write_text(json.dumps({**rows[0], "tests": [{"expr": "solve[1]"}]}) + "\n")
    with pytest.raises(DataError, match=r"q\.jsonl:1: tests\[0\] must be an object with 'expr' and 'expected'"):
        problems.load_problems(path)


Q_HUMANEVAL = {
    "task_id": 0,
    "prompt": "// @overview\n// Return the maximum element of the list.\n//\n// @param x {long[]} a list\n"
              "max_element:{[x]\n    / function body\n    }",
    "tests": "def check(candidate):\n    assert candidate([1, 2, 3]) == 3\n    assert candidate([5, -5, 124, 1]) == 124\n"
             "    assert abs(candidate([0, 1]) - 1) < 1e-9\n",
    "q_tests": [],
    "entry_point": "max_element",
    "test_setup_code": "",
    "canonical_solution": "",
}  # fmt: skip


def test_q_humaneval_loads(tmp_path: Path) -> None:
    rows = [Q_HUMANEVAL, {**Q_HUMANEVAL, "task_id": 1, "entry_point": "sum_product", "test_setup_code": "import math",
                          "tests": "def check(candidate):\n    assert candidate([3, 5]) == (8, math.prod([3, 5]))\n"
                                   "    assert candidate([]) == (0, 1)\n"}]  # fmt: skip
    path = tmp_path / "q_humaneval.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    first, second = problems.load_problems(path)
    assert (first.task_id, first.language, first.source_format, first.entry_point) == (
        "0", "q", "q-humaneval", "max_element")  # fmt: skip
    assert len(first.tests) == 3 and not first.completion_joins_prompt and first.reference is None
    assert [t.expected for t in first.tests[:2]] == [3, 124] and not first.tests_in_process
    assert second.test_script.startswith("import math\n") and "math" not in second.test_names
    assert second.tests[1].expected == [0, 1]  # tuples compare as lists: q lists come back as lists


def test_generated_q_scripts() -> None:
    """The q text the executor writes: what the stand-in (and real q) must understand."""
    assert q_language.q_string("6") == '(enlist "6")'  # "6" alone would be a char atom, which value does not run
    assert q_language.q_string('say "hi"\\\n') == '"say \\"hi\\"\\\\\\n"'
    test = q_language.ScriptTest("result:solve[1 2]; show result;\n", "3\n")
    assert q_language.main_script(test=test) == (
        "\\l qrl_program.q\n\\d .\nresult:solve[1 2];\n`:qrl_result set result\nexit 0\n")
    assert q_language.main_script(exprs=["f[1]"]).splitlines()[2] == (
        '@[{`:qrl_r0 set value x};"f[1]";{`:qrl_e0 0: enlist x}]')
    assert q_language.show_script().splitlines() == [
        '-1 "qrl-judge-begin";', "show get `:qrl_result;", '-1 "qrl-judge-end";', "exit 0"]
    assert q_language.match_script([(2, "6")]).splitlines()[1] == (
        '-1 "qrl 2 ",@[{$[(get x 0)~value x 1;"pass";"fail"]};(`:qrl_r2;(enlist "6"));{"error ",x}];')


# ------------------------------------------------------------------------------------------------ code extraction


@pytest.mark.parametrize(
    ("answer", "code"),
    [
        ("```q\nsolve:{sum x}\n```", "solve:{sum x}\n"),
        ("```k\nsolve:{+/x}\n```", "solve:{+/x}\n"),
        ("```kdb\nsolve:{sum x}\n```\n```python\nx = 1\n```", "solve:{sum x}\n"),
        ("```q\nshow 1\n```\n```q\nsq:{x*x}\nsolve:{sum sq x}\n```", "sq:{x*x}\nsolve:{sum sq x}\n"),
        ("Here is my answer:\nsolve:{[x]\n  s:sum x;\n  s}\nIt sums the list.", "solve:{[x]\n  s:sum x;\n  s}\n"),
        ("Use a helper.\n/ squares\nsq:{x*x}\nsolve:{sum sq x}\n\nThat is all.", "/ squares\nsq:{x*x}\nsolve:{sum sq x}\n"),
        ("The answer is solve:{sum x} which sums.", "solve:{sum x}\n"),
        ('Try solve:{x where x like "*}*"}.', 'solve:{x where x like "*}*"}\n'),
        ("solve:{sum x}", "solve:{sum x}\n"),
        ("```bash\nq\n```", ""),
    ],
    ids=["q", "k", "kdb", "defines-entry", "prose", "helpers", "inline", "inline-string", "bare", "other-language"],
)
def test_q_code_extraction(answer: str, code: str) -> None:
    assert problems.extract_code(answer, "q", "solve") == code


def test_the_prompt_names_the_function_to_write(tmp_path: Path) -> None:
    from types import SimpleNamespace

    from qrl.training.prompts import build_prompt

    chat = SimpleNamespace(chat_template="{{ messages }}")
    (content,) = (m["content"] for m in build_prompt(q_humaneval(tmp_path), chat))
    assert content.endswith("Answer with the q definition of `max_element` in one ```q code block.")


# ------------------------------------------------------------------------------------------------ finding q


def test_find_q(tmp_path: Path, standin: Path) -> None:
    with pytest.raises(UserError) as missing:
        q_language.find_q(environ={"PATH": str(tmp_path)})
    assert str(missing.value) == q_language.Q_NOT_FOUND
    assert "`q`" not in q_language.Q_NOT_FOUND and "q interpreter not found" in q_language.Q_NOT_FOUND
    with pytest.raises(UserError, match=r"--q_binary /nowhere/q: no executable file there"):
        q_language.find_q("/nowhere/q", environ={})
    layout = tmp_path / "kdb"
    (layout / "l64").mkdir(parents=True)
    (layout / "q.k").write_text("")
    shutil.copy(standin, layout / "l64" / "q")
    found = q_language.find_q(environ={"PATH": str(layout / "l64")})  # q on PATH, QHOME from its layout
    assert found.binary == str(layout / "l64" / "q") and found.qhome == str(layout)
    own = q_language.find_q(str(standin), environ={"QHOME": str(tmp_path), "QLIC": str(tmp_path)})
    assert own.env() == {"QHOME": str(tmp_path), "QLIC": str(tmp_path)}  # QHOME honoured as given
    assert set(own.folders()) == {str(standin.parent), str(tmp_path)}


def test_missing_q_fails_at_start_in_one_line(sum_problem: problems.Problem, tmp_path: Path,
                                               monkeypatch: pytest.MonkeyPatch) -> None:  # fmt: skip
    monkeypatch.setenv("PATH", str(tmp_path))  # no q anywhere
    problems.configure_executors(q_binary=None)
    with pytest.raises(UserError) as error:
        TestCaseReward([sum_problem], workers=1)
    assert str(error.value) == q_language.Q_NOT_FOUND
    from qrl.config.arguments import Config, RewardArguments
    from qrl.training.paths import test_case_reward

    cfg = Config({"rewards": RewardArguments(q_binary=str(tmp_path / "q"), workers=1)})
    with pytest.raises(UserError, match=r"--q_binary .*/q: no executable file there; q interpreter not found"):
        test_case_reward(cfg, [sum_problem])
    python = problems.parse_problem(Record({"task_id": "p", "prompt": "p", "entry_point": "f",
                                            "tests": [{"args": [1], "expected": 1}]}, "x:1"))  # fmt: skip
    TestCaseReward([python], workers=1).close()  # Python problems need no q


def test_q_without_its_q_k_fails_at_start(use_standin: Path, sum_problem: problems.Problem, tmp_path: Path,
                                         monkeypatch: pytest.MonkeyPatch) -> None:  # fmt: skip
    monkeypatch.setenv("QHOME", "/var/tmp/qrl-no-such-qhome")
    with pytest.raises(UserError, match=r"does not run a two-line script \(exit code 1\): 'q.k"):
        TestCaseReward([sum_problem], workers=1)


def test_broken_q_fails_at_start(sum_problem: problems.Problem, tmp_path: Path) -> None:
    broken = tmp_path / "bin" / "q"
    broken.parent.mkdir()
    broken.write_text("#!/bin/sh\necho \"'k4.lic\" >&2\nexit 1\n")
    broken.chmod(0o755)
    problems.configure_executors(q_binary=str(broken))
    try:
        with pytest.raises(UserError, match=r"lies under .*private folder"):
            TestCaseReward([sum_problem], workers=1)  # under /tmp: the programs could not see it
        outside = Path(tempfile.mkdtemp(dir="/var/tmp"))
        try:
            shutil.copy(broken, outside / "q")
            problems.configure_executors(q_binary=str(outside / "q"))
            with pytest.raises(UserError, match=r"does not run a two-line script \(exit code 1\): 'k4.lic"):
                TestCaseReward([sum_problem], workers=1)
        finally:
            shutil.rmtree(outside)
    finally:
        problems.configure_executors(q_binary=None)


# ---------------------------------------------------------------------------------------- MSML against the stand-in


def test_msml_verdicts(use_standin: Path, sum_problem: problems.Problem, box: Sandbox) -> None:
    s = scorer([sum_problem], box)
    good = score_one(s, sum_problem, "Here:\n```q\nsolve:{sum x}\n```")
    assert (good.status, good.tests_passed, good.tests_total) == ("passed", 3, 3)
    assert good.reward is not None and good.reward > 1
    wrong = score_one(s, sum_problem, "```q\nsolve:{1+sum x}\n```")
    assert (wrong.status, wrong.tests_passed) == ("failed", 0) and "expected '6', got '7'" in wrong.detail
    error = score_one(s, sum_problem, "```q\nsolve:{'boom}\n```")
    assert error.status == "runtime_error" and "'boom" in error.detail
    empty = score_one(s, sum_problem, "I do not know q.\n```python\nprint(1)\n```")
    assert empty.status == "syntax_error"
    assert sum_problem.task_id not in s.reference_failures  # the reference ran first, and passed


def test_an_answer_without_the_entry_point_says_so(use_standin: Path, sum_problem: problems.Problem,
                                                  box: Sandbox) -> None:
    s = scorer([sum_problem], box)
    other = score_one(s, sum_problem, "```q\ntotal:{sum x}\n```")
    assert (other.status, other.detail) == ("runtime_error", "the answer defines no function `solve`")
    defined = score_one(s, sum_problem, "```q\nsolve:{'boom}\n```")
    assert "defines no function" not in defined.detail


def test_expected_output_never_enters_the_sandbox(use_standin: Path, tmp_path: Path) -> None:
    msml_folder(tmp_path / "q", "secret", [("1 2", "qrlsecret42")])
    (problem,) = problems.load_problems(tmp_path / "q")
    submission = problems.prepare(problem, "solve:{sum x}")
    assert submission.jobs and all(b"qrlsecret42" not in job.stdin and "qrlsecret42" not in job.source
                                   for job in submission.jobs)  # fmt: skip


@pytest.mark.parametrize(
    ("program", "status"),
    [
        ('solve:{-1 "6"; exit 0}', "runtime_error"),  # prints the expected answer, then exits
        ('solve:{-1 "qrl-judge-begin"; -1 "6"; -1 "qrl-judge-end"; exit 0}', "runtime_error"),  # forges the markers
        ('-1 "6"\nexit 0', "runtime_error"),  # the same at load time, before any test runs
        ("solve:{show 6; 0}", "failed"),  # prints the answer, returns something else
    ],
    ids=["print-and-exit", "forged-markers", "at-load", "show-then-return"],
)
def test_printing_the_answer_does_not_pass(use_standin: Path, box: Sandbox, tmp_path: Path, program: str,
                                           status: str) -> None:  # fmt: skip
    msml_folder(tmp_path / "q", "six", [("1 2 3", "6"), ("6", "6")])
    (problem,) = problems.load_problems(tmp_path / "q")
    result = score_one(scorer([problem], box), problem, f"```q\n{program}\n```")
    assert (result.status, result.tests_passed) == (status, 0), result.detail


def test_limits_hold_for_q(use_standin: Path, sum_problem: problems.Problem, box: Sandbox) -> None:
    s = scorer([sum_problem], box, timeout=1.0)
    start = time.monotonic()
    loop = score_one(s, sum_problem, "solve:{while[1b;]}")
    assert loop.status == "timeout" and time.monotonic() - start < 60, loop
    flood = score_one(s, sum_problem, 'solve:{while[1b;-1 "flood"]}')
    assert flood.status == "output_limit", flood
    assert not wait_until_idle(box, 10)


@pytest.mark.parametrize("namespaces", [True, False], ids=["namespaces", "no-namespaces"])
def test_left_behind_processes_die_before_the_judge(use_standin: Path, box: Sandbox, shared_dir: Path,
                                                    tmp_path: Path, namespaces: bool) -> None:  # fmt: skip
    """The program leaves a process that waits for the judge to start, then overwrites the saved value (with 99):
    with a pid namespace, or a uid of its own, it is dead before the judge starts; it never outlives the run."""
    msml_folder(tmp_path / "q", "six", [("1", "6"), ("2", "6"), ("3", "6")])
    (problem,) = problems.load_problems(tmp_path / "q")
    sandbox = box if namespaces else Sandbox(2, preload=["qrl.languages.q"], namespaces=False, expose=[str(shared_dir)])
    try:
        start = time.monotonic()
        result = score_one(scorer([problem], sandbox), problem, "solve:{.qrl.daemon[]}")
        assert time.monotonic() - start < 15
        if sandbox.isolation.pid_namespace or sandbox.isolation.separate_uid:
            assert result.status == "passed", result.detail
        assert not wait_until_idle(sandbox, 10)
    finally:
        if sandbox is not box:
            sandbox.close()


def test_a_full_working_folder_does_not_stop_the_judge(use_standin: Path, box: Sandbox, tmp_path: Path) -> None:
    msml_folder(tmp_path / "q", "six", [("1", "6")])
    (problem,) = problems.load_problems(tmp_path / "q")
    result = score_one(scorer([problem], box), problem, "solve:{.qrl.fill[]}")
    # no room left to save its value: the program's failure; its junk is cleared before the judge writes its script,
    # so the judge still runs (a judge that cannot start would be an infra_error, with no reward at all)
    assert result.status == "runtime_error" and "could not be shown" in result.detail, result


def test_parallel_runs_and_cache(use_standin: Path, sum_problem: problems.Problem, box: Sandbox) -> None:
    s = scorer([sum_problem], box)
    results = s.score([(sum_problem, "solve:{sum x}"), (sum_problem, "solve:{1+sum x}"),
                       (sum_problem, "solve:{sum x}  \n")])  # fmt: skip
    assert [r.status for r in results] == ["passed", "failed", "passed"] and results[2].cached


def test_qhome_is_honoured_and_visible_in_the_sandbox(standin: Path, shared_dir: Path, sum_problem: problems.Problem,
                                                      monkeypatch: pytest.MonkeyPatch) -> None:  # fmt: skip
    """QHOME in a folder closed to other users: the stand-in, like q, needs $QHOME/q.k, and the sandbox opens the way
    to it for the programs' uid. The program reads QHOME back from its environment."""
    closed = Path(tempfile.mkdtemp(prefix="closed-", dir=shared_dir))  # mode 0700
    (closed / "qhome").mkdir()
    (closed / "qhome" / "q.k").write_text("/ stand-in q.k\n")
    (closed / "qhome").chmod(0o755)
    (closed / "qhome" / "q.k").chmod(0o644)
    monkeypatch.setenv("QHOME", str(closed / "qhome"))
    problems.configure_executors(q_binary=str(standin))
    try:
        problem = expr_problem([("solve[]", q_language.q_string(str(closed / "qhome")))])
        with TestCaseReward([problem], workers=1, timeout=5) as s:
            assert str(closed / "qhome") in s.sandbox._server_args[-1]  # asked to expose it
            result = score_one(s, problem, "solve:{getenv `QHOME}")
        assert result.status == "passed", result.detail
    finally:
        problems.configure_executors(q_binary=None)


def test_q_that_fails_inside_the_sandbox_is_not_scored(standin: Path, shared_dir: Path, box: Sandbox,
                                                       sum_problem: problems.Problem) -> None:  # fmt: skip
    """A q that runs at the start-up check but not in the sandbox (as a licence that must reach the network would):
    every run is an infra_error, which gives no reward, never a zero for the program."""
    picky = shared_dir / "picky" / "q"
    picky.parent.mkdir(exist_ok=True)
    picky.write_text("#!/bin/sh\ncase \"$(pwd)\" in /tmp|/tmp/qrl-sandbox-*) echo \"'licence: no network\" >&2; "
                     f'exit 1;; esac\nexec {standin} "$@"\n')  # the sandbox's working folders  # fmt: skip
    picky.chmod(0o755)
    picky.parent.chmod(0o755)
    problems.configure_executors(q_binary=str(picky))
    try:
        (result,) = scorer([sum_problem], box).score([(sum_problem, "solve:{sum x}")])
    finally:
        problems.configure_executors(q_binary=None)
    assert (result.status, result.reward) == ("infra_error", None)
    assert "q does not run inside the sandbox: 'licence: no network" in result.detail


# ------------------------------------------------------------------------------------------------ q expressions


def test_q_expression_verdicts(use_standin: Path, box: Sandbox) -> None:
    problem = expr_problem([("solve[1;2]", "3"), ("solve[1 2;3 4]", "(4;6)"), ("solve[10;-10]", "0"),
                            ("solve[1;2]", "3.0")])  # "0": one character, still evaluated as q  # fmt: skip
    s = scorer([problem], box)
    result = score_one(s, problem, "```q\nsolve:{[x;y] x+y}\n```")
    # (4;6) is the long vector 4 6 in q: it matches although the text differs; 3.0 is a float: no match with 3
    assert (result.status, result.tests_passed, result.tests_total) == ("failed", 3, 4)
    assert "solve[1;2] does not match 3.0" in result.detail


def test_q_expression_errors_count_per_test(use_standin: Path, box: Sandbox) -> None:
    problem = expr_problem([("solve[1;2]", "3"), ("solve[1;`a]", "1"), ("solve[2;2]", "4")])
    result = score_one(scorer([problem], box), problem, "solve:{[x;y] x+y}")
    assert (result.status, result.tests_passed) == ("failed", 2) and "'type" in result.detail
    crash = score_one(scorer([problem], box), problem, 'solve:{-1 "6"; exit 0}')
    assert (crash.status, crash.tests_passed) == ("runtime_error", 0) and "not run" in crash.detail


def test_expected_values_are_out_of_the_programs_reach(use_standin: Path, box: Sandbox) -> None:
    """The expected q values reach the sandbox, but only the judge process after the program's processes are gone;
    a program that looks everywhere a process of its user could look finds nothing."""
    problem = expr_problem([("solve[]", "0b"), ("solve[]", "`qrlsecret")])
    result = score_one(scorer([problem], box), problem, "solve:{.qrl.peek[]}")
    assert result.tests_passed == 1, result.detail  # 0b: it found no secret


# ------------------------------------------------------------------------------------------------ the command line


def test_score_command_runs_q_problems(standin: Path, tmp_path: Path) -> None:
    root = tmp_path / "q" / "train"
    msml_folder(root, "add_up", [("1 2 3", "6"), ("10 20", "30")])
    msml_folder(root, "add_more", [("5 5", "10")])
    rows = [("q/add_up", "```q\nsolve:{sum x}\n```"), ("q/add_up", "solve:{1+sum x}"), ("q/add_more", "solve:{sum x}"),
            ("q/add_more", "solve:{while[1b;]}")]  # fmt: skip
    completions = tmp_path / "samples.jsonl"
    completions.write_text("".join(json.dumps({"task_id": t, "completion": c}) + "\n" for t, c in rows))
    output = tmp_path / "results.jsonl"
    env = {k: v for k, v in os.environ.items() if k not in ("QHOME", "QLIC")}
    proc = subprocess.run([sys.executable, "reward_model.py", "score", "--problems", str(tmp_path / "q"),
                           "--completions", str(completions), "--output", str(output), "--workers", "2",
                           "--timeout", "2", "--q_binary", str(standin)],
                          cwd=ROOT, capture_output=True, text=True, timeout=300, env=env, check=False)  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    lines = [json.loads(line) for line in output.read_text().splitlines()]
    assert [(r["task_id"], r["status"]) for r in lines] == [
        ("q/add_up", "passed"), ("q/add_up", "failed"), ("q/add_more", "passed"), ("q/add_more", "timeout")]
    assert {"task_id", "passed", "reward", "components", "tests_passed", "tests_total"} <= set(lines[0])
    assert "pass@1: 0.5000" in proc.stdout and "pass@2: 1.0000" in proc.stdout


def test_score_command_without_q_is_one_line(tmp_path: Path) -> None:
    msml_folder(tmp_path / "q", "add_up", [("1 2 3", "6")])
    completions = tmp_path / "samples.jsonl"
    completions.write_text(json.dumps({"task_id": "q/add_up", "completion": "solve:{sum x}"}) + "\n")
    env = {**os.environ, "PATH": f"{tmp_path}:{os.path.dirname(sys.executable)}"}
    proc = subprocess.run([sys.executable, "reward_model.py", "score", "--problems", str(tmp_path / "q"),
                           "--completions", str(completions), "--output", str(tmp_path / "o.jsonl")],
                          cwd=ROOT, capture_output=True, text=True, timeout=300, env=env, check=False)  # fmt: skip
    assert proc.returncode == 2 and proc.stderr == f"reward_model.py score: error: {q_language.Q_NOT_FOUND}\n"
    assert not (tmp_path / "o.jsonl").exists()


# ------------------------------------------------------------------------------------------------ Q-HumanEval / PyKX


@pytest.fixture
def pykx_standin(shared_dir: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    folder = build_pykx_standin(shared_dir / "pykx-standin")
    monkeypatch.syspath_prepend(str(folder))
    monkeypatch.setenv("PYTHONPATH", str(folder))
    return folder


def q_humaneval(tmp_path: Path) -> problems.Problem:
    path = tmp_path / "qh.jsonl"
    path.write_text(json.dumps(Q_HUMANEVAL) + "\n")
    (problem,) = problems.load_problems(path)
    return problem


def test_q_humaneval_through_pykx_standin(pykx_standin: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PYKX_STANDIN_LICENSED", "1")
    problem = q_humaneval(tmp_path)
    check = "def check(candidate):\n    assert candidate('abc') == 'cba'\n    assert candidate([1, 2]) == [2, 1]\n"
    reverse = problems.parse_problem(Record({**Q_HUMANEVAL, "task_id": "r", "entry_point": "rev", "tests": check}, "x"))
    with TestCaseReward([problem, reverse], workers=2, timeout=10) as s:
        good, wrong, error, text = s.score([
            (problem, "```q\nmax_element:{max x}\n```"), (problem, "```q\nmax_element:{reverse x}\n```"),
            (problem, "max_element:{'boom}"), (reverse, "```q\nrev:{reverse x}\n```")])  # fmt: skip
    assert (good.status, good.tests_passed, good.tests_total) == ("passed", 3, 3), good.detail
    assert wrong.status in ("failed", "runtime_error") and wrong.tests_passed == 0
    assert error.status == "runtime_error"
    assert text.status == "passed", text.detail  # a q string comes back as bytes and compares as text


def test_q_humaneval_needs_a_licensed_pykx(pykx_standin: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    problem = q_humaneval(tmp_path)
    monkeypatch.setenv("PYKX_STANDIN_LICENSED", "0")
    monkeypatch.setitem(problems.EXECUTORS, "q", q_language.QExecutor())  # one that has checked nothing yet
    with pytest.raises(UserError) as error:
        TestCaseReward([problem], workers=1)
    assert str(error.value) == q_language.PYKX_UNLICENSED and "PyKX" in str(error.value)


def test_q_humaneval_without_pykx(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    problem = q_humaneval(tmp_path)
    monkeypatch.setattr(q_install, "pykx_folder", lambda: None)
    monkeypatch.setitem(problems.EXECUTORS, "q", q_language.QExecutor())  # one that has checked nothing yet
    with pytest.raises(UserError) as error:
        TestCaseReward([problem], workers=1)
    assert str(error.value) == q_language.PYKX_MISSING


@pytest.mark.skipif(q_language.pykx_folder() is None, reason="PyKX is not installed here")
def test_real_pykx_is_licensed_or_says_so(tmp_path: Path) -> None:
    try:
        q_language.check_pykx()
    except UserError as e:
        assert str(e) == q_language.PYKX_UNLICENSED


# ------------------------------------------------------------------------------------------------ real q


@pytest.fixture
def real_q(monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    if REAL_Q is None:
        pytest.skip(NO_REAL_Q)
    problems.configure_executors(q_binary=None)
    yield REAL_Q


def test_real_q_shipped_references_pass(real_q: str) -> None:
    shipped = problems.load_problems(ROOT / "data" / "q")
    with TestCaseReward(shipped, timeout=10) as s:
        results = s.score([(p, p.reference or "") for p in shipped])
    failing = {r.task_id: r.detail for r in results if not r.passed}
    assert not failing


def test_real_q_msml_attacks_fail(real_q: str, tmp_path: Path) -> None:
    msml_folder(tmp_path / "q", "six", [("1 2 3", "6"), ("6", "6")])
    (problem,) = problems.load_problems(tmp_path / "q")
    with TestCaseReward([problem], timeout=5) as s:
        good, printed, shown = s.score([(problem, "solve:{sum x}"), (problem, 'solve:{-1 "6"; exit 0}'),
                                        (problem, "solve:{show 6; 0}")])  # fmt: skip
    assert good.status == "passed", good.detail
    assert not printed.passed and not shown.passed


def test_real_q_expressions(real_q: str) -> None:
    problem = expr_problem([("solve[1;2]", "3"), ("solve[1 2;3 4]", "(4;6)"), ("solve[1;2]", "3f"),
                            ("solve[1;`a]", "1")])  # fmt: skip
    with TestCaseReward([problem], timeout=5) as s:
        result = score_one(s, problem, "solve:{[x;y] x+y}")
    assert (result.status, result.tests_passed) == ("failed", 2), result.detail


def test_stand_in_is_named_as_one(standin: Path) -> None:
    assert standin.name == Q_STANDIN_NAME == "fake_q_STANDIN"
    assert "STAND-IN" in standin.read_text()


def test_composite_reward_scores_q_quality(use_standin: Path, box: Sandbox, sum_problem: problems.Problem) -> None:
    """The default path's reward on a Q problem: test cases through q, quality from the Q rules."""
    from qrl.rewards.base import Sample
    from qrl.rewards.composite import CompositeReward

    composite = CompositeReward(scorer([sum_problem], box))
    commented, bare = composite.score_samples([
        Sample("```q\n/ sum of the longs x\nsolve:{sum x}\n```", sum_problem.task_id),
        Sample("```q\nsolve:{sum x}\n```", sum_problem.task_id),
    ])
    assert commented.passed and bare.passed
    assert commented.components["quality_docs"] > bare.components["quality_docs"]
    assert commented.reward > bare.reward
