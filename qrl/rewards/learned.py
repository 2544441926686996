"""A learned reward: a reward model trained by ``train_reward_model.py`` (a one-output sequence classifier) as a
scorer. torch and transformers load when one is made, never when this module is imported."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from qrl.data.records import UserError
from qrl.problems import Problem
from qrl.rewards.base import JudgedAnswer, Sample, Scorer, ScoreResult, completion_text


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

        from qrl.models.loading import check_reward_model, load_tokenizer

        folder = check_reward_model(path)
        self.tokenizer = load_tokenizer(str(folder))
        device = device or ("cuda" if torch.cuda.is_available() else "cpu")
        self.model = AutoModelForSequenceClassification.from_pretrained(folder, dtype=torch.float32).to(device).eval()
        self.model.config.pad_token_id = self.tokenizer.pad_token_id
        self.problems = {p.task_id: p for p in problems}
        self.batch_size, self.max_length = batch_size, max_length

    def score_texts(self, prompts: list, completions: list) -> list[float]:
        """One score per (prompt, answer); prompts are text or messages, answers text or assistant messages."""
        from qrl.models.loading import reward_model_texts, score_texts

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
        task_ids = kwargs.get("task_id") or [None] * len(scores)
        self.judged.add([JudgedAnswer(p, completion_text(c), ScoreResult(t, v, {"learned": v}))
                         for p, c, t, v in zip(prompts, completions or [], task_ids, scores, strict=True)])
        return scores

    def score_samples(self, samples: Sequence[Sample]) -> list[ScoreResult]:
        from qrl.models.loading import as_chat

        prompts = []
        for s in samples:
            if s.task_id not in self.problems:
                raise UserError(f"learned reward: unknown task_id {s.task_id!r} (no problem to take the prompt from)")
            prompts.append(as_chat(self.tokenizer, self.problems[s.task_id].prompt))
        scores = self.score_texts(prompts, [s.completion for s in samples])
        return [ScoreResult(s.task_id, v, {"learned": v}) for s, v in zip(samples, scores, strict=True)]
