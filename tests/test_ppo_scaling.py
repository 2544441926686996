"""PPO in two processes (`accelerate launch`, gloo on the CPU) under DDP, DeepSpeed ZeRO-2 and ZeRO-3, with LoRA and
full fine-tuning: what is global is computed over both ranks, the critic stays one, the run folder is written once,
a killed run resumes with the same number of processes and is refused with another; and reward-model training
under ZeRO-2 and ZeRO-3."""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from launching import ROOT, accelerate_launch, killed_then_resumed, launch_command, steps

DEEPSPEED = importlib.util.find_spec("deepspeed") is not None
needs_deepspeed = pytest.mark.skipif(not DEEPSPEED, reason="deepspeed is not installed (make install installs it)")


def test_ranks_answer_their_own_prompts_whiten_over_both_and_keep_one_critic(tiny_model, tmp_path):
    """Rank r's answers score r: every global number sees both ranks' scores, each rank its own prompts."""
    cmd = launch_command("ddp.yaml", [str(tiny_model), str(tmp_path)], script="tests/ppo_ranks.py")
    # the checkout's package, as the scripts in its root import it
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))}
    proc = subprocess.run(cmd, cwd=tmp_path, capture_output=True, text=True, timeout=300, env=env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    r0, r1 = (json.loads((tmp_path / f"rank{r}.json").read_text()) for r in (0, 1))
    assert r0["world"] == r1["world"] == 2
    # a step is 2 prompts a rank: both steps together cover the 8 prompts once, each on one rank
    assert not set(r0["prompts"]) & set(r1["prompts"])
    assert sorted(r0["prompts"] + r1["prompts"]) == sorted(f"Write f{i}" for i in range(8))
    # whitened over both ranks: rank 0's answers (score 0) fall below the mean, rank 1's above; whitened per rank,
    # rank 0's would all be 0 (one score, no spread)
    for a0, a1 in zip(r0["advantage_means"], r1["advantage_means"], strict=True):
        assert a0 < -0.5 and a1 > 0.5 and a0 + a1 == pytest.approx(0.0, abs=1e-4)
    assert [e["reward"] for e in r0["logged"]] == [e["reward"] for e in r1["logged"]] == [0.5, 0.5]
    assert r0["logged"] == r1["logged"]  # every statistic, the losses included, is the ranks' common one
    # one critic, one policy, one adaptive KL coefficient: the value head trained, and identically on both ranks
    assert r0["value_head_norm"] > 0 and r0["value_head"] == r1["value_head"]
    assert r0["trainable_sum"] == pytest.approx(r1["trainable_sum"], rel=1e-9)
    assert r0["kl_coef"] == r1["kl_coef"] != 0.1
    assert r0["random_draw"] != r1["random_draw"]  # one seed for all would have every rank sample alike


def ppo_run_argv(ppo_argv: list[str], max_steps: int, **flags: str) -> list[str]:
    argv = ppo_argv[:]
    for flag, value in {"max_steps": str(max_steps), **flags}.items():
        argv[argv.index(f"--{flag}") + 1] = value
    return argv


@pytest.mark.parametrize("config, tuning", [
    ("ddp.yaml", "lora"),
    pytest.param("deepspeed_zero2.yaml", "full", marks=needs_deepspeed),
    pytest.param("deepspeed_zero3.yaml", "full", marks=needs_deepspeed),
])
def test_ppo_killed_after_a_checkpoint_resumes_with_two_processes(ppo_argv, tmp_path, config, tuning):
    """20 steps with two processes, SIGKILLed once a checkpoint is complete, resumed with two: every step logged
    once, the schedule continued, one final model whose weights are the last checkpoint's (gathered under ZeRO-3)."""
    argv = ppo_run_argv(ppo_argv, 20, save_steps="4", eval_steps="10", ppo_epochs="1")
    argv += ["--save_total_limit", "2"] + (["--no_peft"] if tuning == "full" else [])
    run = tmp_path / "out" / "p"
    killed_then_resumed(config, argv, tmp_path, run, "ppo_reward_model", 20)
    assert steps(run / "logs" / "eval_results.json") == [10, 20]
    last = run / "checkpoints" / "checkpoint-20"
    assert json.loads((last / "trainer_state.json").read_text())["global_step"] == 20
    assert sorted(p.name for p in last.glob("rng_state*.pth")) == ["rng_state_0.pth", "rng_state_1.pth"]
    assert (last / "global_step20").is_dir() == config.startswith("deepspeed")  # DeepSpeed's sharded states
    check_final_is_the_last_checkpoint(run, last, tuning)
    if config == "ddp.yaml":  # the same checkpoint with one process: refused before anything loads
        one = subprocess.run([sys.executable, str(ROOT / "run_rl.py"), *ppo_run_argv(argv, 24),
                              "--resume_from_checkpoint", "latest"], cwd=tmp_path, capture_output=True, text=True,
                             timeout=120)
        assert one.returncode == 2 and one.stderr.strip().splitlines() == [
            "run_rl.py: error: --resume_from_checkpoint: checkpoint-20 was written by 2 processes and this run has 1: "
            "resume with --num_processes 2 (or start a new run)"]


def check_final_is_the_last_checkpoint(run: Path, last: Path, tuning: str) -> None:
    import torch
    from safetensors.torch import load_file
    from transformers import AutoModelForCausalLM

    final = AutoModelForCausalLM.from_pretrained(run / "checkpoints" / "final").state_dict()
    if tuning == "full":
        saved = load_file(last / "model.safetensors")
    else:
        from peft import AutoPeftModelForCausalLM

        saved = AutoPeftModelForCausalLM.from_pretrained(last).merge_and_unload().state_dict()
    assert saved.keys() <= final.keys()
    assert all(torch.allclose(final[k], v, atol=1e-6) for k, v in saved.items())
    head = torch.load(last / "value_head.pt")
    assert head["weight"].shape[0] == 1 and head["weight"].abs().sum() > 0  # whole, and trained


def test_resuming_with_more_processes_than_wrote_the_checkpoint_is_one_line(ppo_argv, tmp_path):
    from qrl.config.arguments import RL_SECTIONS, parse_config
    from qrl.training.paths import train

    train(parse_config(RL_SECTIONS, ppo_run_argv(ppo_argv, 1, eval_steps="0")))
    proc = accelerate_launch("ddp.yaml", [*ppo_argv, "--resume_from_checkpoint", "latest"], tmp_path, check=False)
    assert proc.returncode != 0
    line = ("run_rl.py: error: --resume_from_checkpoint: checkpoint-1 was written by 1 process and this run has 2: "
            "resume with --num_processes 1 (or start a new run)")
    assert proc.stderr.count(line) == 1, proc.stderr[-3000:]  # said once, by the main process
    # no rank's traceback (accelerate's launcher then reports the ranks' exit code 2 in its own words)
    assert "[rank0]" not in proc.stderr and "[rank1]" not in proc.stderr and "/qrl/" not in proc.stderr


@needs_deepspeed
@pytest.mark.parametrize("config", ["deepspeed_zero2.yaml", "deepspeed_zero3.yaml"])
def test_reward_model_trains_under_zero(tiny_model, tmp_path, config):
    from conftest import preference_rows, write_jsonl
    from transformers import AutoModelForSequenceClassification

    prefs = write_jsonl(tmp_path / "prefs.jsonl", preference_rows(8))
    argv = ["--base_model", str(tiny_model), "--data_path", str(prefs), "--output_dir", str(tmp_path / "out"),
            "--experiment_name", "rm", "--max_steps", "2", "--save_steps", "2", "--eval_steps", "0",
            "--batch_size", "2", "--gradient_accumulation_steps", "1", "--max_seq_length", "64", "--no_peft"]
    proc = accelerate_launch(config, argv, tmp_path, script="train_reward_model.py")
    assert proc.stdout.count("Run folder:") == 1
    run = tmp_path / "out" / "rm"
    assert steps(run / "logs" / "rewards.json") == [1, 2]
    assert (run / "checkpoints" / "checkpoint-2" / "global_step2").is_dir()
    model = AutoModelForSequenceClassification.from_pretrained(run / "checkpoints" / "final")
    assert model.score.weight.shape == (1, 32)  # whole weights, gathered from the shards


@needs_deepspeed
def test_ppo_on_test_cases_under_zero3_evaluates_with_unequal_shares(tiny_model, tmp_path):
    """--rl_algorithm ppo on the sandbox's reward, each rank with its own sandbox; one held-out problem, so rank 1
    has no evaluation prompt of its own and must still take part in ZeRO-3's gathering of the weights."""
    from conftest import problem_rows, write_jsonl

    problems = write_jsonl(tmp_path / "problems.jsonl", problem_rows())
    argv = ["--test_case_rewards_only", "--rl_algorithm", "ppo", "--base_model", str(tiny_model), "--train_data",
            str(problems), "--output_dir", str(tmp_path / "out"), "--experiment_name", "g", "--max_steps", "2",
            "--save_steps", "2", "--eval_steps", "2", "--batch_size", "1", "--gradient_accumulation_steps", "1",
            "--max_completion_length", "16", "--max_seq_length", "256", "--ppo_epochs", "1", "--workers", "2"]
    proc = accelerate_launch("deepspeed_zero3.yaml", argv, tmp_path)
    assert proc.stdout.count("Run folder:") == 1
    run = tmp_path / "out" / "g"
    rewards = json.loads((run / "logs" / "rewards.json").read_text())
    assert rewards["method"] == "ppo_test_cases" and [e["step"] for e in rewards["steps"]] == [1, 2]
    assert all("test_cases/pass" in e for e in rewards["steps"])  # the reward's components, from both sandboxes
    evals = json.loads((run / "logs" / "eval_results.json").read_text())["steps"]
    assert [e["step"] for e in evals] == [2] and "reward" in evals[0]
    assert (run / "checkpoints" / "final" / "config.json").is_file()
