"""Hostile answers against the judge, through the real sandbox: what a program does or sends gets that program's own
verdict (never infra_error, never a raise in the judge), comparisons go by type, tests use the problem's helpers, and
the composite reward survives any answer text. Each batch holds a right and a wrong control answer per format."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from sandbox_helpers import wait_until_idle

import problems
from reward_model import CompositeReward, Sample, ScoreResult, TestCaseReward, Timing
from sandbox import Limits

ROOT = Path(__file__).resolve().parent.parent

TRI = {"task_id": "tri", "prompt": "tri(n): the n-th triangular number.", "entry_point": "tri",
       "reference_solution": "def tri(n):\n    return n * (n + 1) // 2\n",
       "tests": [{"args": [3], "expected": 6}, {"args": [4], "expected": 10}, {"args": [0], "expected": 0}]}
HALF = {"task_id": "half", "prompt": "half(n) = n / 2.", "entry_point": "half",
        "reference_solution": "def half(n):\n    return n / 2\n",
        "tests": [{"args": [3], "expected": 1.5}, {"args": [4], "expected": 2.0}]}
HE = {  # a helper and a constant in the prompt, used by the tests; one assert is decided in the sandbox
    "task_id": "HE/helper",
    "prompt": 'VOWELS = "aeiou"\n\n\ndef poly(xs, x):\n    return sum(c * x**i for i, c in enumerate(xs))\n\n\n'
              'def count(s):\n    """How many vowels s holds."""\n',
    "canonical_solution": "    return sum(ch in VOWELS for ch in s)\n",
    "entry_point": "count",
    "test": "def check(candidate):\n    assert candidate('banana') == 3\n    assert candidate('xyz') == 0\n"
            "    assert candidate(VOWELS) == poly([5], 2)\n",
}  # fmt: skip
HE_LITERAL = {**HE, "task_id": "HE/literal",
              "test": "def check(candidate):\n    assert candidate('banana') == 3\n    assert candidate('xyz') == 0\n"}
AREA = {"task_id": 5, "text": "The area of a circle of radius r.",
        "code": "import math\ndef area(r):\n    return math.pi * r * r\n",
        "test_list": ["assert math.isclose(area(1), 3.141592653589793)", "assert math.isclose(area(2), 12.566370614359172)",
                      "assert area(0) == 0"]}  # fmt: skip
DOUBLE = {"task_id": 6, "text": "Double n.", "code": "def double(n):\n    return 2 * n\n",
          "test_list": ["assert double(2) == 4", "assert double(5) == 10", "assert double(0) == 0"]}
SUM = {"task_id": "sum", "question": "Print the sum of two integers.", "inputs": ["1 2\n", "10 20\n"],
       "outputs": ["3\n", "30\n"]}

RIGHT = {
    "tri": "def tri(n):\n    return n * (n + 1) // 2\n",
    "half": "def half(n):\n    return n / 2\n",
    "HE/helper": "    return sum(ch in VOWELS for ch in s)\n",
    "HE/literal": "    return sum(ch in 'aeiou' for ch in s)\n",
    "5": "import math\ndef area(r):\n    return math.pi * r * r\n",
    "6": "def double(n):\n    return n + n\n",
    "sum": "print(sum(map(int, input().split())))\n",
}
WRONG = {
    "tri": "def tri(n):\n    return n * n // 2\n",
    "half": "def half(n):\n    return n // 2\n",
    "HE/helper": "    return len(s) // 2\n",
    "HE/literal": "    return len(s) // 2\n",
    "5": "def area(r):\n    return 3.14 * r * r\n",
    "6": "def double(n):\n    return n * 3\n",
    "sum": "print(1)\n",
}
ENTRY = {"tri": "tri", "half": "half", "HE/helper": "count", "HE/literal": "count", "5": "area", "6": "double",
         "sum": None}  # fmt: skip


@pytest.fixture(scope="module")
def problem_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("hostile") / "problems.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in [TRI, HALF, HE, HE_LITERAL, AREA, DOUBLE, SUM]))
    return path


@pytest.fixture(scope="module")
def scorer(problem_file: Path) -> TestCaseReward:
    limits = Limits(memory=256 << 20)
    with TestCaseReward(problems.load_problems(problem_file), workers=2, timing=Timing(timeout=2.0, floor=0.5),
                        limits=limits) as reward:  # fmt: skip
        yield reward


def defining(task: str, body: str, prelude: str = "") -> str:
    """A wrong answer that runs ``prelude`` at load time and defines the entry point with ``body``."""
    entry = ENTRY[task]
    if entry is None:  # stdin/stdout: a wrong answer printed
        return prelude + "print(1)\n"
    args = "s" if entry == "count" else "n" if entry != "area" else "r"
    return f"{prelude}def {entry}({args}):\n    {body}\n"


def judged(scorer: TestCaseReward, hostile: dict[str, tuple[str, str]]) -> dict[str, ScoreResult]:
    """Score the hostile answers in one batch with a right and a wrong control per problem; check the controls."""
    controls = [(t, c) for t in RIGHT for c in (RIGHT[t], WRONG[t])]
    results = scorer.score(controls + list(hostile.values()))
    for (task, code), result in zip(controls, results, strict=False):
        assert result.passed == (code == RIGHT[task]), (task, code, result)
        assert result.reward is not None
    assert not wait_until_idle(scorer.sandbox)
    return dict(zip(hostile, results[len(controls):], strict=True))


def assert_own_verdicts(found: dict[str, ScoreResult]) -> None:
    for name, result in found.items():
        assert result.status not in ("infra_error", "passed") and result.reward is not None, (name, result)
        assert result.reward < 1.0, (name, result)


# ------------------------------------------------------------------------------------------------ class 2


REPORT_LINES = {  # what the program writes, as Python source of a bytes value
    "invalid utf-8": r"b'\xff\xfe\x80 not utf-8\n'",
    "not json": r"b'{e: test, i: 0\n'",
    "json not a dict": r"b'[1, 2, 3]\n17\n\"done\"\n'",
    "a huge line": r"b'[' * (1 << 20) + b'\n'",
    "forged harness_error": r"""b'{"e": "harness_error", "msg": "the sandbox broke"}\n{"e": "done"}\n'""",
    "forged events": r"""b'{"e": "test", "i": 0, "ok": true}\n{"e": "test", "i": 1, "v": {"c": [1e999, 0]}}\n'"""
                     r"""+ b'{"e": "test", "i": 2, "v": {"c": [' + b'1' * 400 + b', 0]}}\n{"e": "done"}\n'""",
}  # fmt: skip


def test_report_channel_garbage_is_the_programs_own(scorer: TestCaseReward) -> None:
    """Bytes on the report channel (fd 3; closed to programs that run apart from their tests) and on every other
    descriptor the program holds, the harness's request and reply pipes among them."""
    hostile = {}
    for name, line in REPORT_LINES.items():
        write = f"import os\nfor fd in range(3, 40):\n    try:\n        os.write(fd, {line})\n" \
                "    except OSError:\n        pass\n"  # fmt: skip
        for task in RIGHT:
            hostile[f"{name} / {task}"] = (task, defining(task, "return 1", prelude=write))
    replies = "import os\nfor fd in range(3, 40):\n    for line in (b'{\"loaded\": true}\\n', b'{\"v\": 1}\\n', " \
              "b'{\"load_error\": [[1]]}\\n', b'{\"error\": {}}\\n'):\n        try:\n            os.write(fd, line)\n" \
              "        except OSError:\n            pass\n"  # fmt: skip
    for task in RIGHT:
        hostile[f"replies on every fd / {task}"] = (task, defining(task, "return 1", prelude=replies))
        hostile[f"closes its pipes / {task}"] = (task, defining(task, "return 1", prelude="import os\n"
                                                 "for fd in range(3, 40):\n    try:\n        os.close(fd)\n"
                                                 "    except OSError:\n        pass\n"))  # fmt: skip
    assert_own_verdicts(judged(scorer, hostile))


