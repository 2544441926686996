"""The toolkit's trainers on TRL: DPO, GRPO and reward-model training configured from the specification's options,
and the project's own PPO (TRL 1.16 has none). The code lives in ``qrl.training``; this face keeps the documented
names importable from a checkout."""

from __future__ import annotations

from qrl.models.loading import load_tokenizer
from qrl.training.ppo import AdaptiveKLController, PPOConfig, PPOTrainer, ppo_config
from qrl.training.prompts import build_prompt, sample_completions
from qrl.training.trl import (
    build_dpo_trainer,
    build_grpo_trainer,
    build_reward_trainer,
    load_for_generation,
    resolve_base_model,
    save_final_model,
    trl_arguments,
)

__all__ = ["AdaptiveKLController", "PPOConfig", "PPOTrainer", "build_dpo_trainer", "build_grpo_trainer",
           "build_prompt", "build_reward_trainer", "load_for_generation", "load_tokenizer", "ppo_config",
           "resolve_base_model", "sample_completions", "save_final_model", "trl_arguments"]  # fmt: skip
