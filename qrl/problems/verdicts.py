"""What every executor's judging shares: the verdict before any test result is read, the verdict from test counts,
the events of a run's report, and text for a verdict's detail from values the program may have made."""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import replace
from typing import Any

from qrl.problems.types import RunOutcome, Submission, Verdict


def outcome_times(outcomes: Sequence[RunOutcome]) -> tuple[float, float]:
    """CPU and wall seconds of a submission's runs together."""
    return round(sum(o.cpu_time for o in outcomes), 6), round(sum(o.wall_time for o in outcomes), 6)


def early_verdict(submission: Submission, outcomes: Sequence[RunOutcome]) -> Verdict | None:
    """The verdict every executor gives before reading test results: the answer did not parse, or the sandbox
    itself failed (infra_error, never scored as a failure)."""
    total = len(submission.problem.tests)
    if submission.infra_error:
        return Verdict("infra_error", 0, total, detail=submission.infra_error)
    if submission.syntax_error:
        return Verdict("syntax_error", 0, total, detail=submission.syntax_error)
    broken = next((o for o in outcomes if o.status == "infra_error"), None)
    if broken is not None:
        return Verdict("infra_error", 0, total, *outcome_times(outcomes), broken.detail)
    return None



def decide(
    passed: int, total: int, errors: int, died: bool, cpu: float, wall: float, detail: str
) -> Verdict:
    if passed == total:
        return Verdict("passed", passed, total, cpu, wall)
    if died or (passed == 0 and errors == total):
        return Verdict("runtime_error", passed, total, cpu, wall, detail)
    return Verdict("failed", passed, total, cpu, wall, detail)


def mark_same_value(verdict: Verdict, values: list) -> Verdict:
    """``values``: what the answer gave the tests (those that gave one back)."""
    if verdict.status != "failed" or not len(values) == verdict.tests_total > 1:
        return verdict
    try:
        same = all(v == values[0] for v in values)
    except (RecursionError, MemoryError):
        same = False
    return replace(verdict, same_value=True) if same else verdict


def report_events(report: str) -> list[dict]:
    events = []
    for line in report.splitlines():
        try:
            event = json.loads(line)
        except (ValueError, RecursionError):
            continue
        if type(event) is dict and type(event.get("e")) is str:  # a kind that is not a name is no event
            events.append(event)
    return events


def message(value: Any) -> str:
    """A message from a report event, as text whatever it is (the program may have written it)."""
    return value if type(value) is str else short(value)


def short(value: Any) -> str:
    """A value for a verdict's detail. One that repr refuses (an integer of over 4300 digits, a list holding one)
    is named, not printed: a program's answer must not stop the judging."""
    try:
        text = repr(value)
    except (ValueError, RecursionError, MemoryError):
        return f"<{type(value).__name__} too large to print>"
    return text if len(text) <= 120 else text[:117] + "..."