def test_event_kinds_that_are_not_names_are_the_programs_own(scorer: TestCaseReward) -> None:
    """An event whose kind is a list, a dict or a number (``{"e": []}``): no event at all, never a raise."""
    hostile = {}
    for kind in ("[]", "{}", "1", "null", '["done"]'):
        write = f"import os\ntry:\n    os.write(3, b'{{\"e\": {kind}}}\\n')\nexcept OSError:\n    pass\n"
        for task in RIGHT:
            hostile[f"kind {kind} / {task}"] = (task, defining(task, "return 1", prelude=write))
    assert_own_verdicts(judged(scorer, hostile))


def test_a_program_that_stops_itself_as_a_tracee_is_its_own(scorer: TestCaseReward) -> None:
    """PTRACE_TRACEME makes the harness a tracer; a tracee's stop is reported to it even unasked. ptrace is refused,
    and a stopped program is ended by the harness: the program's verdict, not a harness error."""
    prelude = ("import ctypes, os, signal\nctypes.CDLL(None).ptrace(0, 0, 0, 0)\n"
               "for fd in range(3, 64):\n    try:\n        os.close(fd)\n    except OSError:\n        pass\n"
               "os.kill(os.getpid(), signal.SIGSTOP)\n")  # fmt: skip
    hostile = {f"traceme / {task}": (task, defining(task, "return 1", prelude=prelude)) for task in RIGHT}
    assert_own_verdicts(judged(scorer, hostile))


