"""The scorers — test-case rewards, code quality, learned reward models and their composite — and the ``score``
command. The code lives in ``qrl.rewards``; this face keeps the documented names importable from a checkout.

    python reward_model.py score --problems P --completions C --output O [--workers N] [--timeout S]
"""

from __future__ import annotations

import sys

from qrl.rewards.base import Sample, Scorer, ScoreResult, completion_text
from qrl.rewards.composite import CompositeReward
from qrl.rewards.learned import LearnedReward
from qrl.rewards.pass_at_k import pass_at_k, pass_at_k_table, summarize_samples
from qrl.rewards.score import main
from qrl.rewards.test_cases import TestCaseReward, Timing

__all__ = ["CompositeReward", "LearnedReward", "Sample", "ScoreResult", "Scorer", "TestCaseReward", "Timing",
           "completion_text", "main", "pass_at_k", "pass_at_k_table", "summarize_samples"]  # fmt: skip

if __name__ == "__main__":
    sys.exit(main())
