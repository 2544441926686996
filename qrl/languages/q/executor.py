"""The Q executor, on the caller's side: the jobs a Q answer runs as (one sandbox program per MSML test script, one
per q-expr problem, a Python program through PyKX for Q-HumanEval), and the verdict from what the runner reported."""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Sequence
from typing import Any

from qrl.data.records import UserError
from qrl.execution import harness
from qrl.languages.q import install as q_install
from qrl.languages.q.formats import ExprTest, ScriptTest, normalise_output
from qrl.languages.q.scripts import main_script
from qrl.problems import (
    LIMIT_STATUSES,
    Job,
    Problem,
    PythonExecutor,
    RunOutcome,
    Submission,
    Verdict,
    decide,
    early_verdict,
    outcome_times,
    report_events,
    text_key,
)


class QExecutor:
    """Runs Q problems: MSML and q-expr through the q binary in the sandbox, Q-HumanEval through PyKX (as Python
    programs under qrl.execution.harness, whose verdict logic it shares)."""

    preload = ("qrl.languages.q",)
    harness_source = "from qrl.languages import q\nq.sandbox_main()\n"

    def __init__(self) -> None:
        self.q_binary: str | None = None
        self._checked: set[q_install.QInstall | str] = set()
        self._found: dict[tuple, q_install.QInstall] = {}

    def configure(self, q_binary: str | None = None, **_options: Any) -> None:
        self.q_binary = q_binary or None

    def install(self) -> q_install.QInstall:
        """The q to run (UserError if there is none), looked up again only when the option or environment changes."""
        key = (self.q_binary, *(os.environ.get(k) for k in ("PATH", "QHOME", "QLIC", "HOME")))
        if key not in self._found:
            self._found = {key: q_install.find_q(self.q_binary)}
        return self._found[key]

    def sandbox_paths(self) -> list[str]:
        folders: set[str] = set()
        try:
            folders.update(self.install().folders())
        except UserError:
            pass  # no q here: only a Q problem needs it, and check() says so at start
        pykx = q_install.pykx_folder()
        if pykx:
            folders.add(pykx)
        return sorted(folders)

    def check(self, problems_: Sequence[Problem]) -> None:
        if any(p.source_format != "q-humaneval" for p in problems_):
            install = self.install()
            if install not in self._checked:  # once per interpreter and QHOME/QLIC
                q_install.check_reachable(install)
                q_install.smoke_test(install)
                self._checked.add(install)
        if any(p.source_format == "q-humaneval" for p in problems_) and "pykx" not in self._checked:
            q_install.check_pykx()
            self._checked.add("pykx")

    def prepare(self, problem: Problem, code: str, reply_limit: int) -> Submission:
        code = "\n".join(line.rstrip() for line in code.strip("\n").splitlines()).strip()
        key = text_key(problem, code)
        if not code:
            return Submission(problem, code, key, (), syntax_error="no q code in the answer")
        if problem.source_format == "q-humaneval":
            program = q_install.pykx_program(code + "\n", problem.entry_point or "")
            return dataclasses.replace(PythonExecutor().prepare(problem, program, reply_limit), key=key)
        install = self.install()
        public = {"q": install.binary, "env": install.env(), "program": code + "\n", "reply_limit": reply_limit}
        if all(isinstance(t, ScriptTest) for t in problem.tests):
            jobs = tuple(
                Job(self.harness_source, harness.encode_parts({**public, "main": main_script(test=t)}, {}))
                for t in problem.tests
                if isinstance(t, ScriptTest)
            )
            return Submission(problem, code, key, jobs)
        if all(isinstance(t, ExprTest) for t in problem.tests):
            exprs = [t.expr for t in problem.tests if isinstance(t, ExprTest)]
            public = {**public, "main": main_script(exprs=exprs), "tests": len(exprs)}
            private = {"expected": [t.expected for t in problem.tests if isinstance(t, ExprTest)]}
            return Submission(problem, code, key, (Job(self.harness_source, harness.encode_parts(public, private)),))
        raise UserError(f"{problem.where}: Q problems take MSML test scripts or q expressions ('expr', 'expected') as "
                        "tests")  # fmt: skip

    def judge(self, submission: Submission, outcomes: Sequence[RunOutcome]) -> Verdict:
        problem = submission.problem
        if problem.source_format == "q-humaneval":
            return PythonExecutor().judge(submission, outcomes)
        early = early_verdict(submission, outcomes)
        if early is not None:
            return early
        cpu, wall = outcome_times(outcomes)
        if isinstance(problem.tests[0], ScriptTest):
            return _judge_scripts(problem, outcomes, cpu, wall)
        return _judge_exprs(problem, outcomes[0], cpu, wall)


