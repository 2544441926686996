"""SIGINT, SIGTERM and a full disk: the finished steps are kept, the run says so in one line, and resume goes on
from the saved step (qrl/config/interrupts.py, RunFolder.publish_checkpoint and write_failure)."""

from __future__ import annotations

import errno
import importlib.util
import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import write_jsonl

ROOT = Path(__file__).resolve().parents[1]


def steps(path: Path) -> list[int]:
    return [e["step"] for e in json.loads(path.read_text())["steps"]] if path.is_file() else []


def start(script: str, argv: list[str], cwd: Path, **env_vars: str) -> subprocess.Popen:
    env = {**os.environ, "PYTHONUNBUFFERED": "1", **env_vars}
    err = open(cwd / "stderr.txt", "w")  # noqa: SIM115 -- closed with the process, in stop()
    return subprocess.Popen([sys.executable, str(ROOT / script), *argv], cwd=cwd, env=env,
                            stdout=subprocess.DEVNULL, stderr=err)


def wait_for_step(proc: subprocess.Popen, rewards: Path, step: int, cwd: Path, timeout: float = 240) -> None:
    deadline = time.monotonic() + timeout
    while not steps(rewards) or steps(rewards)[-1] < step:
        assert proc.poll() is None, (cwd / "stderr.txt").read_text()[-3000:]
        assert time.monotonic() < deadline, f"step {step} not reached in {timeout} s"
        time.sleep(0.02)


def stop(proc: subprocess.Popen, signum: int, cwd: Path) -> tuple[int, str]:
    proc.send_signal(signum)
    code = proc.wait(timeout=240)
    return code, (cwd / "stderr.txt").read_text()


def interrupted_line(err: str) -> int:
    """The one line a stopped run ends with; returns the step it names."""
    assert "Traceback" not in err, err[-3000:]
    lines = [line for line in err.splitlines() if "interrupted at step" in line]
    assert len(lines) == 1, err[-3000:]
    m = re.search(r"interrupted at step (\d+) \((SIGINT|SIGTERM)\): saved (\S+)/checkpoint-\1; resume with "
                  r"--resume_from_checkpoint latest$", lines[0])
    assert m, lines[0]
    return int(m.group(1))


def check_nothing_lost(run: Path, step: int) -> None:
    """The saved checkpoint is the last finished step: every step logged before the signal is in it."""
    state = json.loads((run / "checkpoints" / f"checkpoint-{step}" / "trainer_state.json").read_text())
    assert state["global_step"] == step
    assert steps(run / "logs" / "rewards.json")[-1] == step
    assert not list((run / "checkpoints").glob(".incomplete/checkpoint-*"))
    assert f"interrupted at step {step}" in (run / "logs" / "training_log.txt").read_text()
    assert not (run / "checkpoints" / "final").exists()


def interrupt_and_resume(script: str, argv: list[str], cwd: Path, run: Path, signum: int, max_steps: int,
                         after: int) -> int:
    proc = start(script, argv, cwd)
    wait_for_step(proc, run / "logs" / "rewards.json", after, cwd)
    code, err = stop(proc, signum, cwd)
    assert code == 128 + signum, err[-3000:]
    step = interrupted_line(err)
    assert after <= step < max_steps
    check_nothing_lost(run, step)
    done = subprocess.run([sys.executable, str(ROOT / script), *argv, "--resume_from_checkpoint", "latest"],
                          cwd=cwd, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    assert steps(run / "logs" / "rewards.json") == list(range(1, max_steps + 1))
    assert f"training from step {step} to step {max_steps}" in (run / "logs" / "training_log.txt").read_text()
    return step


def with_steps(argv: list[str], max_steps: int, **flags: str) -> list[str]:
    argv = argv[:]
    for flag, value in {"max_steps": str(max_steps), **flags}.items():
        if f"--{flag}" in argv:
            argv[argv.index(f"--{flag}") + 1] = value
        else:
            argv += [f"--{flag}", value]
    return argv


# --- each training path ----------------------------------------------------------------------------------------
@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM])
def test_dpo_stops_at_a_step_boundary_saves_and_resumes(dpo_argv, tmp_path, signum):
    argv = with_steps(dpo_argv, 80, save_steps="1000", eval_steps="0", logging_steps="1")
    interrupt_and_resume("run_rl.py", argv, tmp_path, tmp_path / "out" / "t", signum, 80, after=3)


