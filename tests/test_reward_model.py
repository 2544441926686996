"""The test-case scorer: verdicts, rewards, attacks on the verdict, the cache, TRL, pass@k and the command line."""

from __future__ import annotations

import asyncio
import inspect
import json
import math
import os
import shlex
import subprocess
import sys
from concurrent.futures import Future
from pathlib import Path

import pytest
from sandbox_helpers import wait_until_idle

from qrl import problems
from qrl.data.records import UserError
from qrl.execution.sandbox import Isolation, Limits, RunResult
from qrl.problems import submissions
from qrl.rewards.base import STATUSES, ScoreResult
from qrl.rewards.calibration import CalibrationCache, checksum, default_calibration_cache
from qrl.rewards.pass_at_k import pass_at_k, pass_at_k_table
from qrl.rewards.test_cases import TestCaseReward, Timing, verdict_reusable

ROOT = Path(__file__).resolve().parent.parent

RLE = {
    "task_id": "rle",
    "prompt": "Write run_length_encode(s) -> list of [char, count].",
    "entry_point": "run_length_encode",
    "reference_solution": (
        "def run_length_encode(s):\n    out = []\n    for ch in s:\n        if out and out[-1][0] == ch:\n"
        "            out[-1][1] += 1\n        else:\n            out.append([ch, 1])\n    return out\n"
    ),
    "tests": [
        {"args": ["aaab"], "expected": [["a", 3], ["b", 1]]},
        {"args": [""], "expected": []},
        {"args": ["abc"], "expected": [["a", 1], ["b", 1], ["c", 1]]},
        {"args": ["zz"], "kwargs": {}, "expected": [["z", 2]]},
    ],
}
HUMANEVAL = {
    "task_id": "HumanEval/x",
    "prompt": 'def add(a, b):\n    """Return a + b."""\n',
    "canonical_solution": "    return a + b\n",
    "entry_point": "add",
    "test": (
        "def check(candidate):\n    assert candidate(1, 2) == 3\n    assert candidate(-1, 1) == 0\n"
        "    assert abs(candidate(0.5, 0.25) - 0.75) < 1e-9\n    assert candidate(2, 2) != 5\n"
    ),
}
MBPP = {
    "task_id": 11,
    "text": "Remove the first and last occurrence of a character.",
    "code": "def remove_Occ(s, ch):\n    s = s.replace(ch, '', 1)\n    i = s.rfind(ch)\n    return s if i < 0 else s[:i] + s[i + 1:]\n",
    "test_list": ['assert remove_Occ("hello","l") == "heo"', 'assert remove_Occ("abcda","a") == "bcd"',
                  'assert remove_Occ("PHP","P") == "H"'],
}  # fmt: skip
PAIRS = {
    "task_id": 601,
    "text": "Sum the pairs.",
    "code": "class Pair:\n    def __init__(self, a, b):\n        self.a, self.b = a, b\n\ndef total(pairs):\n    return sum(p.a + p.b for p in pairs)\n",
    "test_list": ["assert total([Pair(1, 2), Pair(3, 4)]) == 10", "assert total([]) == 0"],
}  # fmt: skip
STDIO = {
    "problem_id": "sum",
    "question": "Print the sum of two integers.",
    "input_output": json.dumps({"inputs": ["1 2\n", "10 20\n", "-5 5\n"], "outputs": ["3\n", "30\n", "0\n"]}),
    "solutions": json.dumps(["a, b = map(int, input().split())\nprint(a + b)\n"]),
}
BUSY = {
    "task_id": "busy",
    "prompt": "Sum of i*i for i < n.",
    "entry_point": "busy",
    "reference_solution": "def busy(n):\n    t = 0\n    for i in range(n):\n        t += i * i\n    return t\n",
    "tests": [{"args": [2_000_000], "expected": 2666664666667000000}],
}
NOREF = {
    "task_id": "noref",
    "prompt": "Return 1.",
    "entry_point": "one",
    "tests": [{"args": [], "expected": 1}],
}
BROKEN_REF = {**NOREF, "task_id": "broken", "reference_solution": "def one():\n    return 2\n"}
GOOD = {
    "rle": RLE["reference_solution"],
    "HumanEval/x": "    return a + b\n",
    "11": MBPP["code"],
    "601": PAIRS["code"],
    "sum": "print(sum(map(int, input().split())))\n",
}


@pytest.fixture(scope="module")
def problem_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("problems") / "problems.jsonl"
    path.write_text(
        "".join(json.dumps(r) + "\n" for r in [RLE, HUMANEVAL, MBPP, PAIRS, STDIO, BUSY, NOREF, BROKEN_REF])
    )
    return path


@pytest.fixture(scope="module")
def scorer(problem_file: Path) -> TestCaseReward:
    limits = Limits(memory=160 << 20, output=1 << 20)  # small: a memory hog hits it well within its CPU time
    with TestCaseReward(problems.load_problems(problem_file), workers=2, timing=Timing(timeout=2.0, floor=0.5),
                        limits=limits) as reward:  # fmt: skip
        yield reward


def score(scorer: TestCaseReward, pairs: list[tuple[str, str]]) -> list[ScoreResult]:
    return scorer.score(pairs)


# ------------------------------------------------------------------------------------------------ pass@k


