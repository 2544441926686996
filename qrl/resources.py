"""The files the toolkit ships: the default config, the accelerate and reward-model configs, and the default data.

In a checkout, ``qrl/shipped`` holds links to the folder's own ``config.yaml``, ``configs/`` and ``data/``; an
installed package holds copies. Either way, ``qrl rl`` works from an empty folder.
"""

from __future__ import annotations

from pathlib import Path

SHIPPED = Path(__file__).resolve().parent / "shipped"
DEFAULT_CONFIG = SHIPPED / "config.yaml"
REWARD_MODEL_CONFIG = SHIPPED / "configs" / "reward_model.yaml"
DATA = SHIPPED / "data"
PREFERENCES = DATA / "preferences.jsonl"
PREFERENCES_EVAL = DATA / "preferences_eval.jsonl"
PROBLEMS = DATA / "problems" / "python.jsonl"


def shipped_path(path: str | Path) -> Path:
    """``path`` as given when it exists, else the shipped file of that name relative to the toolkit's folder
    (``data/problems/python.jsonl`` from any folder); a file of the user's own of that name wins."""
    given = Path(path)
    if given.exists() or given.is_absolute():
        return given
    inside = SHIPPED / given
    return inside if inside.exists() else given
