"""Stopping a run on SIGINT or SIGTERM without losing a finished step, and saying what happened in one line.

Ctrl-C, and the SIGTERM that SLURM, Kubernetes, ``timeout`` and spot preemption send before a kill, are ordinary
ways for a run to end. While a trainer is between steps nothing is worth keeping of a half-done one, so:

- ``handle_signals`` (around a whole command): a signal raises ``Interrupted`` where the program is, as Ctrl-C
  raises KeyboardInterrupt, so that ``with`` blocks close (the sandbox stops) and nothing half-written is renamed
  into place; the command prints one line and exits 130 (SIGINT) or 143 (SIGTERM).
- ``deferred`` (around ``trainer.train``): the first signal only asks the run to stop; ``StopAtSignal``
  (``qrl.config.run_folder``) turns that into "save a checkpoint and stop" at the next step boundary, agreed by
  every rank. A second signal exits at once; checkpoints are written under a temporary name
  (``RunFolder.publish_checkpoint``), so even then the newest complete one is what ``latest`` resumes from.
"""

from __future__ import annotations

import contextlib
import os
import signal
import sys
from collections.abc import Iterator

from qrl.config import launch

SIGNALS = (signal.SIGINT, signal.SIGTERM)


class Interrupted(Exception):
    """The run was stopped by a signal; the message says what was kept and how to go on."""

    def __init__(self, signum: int, message: str = ""):
        self.signum = signum
        self.signame = signal.Signals(signum).name
        self.message = message  # empty: stopped where it was, before anything was kept
        super().__init__(message or f"interrupted ({self.signame})")

    @property
    def exit_code(self) -> int:
        return 128 + self.signum


class _State:
    prog = "qrl"
    received: int | None = None  # the first signal of this command
    deferring = False


_state = _State()


def received() -> int | None:
    """The first SIGINT/SIGTERM this command got, or None."""
    return _state.received


def stop_requested(signum: int) -> None:
    """Another rank was signalled: this one stops for the same reason (and a signal of its own is its second)."""
    _state.received = _state.received or signum


def _handler(signum: int, frame) -> None:
    if _state.received is not None:  # the second signal: stop now, whatever is in progress
        print(f"{_state.prog}: {signal.Signals(signum).name}, a second signal: stopping at once, without saving",
              file=sys.stderr, flush=True)
        os._exit(128 + signum)
    _state.received = signum
    if not _state.deferring:
        raise Interrupted(signum)
    if launch.is_main_process():
        print(f"{_state.prog}: {signal.Signals(signum).name}: saving a checkpoint at the end of this step "
              "(send it again to stop at once)", file=sys.stderr, flush=True)


@contextlib.contextmanager
def handle_signals(prog: str) -> Iterator[None]:
    """For the length of one command: SIGINT and SIGTERM raise ``Interrupted`` (outside ``deferred``)."""
    previous = {s: signal.getsignal(s) for s in SIGNALS}
    _state.prog, _state.received, _state.deferring = prog, None, False
    for s in SIGNALS:
        signal.signal(s, _handler)
    try:
        yield
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)


@contextlib.contextmanager
def deferred() -> Iterator[None]:
    """Within it a signal only asks the run to stop (``received()``); it does not break the code it lands in."""
    before = _state.deferring
    _state.deferring = True
    try:
        yield
    finally:
        _state.deferring = before


def agreed_signal() -> int:
    """The signal any rank received (0 for none): every rank must stop at the same step, or one waits forever in
    the next collective. One all-reduce of one number per step, only with several processes."""
    import torch.distributed as dist

    mine = _state.received or 0
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return mine
    import torch
    from accelerate import PartialState

    flag = torch.tensor([mine], device=PartialState().device)
    dist.all_reduce(flag, op=dist.ReduceOp.MAX)
    return int(flag.item())