@pytest.mark.parametrize(
    ("n", "c", "k", "expected"),
    [
        (5, 2, 1, 0.4),  # c / n
        (5, 2, 2, 0.7),  # 1 - C(3,2)/C(5,2) = 1 - 3/10
        (10, 3, 5, 1 - 21 / 252),  # 1 - C(7,5)/C(10,5)
        (4, 0, 2, 0.0),
        (4, 4, 1, 1.0),
        (4, 3, 2, 1.0),  # n - c < k: every draw of 2 holds a correct one
        (200, 1, 100, 0.5),
    ],
)
def test_pass_at_k_hand_computed(n: int, c: int, k: int, expected: float) -> None:
    assert math.isclose(pass_at_k(n, c, k), expected, rel_tol=1e-12)


@pytest.mark.parametrize(("n", "c", "k"), [(3, 4, 1), (3, 1, 0), (3, 1, 4), (0, 0, 1)])
def test_pass_at_k_refuses_impossible_counts(n: int, c: int, k: int) -> None:
    with pytest.raises(ValueError):
        pass_at_k(n, c, k)


def test_pass_at_k_table_uses_every_k_the_samples_allow() -> None:
    results = [ScoreResult("a", 1.0, status=s) for s in ("passed", "failed", "failed")]
    results += [ScoreResult("b", 1.0, status="passed") for _ in range(4)]
    results.append(ScoreResult("b", None, status="infra_error"))  # not judged: left out
    table = pass_at_k_table(results)
    assert list(table) == [1, 2, 3]
    assert (
        math.isclose(table[1], (1 / 3 + 1) / 2)
        and math.isclose(table[2], (2 / 3 + 1) / 2)
        and table[3] == 1.0
    )


def test_every_component_is_weighed_by_a_reward_option() -> None:
    """A component registers once: its function and the RewardArguments field that weighs it; scorers and logs
    take their component names from the registry."""
    from dataclasses import fields

    from qrl.config.arguments import RewardArguments
    from qrl.rewards.components import COMPONENTS, QUALITY_COMPONENTS
    from qrl.rewards.composite import CompositeReward

    assert {c.weight for c in COMPONENTS.values()} <= {f.name for f in fields(RewardArguments)}
    assert TestCaseReward.components == tuple(COMPONENTS) == ("pass", "partial", "all_pass_bonus", "time")
    assert CompositeReward.components == tuple(COMPONENTS) + tuple(QUALITY_COMPONENTS)


def test_reward_weights_come_from_the_config_rewards_section(tmp_path: Path) -> None:
    from qrl.config.arguments import RL_SECTIONS, ConfigError, parse_config

    config = tmp_path / "c.yaml"
    config.write_text("rewards:\n  reward_partial: 1\n  reward_pass: 0\n")
    weights = parse_config(RL_SECTIONS, ["--config", str(config)]).rewards
    assert (weights.reward_pass, weights.reward_partial, weights.reward_all_pass_bonus) == (0.0, 1.0, 0.2)
    config.write_text("rewards:\n  speed: 1\n")
    with pytest.raises(ConfigError, match="unknown key 'rewards.speed'"):
        parse_config(RL_SECTIONS, ["--config", str(config)])
    config.write_text("rewards:\n  reward_time: fast\n")
    with pytest.raises(ConfigError, match="rewards.reward_time: cannot read 'fast' as float"):
        parse_config(RL_SECTIONS, ["--config", str(config)])


# ------------------------------------------------------------------------------------------------ verdicts

VERDICTS = [
    ("rle", GOOD["rle"], "passed", 4),
    ("rle", "def run_length_encode(s):\n    return [[c, 1] for c in s]\n", "failed", 2),
    ("rle", "def run_length_encode(s:\n    return s\n", "syntax_error", 0),
    ("rle", "def run_length_encode(s):\n    return undefined_name\n", "runtime_error", 0),
    ("rle", "raise SystemExit(0)\n", "runtime_error", 0),
    ("rle", "def run_length_encode(s):\n    while True:\n        pass\n", "timeout", 0),
    ("rle", "def run_length_encode(s):\n    x = []\n    while True:\n        x.append(bytearray(10**6))\n", "memory_limit", 0),
    ("rle", "def run_length_encode(s):\n    while True:\n        print('spam' * 1000)\n", "output_limit", 0),
    ("rle", "def run_length_encode(s):\n    return 'a' * 3 * 10**6\n", "output_limit", 0),
    ("HumanEval/x", GOOD["HumanEval/x"], "passed", 4),
    ("HumanEval/x", "    return a - b if a < 0 else a + b\n", "failed", 3),
    ("HumanEval/x", "```python\ndef add(a, b):\n    return a + b\n```", "passed", 4),
    ("11", GOOD["11"], "passed", 3),
    ("11", "def remove_Occ(s, ch):\n    return s[1:-1]\n", "failed", 2),
    ("601", GOOD["601"], "passed", 2),
    ("sum", GOOD["sum"], "passed", 3),
    ("sum", "a, b = map(int, input().split())\nprint(a + b if a > 0 else 1)\n", "failed", 2),
    ("sum", "import sys\nsys.exit(1)\n", "runtime_error", 0),
]  # fmt: skip


def test_every_verdict(scorer: TestCaseReward) -> None:
    results = score(scorer, [(task, code) for task, code, _, _ in VERDICTS])
    got = [(r.task_id, r.status, r.tests_passed) for r in results]
    assert got == [(task, status, passed) for task, _, status, passed in VERDICTS]
    by_status = {r.status: r for r in results}
    assert by_status["passed"].reward == pytest.approx(1.0 + 0.5 + 0.2 + 0.1)
    assert by_status["passed"].components == {"pass": 1.0, "partial": 1.0, "all_pass_bonus": 1.0, "time": 1.0}
    assert results[1].reward == pytest.approx(0.5 * 2 / 4)
    for status in ("timeout", "memory_limit", "output_limit"):  # how far a cut-off run got depends on timing
        assert by_status[status].reward == 0.0
    assert all(r.reward is not None and r.tests_total for r in results)