def test_wandb_run_of_an_interrupted_run_says_so(dpo_argv, tmp_path):
    argv = with_steps(dpo_argv, 80, save_steps="1000", eval_steps="0", logging_steps="1") + ["--wandb"]
    proc = start("run_rl.py", argv, tmp_path, WANDB_MODE="offline", WANDB_DIR=str(tmp_path))
    wait_for_step(proc, tmp_path / "out" / "t" / "logs" / "rewards.json", 3, tmp_path)
    code, err = stop(proc, signal.SIGTERM, tmp_path)
    assert code == 143, err[-3000:]
    step = interrupted_line(err)
    (records,) = tmp_path.glob("wandb/offline-run-*/run-*.wandb")  # the offline run's protobuf records
    data = records.read_bytes()
    assert b"interrupted" in data and f"SIGTERM at step {step}".encode() in data


def grpo_problems(tmp_path: Path) -> Path:
    rows = [{"task_id": f"py/{i}", "language": "python", "split": "train", "difficulty": "easy",
             "prompt": f"Write a Python function `add{i}(a, b)` that returns a + b.", "entry_point": f"add{i}",
             "reference_solution": f"def add{i}(a, b):\n    return a + b\n",
             "tests": [{"args": [1, 2], "expected": 3}]} for i in range(4)]
    return write_jsonl(tmp_path / "problems.jsonl", rows)


def test_grpo_on_test_cases_stops_on_sigterm_and_resumes(tiny_model, tmp_path):
    argv = ["--test_case_rewards_only", "--base_model", str(tiny_model), "--train_data", str(grpo_problems(tmp_path)),
            "--output_dir", str(tmp_path / "out"), "--experiment_name", "g", "--max_steps", "40",
            "--save_steps", "100", "--eval_steps", "0", "--batch_size", "4", "--gradient_accumulation_steps", "1",
            "--num_generations", "4", "--max_completion_length", "8", "--workers", "1", "--logging_steps", "1"]
    interrupt_and_resume("run_rl.py", argv, tmp_path, tmp_path / "out" / "g", signal.SIGTERM, 40, after=2)


def test_ppo_stops_on_sigint_and_resumes(tiny_model, tiny_reward_model, preference_file, tmp_path):
    argv = ["--use_reward_model", "--reward_model_path", str(tiny_reward_model), "--base_model", str(tiny_model),
            "--preference_data", str(preference_file), "--output_dir", str(tmp_path / "out"),
            "--experiment_name", "p", "--max_steps", "60", "--save_steps", "100", "--eval_steps", "0",
            "--batch_size", "2", "--gradient_accumulation_steps", "1", "--max_completion_length", "8",
            "--max_seq_length", "96", "--ppo_epochs", "1", "--logging_steps", "1"]
    run = tmp_path / "out" / "p"
    step = interrupt_and_resume("run_rl.py", argv, tmp_path, run, signal.SIGINT, 60, after=3)
    assert (run / "checkpoints" / f"checkpoint-{step}" / "value_head.pt").is_file()


def test_reward_model_training_stops_on_sigterm_and_resumes(tiny_model, tmp_path):
    from conftest import preference_rows

    prefs = write_jsonl(tmp_path / "prefs.jsonl", preference_rows(8))
    argv = ["--base_model", str(tiny_model), "--data_path", str(prefs), "--output_dir", str(tmp_path / "out"),
            "--experiment_name", "rm", "--max_steps", "80", "--save_steps", "1000", "--eval_steps", "0",
            "--batch_size", "2", "--gradient_accumulation_steps", "1", "--max_seq_length", "64",
            "--logging_steps", "1"]
    interrupt_and_resume("train_reward_model.py", argv, tmp_path, tmp_path / "out" / "rm", signal.SIGTERM, 80,
                         after=3)