def test_sets_of_one_hash_do_not_stall_the_judge() -> None:
    """Ints ``k * (2**61 - 1)`` all hash to 0: a set of 40,000 of them would take the caller a minute to build."""
    import time

    import harness

    items = [{"i": format(k * (2**61 - 1), "x")} for k in range(1, 40001)]
    for tag in ("s", "fs"):
        start = time.process_time()
        with pytest.raises(ValueError, match="one hash"):
            harness.unpack({tag: items})
        assert time.process_time() - start < 1.0
    with pytest.raises(ValueError, match="one hash"):
        harness.unpack({"d": [[v, 0] for v in items]})
    assert harness.unpack({"s": [1] * 1000 + [2]}) == {1, 2}  # equal items are no attack
    assert len(harness.unpack({"s": list(range(5000))})) == 5000


def test_values_that_cannot_be_encoded_are_the_programs_own(scorer: TestCaseReward) -> None:
    bodies = {
        "an int of 5000 digits": "return 10 ** 5000",
        "a dict keyed by a huge int": "return {10 ** 5000: 1}",
        "an int too large for a float": "return 10 ** 400",
        "nested too deep": "x = []\n    for _ in range(5000):\n        x = [x]\n    return x",
        "a list holding itself": "x = []\n    x.append(x)\n    return x",
        "a set of huge ints": "return {10 ** 5000, 10 ** 5001}",
        "a complex": "return complex(1e308, 1e308) * 10",
        "an object": "return object()",
    }
    hostile = {f"{name} / {task}": (task, defining(task, body)) for name, body in bodies.items() for task in RIGHT
               if ENTRY[task]}  # fmt: skip
    assert_own_verdicts(judged(scorer, hostile))


@pytest.mark.parametrize("when", ["load", "call"])
def test_killing_itself_with_an_unusual_signal_is_the_programs_own(scorer: TestCaseReward, when: str) -> None:
    hostile = {}
    for name in ("SIGRTMIN + 5", "SIGRTMAX", "SIGSTKFLT", "SIGUSR1", "SIGSYS"):
        kill = f"import os, signal\nos.kill(os.getpid(), signal.{name})\n"
        for task in RIGHT:
            if when == "load":
                code = defining(task, "return 1", prelude=kill)
            elif ENTRY[task]:
                code = defining(task, f"import os, signal; os.kill(os.getpid(), signal.{name}); return 1")
            else:
                continue
            hostile[f"{name} / {task}"] = (task, code)
    found = judged(scorer, hostile)
    assert_own_verdicts(found)
    assert "killed by SIGRTMIN+5" in found["SIGRTMIN + 5 / HE/helper"].detail  # a name, not a ValueError


def test_answers_too_deep_to_parse_are_the_programs_own(scorer: TestCaseReward) -> None:
    deep = {
        "unary minus": "x = " + "-" * 100_000 + "1\n",
        "calls": "x = f" + "()" * 50_000 + "\n",
        "attributes": "x = y" + ".a" * 50_000 + "\n",
        "lambdas": "x = " + "lambda: " * 5_000 + "1\n",
        "brackets": "x = " + "[" * 100_000 + "\n",
        "sums": "x = " + "+".join(["1"] * 100_000) + "\n",
        "indentation": "".join("    " * i + "if 1:\n" for i in range(120)) + "    " * 120 + "pass\n",
    }
    hostile = {f"{name} / {task}": (task, defining(task, "return 1", prelude=code))
               for name, code in deep.items() for task in RIGHT}  # fmt: skip
    hostile |= {f"{name} alone / {task}": (task, code) for name, code in deep.items() for task in RIGHT}
    assert_own_verdicts(judged(scorer, hostile))


