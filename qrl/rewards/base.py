"""What every scorer is: a ``Scorer`` gives each sample a ``ScoreResult`` (a reward, or None where the sample could
not be judged, plus named components) and plugs into TRL's GRPOTrainer as a reward function, sync or async.

The scorers (``qrl.rewards.test_cases``, ``composite``, ``learned``) import torch inside themselves, never at the
top: ``python reward_model.py score`` must start without it.
"""

from __future__ import annotations

import threading
from collections import Counter, deque
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import Any, get_args

from qrl.data.records import UserError
from qrl.problems import Status

STATUSES: tuple[str, ...] = get_args(Status)


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


@dataclass(frozen=True)
class JudgedAnswer:
    """One answer judged through the reward-function interface: what was asked, what came back, and its result."""

    prompt: Any
    completion: str
    result: ScoreResult


class JudgedAnswers:
    """The answers a scorer judged most recently, at most ``limit``, for the tables a person reads (the W&B
    completions table): ``take`` hands them over and forgets them. Scoring runs in threads: the record is locked."""

    def __init__(self, limit: int = 1024):
        self._answers: deque[JudgedAnswer] = deque(maxlen=limit)
        self._lock = threading.Lock()

    def add(self, answers: Sequence[JudgedAnswer]) -> None:
        with self._lock:
            self._answers.extend(answers)

    def take(self) -> list[JudgedAnswer]:
        with self._lock:
            out = list(self._answers)
            self._answers.clear()
        return out


class Scorer:
    """A scorer that gives per-sample rewards plus named components, usable as a TRL reward function.

    Subclasses set ``name`` and ``components`` and implement ``score_samples``. An instance is a synchronous TRL
    reward function; ``async_reward`` is the same as an async one (TRL runs those concurrently, on its event loop).
    """

    name = "scorer"
    components: tuple[str, ...] = ()

    def __init__(self) -> None:
        self.__name__ = self.name  # what TRL calls the reward in its logs
        self.judged = JudgedAnswers()  # what the reward-function interface judged, for the tracking tables

    def score_samples(self, samples: Sequence[Sample]) -> list[ScoreResult]:
        raise NotImplementedError

    def __call__(self, prompts: list | None = None, completions: list | None = None, **kwargs: Any) -> list:
        """TRL's reward-function signature: dataset columns arrive as lists in ``kwargs``; returns one reward per
        completion, None where it could not be judged (TRL masks those)."""
        samples = _samples(completions or [], kwargs)
        results = self.score_samples(samples)
        self.log(results, kwargs)
        asked = list(prompts) if prompts is not None and len(prompts) == len(samples) else [None] * len(samples)
        self.judged.add([JudgedAnswer(p, s.completion, r) for p, s, r in zip(asked, samples, results, strict=True)])
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