class FailingSandbox:
    """Stands in for a sandbox whose servers keep failing."""

    def __init__(self) -> None:
        self.calls = 0

    def submit(self, program: object) -> Future:
        self.calls += 1
        future: Future = Future()
        future.set_result(RunResult("infra_error", detail="server gone"))
        return future

    def close(self) -> None:
        pass


def test_infra_errors_are_not_scored_and_not_cached(problem_file: Path) -> None:
    reward = TestCaseReward(problems.load_problems(problem_file), workers=1)
    reward._sandbox = FailingSandbox()  # type: ignore[assignment]
    (result,) = reward.score([("noref", "def one():\n    return 1\n")])
    assert (result.status, result.reward, result.components) == ("infra_error", None, {})
    assert reward([None], ["def one():\n    return 1\n"], task_id=["noref"]) == [None]
    assert reward._sandbox.calls == 2  # tried again: an infra error says nothing about the program


def test_a_judging_bug_costs_one_answer_not_the_batch(
    scorer: TestCaseReward, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A failure of ours on one odd answer (reading it, preparing it) makes that answer infra_error: the others get
    their verdicts and the scorer goes on. A failure while judging a run that shared the harness's process (these
    call tests do) is the answer's own runtime_error: such a program writes the report it is judged on."""
    executor = problems.PythonExecutor
    prepare, judge = executor.prepare, executor.judge

    def bad_prepare(self, problem, code, reply_limit):
        if "PREPARE_BUG" in code:
            raise KeyError("prepare bug")
        return prepare(self, problem, code, reply_limit)

    def bad_judge(self, submission, outcomes):
        if "JUDGE_BUG" in submission.code:
            raise ValueError("judge bug")
        return judge(self, submission, outcomes)

    monkeypatch.setattr(executor, "prepare", bad_prepare)
    monkeypatch.setattr(executor, "judge", bad_judge)
    monkeypatch.setattr(submissions, "program_code", lambda p, c: 1 / 0 if "READ_BUG" in c else c)
    good = ("noref", "def one():\n    return 1\n")
    batch = [good, ("noref", "def one():\n    'JUDGE_BUG'\n    return 1\n"), ("noref", "# PREPARE_BUG\n"),
             ("noref", "READ_BUG"), ("noref", "def one():\n    return 2\n")]  # fmt: skip
    results = score(scorer, batch)
    assert [r.status for r in results] == ["passed", "runtime_error", "infra_error", "infra_error", "failed"]
    assert results[1].reward is not None and [r.reward for r in results[2:4]] == [None, None]
    assert "judging the answer failed: ValueError: judge bug" in results[1].detail
    assert "preparing the answer failed: KeyError" in results[2].detail
    assert "reading the answer failed: ZeroDivisionError" in results[3].detail
    monkeypatch.setattr(executor, "prepare", prepare)
    again = score(scorer, batch[2:3])  # not cached: once the bug is gone, the answer is judged
    assert (again[0].status, again[0].cached) == ("runtime_error", False)  # judged: it defines no one()
    assert "one" in again[0].detail


# ------------------------------------------------------------------------------------------------ attacks

ATTACKS = {
    "exit 0 before the tests": ("rle", "import sys\nsys.exit(0)\n"),
    "sys.exit(0) during a test": ("rle", "import sys\ndef run_length_encode(s):\n    sys.exit(0)\n"),
    "os._exit(0) during a test": ("rle", "import os\ndef run_length_encode(s):\n    os._exit(0)\n"),
    "print what a pass prints": ("rle", "print('4 passed', '{\"e\": \"done\"}')\ndef run_length_encode(s):\n    return None\n"),
    "claims an infra error": ("rle", "import os\nos.write(3, b'{\"e\": \"harness_error\", \"msg\": \"x\"}\\n')\nos._exit(0)\n"),
    "forged report lines": ("rle", "import os\nfor i in range(4):\n    os.write(3, b'{\"e\": \"test\", \"i\": %d, \"ok\": true}\\n' % i)\n"),
    "__eq__ always true": ("rle", "class Any(list):\n    def __eq__(self, o): return True\ndef run_length_encode(s):\n    return Any()\n"),
    "object with __eq__ (asserts)": ("HumanEval/x", "    class T:\n        def __eq__(self, o): return True\n        def __ne__(self, o): return False\n        def __sub__(self, o): return 0\n    return T()\n"),
    "int subclass": ("11", "class S(str):\n    def __eq__(self, o): return True\ndef remove_Occ(s, ch):\n    return S('')\n"),
    "patched builtins": ("HumanEval/x", "    import builtins\n    builtins.abs = lambda x: 0\n    return 0\n"),
    "kills its parents": ("rle", "import os, signal\nfor p in (os.getppid(), 1, -1):\n    try:\n        os.kill(p, signal.SIGKILL)\n    except OSError:\n        pass\n"),
    "fork bomb": ("rle", "import os\ndef run_length_encode(s):\n    while True:\n        try:\n            os.fork()\n        except OSError:\n            pass\n"),
    "setsid daemon": ("rle", "import os, time\nif os.fork() == 0:\n    os.setsid()\n    time.sleep(60)\ndef run_length_encode(s):\n    return []\n"),
    "waits on stdin": ("sum", "import sys\nsys.stdin.read()\nsys.stdin.read()\nprint(3)\n"),
    "stdout flood": ("sum", "while True:\n    print('3' * 10000)\n"),
    "ignores SIGTERM": ("rle", "import signal\nsignal.signal(signal.SIGTERM, signal.SIG_IGN)\nwhile True:\n    pass\n"),
    "allocates without bound": ("11", "x = []\nwhile True:\n    x.append(bytearray(10**6))\n"),
    "writes the scorer's files": ("rle", "import glob\nfor p in glob.glob('/tmp/**/*.jsonl', recursive=True):\n    try:\n        open(p, 'w').write('{}')\n    except OSError:\n        pass\ndef run_length_encode(s):\n    return []\n"),
}  # fmt: skip