def test_judge_decodes_nothing_it_cannot_handle() -> None:
    """Report lines a program in the tests' process could write, judged without a sandbox: none raises."""
    (tri,) = [problems.parse_problem(problems.Record(TRI, "mem:1"))]
    sub = problems.prepare(tri, RIGHT["tri"])
    values = [{"c": [10**400, 0]}, {"c": ["x", 1]}, {"c": [1, 2, 3]}, {"i": "zz"}, {"d": [[[1], 2]]}, {"s": [[1]]},
              {"b": "xyz"}, {"t": 5}, [[[[[[[[[[[[[[]]]]]]]]]]]]]], {"d": [[{"i": hex(10**5000)}, 1]]}]  # fmt: skip
    for value in values:
        report = "\n".join(json.dumps(e) for e in [{"e": "loaded"}, {"e": "test", "i": 0, "v": value},
                                                  {"e": "test", "i": 1, "error": {"x": [1]}}, {"e": "died", "msg": [1]},
                                                  {"e": "done"}])  # fmt: skip
        outcome = type("Outcome", (), {"status": "exited", "exit_code": 0, "stdout": "", "report": report,
                                       "cpu_time": 0.0, "wall_time": 0.0, "detail": ""})()  # fmt: skip
        verdict = problems.judge(sub, [outcome])
        assert verdict.status == "runtime_error" and verdict.tests_passed == 0, (value, verdict)


# ------------------------------------------------------------------------------------------------ class 8


def test_numbers_compare_by_type(scorer: TestCaseReward) -> None:
    hostile = {
        "a float for an int (call)": ("tri", "def tri(n):\n    return n * n / 2 + n / 2\n"),
        "a float for an int, exact (call)": ("tri", "def tri(n):\n    return float(n * (n + 1) // 2)\n"),
        "a bool for an int (call)": ("tri", "def tri(n):\n    return n * (n + 1) // 2 if n else False\n"),
        "a float near an int (assert)": ("6", "def double(n):\n    return 2 * n + 1e-9\n"),
        "a float near an int (HumanEval)": ("HE/literal", "    return sum(ch in 'aeiou' for ch in s) - 1e-9\n"),
        "a bool for an int (assert)": ("6", "def double(n):\n    return 2 * n if n else False\n"),
        "a bool for an int (HumanEval)": ("HE/literal", "    return sum(ch in 'aeiou' for ch in s) or False\n"),
        "an int too large for a float, for a float": ("half", "def half(n):\n    return 10 ** 400\n"),
    }
    assert_own_verdicts(judged(scorer, hostile))
    # a float expected takes an int equal within the tolerance (1e-6 for call tests): 2 for 2.0; an assert's
    # `== 0` takes 0.0 as Python's `==` does (AREA's reference relies on it), with no tolerance
    right = scorer.score([("half", "def half(n):\n    return n // 2 if n % 2 == 0 else n / 2\n"), ("5", RIGHT["5"]),
                          ("6", "def double(n):\n    return 2.0 * n\n")])  # fmt: skip
    assert all(r.passed for r in right), right


def test_stdio_output_is_compared_whole(scorer: TestCaseReward) -> None:
    hostile = {
        "junk before the answer": ("sum", "print('x ' * 50_000)\nprint(sum(map(int, input().split())))\n"),
        "junk after the answer": ("sum", "print(sum(map(int, input().split())))\nprint('x ' * 50_000)\n"),
        "the answer twice": ("sum", "s = sum(map(int, input().split()))\nprint(s)\nprint(s)\n"),
    }
    assert_own_verdicts(judged(scorer, hostile))


# ------------------------------------------------------------------------------------------------ classes 9, 10


def test_humaneval_tests_use_the_prompts_helpers(scorer: TestCaseReward) -> None:
    problem = scorer.problems["HE/helper"]
    assert problem.test_names == () and not problem.tests_in_process  # VOWELS and poly are the tests' own
    hostile = {
        "redefines the helper and the constant": ("HE/helper", ("def poly(xs, x):\n    return 0\n\nVOWELS = ''\n\n"
                                                  "def count(s):\n    return 3 if s == 'banana' else 0\n")),
        "forges passes on the report channel": ("HE/helper", ("import os\nfor i in range(3):\n    try:\n        "
                                                "os.write(3, b'{\"e\": \"test\", \"i\": %d, \"ok\": true}\\n' % i)\n"
                                                "    except OSError:\n        pass\n"
                                                "def count(s):\n    return 3 if s == 'banana' else 0\n")),
    }  # fmt: skip
    assert_own_verdicts(judged(scorer, hostile))
    (reference,) = scorer.score([("HE/helper", problem.reference)])
    assert reference.passed