def _judge_scripts(problem: Problem, outcomes: Sequence[RunOutcome], cpu: float, wall: float) -> Verdict:
    total, passed, errors, detail = len(problem.tests), 0, 0, ""
    for i, (test, outcome) in enumerate(zip(problem.tests, outcomes, strict=True)):
        assert isinstance(test, ScriptTest)
        case = test.name or f"case {i}"
        if outcome.status in LIMIT_STATUSES:
            return Verdict(outcome.status, passed, total, cpu, wall, f"{case}: {outcome.detail}")
        events = {e.get("e"): e for e in reversed(report_events(outcome.report))}  # the first of each kind
        if "infra" in events:
            return Verdict("infra_error", passed, total, cpu, wall, f"{case}: {events['infra'].get('msg')}")
        if "output_limit" in events:
            return Verdict("output_limit", passed, total, cpu, wall, f"{case}: `show result` printed too much")
        if "done" not in events:  # the runner reports even its own failures: something killed it (the program)
            detail = f"{case}: the run ended before the test was done"
            return Verdict("runtime_error", passed, total, cpu, wall, detail)
        shown = events.get("shown", {}).get("text")
        if not isinstance(shown, str):
            errors += 1
            detail = detail or f"{case}: {_no_value(events, outcome)}"
        elif normalise_output(shown) == normalise_output(test.expected):
            passed += 1
        else:
            detail = detail or f"{case}: expected {_clip(test.expected)}, got {_clip(shown)}"
    return decide(passed, total, errors, False, cpu, wall, detail)


def _judge_exprs(problem: Problem, outcome: RunOutcome, cpu: float, wall: float) -> Verdict:
    total = len(problem.tests)
    events = report_events(outcome.report)
    first = {e.get("e"): e for e in reversed(events)}
    results: dict[int, tuple[str, str]] = {}
    for event in events:
        i = event.get("i")
        if event.get("e") == "test" and type(i) is int and 0 <= i < total and i not in results:
            results[i] = (str(event.get("r")), str(event.get("msg", ""))[:300])
    passed = sum(r == "pass" for r, _ in results.values())
    if outcome.status in LIMIT_STATUSES:
        return Verdict(outcome.status, passed, total, cpu, wall, outcome.detail)
    if "infra" in first:
        return Verdict("infra_error", 0, total, cpu, wall, str(first["infra"].get("msg")))
    if "done" not in first:  # as above: the runner was killed
        return Verdict("runtime_error", passed, total, cpu, wall, "the run ended before the tests were done")
    errors, died, detail = 0, False, ""
    for i, test in enumerate(problem.tests):
        assert isinstance(test, ExprTest)
        verdict, msg = results.get(i, ("missing", ""))
        if verdict == "pass":
            continue
        if verdict == "fail":
            detail = detail or f"test {i}: {test.expr} does not match {test.expected}"
            continue
        errors += 1
        if verdict == "missing":
            died = True
            detail = detail or f"test {i}: not run (the q process ended first){_stderr_tail(outcome)}"
        else:
            detail = detail or f"test {i}: {test.expr}: {msg}"
    return decide(passed, total, errors, died, cpu, wall, detail)


def _no_value(events: dict, outcome: RunOutcome) -> str:
    if "no_result" in events:
        return f"no `result` was saved (q exited with code {events['no_result'].get('code')}){_stderr_tail(outcome)}"
    if "unreadable" in events:
        return f"the saved `result` could not be shown: {events['unreadable'].get('msg')}"
    return "no result"


def _stderr_tail(outcome: RunOutcome) -> str:
    text = str(getattr(outcome, "stderr", "") or "").strip()
    return f": {text[-300:]}" if text else ""


def _clip(text: str, size: int = 120) -> str:
    text = normalise_output(text)
    return repr(text if len(text) <= size else text[: size - 3] + "...")