def test_hostile_and_correct_programs_in_one_batch(scorer: TestCaseReward, problem_file: Path) -> None:
    before = problem_file.read_text()
    good = list(GOOD.items())
    hostile = list(ATTACKS.values())
    batch = [
        pair for i in range(len(hostile)) for pair in ([good[i % len(good)]] if i % 2 else []) + [hostile[i]]
    ]
    batch += good
    results = score(scorer, batch)
    for (task, code), result in zip(batch, results, strict=True):
        if (task, code) in good:
            assert result.status == "passed", (task, result)
        else:
            name = next(n for n, pair in ATTACKS.items() if pair == (task, code))
            assert result.status != "passed" and result.reward is not None, (name, result)
            assert result.reward < 1.0, (name, result)
    assert not wait_until_idle(scorer.sandbox)
    assert problem_file.read_text() == before


# ------------------------------------------------------------------------------------------------ cache and time


def test_cache_never_runs_a_program_twice(scorer: TestCaseReward) -> None:
    code = "def run_length_encode(s):\n    return [[c, s.count(c)] for c in dict.fromkeys(s)]\n"
    runs = scorer.programs_run
    first = score(scorer, [("rle", code), ("rle", code)])
    assert scorer.programs_run == runs + 1 and [r.cached for r in first] == [False, True]
    again = score(scorer, [("rle", f"Here it is:\n```python\n{code}```")])  # the same program in another answer
    assert scorer.programs_run == runs + 1 and again[0].cached and again[0].reward == first[0].reward


def test_layout_is_part_of_the_cache_key(scorer: TestCaseReward) -> None:
    """The cache key is the program's exact text: a program can see its own line numbers, so two programs equal but
    for a blank line or a comment line can behave differently, and each gets its own verdict."""
    body = "    import sys\n    if sys._getframe().f_lineno != 3:\n        return []\n" + RLE["reference_solution"].split("\n", 1)[1]
    tight, loose = "def run_length_encode(s):\n" + body, "def run_length_encode(s):\n    # a comment line\n" + body
    first, second = score(scorer, [("rle", tight), ("rle", loose)])
    assert (first.status, second.status, second.cached) == ("passed", "failed", False)


def test_limits_come_from_the_reference(scorer: TestCaseReward) -> None:
    score(scorer, [("noref", "def one():\n    return 1\n"), ("broken", "def one():\n    return 1\n")])
    by_id = scorer.problems
    assert scorer.limits_for(by_id["rle"]).cpu_time == 0.5  # fast reference: the floor
    assert scorer.limits_for(by_id["noref"]).cpu_time == 2.0  # no reference: the timeout
    assert scorer.limits_for(by_id["broken"]).cpu_time == 2.0  # a reference that fails is not trusted
    assert scorer.reference_failures["broken"].status == "failed"


def test_time_score_is_relative_to_the_reference_and_stable(
    scorer: TestCaseReward, problem_file: Path
) -> None:
    fast = "def busy(n):\n    return (n - 1) * n * (2 * n - 1) // 6\n"
    slow = "def busy(n):\n    t = 0\n    for i in range(n):\n        t += i * i\n    for i in range(n):\n        t += 0 * i\n    return t\n"
    fast_result, slow_result = score(scorer, [("busy", fast), ("busy", slow)])
    assert fast_result.components["time"] == 1.0
    assert 0.2 < slow_result.components["time"] < 0.85
    reference = scorer._reference_cpu["busy"]
    assert reference > 0.05  # above the noise floor, so the time score can tell programs apart
    assert scorer.limits_for(scorer.problems["busy"]).cpu_time == min(2.0, max(0.5, 10 * reference))
    with TestCaseReward(problems.load_problems(problem_file), workers=1) as other:
        (again,) = other.score([("rle", GOOD["rle"] + "\n# another run\n")])
    (first,) = score(scorer, [("rle", GOOD["rle"])])
    assert again.reward == first.reward == pytest.approx(1.8)


# ------------------------------------------------------------------------------------------------ TRL


