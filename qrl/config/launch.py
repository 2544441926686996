"""Which process of a launch this is, read from the launcher's environment (``accelerate launch`` and ``torchrun``
set ``RANK`` and ``WORLD_SIZE``): what prints, and what resume checks, before accelerate itself is set up."""

from __future__ import annotations

import os


def is_main_process() -> bool:
    return os.environ.get("RANK", "0") == "0"


def world_size() -> int:
    return int(os.environ.get("WORLD_SIZE", "1"))
