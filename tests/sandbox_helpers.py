"""Checks shared by the sandbox and scorer tests."""

from __future__ import annotations

import time

from qrl.execution import Sandbox
from qrl.execution.accounting import children, descendants


def program_processes(box: Sandbox) -> set[int]:
    """Processes below the sandbox servers: only programs' can be there, and none once the sandbox is idle."""
    found: set[int] = set()
    for worker in box._workers:
        if worker.proc is None:
            continue
        below = descendants(worker.proc.pid)
        if box.isolation.pid_namespace:
            below -= set(children(worker.proc.pid))  # the server itself, under its launcher
        found |= below
    return found


def wait_until_idle(box: Sandbox, seconds: float = 2.0) -> set[int]:
    deadline = time.monotonic() + seconds
    while (left := program_processes(box)) and time.monotonic() < deadline:
        time.sleep(0.02)
    return left