def test_trl_reward_function(scorer: TestCaseReward) -> None:
    metrics: dict[str, list[float]] = {}
    extra: dict[str, list] = {}
    completions = [
        "```python\n" + GOOD["rle"] + "```",
        [{"role": "assistant", "content": "Here:\n```python\ndef run_length_encode(s):\n    return []\n```"}],
        [
            {"role": "user", "content": "hi"},
            {"role": "assistant", "content": [{"type": "text", "text": GOOD["sum"]}]},
        ],
    ]
    rewards = scorer(
        prompts=["p1", "p2", "p3"],
        completions=completions,
        completion_ids=[[1], [2], [3]],
        task_id=["rle", "rle", "sum"],
        trainer_state=None,
        log_metric=lambda name, value: metrics.setdefault(name, []).append(value),
        log_extra=lambda column, values: extra.setdefault(column, []).extend(values),
    )
    assert rewards == [pytest.approx(1.8), pytest.approx(0.5 * 1 / 4), pytest.approx(1.8)]
    assert metrics["test_cases/pass"] == [pytest.approx(2 / 3)]
    assert set(metrics) >= {f"test_cases/{c}" for c in ("pass", "partial", "all_pass_bonus", "time")}
    assert sum(metrics[f"test_cases/status/{s}"][0] for s in STATUSES) == pytest.approx(1.0)
    assert metrics["test_cases/same_value"] == [pytest.approx(1 / 3)]  # `return []`: the same value for every test
    assert extra["test_cases_status"] == ["passed", "failed", "passed"]
    assert scorer.__name__ == "test_cases"


def test_async_reward_function(scorer: TestCaseReward) -> None:
    reward = scorer.async_reward
    assert inspect.iscoroutinefunction(reward.__call__)  # what TRL's is_async_callable checks
    assert reward.__name__ == "test_cases"
    rewards = asyncio.run(reward(prompts=["p"], completions=[GOOD["11"]], task_id=[11]))
    assert rewards == [pytest.approx(1.8)]


def test_reward_needs_task_ids(scorer: TestCaseReward) -> None:
    with pytest.raises(UserError, match="task_id"):
        scorer(prompts=["p"], completions=["x"])
    with pytest.raises(UserError, match="unknown task_id"):
        scorer(prompts=["p"], completions=["x"], task_id=["nope"])


# ------------------------------------------------------------------------------------------------ command line


def cli(*args: str, timeout: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, *args], cwd=ROOT, capture_output=True, text=True, timeout=timeout, check=False
    )


def test_score_command(problem_file: Path, tmp_path: Path) -> None:
    rows = [(task, code) for task, code, _, _ in VERDICTS[:3]] + [("sum", GOOD["sum"]), ("rle", GOOD["rle"])]
    rows.append(("sum", "print(0)"))
    completions = tmp_path / "samples.jsonl"
    completions.write_text("".join(json.dumps({"task_id": t, "completion": c}) + "\n" for t, c in rows))
    output = tmp_path / "out" / "results.jsonl"
    proc = cli("-X", "importtime", "reward_model.py", "score", "--problems", str(problem_file), "--completions",
               str(completions), "--output", str(output), "--workers", "2", "--timeout", "2")  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    imported = {
        line.split("|")[-1].strip() for line in proc.stderr.splitlines() if line.startswith("import time:")
    }
    # The options parser is transformers' HfArgumentParser (shared with training), but neither the transformers
    # package (half a second) nor torch loads.
    assert not {m for m in imported if m.split(".")[0] in ("torch", "trl", "transformers")}
    lines = [json.loads(line) for line in output.read_text().splitlines()]
    assert [(r["task_id"], r["status"]) for r in lines] == [
        ("rle", "passed"), ("rle", "failed"), ("rle", "syntax_error"), ("sum", "passed"), ("rle", "passed"),
        ("sum", "failed"),
    ]  # fmt: skip
    assert set(lines[0]) >= {"task_id", "passed", "status", "tests_passed", "tests_total", "reward", "components",
                             "cpu_time", "wall_time"}  # fmt: skip
    assert lines[4]["cached"] and lines[0]["reward"] == lines[4]["reward"]
    assert [r["same_value"] for r in lines] == [False, False, False, False, False, True]  # print(0): "0" each time
    # print(0) gave "0" to all three tests, and the third wants 0: partial credit by luck
    assert "of the failed, 1 gave every test the same value; 1 of them passed 1 test in all that way (partial " \
           "credit by luck)" in proc.stdout
    # both rle references are the reference solution (its verdict serves them); the syntax error runs nothing
    assert "answers run in the sandbox: 3; not run again, being the same program as one judged already: 2 (2 the " \
           "problem's reference solution)" in proc.stdout
    # rle: 2 of 4 pass, sum: 1 of 2; pass@2 = mean(1 - C(2,2)/C(4,2), 1 - C(1,2)/C(2,2)) = mean(5/6, 1)
    assert "pass@1: 0.5000" in proc.stdout and "pass@2: 0.9167" in proc.stdout and "pass@3" not in proc.stdout


def test_score_summary_says_what_happened(problem_file: Path, tmp_path: Path) -> None:
    """A constant answer that passes no test is not called partial credit by luck; a repeated answer is counted as
    one run and one verdict served, not as an unexplained cache hit."""
    constant = "def run_length_encode(s):\n    return [['q', 9]]\n"
    completions = tmp_path / "samples.jsonl"
    completions.write_text("".join(json.dumps({"task_id": "rle", "completion": constant}) + "\n" for _ in range(2)))
    proc = cli("reward_model.py", "score", "--problems", str(problem_file), "--completions", str(completions),
               "--output", str(tmp_path / "o.jsonl"), "--workers", "1", "--calibration_cache", "off")
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert ("answers run in the sandbox: 1; not run again, being the same program as one judged already: 1 "
            "(1 an earlier answer)") in proc.stdout
    assert "of the failed, 2 gave every test the same value, and passed no test that way" in proc.stdout
    assert "luck" not in proc.stdout


