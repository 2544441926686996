"""The entry points from an answer to a verdict: ``prepare`` turns (problem, completion) into the jobs the sandbox
runs, ``judge`` turns what came back into a ``Verdict``, each through the problem language's executor. Expected values
stay in the caller's process: the sandbox sends back results, never a pass. A failure of ours on the way is that
answer's infra_error, never the batch's end."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace

from qrl.problems.extraction import may_define, program_code
from qrl.problems.registry import executor_for
from qrl.problems.types import Problem, RunOutcome, Submission, Verdict
from qrl.problems.verdicts import outcome_times


def prepare(problem: Problem, completion: str, reply_limit: int = 4 << 20) -> Submission:
    """Make a model's completion ready to run (``reply_limit``: the most bytes a result may take)."""
    try:
        code = program_code(problem, completion)
        missing = bool(problem.entry_point) and not may_define(code, problem.entry_point, problem.language)
    except Exception as e:  # noqa: BLE001 -- ours, not the answer's: see prepare_program
        return _unprepared(problem, completion, "reading", e)
    submission = prepare_program(problem, code, reply_limit)
    return replace(submission, missing_entry_point=True) if missing else submission


def prepare_program(problem: Problem, code: str, reply_limit: int = 4 << 20) -> Submission:
    """Make a complete program (say, the reference solution) ready to run. An unexpected failure here is ours, not
    the answer's: it becomes that answer's infra_error, so that one odd answer cannot stop a batch."""
    executor = executor_for(problem)  # an unknown language is the user's to fix: it stays an error
    try:
        return executor.prepare(problem, code, reply_limit)
    except Exception as e:  # noqa: BLE001
        return _unprepared(problem, code, "preparing", e)


def _unprepared(problem: Problem, code: str, step: str, error: Exception) -> Submission:
    return Submission(problem, code, text_key(problem, code), (), infra_error=_failure(step, error))


def text_key(problem: Problem, code: str) -> str:
    """The cache key of a program: its exact text. Layout and comments can change what a program does (line numbers
    in tracebacks and frames, and its own text is within its reach), so programs that differ in them do not share a
    verdict."""
    return f"{problem.task_id}\0{code}"


def judge(submission: Submission, outcomes: Sequence[RunOutcome]) -> Verdict:
    """The verdict on a submission's runs; a failure of the judge itself is that answer's infra_error (never a
    zero, never the batch's end)."""
    executor = executor_for(submission.problem)
    try:
        return _named_cause(submission, executor.judge(submission, outcomes))
    except Exception as e:  # noqa: BLE001
        total = len(submission.problem.tests)
        if submission.problem.tests_in_process:  # the program shared the harness's process: its report is suspect
            return Verdict("runtime_error", 0, total, *outcome_times(outcomes), _failure("judging", e))
        return Verdict("infra_error", 0, total, *outcome_times(outcomes), _failure("judging", e))


def _named_cause(submission: Submission, verdict: Verdict) -> Verdict:
    """An answer in which nothing defines the entry point fails for that reason, whatever the code that ran raised
    on its way (often a NameError from a block of example calls that extraction took, there being no other)."""
    if not submission.missing_entry_point or verdict.status not in ("runtime_error", "failed") or verdict.tests_passed:
        return verdict
    name = submission.problem.entry_point or ""
    detail = f"the answer defines no function `{name}`"
    if verdict.detail and name not in verdict.detail:  # a NameError for it, or "does not define": said already
        detail += f"; the code that ran: {verdict.detail}"
    return replace(verdict, detail=detail)


def _failure(step: str, error: Exception) -> str:
    return f"{step} the answer failed: {type(error).__name__}: {str(error)[:200]}"
