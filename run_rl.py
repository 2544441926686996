"""Reinforcement learning for code-generation models (Q/kdb+ and Python).

    python run_rl.py --base_model /path/to/sft_model --output_dir outputs/rl_run --learning_rate 2e-6
    python run_rl.py --use_dpo                  # Direct Preference Optimization on preference pairs
    python run_rl.py --test_case_rewards_only   # GRPO on test-case rewards
    python run_rl.py --use_reward_model         # PPO against a learned reward model

Options come from built-in defaults, then config.yaml (or --config FILE), then these flags. The same command is
``qrl rl`` once the package is installed.
"""

from __future__ import annotations

import sys

from qrl.cli import rl as main

__all__ = ["main"]

if __name__ == "__main__":
    sys.exit(main())