def test_score_summary_into_a_closed_pipe(problem_file: Path, tmp_path: Path) -> None:
    """`score ... | true` (or `| head -1`): the results are written, and no traceback follows."""
    completions = tmp_path / "samples.jsonl"
    completions.write_text(json.dumps({"task_id": "sum", "completion": GOOD["sum"]}) + "\n")
    output = tmp_path / "results.jsonl"
    command = shlex.join([sys.executable, "reward_model.py", "score", "--problems", str(problem_file),
                          "--completions", str(completions), "--output", str(output), "--workers", "1"])  # fmt: skip
    proc = subprocess.run(["bash", "-c", f"set -o pipefail; {command} | true"], cwd=ROOT, capture_output=True,
                          text=True, timeout=120, check=False)  # fmt: skip
    assert (proc.returncode, proc.stderr) == (0, "")
    assert json.loads(output.read_text())["status"] == "passed"


@pytest.mark.parametrize(
    ("problems_text", "completions_text", "message"),
    [
        (None, '{"task_id": "rle", "completion": "x"}\n', r"nope\.jsonl: no such file"),
        ("RLE", '{"task_id": "rle", "completion": "x"}\n{"task_id": \n', r"samples\.jsonl:2: malformed JSON"),
        ("RLE", '{"task_id": "rle", "completion": "x"}\n{"task_id": "zzz", "completion": "x"}\n',
         r"samples\.jsonl:2: task_id 'zzz' is not a problem"),
        ('{"task_id": "t", "prompt": "p", "entry_point": "f", "tests": []}', '{"task_id": "t", "completion": "x"}\n',
         r"problems\.jsonl:1: 'tests' must be a non-empty list"),
    ],
    ids=["missing-file", "malformed-line", "unknown-task", "no-tests"],
)  # fmt: skip
def test_score_command_bad_input(
    tmp_path: Path, problems_text: str | None, completions_text: str, message: str
) -> None:
    problem_path = tmp_path / ("nope.jsonl" if problems_text is None else "problems.jsonl")
    if problems_text is not None:
        problem_path.write_text((json.dumps(RLE) if problems_text == "RLE" else problems_text) + "\n")
    completions = tmp_path / "samples.jsonl"
    completions.write_text(completions_text)
    proc = cli("reward_model.py", "score", "--problems", str(problem_path), "--completions", str(completions),
               "--output", str(tmp_path / "o.jsonl"))  # fmt: skip
    assert proc.returncode == 2
    assert (
        proc.stderr.count("\n") == 1 and proc.stderr.startswith("reward_model.py score: error: ") and "Traceback" not in proc.stderr
    )
    assert __import__("re").search(message, proc.stderr), proc.stderr


@pytest.mark.parametrize("output", ["/proc/qrl-results.jsonl", "/sys/qrl/results.jsonl", "file/results.jsonl"])
def test_score_output_that_cannot_be_written_is_one_line(problem_file: Path, tmp_path: Path, output: str) -> None:
    (tmp_path / "file").write_text("x")
    output = output if output.startswith("/") else str(tmp_path / output)
    completions = tmp_path / "samples.jsonl"
    completions.write_text(json.dumps({"task_id": "rle", "completion": GOOD["rle"]}) + "\n")
    proc = cli("reward_model.py", "score", "--problems", str(problem_file), "--completions", str(completions),
               "--output", output)
    assert proc.returncode == 2 and proc.stderr.count("\n") == 1 and "Traceback" not in proc.stderr, proc.stderr
    assert f"reward_model.py score: error: cannot write {output}: its folder" in proc.stderr
    assert "cannot be" in proc.stderr and not Path(output).exists()


def test_score_command_bad_options(problem_file: Path, tmp_path: Path) -> None:
    proc = cli("reward_model.py", "score", "--problems", str(problem_file), "--completions", str(problem_file),
               "--output", str(tmp_path / "o.jsonl"), "--workers", "0")  # fmt: skip
    assert proc.returncode == 2 and "error: --workers must be at least 1" in proc.stderr


# --- the composite reward (test cases plus code quality) -------------------------------------------------------

def composite_problem():
    from qrl.data.records import Record
    from qrl.problems import parse_problem

    row = {"task_id": "py/sq", "language": "python", "prompt": "Write `square(x)` returning x*x.",
           "entry_point": "square", "reference_solution": "def square(x):\n    return x * x\n",
           "tests": [{"args": [2], "expected": 4}, {"args": [-3], "expected": 9}]}
    return parse_problem(Record(row, "mem:1"))


COMPOSITE_GOOD = '```python\ndef square(x):\n    """Return x squared, for any number x."""\n    return x * x\n```'
COMPOSITE_UGLY = "```python\ndef square( x ):\n  l=x*x;return l\n```"
COMPOSITE_WRONG = '```python\ndef square(x):\n    """Return x squared, for any number x."""\n    return x + x\n```'


def test_composite_weights_quality_on_top_of_test_cases():
    from qrl.config.arguments import RewardArguments
    from qrl.rewards.base import Sample
    from qrl.rewards.composite import CompositeReward
    from qrl.rewards.quality import QualityConfig
    from qrl.rewards.test_cases import TestCaseReward

    weights = RewardArguments(reward_time=0.0, reward_quality=0.4)
    with TestCaseReward([composite_problem()], weights=weights, workers=1) as tests:
        composite = CompositeReward(tests, QualityConfig(), scale=2.0)
        good, ugly, wrong = composite.score_samples([Sample(COMPOSITE_GOOD, "py/sq"), Sample(COMPOSITE_UGLY, "py/sq"), Sample(COMPOSITE_WRONG, "py/sq")])
        plain = tests.score_samples([Sample(COMPOSITE_GOOD, "py/sq")])[0]
    assert good.passed and ugly.passed and not wrong.passed
    assert good.reward == pytest.approx(2.0 * (plain.reward + 0.4 * good.components["quality"]))
    assert good.components["quality"] > ugly.components["quality"]
    assert good.reward > ugly.reward > wrong.reward  # quality separates passing answers, never outweighs passing
    for key in ("pass", "partial", "all_pass_bonus", "time", "quality", "quality_style", "quality_docs",
                "quality_complexity"):
        assert key in good.components


