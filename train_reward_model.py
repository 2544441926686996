"""Train a reward model (a one-output sequence classifier) on preferences, with TRL's RewardTrainer.

    python train_reward_model.py --data_path data/preferences.jsonl --output_dir outputs/rm --learning_rate 1e-5
    python train_reward_model.py --data_path rankings.jsonl --data_format rankings
    python train_reward_model.py --data_path demos.jsonl --demo_negatives both
    python train_reward_model.py --mine_pairs_from data/problems/python.jsonl --mine_samples 8

Data: preference pairs, quality rankings, expert demonstrations, or pairs mined from test runs; see
docs/reward_models.md. Options come from built-in defaults, then configs/reward_model.yaml (or --config
FILE), then these flags. The model lands in OUTPUT_DIR/<run name>/checkpoints/final.
"""

from __future__ import annotations

import sys

from qrl.cli import reward_model as main

if __name__ == "__main__":
    sys.exit(main())
