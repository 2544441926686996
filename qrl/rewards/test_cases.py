"""Test-case rewards: each answer runs against its problem's tests in the sandbox, and its reward comes from the
verdict (the components of ``qrl.rewards.components``, weighed). Verdicts are cached for the scorer's life; time
limits come from each reference solution's CPU time, measured once (or read back from a ``CalibrationCache``).
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Sequence
from concurrent.futures import Future
from dataclasses import dataclass, replace
from pathlib import Path

import qrl.languages  # noqa: F401 -- registers the languages besides Python (their formats, executors)
from qrl import problems as problems_module
from qrl.config.arguments import RewardArguments
from qrl.data.records import UserError
from qrl.execution import Limits, Program, RunResult, Sandbox, default_workers
from qrl.problems import Problem, Submission, Verdict
from qrl.rewards.base import Sample, Scorer, ScoreResult
from qrl.rewards.calibration import CalibrationCache
from qrl.rewards.components import COMPONENTS, component_values, weighted_sum


@dataclass(frozen=True)
class Timing:
    """Time limits and the time score. CPU time, not wall-clock: it does not grow when the machine is loaded."""

    timeout: float = 10.0  # CPU seconds without a (passing) reference solution; also the ceiling
    multiple: float = 10.0  # a problem with a reference: this many times the reference's CPU time ...
    floor: float = 1.0  # ... but at least this many seconds
    noise_floor: float = 0.05  # CPU times below this count as this much: noise earns nothing


class TestCaseReward(Scorer):
    """Runs each completion against its problem's tests in the sandbox; the reward comes from the verdict.

    Verdicts are cached by problem and normalised program: within one scorer's life, no program runs twice (identical
    programs also get identical rewards). Time limits and the time score come from the reference solution's own CPU
    time, measured once per problem on first use.
    """

    __test__ = False  # not a pytest test class, whatever its name
    name = "test_cases"
    components = tuple(COMPONENTS)

    def __init__(
        self,
        problems: Sequence[Problem],
        weights: RewardArguments | None = None,
        workers: int | None = None,
        timeout: float | None = None,
        timing: Timing | None = None,
        limits: Limits | None = None,
        namespaces: bool = True,
        sandbox: Sandbox | None = None,
        calibration_cache: str | Path | CalibrationCache | None = None,
    ):
        """``sandbox``: one already started (it then belongs to this scorer, which closes it); by default one is
        started on first use, with ``workers`` servers. ``calibration_cache``: a folder (or ``CalibrationCache``)
        that keeps reference runs between processes (``default_calibration_cache()`` is the score command's);
        None: every scorer runs each reference once."""
        super().__init__()
        problems_module.check_executors(problems)  # say now, not mid-training, if some cannot run here (no q)
        self.problems = {p.task_id: p for p in problems}
        self.weights = weights or RewardArguments()
        self.timing = replace(timing or Timing(), **({"timeout": timeout} if timeout is not None else {}))
        if self.timing.timeout <= 0:
            raise UserError(f"the timeout must be positive, got {self.timing.timeout}")
        self.limits = limits or Limits()
        self.workers = workers or default_workers()
        self._namespaces = namespaces
        self._sandbox: Sandbox | None = sandbox
        self._lock = threading.Lock()
        self._cache: dict[str, tuple[float, Future]] = {}  # program key -> (CPU limit, Future[Verdict])
        self._reference_cpu: dict[str, float | None] = {}
        self.reference_failures: dict[str, Verdict] = {}
        self.programs_run = 0  # sandbox runs (a stdin/stdout program runs once per test)
        self.cache_hits = 0
        self.answers_run = 0  # answers (not references) that ran in the sandbox
        self.answers_as_reference = 0  # answers that were their problem's reference solution: its verdict served
        self.answers_repeated = 0  # answers that were an earlier answer's program: its verdict served
        self._reference_keys: set[str] = set()
        if calibration_cache is not None and not isinstance(calibration_cache, CalibrationCache):
            calibration_cache = CalibrationCache(calibration_cache)
        self.calibration_cache: CalibrationCache | None = calibration_cache
        self.calibration_cache_refused = ""  # why the cache is not used with this sandbox, once that is known
        self.calibrations_run = 0  # reference runs launched here
        self.calibrations_loaded = 0  # reference verdicts read back from the calibration cache

    @property
    def sandbox(self) -> Sandbox:
        with self._lock:
            if self._sandbox is None:
                executors = {problems_module.EXECUTORS.get(p.language) for p in self.problems.values()}
                preload = sorted({m for e in executors if e is not None for m in e.preload})
                expose = problems_module.sandbox_paths({p.language for p in self.problems.values()})
                hide = {p.where.rsplit(":", 1)[0] for p in self.problems.values() if p.where}  # their tests
                if self.calibration_cache is not None:
                    hide.add(str(self.calibration_cache.prepared()))
                self._sandbox = Sandbox(self.workers, preload=preload, namespaces=self._namespaces, expose=expose,
                                        hide=hide)  # fmt: skip
            return self._sandbox

    def close(self) -> None:
        with self._lock:
            if self._sandbox is not None:
                self._sandbox.close()
                self._sandbox = None

    def score_samples(self, samples: Sequence[Sample]) -> list[ScoreResult]:
        if any(s.task_id is None for s in samples):
            raise UserError("test-case rewards need a 'task_id' column in the dataset")
        return self.score([(s.task_id, s.completion) for s in samples])

    def score(
        self, items: Sequence[tuple[Problem | str, str]], progress: Callable[[int], None] | None = None
    ) -> list[ScoreResult]:
        """Score (problem or task id, completion) pairs, in parallel; results come back in input order.
        ``progress(n)`` is called (from worker threads) as samples finish."""
        chosen = [self.problem(p) for p, _ in items]
        self._calibrate({p.task_id for p in chosen})
        submissions = [
            problems_module.prepare(p, c, self.limits.output) for p, (_, c) in zip(chosen, items, strict=True)
        ]
        futures = self._verdicts(submissions)
        self._count_answers(submissions, [cached for _future, cached in futures])
        if progress is not None:
            for future, _cached in futures:
                future.add_done_callback(lambda _f: progress(1))
        return [
            self._result(sub, f.result(), cached)
            for sub, (f, cached) in zip(submissions, futures, strict=True)
        ]

    def _count_answers(self, submissions: Sequence[Submission], cached: Sequence[bool]) -> None:
        with self._lock:
            for sub, hit in zip(submissions, cached, strict=True):
                if not hit:
                    self.answers_run += bool(sub.jobs)
                elif sub.key in self._reference_keys:
                    self.answers_as_reference += 1
                else:
                    self.answers_repeated += 1

    def reward(self, problem: Problem, verdict: Verdict) -> tuple[float | None, dict[str, float]]:
        """The reward for a verdict and its components (unweighted, ``qrl.rewards.components``); None for infra
        errors, which say nothing of the program."""
        if verdict.status == "infra_error":
            return None, {}
        values = component_values(problem, verdict, self.time_score(problem, verdict))
        return weighted_sum(values, self.weights), values

    def limits_for(self, problem: Problem) -> Limits:
        """An answer's limits: ``multiple`` x its reference's CPU time, at least ``floor``, at most ``timeout``."""
        reference = self._reference_cpu.get(problem.task_id)
        timing = self.timing
        cpu = (
            timing.timeout
            if reference is None
            else min(timing.timeout, max(timing.floor, timing.multiple * reference))
        )
        return self._limits_at(cpu)

    def _limits_at(self, cpu: float) -> Limits:
        """The limits at one CPU limit; the wall clock always follows it. References run at ``timeout``, the most
        generous, under the same rule as answers: a verdict reached there may serve an identical answer."""
        return replace(self.limits, cpu_time=cpu, wall_time=None)

    def problem(self, problem: Problem | str) -> Problem:
        """The problem, by itself (it joins the scorer's problems) or by task id."""
        if isinstance(problem, Problem):
            return self.problems.setdefault(problem.task_id, problem)
        try:
            return self.problems[str(problem)]
        except KeyError:
            raise UserError(f"unknown task_id {problem!r}") from None

    def _calibrate(self, task_ids: set[str]) -> None:
        """Run each new problem's reference once, under the most generous limits, and remember its CPU time. Its
        verdict stays in the verdict cache, so an answer that is the reference does not run again; with a
        calibration cache, a reference judged before (same program, tests, limits, machine) is read back instead
        of run, and one judged now is stored."""
        todo = [self.problems[t] for t in sorted(task_ids) if t not in self._reference_cpu]
        if not todo:
            return
        limits = self._limits_at(self.timing.timeout)
        submissions = [
            problems_module.prepare_program(p, p.reference or "", self.limits.output) for p in todo if p.reference
        ]
        with self._lock:
            self._reference_keys.update(sub.key for sub in submissions)
        stored = self._stored_calibrations(submissions, limits)
        fresh = [sub for sub, (_key, verdict) in zip(submissions, stored, strict=True) if verdict is None]
        futures = iter(self._verdicts(fresh, limits.cpu_time))
        with self._lock:
            self.calibrations_run += len(fresh)
        for problem in todo:
            self._reference_cpu.setdefault(problem.task_id, None)
        for sub, (key, verdict) in zip(submissions, stored, strict=True):
            if verdict is None:
                verdict = next(futures)[0].result()
                if key is not None and self.calibration_cache is not None and verdict.status != "infra_error":
                    self.calibration_cache.store(key, sub.problem.task_id, verdict)
            if verdict.passed:
                self._reference_cpu[sub.problem.task_id] = verdict.cpu_time
            else:
                self.reference_failures[sub.problem.task_id] = verdict

    def _stored_calibrations(
        self, submissions: Sequence[Submission], limits: Limits
    ) -> list[tuple[str | None, Verdict | None]]:
        """(calibration cache key, stored verdict or None) per reference. A verdict read back also enters the
        verdict cache under ``limits``, as a run here would have, so an identical answer reuses it."""
        cache = self.calibration_cache
        if cache is None or not submissions or not self._calibration_cache_safe():
            return [(None, None)] * len(submissions)
        out: list[tuple[str | None, Verdict | None]] = []
        for sub in submissions:
            key = cache.key(sub, limits)
            verdict = cache.load(key)
            out.append((key, verdict))
            if verdict is None:
                continue
            with self._lock:
                self.calibrations_loaded += 1
                if sub.key not in self._cache:
                    done: Future = Future()
                    done.set_result(verdict)
                    self._cache[sub.key] = (limits.cpu_time, done)
        return out

    def _calibration_cache_safe(self) -> bool:
        """Whether this sandbox's programs cannot write the user's files: read-only mounts, or a uid of their own.
        Without either (no namespaces, not root), a program could forge a calibration: the cache is not used."""
        if self.calibration_cache_refused:
            return False
        isolation = self.sandbox.isolation
        if isolation.mount_namespace or isolation.separate_uid:
            return True
        self.calibration_cache_refused = "programs could write it (no mount namespace, no uid of their own)"
        return False

    def _verdicts(
        self, submissions: Sequence[Submission], cpu_limit: float | None = None
    ) -> list[tuple[Future, bool]]:
        """A future verdict per submission, and whether it came from the cache; new programs go to the sandbox."""
        out, launch = [], []
        with self._lock:
            for sub in submissions:
                limits = self._limits_at(cpu_limit) if cpu_limit else self.limits_for(sub.problem)
                entry = self._cache.get(sub.key)
                if entry is not None and verdict_reusable(*entry, limits.cpu_time):
                    self.cache_hits += 1
                    out.append((entry[1], True))
                    continue
                future: Future = Future()
                self._cache[sub.key] = (limits.cpu_time, future)
                launch.append((sub, limits, future))
                out.append((future, False))
        for sub, limits, future in launch:
            self._launch(sub, limits, future)
        return out

    def _launch(self, sub: Submission, limits: Limits, verdict: Future) -> None:
        def settle(results: list[RunResult]) -> None:
            judged = problems_module.judge(sub, results)
            if judged.status == "infra_error":  # says nothing about the program: the next call tries again
                with self._lock:
                    if self._cache.get(sub.key, (0, None))[1] is verdict:
                        del self._cache[sub.key]
            verdict.set_result(judged)

        if not sub.jobs:
            settle([])
            return
        runs: list[Future] = [self.sandbox.submit(Program(job.source, job.stdin, limits)) for job in sub.jobs]
        with self._lock:
            self.programs_run += len(runs)
        remaining = [len(runs)]
        lock = threading.Lock()

        def finished(_run: Future) -> None:
            with lock:
                remaining[0] -= 1
                if remaining[0]:
                    return
            try:
                results = [r.result() for r in runs]
            except Exception as e:  # noqa: BLE001 -- a sandbox bug: the sample is not judged, never zero
                results = [RunResult("infra_error", detail=f"{type(e).__name__}: {e}")]
            settle(results)

        for run in runs:
            run.add_done_callback(finished)

    def time_score(self, problem: Problem, verdict: Verdict) -> float:
        """The reference's CPU time over this program's (1 when as fast or faster); both are raised to the noise
        floor first, so that the score is stable from run to run. No reference, no time score (the ``time``
        component counts it for passing programs only)."""
        reference = self._reference_cpu.get(problem.task_id)
        if reference is None:
            return 0.0
        floor = self.timing.noise_floor
        return round(min(1.0, max(reference, floor) / max(verdict.cpu_time, floor)), 3)

    def _result(self, sub: Submission, verdict: Verdict, cached: bool) -> ScoreResult:
        reward, components = self.reward(sub.problem, verdict)
        return ScoreResult(
            task_id=sub.problem.task_id,
            reward=reward,
            components=components,
            status=verdict.status,
            tests_passed=verdict.tests_passed,
            tests_total=verdict.tests_total,
            cpu_time=verdict.cpu_time,
            wall_time=verdict.wall_time,
            cached=cached,
            detail=verdict.detail,
            same_value=verdict.same_value,
        )


def verdict_reusable(cpu_limit: float, verdict: Future, wanted: float) -> bool:
    """Whether a verdict reached under ``cpu_limit`` holds under ``wanted`` too: a run that finished within the new
    limit would end the same; a timeout holds under any tighter limit."""
    if cpu_limit == wanted:
        return True
    if not verdict.done():
        return False
    result: Verdict = verdict.result()
    if result.status == "timeout":
        return cpu_limit >= wanted
    # under a tighter limit, its wall-clock backstop (unstretched: 2 x CPU + 1 s) must have held too
    return result.cpu_time <= wanted and (wanted >= cpu_limit or result.wall_time <= Limits(cpu_time=wanted).wall)