def test_composite_logs_every_component_by_name_and_keeps_none_for_infra_errors():
    from qrl.rewards.base import ScoreResult
    from qrl.rewards.composite import CompositeReward
    from qrl.rewards.test_cases import TestCaseReward

    logged = {}
    with TestCaseReward([composite_problem()], workers=1) as tests:
        composite = CompositeReward(tests)
        rewards = composite(completions=[[{"role": "assistant", "content": COMPOSITE_GOOD}]], task_id=["py/sq"],
                            log_metric=lambda name, value: logged.__setitem__(name, value))
        infra = ScoreResult(task_id="py/sq", reward=None, status="infra_error")
        assert composite._combine(infra, None) is infra
    assert rewards[0] > 1.0
    assert {"composite/pass", "composite/quality", "composite/quality_style", "composite/status/passed"} <= logged.keys()


def test_score_components_and_a_run_config(problem_file: Path, tmp_path: Path) -> None:
    """--components scores the composite; a run's config.yaml (with training sections) gives the weights."""
    completions = tmp_path / "samples.jsonl"
    completions.write_text(json.dumps({"task_id": "sum", "completion": GOOD["sum"]}) + "\n")
    config = tmp_path / "config.yaml"
    config.write_text("model:\n  learning_rate: 1.0e-5\nrewards:\n  reward_quality: 0.5\n  reward_time: 0\n")
    output = tmp_path / "results.jsonl"
    proc = cli("reward_model.py", "score", "--problems", str(problem_file), "--completions", str(completions),
               "--output", str(output), "--components", "--config", str(config), "--workers", "1")
    assert proc.returncode == 0, proc.stderr[-3000:]
    line = json.loads(output.read_text())
    quality = line["components"]["quality"]
    assert {"quality_style", "quality_docs", "quality_complexity", "pass", "partial"} <= line["components"].keys()
    assert line["reward"] == pytest.approx(1.0 + 0.5 + 0.2 + 0.5 * quality)
    assert "components (mean):" in proc.stdout and "quality " in proc.stdout


# ------------------------------------------------------------------------------------------------ calibration


class CountingSandbox:
    """A real sandbox that counts the programs it is given, and can claim weaker isolation than it has."""

    def __init__(self, problem_list: list[problems.Problem], workers: int = 1, isolation: object | None = None):
        self.box = TestCaseReward(problem_list, workers=workers).sandbox  # started as a scorer starts its own
        self.isolation = isolation or self.box.isolation
        self.workers = workers
        self.runs = 0

    def submit(self, program: object) -> Future:
        self.runs += 1
        return self.box.submit(program)

    def close(self) -> None:
        self.box.close()


def calibrating_scorer(
    problem_list: list[problems.Problem], cache: Path | None, timeout: float = 2.0, **sandbox_options: object
) -> tuple[TestCaseReward, CountingSandbox]:
    box = CountingSandbox(problem_list, **sandbox_options)
    scorer = TestCaseReward(problem_list, workers=1, timing=Timing(timeout=timeout, floor=0.5), sandbox=box,
                            calibration_cache=cache)  # fmt: skip
    return scorer, box


def test_the_reference_run_serves_an_identical_answer(problem_file: Path) -> None:
    """An answer that is the reference (the same program: the same cache key) reuses the calibration's verdict."""
    scorer, box = calibrating_scorer(problems.load_problems(problem_file), cache=None)
    with scorer:
        answer = RLE["reference_solution"]
        first, second = scorer.score([("rle", answer), ("rle", answer)])
        assert box.runs == scorer.programs_run == scorer.calibrations_run == 1
        assert first.passed and first.cached and second.cached and first.reward == second.reward
        assert first.components["time"] == 1.0
        # judged at the timeout, reused under the calibrated limit (the floor): it passed well within it
        assert scorer.limits_for(scorer.problems["rle"]).cpu_time == 0.5 < scorer.timing.timeout
        (other,) = scorer.score([("rle", GOOD["rle"].replace("out", "res"))])
        assert box.runs == 2 and not other.cached and other.passed


def test_reuse_under_a_tighter_limit_needs_the_wall_clock_to_hold_too() -> None:
    def done(verdict: problems.Verdict) -> Future:
        future: Future = Future()
        future.set_result(verdict)
        return future

    quick = done(problems.Verdict("passed", 1, 1, cpu_time=0.01, wall_time=0.02))
    sleepy = done(problems.Verdict("passed", 1, 1, cpu_time=0.01, wall_time=5.0))  # slept, barely used the CPU
    assert verdict_reusable(10.0, quick, 1.0) and verdict_reusable(1.0, quick, 10.0)
    assert not verdict_reusable(10.0, sleepy, 1.0)  # under 1 s of CPU its backstop is 3 s: it would not have finished
    assert verdict_reusable(1.0, sleepy, 10.0) and verdict_reusable(10.0, sleepy, 10.0)


