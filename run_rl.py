"""Reinforcement learning for code-generation models (Q/kdb+ and Python).

    python run_rl.py --base_model /path/to/sft_model --output_dir outputs/rl_run --learning_rate 2e-6
    python run_rl.py --use_dpo                  # Direct Preference Optimization on preference pairs
    python run_rl.py --test_case_rewards_only   # GRPO on test-case rewards
    python run_rl.py --use_reward_model         # PPO against a learned reward model

Options come from built-in defaults, then config.yaml (or --config FILE), then these flags.
"""

from __future__ import annotations

import os
import sys
import warnings

from data_loading import UserError
from run_config import RL_SECTIONS, parse_config, validate_training


def main(argv: list[str] | None = None) -> int:
    # TRL and PEFT still call the old gradient-checkpointing names; the warning is theirs, not the user's.
    warnings.filterwarnings("ignore", message=".*gradient_checkpointing.* is deprecated", category=FutureWarning)
    try:
        cfg = parse_config(RL_SECTIONS, argv, prog="run_rl.py", description=__doc__.split("\n\n")[0])
        validate_training(cfg)
        import train_rl  # heavy imports only once the options are known to be good

        train_rl.method_of(cfg)
        folder = train_rl.train(cfg)
    except UserError as e:
        print(f"run_rl.py: error: {e}", file=sys.stderr)
        return 2
    if os.environ.get("RANK", "0") == "0":
        print(f"Run folder: {folder.root}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
