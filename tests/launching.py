"""Launching the toolkit's commands in two processes (gloo on the CPU) with `accelerate launch` and the shipped
configurations, and killing such a launch: shared by the multi-process tests."""

from __future__ import annotations

import contextlib
import json
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def launch_command(config: str, argv: list[str], script: str = "run_rl.py", processes: int = 2) -> list[str]:
    """`processes` processes under `accelerate launch` with one of the shipped configurations."""
    return [sys.executable, "-m", "accelerate.commands.launch", "--config_file",
            str(ROOT / "configs" / "accelerate" / config), "--num_processes", str(processes),
            "--main_process_port", str(free_port()), str(ROOT / script), *argv]


def accelerate_launch(config: str, argv: list[str], cwd: Path, script: str = "run_rl.py",
                      check: bool = True) -> subprocess.CompletedProcess:
    proc = subprocess.run(launch_command(config, argv, script), cwd=cwd, capture_output=True, text=True, timeout=300)
    if check:
        assert proc.returncode == 0, proc.stderr[-3000:]
    return proc


def kill_after_first_checkpoint(config: str, argv: list[str], cwd: Path, run: Path) -> None:
    """Start a run and SIGKILL the launcher and both ranks as soon as a checkpoint is complete."""
    import psutil

    from qrl.config.run_folder import RunFolder

    with open(cwd / "killed_run.log", "w") as log:
        proc = subprocess.Popen(launch_command(config, argv), cwd=cwd, stdout=log, stderr=log)
        deadline = time.monotonic() + 300
        try:
            while RunFolder(run).latest_checkpoint() is None:
                assert proc.poll() is None, (cwd / "killed_run.log").read_text()[-3000:]
                assert time.monotonic() < deadline, "no checkpoint within 300 s"
                time.sleep(0.05)
        finally:  # the ranks run in sessions of their own: kill the whole tree, not a process group
            try:
                launcher = psutil.Process(proc.pid)
                tree = [*launcher.children(recursive=True), launcher]
            except psutil.NoSuchProcess:  # it ended already: the assertion above says why
                tree = []
            for p in tree:
                with contextlib.suppress(psutil.NoSuchProcess):
                    p.send_signal(signal.SIGKILL)
            psutil.wait_procs(tree, timeout=30)
            proc.wait()


def steps(path: Path) -> list[int]:
    return [e["step"] for e in json.loads(path.read_text())["steps"]]


def killed_then_resumed(config: str, argv: list[str], cwd: Path, run: Path, path_name: str, max_steps: int) -> int:
    """A two-process run of `argv` (learning rate 1e-3, linear decay, `max_steps`), SIGKILLed after its first
    checkpoint and resumed with two processes: it ends as if never stopped (every step logged once, the schedule
    continued). Returns the step it was killed at."""
    from qrl.config.run_folder import RunFolder

    kill_after_first_checkpoint(config, argv, cwd, run)
    latest = RunFolder(run).latest_checkpoint()
    killed_at = int(latest.name.split("-")[1])
    assert killed_at < max_steps
    # two ranks, not two single-process runs: each saved its own random state into the one checkpoint
    assert sorted(p.name for p in latest.glob("rng_state*")) == ["rng_state_0.pth", "rng_state_1.pth"]
    resumed = accelerate_launch(config, [*argv, "--resume_from_checkpoint", "latest"], cwd)
    assert resumed.stdout.count("Run folder:") == 1
    assert f"{path_name}: training from step {killed_at} to step {max_steps}" in (
        run / "logs" / "training_log.txt").read_text()
    rewards = json.loads((run / "logs" / "rewards.json").read_text())["steps"]
    assert [e["step"] for e in rewards] == list(range(1, max_steps + 1))
    for e in rewards:  # linear decay across the restart
        assert e["learning_rate"] == pytest.approx(1e-3 * (max_steps + 1 - e["step"]) / max_steps)
    return killed_at