def test_calibration_is_read_back_from_the_cache_folder(problem_file: Path, tmp_path: Path) -> None:
    cache = tmp_path / "calibration"
    answers = [("rle", GOOD["rle"].replace("out", "res")), ("busy", BUSY["reference_solution"]),
               ("broken", "def one():\n    return 1\n")]  # fmt: skip
    first, box = calibrating_scorer(problems.load_problems(problem_file), cache)
    with first:
        judged = first.score(answers)
    assert first.calibrations_run == 3 and first.calibrations_loaded == 0 and box.runs == 3 + 2
    assert len(list(cache.glob("*.json"))) == 3 and oct(cache.stat().st_mode & 0o777) == "0o700"
    again, box = calibrating_scorer(problems.load_problems(problem_file), cache)
    with again:
        rejudged = again.score(answers)
        assert again.calibrations_run == 0 and again.calibrations_loaded == 3
        assert box.runs == 2  # the two answers that are not references; busy's reference verdict served busy
        assert again._reference_cpu == first._reference_cpu and again.reference_failures.keys() == {"broken"}
        assert [r.reward for r in rejudged] == [r.reward for r in judged] and rejudged[1].cached
        assert again.limits_for(again.problems["busy"]) == first.limits_for(first.problems["busy"])
    changed = [{**RLE, "reference_solution": RLE["reference_solution"] + "\nUNUSED = 1\n"},
               {**BROKEN_REF, "tests": [{"args": [], "expected": 2}]}]  # fmt: skip
    other_file = tmp_path / "changed.jsonl"
    other_file.write_text("".join(json.dumps(r) + "\n" for r in changed))
    for problem_list, timeout in ((problems.load_problems(other_file), 2.0),
                                  (problems.load_problems(problem_file), 3.0)):  # fmt: skip
        fresh, box = calibrating_scorer(problem_list, cache, timeout=timeout)
        with fresh:
            fresh.score([("rle", GOOD["rle"]), ("broken", "def one():\n    return 1\n")])
        assert fresh.calibrations_run == 2 and fresh.calibrations_loaded == 0, timeout


def test_a_damaged_calibration_file_is_ignored(problem_file: Path, tmp_path: Path) -> None:
    cache = tmp_path / "calibration"
    scorer, _ = calibrating_scorer(problems.load_problems(problem_file), cache)
    with scorer:
        scorer.score([("rle", GOOD["rle"])])
    (path,) = cache.glob("*.json")
    good = path.read_text()
    record = json.loads(good)
    forged = {**record, "verdict": {**record["verdict"], "cpu_time": 1.5}}  # a generous limit, checksum unchanged
    wrong_type = {**record, "verdict": {**record["verdict"], "tests_passed": "4"}}
    wrong_type["checksum"] = checksum(record["key"], wrong_type["verdict"])  # well formed, but not a verdict
    for damage in (good[: len(good) // 2], "\0\xff not json", "[]", json.dumps(forged), json.dumps(wrong_type)):
        path.write_text(damage)
        scorer, _ = calibrating_scorer(problems.load_problems(problem_file), cache)
        with scorer:
            (result,) = scorer.score([("rle", GOOD["rle"])])
        assert scorer.calibrations_run == 1 and scorer.calibrations_loaded == 0 and result.passed, damage[:40]
        assert scorer.limits_for(scorer.problems["rle"]).cpu_time == 0.5
        assert CalibrationCache(cache).load(path.stem) is not None  # rewritten whole


def test_the_calibration_cache_is_off_where_programs_could_write_it(problem_file: Path, tmp_path: Path) -> None:
    cache = tmp_path / "calibration"
    for _ in range(2):
        scorer, box = calibrating_scorer(problems.load_problems(problem_file), cache, isolation=Isolation())
        with scorer:
            scorer.score([("rle", GOOD["rle"])])
        assert scorer.calibrations_run == box.runs == 1 and "could write it" in scorer.calibration_cache_refused
    assert not cache.exists()


def test_score_command_keeps_calibrations_in_the_users_cache_or_not(problem_file: Path, tmp_path: Path) -> None:
    completions = tmp_path / "samples.jsonl"
    completions.write_text(json.dumps({"task_id": "rle", "completion": GOOD["rle"]}) + "\n")
    env = {**os.environ, "QRL_CACHE": str(tmp_path / "cache")}
    command = [sys.executable, "reward_model.py", "score", "--problems", str(problem_file), "--completions",
               str(completions), "--output", str(tmp_path / "out.jsonl"), "--workers", "1"]  # fmt: skip
    outputs = []
    for extra in (["--calibration_cache", "off"], [], []):
        proc = subprocess.run(command + extra, cwd=ROOT, env=env, capture_output=True, text=True, check=False)
        assert proc.returncode == 0, proc.stderr[-3000:]
        outputs.append(proc.stdout)
    assert "reference runs: 1, read back: 0 (calibration cache: off)" in outputs[0]
    folder = tmp_path / "cache" / "calibration"
    assert f"reference runs: 1, read back: 0 (calibration cache: {folder})" in outputs[1]
    assert f"reference runs: 0, read back: 1 (calibration cache: {folder})" in outputs[2]
    # the answer is the reference: its stored verdict serves it, and the summary says so rather than "0 run"
    assert ("answers run in the sandbox: 0; not run again, being the same program as one judged already: 1 "
            "(1 the problem's reference solution)") in outputs[2]
    assert "answers run in the sandbox: 0;" in outputs[0]  # run once, as the reference: no second run
    assert len(list(folder.glob("*.json"))) == 1
    assert default_calibration_cache() != folder and ROOT not in default_calibration_cache().parents
