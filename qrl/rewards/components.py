"""The reward's components, each a plain function, as TRL's reward functions are plain functions with weights.

``COMPONENTS`` maps a test-case component's name (its key in ``ScoreResult.components`` and its name in the logs) to
its function of (problem, verdict, time score) and the ``RewardArguments`` field that weighs it; the test-case reward
is the weighted sum over it, in its order. A new component is one function and one entry here, and its weight field
in ``qrl.config.arguments.RewardArguments``. ``QUALITY_COMPONENTS`` are the parts of a code-quality score that the
composite reward reports (its total weighed by ``reward_quality``).
"""

from __future__ import annotations

import functools
import operator
from collections.abc import Callable
from dataclasses import dataclass

from qrl.config.arguments import RewardArguments
from qrl.problems import Problem, Verdict
from qrl.rewards.quality import QualityScore

# statuses under which every test ran to its end: partial credit is fair (a run cut off by a limit got as far as
# timing let it)
JUDGED_ALL = ("passed", "failed", "runtime_error")


def pass_component(problem: Problem, verdict: Verdict, time_score: float) -> float:
    """1 when every test passed, else 0: the binary reward."""
    return float(verdict.passed)


def partial_component(problem: Problem, verdict: Verdict, time_score: float) -> float:
    """The fraction of tests passed, for programs that ran through every test; 0 for runs cut off by a limit."""
    judged_all = verdict.status in JUDGED_ALL and verdict.tests_total
    return verdict.tests_passed / verdict.tests_total if judged_all else 0.0


def all_pass_bonus_component(problem: Problem, verdict: Verdict, time_score: float) -> float:
    """1 when every test passed: the bonus of a partial-credit reward (the same condition as ``pass`` on purpose)."""
    return float(verdict.passed)


def time_component(problem: Problem, verdict: Verdict, time_score: float) -> float:
    """The time score (the reference's CPU time over the program's, at most 1), for passing programs only."""
    return time_score if verdict.passed else 0.0


@dataclass(frozen=True)
class Component:
    """One term of the reward: the function that gives its unweighted value, and the option that weighs it."""

    function: Callable[[Problem, Verdict, float], float]
    weight: str  # a RewardArguments field


COMPONENTS: dict[str, Component] = {
    "pass": Component(pass_component, "reward_pass"),
    "partial": Component(partial_component, "reward_partial"),
    "all_pass_bonus": Component(all_pass_bonus_component, "reward_all_pass_bonus"),
    "time": Component(time_component, "reward_time"),
}


def component_values(problem: Problem, verdict: Verdict, time_score: float) -> dict[str, float]:
    """Every component's unweighted value for one verdict, by name, in the registry's order."""
    return {name: c.function(problem, verdict, time_score) for name, c in COMPONENTS.items()}


def weighted_sum(values: dict[str, float], weights: RewardArguments) -> float:
    """The reward: each component's value times its weight, added in the registry's order, rounded to 6 places."""
    terms = [getattr(weights, COMPONENTS[name].weight) * value for name, value in values.items()]
    return round(functools.reduce(operator.add, terms), 6)


QUALITY_COMPONENTS: dict[str, Callable[[QualityScore], float]] = {
    "quality": lambda q: q.total,
    "quality_style": lambda q: q.style,
    "quality_docs": lambda q: q.docs,
    "quality_complexity": lambda q: q.complexity,
}


def quality_values(score: QualityScore) -> dict[str, float]:
    """A quality score's parts, by component name."""
    return {name: part(score) for name, part in QUALITY_COMPONENTS.items()}