def test_mbpp_asserts_import_their_own_modules(scorer: TestCaseReward) -> None:
    problem = scorer.problems["5"]
    assert "math" not in problem.test_names and problem.test_script.startswith("import math\n")
    answers = [("5", problem.reference), ("5", "def area(r):\n    return 3.141592653589793 * r * r\n"),
               ("5", "import math as m\ndef area(r):\n    return m.pi * r ** 2\n"), ("5", WRONG["5"])]  # fmt: skip
    results = scorer.score(answers)
    assert [r.status for r in results] == ["passed", "passed", "passed", "failed"]


# ------------------------------------------------------------------------------------------------ class 4

ODD_ANSWERS = {
    "unary minus": "Here you go:\ndef square(x):\n    return x * x\ny = " + "-" * 100_000 + "1\nThat is all.",
    "calls": "def square(x):\n    return x * x\ny = f" + "()" * 50_000 + "\n",
    "sums": "def square(x):\n    return x * x\ny = " + "+".join(["1"] * 30_000) + "\n",
    "lambdas": "square = " + "lambda x: " * 3_000 + "x\n",
    "null bytes": "def square(x):\n    return x * x\x00\n",
    "a lone surrogate": "def square(x):\n    return '\ud800'\n",
    "line separators": "def square(x):\u2028    return x * x\u2029\x1c\x85\n",
    "a very long line": "def square(x):\n    return x * x  # " + "a" * 200_000 + "\n",
    "only prose": "I cannot do that. " * 5_000,
    "a cut-off fence": "```python\n" + "(" * 10_000,
}


def square_problem() -> problems.Problem:
    row = {"task_id": "sq", "prompt": "Write `square(x)` returning x*x.", "entry_point": "square",
           "reference_solution": "def square(x):\n    return x * x\n",
           "tests": [{"args": [2], "expected": 4}, {"args": [-3], "expected": 9}]}  # fmt: skip
    return problems.parse_problem(problems.Record(row, "mem:1"))


def test_extraction_and_the_composite_never_raise() -> None:
    problem = square_problem()
    for text in ODD_ANSWERS.values():
        problems.extract_code(text, "python", "square")
        problems.program_code(problem, text)
        assert problems.prepare(problem, text).infra_error is None
    controls = ["```python\ndef square(x):\n    return x * x\n```", "def square(x):\n    return x + x\n"]
    with TestCaseReward([problem], workers=1, timing=Timing(timeout=2.0, floor=0.5)) as tests:
        results = CompositeReward(tests).score_samples([Sample(t, "sq") for t in controls + list(ODD_ANSWERS.values())])
    assert results[0].passed and not results[1].passed
    for name, result in zip(ODD_ANSWERS, results[2:], strict=True):
        assert result.reward is not None and result.status != "infra_error", (name, result)  # some are right
        assert "quality" in result.components


def test_score_components_survives_odd_answers(tmp_path: Path) -> None:
    problem_file = tmp_path / "p.jsonl"
    problem_file.write_text(json.dumps({"task_id": "sq", "prompt": "square", "entry_point": "square",
                                        "tests": [{"args": [2], "expected": 4}]}) + "\n")  # fmt: skip
    rows = [("sq", "def square(x):\n    return x * x\n"), *(("sq", t) for t in ODD_ANSWERS.values())]
    completions = tmp_path / "samples.jsonl"
    completions.write_text("".join(json.dumps({"task_id": t, "completion": c}) + "\n" for t, c in rows))
    output = tmp_path / "results.jsonl"
    proc = subprocess.run([sys.executable, "reward_model.py", "score", "--problems", str(problem_file),
                           "--completions", str(completions), "--output", str(output), "--components",
                           "--workers", "1", "--timeout", "2", "--calibration_cache", "off"],
                          cwd=ROOT, capture_output=True, text=True, timeout=300, check=False)  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    lines = [json.loads(line) for line in output.read_text().splitlines()]
    assert len(lines) == len(rows) and lines[0]["status"] == "passed"
    assert all(r["status"] != "infra_error" and r["reward"] is not None for r in lines[1:]), lines
