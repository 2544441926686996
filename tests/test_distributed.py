"""Several processes (torchrun, or accelerate launch with the shipped configs; gloo on CPU): one run folder, written
once, by the main process; resume with the same number of processes."""

import importlib.util
import json
import re
import subprocess
import sys
from pathlib import Path

import pytest
from launching import accelerate_launch, free_port, killed_then_resumed, steps

ROOT = Path(__file__).resolve().parents[1]


def test_two_process_dpo_writes_one_run_folder(dpo_argv, tmp_path):
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", str(free_port()),
           str(ROOT / "run_rl.py"), *dpo_argv, "--batch_size", "1"]
    proc = subprocess.run(cmd, cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    run = tmp_path / "out" / "t"
    log = (run / "logs" / "training_log.txt").read_text()
    assert log.count("step 4/4 train:") == 1 and log.count("saved checkpoint-2") == 1
    assert steps(run / "logs" / "rewards.json") == [1, 2, 3, 4]
    assert (run / "checkpoints" / "checkpoint-4" / "trainer_state.json").is_file()
    assert proc.stdout.count("Run folder:") == 1


def two_process_dpo_killed_then_resumed(config: str, dpo_argv: list[str], tmp_path: Path) -> Path:
    """60 steps with two processes of `config`, killed after the first checkpoint, resumed with two processes: the
    run ends as if never stopped (every step logged once, the learning-rate schedule continued)."""
    argv = [*dpo_argv, "--batch_size", "1", "--max_steps", "60", "--eval_steps", "30", "--save_total_limit", "2"]
    run = tmp_path / "out" / "t"
    killed_then_resumed(config, argv, tmp_path, run, "dpo", 60)
    assert steps(run / "logs" / "eval_results.json") == [30, 60]
    state = json.loads((run / "checkpoints" / "checkpoint-60" / "trainer_state.json").read_text())
    assert state["global_step"] == 60
    assert (run / "checkpoints" / "final" / "config.json").is_file()
    return run


def test_accelerate_launch_ddp_config_resumes_a_killed_two_process_run(dpo_argv, tmp_path):
    two_process_dpo_killed_then_resumed("ddp.yaml", dpo_argv, tmp_path)


@pytest.mark.skipif(importlib.util.find_spec("deepspeed") is None, reason="deepspeed is not installed")
def test_deepspeed_zero3_resumes_a_killed_two_process_run(dpo_argv, tmp_path):
    """DeepSpeed runs on the CPU too (its CPU accelerator, over gloo): ZeRO-3 shards, saves and resumes."""
    run = two_process_dpo_killed_then_resumed("deepspeed_zero3.yaml", dpo_argv, tmp_path)
    assert (run / "checkpoints" / "checkpoint-60" / "global_step60").is_dir()  # DeepSpeed's sharded states


@pytest.fixture
def grpo_argv(tiny_model, tmp_path):
    """Two GRPO steps on three one-line problems (one held out), checkpoint and evaluation at step 2."""
    from conftest import write_jsonl
    from test_train_rl import problem_rows

    problems = write_jsonl(tmp_path / "problems.jsonl", problem_rows())
    return ["--test_case_rewards_only", "--base_model", str(tiny_model), "--train_data", str(problems),
            "--output_dir", str(tmp_path / "out"), "--experiment_name", "g", "--max_steps", "2", "--save_steps", "2",
            "--eval_steps", "2", "--batch_size", "2", "--gradient_accumulation_steps", "1", "--num_generations", "4",
            "--max_completion_length", "16", "--eval_num_samples", "2", "--workers", "2"]


def test_two_process_grpo_writes_one_run_folder_and_resumes(grpo_argv, tmp_path):
    proc = accelerate_launch("ddp.yaml", grpo_argv, tmp_path)
    run = tmp_path / "out" / "g"
    assert proc.stdout.count("Run folder:") == 1
    log = (run / "logs" / "training_log.txt").read_text()
    assert [int(s) for s in re.findall(r"step (\d+)/\d+ train:", log)] == [1, 2]
    rewards = json.loads((run / "logs" / "rewards.json").read_text())
    assert rewards["method"] == "grpo_test_cases" and [e["step"] for e in rewards["steps"]] == [1, 2]
    # pass@k gathered from both ranks: the one held-out problem, its 2 samples, reported once
    evals = json.loads((run / "logs" / "eval_results.json").read_text())["steps"]
    assert [e["step"] for e in evals] == [2] and evals[0]["problems"] == 1 and evals[0]["samples"] == 2
    assert sorted(p.name for p in (run / "checkpoints" / "checkpoint-2").glob("rng_state*")) == [
        "rng_state_0.pth", "rng_state_1.pth"]
    assert (run / "checkpoints" / "final" / "config.json").is_file()
    accelerate_launch("ddp.yaml", [*grpo_argv, "--max_steps", "4", "--resume_from_checkpoint", "latest"], tmp_path)
    log = (run / "logs" / "training_log.txt").read_text()
    assert "grpo_test_cases: training from step 2 to step 4" in log
    assert [int(s) for s in re.findall(r"step (\d+)/\d+ train:", log)] == [1, 2, 3, 4]
    assert steps(run / "logs" / "rewards.json") == [1, 2, 3, 4] and steps(run / "logs" / "eval_results.json") == [2, 4]


@pytest.mark.skipif(importlib.util.find_spec("deepspeed") is None, reason="deepspeed is not installed")
def test_grpo_under_zero3_evaluates_with_unequal_shares(grpo_argv, tmp_path):
    """Under ZeRO-3 every forward pass is collective: the rank without an evaluation problem must still generate."""
    accelerate_launch("deepspeed_zero3.yaml", grpo_argv, tmp_path)
    evals = json.loads((tmp_path / "out" / "g" / "logs" / "eval_results.json").read_text())["steps"]
    assert [e["step"] for e in evals] == [2] and evals[0]["problems"] == 1 and evals[0]["samples"] == 2


def test_each_rank_starts_its_share_of_sandbox_workers(grpo_argv, monkeypatch):
    """Not every rank a full pool: --workers (default: all cores) is divided among the processes of a node."""
    from qrl.config.arguments import RL_SECTIONS, parse_config
    from qrl.problems import load_problems
    from qrl.training.paths import test_case_reward

    cfg = parse_config(RL_SECTIONS, grpo_argv + ["--workers", "4"])
    problems = load_problems(cfg.data.train_data)
    for local_ranks, workers in (("1", 4), ("2", 2), ("8", 1)):
        monkeypatch.setenv("LOCAL_WORLD_SIZE", local_ranks)
        assert test_case_reward(cfg, problems).workers == workers