def test_a_second_signal_exits_at_once(tmp_path):
    """While a run is finishing its step, a second Ctrl-C (or SIGTERM) ends the process there and then; the
    checkpoint being written stays in the staging folder, which `latest` never looks at (test above)."""
    script = """
import os, signal, sys, time
from qrl.config import interrupts
with interrupts.handle_signals("run_rl.py"), interrupts.deferred():
    os.kill(os.getpid(), signal.SIGINT)
    time.sleep(0.2)
    assert interrupts.received() == signal.SIGINT
    print("asked to stop", flush=True)
    os.kill(os.getpid(), signal.SIGTERM)
    time.sleep(5)
    print("still running")
"""
    proc = subprocess.run([sys.executable, "-c", script], cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 143 and proc.stdout == "asked to stop\n", proc.stderr
    assert proc.stderr.splitlines() == [
        "run_rl.py: SIGINT: saving a checkpoint at the end of this step (send it again to stop at once)",
        "run_rl.py: SIGTERM, a second signal: stopping at once, without saving"]


def test_a_signal_before_training_starts_leaves_nothing(dpo_argv, tmp_path):
    proc = start("run_rl.py", dpo_argv, tmp_path)
    time.sleep(1.0)  # importing and loading: no step has run
    code, err = stop(proc, signal.SIGTERM, tmp_path)
    assert code == 143 and "Traceback" not in err, err[-3000:]
    assert "interrupted (SIGTERM) during start-up: nothing saved" in err
    assert not (tmp_path / "out" / "t").exists()


# --- a full disk -----------------------------------------------------------------------------------------------
def test_checkpoints_appear_only_when_complete_and_rotation_waits_for_them(tmp_path):
    from qrl.config.run_folder import RunFolder

    folder = RunFolder(tmp_path / "run")
    folder.create(None, False)
    for step in (1, 2):
        (folder.staging / f"checkpoint-{step}").mkdir(parents=True)
        (folder.staging / f"checkpoint-{step}" / "trainer_state.json").write_text("{}")
        folder.publish_checkpoint(step, save_total_limit=1)
    assert [p.name for p in folder.checkpoints.iterdir() if not p.name.startswith(".")] == ["checkpoint-2"]
    (folder.staging / "checkpoint-3").mkdir()  # a save that never finished
    assert folder.latest_checkpoint().name == "checkpoint-2"
    assert "checkpoint-3" in folder.write_failure(OSError(errno.ENOSPC, "No space left on device"))
    assert not (folder.staging / "checkpoint-3").exists()
    assert folder.write_failure(ValueError("not a write")) is None
    torch_words = RuntimeError("[enforce fail at inline_container.cc:672] . PytorchStreamWriter failed writing "
                               "file data/0: file write failed")
    assert "the write failed" in folder.write_failure(torch_words)


def test_full_disk_while_saving_is_one_line_and_resume_works_once_there_is_room(dpo_argv, tmp_path, monkeypatch,
                                                                               capsys):
    """ENOSPC injected at the checkpoint writer (torch.save, as a full disk makes it fail), then room again."""
    import torch

    import run_rl

    argv = with_steps(dpo_argv, 6, save_steps="2", eval_steps="0", logging_steps="1", save_total_limit="1")
    real_save = torch.save

    def full_disk_at_step_4(obj, f, *args, **kwargs):
        if "checkpoint-4" in str(f):
            raise RuntimeError("[enforce fail at inline_container.cc:672] . PytorchStreamWriter failed writing "
                               "file data/0: file write failed")
        return real_save(obj, f, *args, **kwargs)

    monkeypatch.setattr(torch, "save", full_disk_at_step_4)
    assert run_rl.main(argv) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err
    line = [x for x in err.splitlines() if "error:" in x]
    assert len(line) == 1 and "writing checkpoint-4 in" in line[0] and "a checkpoint needs about" in line[0], err
    assert "resume with --resume_from_checkpoint latest once there is room" in line[0]
    run = tmp_path / "out" / "t"
    names = sorted(p.name for p in (run / "checkpoints").iterdir())
    assert names == ["checkpoint-2"], names  # the old one is kept: its successor never completed
    monkeypatch.setattr(torch, "save", real_save)
    assert run_rl.main(argv + ["--resume_from_checkpoint", "latest"]) == 0
    assert steps(run / "logs" / "rewards.json") == list(range(1, 7))


def tmpfs(path: Path, size: str) -> bool:
    path.mkdir()
    if os.geteuid() != 0:
        return False
    return subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)],
                          capture_output=True).returncode == 0


