"""The training paths ``run_rl.py`` dispatches to: DPO, reward-model PPO, GRPO on test-case rewards, and GRPO on
test cases plus code quality (the default), each writing its run folder. The code lives in ``qrl.training.paths``;
this face keeps the documented names importable from a checkout."""

from __future__ import annotations

from qrl.training.paths import (
    METHODS,
    PassAtKEvaluator,
    evaluate_only,
    method_of,
    train,
    train_dpo,
    train_grpo,
    train_ppo,
)

__all__ = ["METHODS", "PassAtKEvaluator", "evaluate_only", "method_of", "train", "train_dpo", "train_grpo",
           "train_ppo"]  # fmt: skip
