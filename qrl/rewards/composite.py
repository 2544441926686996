"""The default training path's reward: test-case success plus code quality (plus, when given, a learned reward
model's score), each component logged by name."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace

from qrl import problems as problems_module
from qrl.problems import Problem
from qrl.rewards import quality as code_quality
from qrl.rewards.base import Sample, Scorer, ScoreResult
from qrl.rewards.components import QUALITY_COMPONENTS, quality_values
from qrl.rewards.learned import LearnedReward
from qrl.rewards.quality import QualityConfig, QualityScore
from qrl.rewards.test_cases import TestCaseReward


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
    components = TestCaseReward.components + tuple(QUALITY_COMPONENTS)

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
        problems = [self.test_cases.problem(s.task_id) for s in samples]
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
        components = {**result.components, **quality_values(q)}
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
