"""The Python executor: the jobs a Python answer runs as (under qrl.execution.harness, or one run per stdin for
stdin/stdout problems), and its verdict from what came back, compared here with the expected values."""

from __future__ import annotations

import ast
from collections.abc import Sequence

from qrl.execution import harness
from qrl.problems.comparisons import as_json, json_equal, plain_equal
from qrl.problems.registry import register_executor
from qrl.problems.submissions import text_key
from qrl.problems.types import (
    LIMIT_STATUSES,
    AssertTest,
    CallTest,
    IOTest,
    Job,
    Problem,
    RunOutcome,
    Submission,
    Test,
    Verdict,
)
from qrl.problems.verdicts import decide, early_verdict, mark_same_value, message, outcome_times, report_events, short


class PythonExecutor:
    preload = ("qrl.execution.harness",)
    harness_source = "from qrl.execution import harness\nharness.main()\n"

    def prepare(self, problem: Problem, code: str, reply_limit: int) -> Submission:
        key = text_key(problem, code)
        try:
            ast.parse(code)
        except (SyntaxError, ValueError, RecursionError, MemoryError) as e:
            return Submission(problem, code, key, (), syntax_error=harness.describe(e))
        if isinstance(problem.tests[0], IOTest):
            jobs = tuple(Job(code, t.stdin.encode()) for t in problem.tests)
            return Submission(problem, code, key, jobs)
        public = {
            "kind": "call" if isinstance(problem.tests[0], CallTest) else "script",
            "code": code,
            "entry_point": problem.entry_point,
            "names": list(problem.test_names),
            "in_process": problem.tests_in_process,
            "reply_limit": reply_limit,
        }
        if public["kind"] == "call":
            private = {
                "tests": [
                    {"args": harness.pack(t.args), "kwargs": harness.pack(t.kwargs)} for t in problem.tests
                ]
            }
        else:
            private = {"script": problem.test_script}
        return Submission(
            problem, code, key, (Job(self.harness_source, harness.encode_parts(public, private)),)
        )

    def judge(self, submission: Submission, outcomes: Sequence[RunOutcome]) -> Verdict:
        problem = submission.problem
        early = early_verdict(submission, outcomes)
        if early is not None:
            return early
        cpu, wall = outcome_times(outcomes)
        if isinstance(problem.tests[0], IOTest):
            return _judge_stdio(problem, outcomes, cpu, wall)
        return _judge_report(problem, outcomes[0], cpu, wall)


def _judge_stdio(problem: Problem, outcomes: Sequence[RunOutcome], cpu: float, wall: float) -> Verdict:
    total, passed, errors, detail = len(problem.tests), 0, 0, ""
    for i, (test, outcome) in enumerate(zip(problem.tests, outcomes, strict=True)):
        assert isinstance(test, IOTest)
        if outcome.status in LIMIT_STATUSES:
            return Verdict(outcome.status, passed, total, cpu, wall, f"case {i}: {outcome.detail}")
        if outcome.exit_code != 0:
            errors += 1
            detail = detail or f"case {i}: exit code {outcome.exit_code}"
        elif outcome.stdout.split() == test.stdout.split():
            passed += 1
        else:
            detail = detail or f"case {i}: wrong output"
    verdict = decide(passed, total, errors, died=False, cpu=cpu, wall=wall, detail=detail)
    return mark_same_value(verdict, [o.stdout.split() for o in outcomes if o.exit_code == 0])


def _judge_report(problem: Problem, outcome: RunOutcome, cpu: float, wall: float) -> Verdict:
    """Read the harness's events and compare the values it sent with the expected ones kept here."""
    total = len(problem.tests)
    events = report_events(outcome.report)
    first = {e.get("e"): e for e in reversed(events)}  # the first event of each kind
    results: dict[int, tuple[bool, str]] = {}
    values = []
    for event in events:
        index = event.get("i")
        if event.get("e") == "test" and type(index) is int and 0 <= index < total and index not in results:
            results[index] = _test_result(problem.tests[index], event)
            if "v" in event and "error" not in event:
                values.append(event["v"])
    passed = sum(ok for ok, _ in results.values())
    errors = [why for ok, why in results.values() if not ok and why.startswith("raised")]
    detail = next((f"test {i}: {why}" for i, (ok, why) in sorted(results.items()) if not ok), "")
    if outcome.status in LIMIT_STATUSES:
        return Verdict(outcome.status, passed, total, cpu, wall, outcome.detail)
    for kind in ("output_limit", "memory_limit"):
        if kind in first:
            return Verdict(kind, passed, total, cpu, wall, "reported by the harness")
    if "harness_error" in first:
        detail = f"harness: {message(first['harness_error'].get('msg'))}"
        if problem.tests_in_process:  # the program shared the harness's process: it may have caused (or written) it
            return Verdict("runtime_error", 0, total, cpu, wall, detail)
        return Verdict("infra_error", 0, total, cpu, wall, detail)
    if "syntax_error" in first:
        return Verdict("syntax_error", 0, total, cpu, wall, message(first["syntax_error"].get("msg")))
    if "load_error" in first:
        return Verdict("runtime_error", 0, total, cpu, wall, message(first["load_error"].get("msg")))
    if "done" not in first:
        return Verdict("runtime_error", passed, total, cpu, wall, "the run ended before the tests were done")
    if any(why.startswith("raised MemoryError") for why in errors):
        return Verdict("memory_limit", passed, total, cpu, wall, "MemoryError")
    if "script_error" in first:
        detail = f"the tests' set-up failed: {message(first['script_error'].get('msg'))}"
    if "died" in first:
        detail = message(first["died"].get("msg"))
    return mark_same_value(decide(passed, total, len(errors), "died" in first, cpu, wall, detail), values)


def _test_result(test: Test, event: dict) -> tuple[bool, str]:
    """(passed, why not) for one test event. Whatever the event holds (the program may have written it), reading
    it fails that test, never the judging."""
    try:
        return _test_outcome(test, event)
    except Exception as e:  # noqa: BLE001 -- a value from the program that our checks above did not foresee
        return False, f"the result could not be compared ({type(e).__name__})"


def _test_outcome(test: Test, event: dict) -> tuple[bool, str]:
    if "error" in event:
        return False, f"raised {message(event['error'])[:300]}"
    if "ok" in event:  # a pass on word: only for asserts decided in the sandbox, by the harness
        decided_there = isinstance(test, AssertTest) and not test.compared_here
        return event["ok"] is True and decided_there, "assertion failed"
    try:
        value = harness.unpack(event.get("v"))
    except (ValueError, TypeError, RecursionError, OverflowError, MemoryError):
        return False, "the result is not plain data"
    if isinstance(test, CallTest):
        ok = json_equal(as_json(value), test.expected)
        return ok, "" if ok else f"expected {short(test.expected)}, got {short(value)}"
    if isinstance(test, AssertTest) and test.compared_here:
        ok = plain_equal(value, test.expected)
        return ok, "" if ok else f"{test.text[:200]}: got {short(value)}"
    return False, "unexpected value"


register_executor("python", PythonExecutor())
