"""The scorers — test-case rewards, code quality, learned reward models and their composite — and the ``score``
command. The code lives in ``qrl.rewards``; this face keeps the documented names importable from a checkout.

    python reward_model.py score --problems P --completions C --output O [--workers N] [--timeout S]
"""

from __future__ import annotations

import sys

from qrl.rewards.scoring import (
    CompositeReward,
    LearnedReward,
    Sample,
    Scorer,
    ScoreResult,
    TestCaseReward,
    Timing,
    completion_text,
    main,
    pass_at_k,
    pass_at_k_table,
    summarize_samples,
)

__all__ = ["CompositeReward", "LearnedReward", "Sample", "ScoreResult", "Scorer", "TestCaseReward", "Timing",
           "completion_text", "main", "pass_at_k", "pass_at_k_table", "summarize_samples"]  # fmt: skip

if __name__ == "__main__":
    sys.exit(main())