@pytest.mark.skipif(sys.platform != "linux", reason="tmpfs is Linux's")
def test_a_real_full_disk_then_room_again(dpo_argv, tmp_path):
    """A small tmpfs (as root; the test above injects the error where mounting is not allowed) that a filler file
    fills after the first checkpoint: the next save fails in one line, the filler goes, resume reaches the end."""
    disk = tmp_path / "disk"
    if not tmpfs(disk, "64m"):
        pytest.skip("mounting a tmpfs needs root (the ENOSPC-injection test covers the same path)")
    try:
        argv = with_steps(dpo_argv, 8, save_steps="4", eval_steps="0", logging_steps="1", save_total_limit="1",
                          output_dir=str(disk / "out")) + ["--no_peft"]
        run = disk / "out" / "t"
        proc = start("run_rl.py", argv, tmp_path)
        while not (run / "checkpoints" / "checkpoint-4").is_dir():
            assert proc.poll() is None, (tmp_path / "stderr.txt").read_text()[-3000:]
            time.sleep(0.01)
        os.kill(proc.pid, signal.SIGSTOP)
        size = sum(f.stat().st_size for f in (run / "checkpoints" / "checkpoint-4").rglob("*") if f.is_file())
        free = os.statvfs(disk).f_bavail * os.statvfs(disk).f_frsize
        with open(disk / "filler", "wb") as f:
            f.truncate(0)
            f.write(b"\0" * max(0, free - size // 2))  # room for the logs, not for a second checkpoint
        os.kill(proc.pid, signal.SIGCONT)
        code = proc.wait(timeout=240)
        err = (tmp_path / "stderr.txt").read_text()
        assert code == 2 and "Traceback" not in err, err[-3000:]
        line = [x for x in err.splitlines() if "error:" in x]
        assert len(line) == 1 and "writing checkpoint-8 in" in line[0], err
        assert "no space left on the device" in line[0] and "a checkpoint needs about" in line[0], line[0]
        assert sorted(p.name for p in (run / "checkpoints").iterdir() if not p.name.startswith(".")) == \
            ["checkpoint-4"]
        (disk / "filler").unlink()
        done = subprocess.run([sys.executable, str(ROOT / "run_rl.py"), *argv, "--resume_from_checkpoint", "latest"],
                              cwd=tmp_path, capture_output=True, text=True, timeout=300)
        assert done.returncode == 0, done.stderr[-3000:]
        assert steps(run / "logs" / "rewards.json") == list(range(1, 9))
    finally:
        subprocess.run(["umount", "-l", str(disk)], capture_output=True)


def test_low_free_space_is_one_warning_at_start(tmp_path, monkeypatch, capsys):
    import shutil
    from collections import namedtuple

    from qrl.config.run_folder import RunFolder

    folder = RunFolder(tmp_path / "run")
    folder.create(None, False)
    (folder.checkpoints / "checkpoint-1").mkdir()
    (folder.checkpoints / "checkpoint-1" / "trainer_state.json").write_text("{}")
    (folder.checkpoints / "checkpoint-1" / "model.safetensors").write_bytes(b"\0" * 3 * 2**20)
    usage = namedtuple("usage", "total used free")
    monkeypatch.setattr(shutil, "disk_usage", lambda _p: usage(10 * 2**20, 5 * 2**20, 5 * 2**20))
    folder.warn_if_short_of_space()
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "less than two checkpoints" in err[0], err
    monkeypatch.setattr(shutil, "disk_usage", lambda _p: usage(10 * 2**30, 0, 9 * 2**30))
    folder.warn_if_short_of_space()
    assert capsys.readouterr().err == ""


# --- several processes -----------------------------------------------------------------------------------------
@pytest.mark.parametrize("config", ["ddp.yaml", "deepspeed_zero2.yaml", "deepspeed_zero3.yaml"])
def test_sigterm_to_the_launcher_stops_every_rank_at_one_step(dpo_argv, tmp_path, config):
    """`accelerate launch` forwards SIGTERM to both ranks; they agree on the step, write one checkpoint (each its
    own random state in it), all exit, and a two-process resume goes on from there."""
    argv = with_steps(dpo_argv, 40, save_steps="1000", eval_steps="0", logging_steps="1", batch_size="1")
    sigterm_two_ranks_and_resume(config, argv, tmp_path, tmp_path / "out" / "t", 40)


def test_ppo_under_zero3_stops_every_rank_on_sigterm_and_resumes(ppo_argv, tmp_path):
    """The toolkit's own PPO loop as the Trainer's: the ranks agree on the signal at a step boundary
    (StopAtSignal's all-reduce), save that step once through the run folder's callback, and resume."""
    argv = with_steps(ppo_argv, 30, save_steps="1000", eval_steps="0", logging_steps="1", ppo_epochs="1")
    run = tmp_path / "out" / "p"
    step = sigterm_two_ranks_and_resume("deepspeed_zero3.yaml", argv, tmp_path, run, 30)
    assert (run / "checkpoints" / f"checkpoint-{step}" / f"global_step{step}").is_dir()


def sigterm_two_ranks_and_resume(config: str, argv: list[str], cwd: Path, run: Path, max_steps: int) -> int:
    import psutil
    from launching import accelerate_launch, launch_command

    if config.startswith("deepspeed") and importlib.util.find_spec("deepspeed") is None:
        pytest.fail("deepspeed is not installed: `make install` installs it (pip install --no-build-isolation "
                    "deepspeed after torch)")
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "TORCH_ELASTIC_SHUTDOWN_TIMEOUT": "120"}
    with open(cwd / "stderr.txt", "w") as err_file:
        proc = subprocess.Popen(launch_command(config, argv), cwd=cwd, env=env, stdout=subprocess.DEVNULL,
                                stderr=err_file)
        wait_for_step(proc, run / "logs" / "rewards.json", 2, cwd, timeout=300)
        ranks = psutil.Process(proc.pid).children(recursive=True)
        code, err = stop(proc, signal.SIGTERM, cwd)
    assert code == 143, err[-3000:]
    step = interrupted_line(err)
    check_nothing_lost(run, step)
    saved = run / "checkpoints" / f"checkpoint-{step}"
    assert sorted(p.name for p in saved.glob("rng_state*")) == ["rng_state_0.pth", "rng_state_1.pth"]
    assert not [p for p in ranks if p.is_running() and p.status() != psutil.STATUS_ZOMBIE]
    accelerate_launch(config, [*argv, "--resume_from_checkpoint", "latest"], cwd)
    assert steps(run / "logs" / "rewards.json") == list(range(1, max_steps + 1))
    assert f"training from step {step} to step {max_steps}" in (run / "logs" / "training_log.txt").read_text()
    return step


# --- evaluation and scoring ------------------------------------------------------------------------------------
def sandbox_servers(proc: subprocess.Popen, cwd: Path, timeout: float = 120) -> list:
    """The command's sandbox server processes, once they are up."""
    import psutil

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        assert proc.poll() is None, (cwd / "stderr.txt").read_text()[-3000:]
        servers = [p for p in psutil.Process(proc.pid).children(recursive=True)
                   if "qrl.execution" in " ".join(p.cmdline())]
        if servers:
            return servers
        time.sleep(0.05)
    raise AssertionError("no sandbox server started")


def gone(processes: list, timeout: float = 10) -> bool:
    import psutil

    _, alive = psutil.wait_procs(processes, timeout=timeout)
    return not alive


def test_ctrl_c_while_scoring_writes_nothing_and_leaves_no_sandbox(tmp_path):
    problems = grpo_problems(tmp_path)
    write_jsonl(tmp_path / "completions.jsonl", [{"task_id": "py/0", "completion": "while True:\n    pass\n"}] * 8)
    argv = ["score", "--problems", str(problems), "--completions", str(tmp_path / "completions.jsonl"),
            "--output", str(tmp_path / "results.jsonl"), "--workers", "1", "--timeout", "30",
            "--calibration_cache", "off"]
    proc = start("reward_model.py", argv, tmp_path)
    servers = sandbox_servers(proc, tmp_path)
    time.sleep(1.0)  # scoring the endless loops
    code, err = stop(proc, signal.SIGINT, tmp_path)
    assert code == 130 and "Traceback" not in err, err[-3000:]
    assert err.strip().splitlines()[-1] == f"reward_model.py score: interrupted (SIGINT): {tmp_path / 'results.jsonl'} " \
                                           "not written"
    assert not (tmp_path / "results.jsonl").exists()
    assert gone(servers)


def test_sigterm_during_eval_only_writes_nothing_and_leaves_no_sandbox(tiny_model, tmp_path):
    argv = ["--eval_only", "--base_model", str(tiny_model), "--eval_data", str(grpo_problems(tmp_path)),
            "--output_dir", str(tmp_path / "out"), "--experiment_name", "e", "--eval_num_samples", "64",
            "--max_completion_length", "64", "--workers", "1"]
    proc = start("run_rl.py", argv, tmp_path)
    servers = sandbox_servers(proc, tmp_path)
    code, err = stop(proc, signal.SIGTERM, tmp_path)
    assert code == 143 and "Traceback" not in err, err[-3000:]
    assert err.strip().splitlines()[-1] == "run_rl.py: interrupted (SIGTERM) during --eval_only: no results written"
    assert not (tmp_path / "out" / "e" / "logs" / "eval_results.json").exists()
    assert not list((tmp_path / "out").rglob("samples_*.jsonl"))
    assert gone(servers)
