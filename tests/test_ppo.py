"""PPO: the loss pieces against hand-computed numbers, and short runs that write the run folder."""

import json
import math
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from trl.trainer.utils import entropy_from_logits

from qrl.config.arguments import RL_SECTIONS, parse_config
from qrl.rewards.learned import LearnedReward
from qrl.training.paths import prepare_run, run_ppo, train
from qrl.training.ppo_stats import (
    AdaptiveKLController,
    clipped_policy_loss,
    clipped_value_loss,
    compute_gae,
    explained_variance,
    global_mean_var,
    masked_whiten,
    token_rewards,
)

ROOT = Path(__file__).resolve().parents[1]
T = torch.tensor


# --- the pieces, with known numbers ---------------------------------------------------------------------
def test_gae_matches_a_hand_computation():
    rewards = T([[1.0, 0.0, 2.0], [0.5, 1.0, 0.0]])
    values = T([[0.5, 0.2, 0.1], [0.3, 0.4, 9.9]])  # 9.9 lies past the second answer's end: ignored
    mask = T([[1.0, 1.0, 1.0], [1.0, 1.0, 0.0]])
    adv, ret = compute_gae(rewards, values, mask, gamma=0.9, lam=0.8)
    # row 1: d2 = 2 - .1 = 1.9; d1 = 0 + .9*.1 - .2 = -.11; d0 = 1 + .9*.2 - .5 = .68; A_t = d_t + .72 A_{t+1}
    # row 2: d1 = 1 - .4 = .6; d0 = .5 + .9*.4 - .3 = .56
    assert adv.flatten().tolist() == pytest.approx([1.58576, 1.258, 1.9, 0.992, 0.6, 0.0])
    assert ret.flatten().tolist() == pytest.approx([2.08576, 1.458, 2.0, 1.292, 1.0, 0.0])
    # lam = 1, gamma = 1: advantages are Monte-Carlo returns minus values
    adv, ret = compute_gae(rewards, values, mask, gamma=1.0, lam=1.0)
    assert ret[0].tolist() == pytest.approx([3.0, 2.0, 2.0])


def test_kl_penalty_per_token_and_score_at_the_last_token():
    logprobs = T([[-1.0, -2.0, -3.0], [-1.0, -1.0, -1.0]])
    ref = T([[-1.5, -2.0, -2.0], [-2.0, -1.0, 0.0]])
    mask = T([[1.0, 1.0, 1.0], [1.0, 1.0, 0.0]])
    rewards, kl = token_rewards(T([2.0, -1.0]), logprobs, ref, mask, kl_coef=0.5)
    assert kl.flatten().tolist() == [0.5, 0.0, -1.0, 1.0, 0.0, 0.0]
    assert rewards.flatten().tolist() == [-0.25, 0.0, 2.5, -0.5, -1.0, 0.0]


def test_policy_clip_term():
    old = torch.zeros(4)
    new = torch.log(T([1.5, 0.5, 1.1, 0.7]))  # ratios
    adv = T([1.0, 1.0, -1.0, -1.0])
    loss, clip_fraction, approx_kl = clipped_policy_loss(new[None], old[None], adv[None], torch.ones(1, 4), 0.2)
    # per token max(-A r, -A clip(r)): -1.2 (clipped), -0.5, 1.1, 0.8 (clipped)
    assert loss.item() == pytest.approx((-1.2 - 0.5 + 1.1 + 0.8) / 4)
    assert clip_fraction.item() == 0.5
    assert approx_kl.item() == pytest.approx(0.5 * float((new ** 2).mean()))


def test_value_clip_term():
    loss, clip_fraction = clipped_value_loss(T([[0.5, -0.1]]), T([[0.0, 0.0]]), T([[1.0, 1.0]]), torch.ones(1, 2), 0.2)
    # 0.5 moves to 0.2 when clipped: max(.25, .64) = .64; -0.1 stays: 1.21
    assert loss.item() == pytest.approx(0.5 * (0.64 + 1.21) / 2)
    assert clip_fraction.item() == 0.5


def test_whitening_entropy_explained_variance_and_adaptive_kl():
    x, mask = T([[1.0, 2.0, 3.0, 100.0]]), T([[1.0, 1.0, 1.0, 0.0]])
    w = masked_whiten(x, mask)
    assert w[0, :3].tolist() == pytest.approx([-1.0, 0.0, 1.0], abs=1e-6)
    assert masked_whiten(x, mask, shift_mean=False)[0, :3].tolist() == pytest.approx([1.0, 2.0, 3.0], abs=1e-6)
    assert entropy_from_logits(torch.zeros(4)).item() == pytest.approx(math.log(4))
    assert explained_variance(x, x, mask) == pytest.approx(1.0)
    assert explained_variance(torch.zeros_like(x), x, mask) == pytest.approx(0.0)
    ctl = AdaptiveKLController(0.1, target=6.0, horizon=100)
    ctl.update(current_kl=12.0, n_answers=10)  # far above target: the error is capped at +20%
    assert ctl.value == pytest.approx(0.1 * 1.02)
    ctl.update(current_kl=3.0, n_answers=10)
    assert ctl.value == pytest.approx(0.1 * 1.02 * 0.98)


# --- runs -----------------------------------------------------------------------------------------------
def run(argv):
    return train(parse_config(RL_SECTIONS, argv))


def test_two_step_ppo_run_writes_the_run_folder(ppo_argv):
    folder = run(ppo_argv)
    rewards = json.loads(folder.rewards_json.read_text())
    assert rewards["method"] == "ppo_reward_model" and [e["step"] for e in rewards["steps"]] == [1, 2]
    for key in ("reward", "kl", "kl_coef", "entropy", "value/estimate", "value/loss", "value/clip_fraction",
                "policy/loss", "policy/clip_fraction", "policy/approx_kl", "explained_variance", "response_length"):
        assert key in rewards["steps"][-1], key
    assert rewards["steps"][0]["kl"] == pytest.approx(0.0, abs=1e-5)  # LoRA starts as the reference
    assert rewards["steps"][0]["entropy"] > 0
    assert json.loads(folder.eval_json.read_text())["steps"][0]["step"] == 2  # greedy answers to held-out prompts
    for ckpt in ("checkpoint-1", "checkpoint-2"):
        for name in ("adapter_config.json", "value_head.pt", "optimizer.pt", "trainer_state.json"):
            assert (folder.checkpoints / ckpt / name).is_file(), (ckpt, name)
    log = folder.training_log.read_text()
    assert "step 2/2 train: reward=" in log and "saved checkpoint-2" in log and "final model saved" in log
    assert sorted(p.name for p in folder.results.glob("*.png")) == ["eval_curves.png", "training_curves.png"]
    saved = parse_config(RL_SECTIONS, ["--config", str(folder.config_yaml)])
    assert saved.run.use_reward_model and saved.ppo.ppo_epochs == 2

    from transformers import AutoModelForCausalLM

    AutoModelForCausalLM.from_pretrained(folder.final_model)  # LoRA merged: an ordinary checkpoint


def test_resume_continues_where_an_uninterrupted_run_would_be(ppo_argv, tmp_path):
    ppo_argv = ppo_argv + ["--lr_scheduler_type", "constant"]  # a linear schedule would depend on max_steps
    whole = run(ppo_argv + ["--max_steps", "3", "--experiment_name", "whole", "--eval_steps", "0"])
    run(ppo_argv + ["--max_steps", "2", "--experiment_name", "cut", "--eval_steps", "0"])
    cut = run(ppo_argv + ["--max_steps", "3", "--experiment_name", "cut", "--eval_steps", "0",
                          "--resume_from_checkpoint", "latest"])
    a = json.loads(whole.rewards_json.read_text())["steps"]
    b = json.loads(cut.rewards_json.read_text())["steps"]
    assert [e["step"] for e in b] == [1, 2, 3]
    for key in ("reward", "kl", "value/loss", "policy/loss"):
        assert b[2][key] == pytest.approx(a[2][key], rel=1e-4, abs=1e-6), key


def test_any_reward_function_with_columns(tiny_model, tmp_path):
    """What --rl_algorithm ppo on the test-case paths hands PPO: a TRL-style reward function and its columns."""
    seen = []

    def reward(prompts, completions, entry_point, **kwargs):
        seen.append((prompts, completions, entry_point))
        return [1.0 if "def" in c[0]["content"] else None for c in completions]

    cfg = parse_config(RL_SECTIONS, [
        "--base_model", str(tiny_model), "--output_dir", str(tmp_path), "--experiment_name", "any", "--rl_algorithm",
        "ppo", "--max_steps", "1", "--batch_size", "1", "--gradient_accumulation_steps", "2",
        "--max_completion_length", "8", "--max_seq_length", "64", "--ppo_epochs", "1", "--no_peft", "--adaptive_kl",
        "--kl_target", "0.001", "--kl_horizon", "10",
    ])
    folder, resume, name = prepare_run(cfg)
    rows = [{"prompt": f"Write f{i}", "entry_point": f"f{i}"} for i in range(3)]
    run_ppo(cfg, folder, resume, name, reward, rows, [], method="ppo_test")
    prompts, completions, entry_points = seen[0]
    assert len(prompts) == len(completions) == len(entry_points) == 2
    for prompt, completion, entry_point in zip(prompts, completions, entry_points, strict=True):
        assert prompt == [{"role": "user", "content": f"Write {entry_point}"}]  # columns stay with their prompt
        assert completion[0]["role"] == "assistant"
    step = json.loads(folder.rewards_json.read_text())["steps"][0]
    assert 0.0 <= step["reward"] <= 1.0 and "reward_unjudged_fraction" in step  # None: the batch mean
    assert (folder.checkpoints / "checkpoint-1" / "model.safetensors").is_file()  # --no_peft: whole weights


def test_learned_reward_scores_in_batches(tiny_reward_model):
    reward = LearnedReward(str(tiny_reward_model), batch_size=2)
    prompts = [[{"role": "user", "content": f"Write add{i}"}] for i in range(5)]
    completions = [[{"role": "assistant", "content": "def add(a, b):\n    return a + b\n" * (i + 1)}] for i in range(5)]
    batched = reward(prompts, completions)
    one_by_one = [reward([p], [c])[0] for p, c in zip(prompts, completions, strict=True)]
    assert batched == pytest.approx(one_by_one, abs=1e-5) and len(set(batched)) > 1
    texts = reward(["Write add: "], ["def add(a, b): return a + b"])  # plain text works too
    assert len(texts) == 1


def cli(args, cwd):
    return subprocess.run([sys.executable, str(ROOT / "run_rl.py"), *args], cwd=cwd, capture_output=True, text=True,
                          timeout=300)


def test_bad_ppo_inputs_are_one_clear_line(ppo_argv, tiny_model, tmp_path, capsys):
    import run_rl

    i = ppo_argv.index("--reward_model_path")
    without_rm = ppo_argv[:i] + ppo_argv[i + 2:]
    cases = [
        (without_rm + ["--reward_model_path", str(tiny_model)], "not a sequence-classification reward model"),
        (without_rm, "--use_reward_model needs --reward_model_path"),
        (without_rm + ["--reward_model_path", str(tmp_path / "nope")], "model folder not found"),
        (ppo_argv + ["--max_completion_length", "200"], "--max_seq_length (96) must exceed"),
        (ppo_argv + ["--mine_pairs_from", "x.jsonl"], "--mine_pairs_from trains on preference pairs"),
        (["--use_dpo", "--rl_algorithm", "ppo"], "--rl_algorithm ppo is for the test-case paths"),
        (ppo_argv + ["--rl_algorithm", "sarsa"], "invalid choice: 'sarsa'"),
        (ppo_argv + ["--lam", "1.5"], "--lam must be between 0 and 1"),
        (ppo_argv + ["--optim", "adafactor"], "does not support --optim adafactor"),
    ]
    for k, (argv, needle) in enumerate(cases):
        if k == 0:  # as a user meets it: a process that prints one line and exits 2
            proc = cli(argv, tmp_path)
            code, err = proc.returncode, proc.stderr
        else:
            code, err = run_rl.main(argv), capsys.readouterr().err
        lines = [line for line in err.splitlines() if line.strip()]
        assert code == 2 and len(lines) == 1, err[-2000:]
        assert lines[0].startswith("run_rl.py: error: ") and needle in lines[0], lines[0]
    assert not (tmp_path / "out").exists(), "a failed start must write nothing"


def test_wandb_offline_ppo_run(ppo_argv, tmp_path, monkeypatch):
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_DIR", str(tmp_path))
    monkeypatch.delenv("WANDB_PROJECT", raising=False)
    monkeypatch.delenv("WANDB_NAME", raising=False)
    import wandb

    try:
        run(ppo_argv + ["--wandb", "--wandb_project", "q-rl-test", "--max_steps", "1", "--eval_steps", "0"])
    finally:
        wandb.teardown()  # wandb keeps its settings (WANDB_DIR) per process; later tests need their own
    runs = list((tmp_path / "wandb").glob("offline-run-*"))
    assert len(runs) == 1 and list(runs[0].glob("*.wandb"))


def test_unjudged_rewards_take_the_mean_of_every_ranks_judged_ones():
    """A rank whose sandbox judged nothing must not give its answers 0.0 while the other rank's mean is high: after
    global whitening that would push them down for an outage. Rank 1 here judged three answers (sum 2.4)."""
    from types import SimpleNamespace

    from qrl.training.ppo import PPOTrainer

    other_rank = torch.tensor([2.4, 3.0, 3.0])  # judged sum, judged count, answers
    fake = SimpleNamespace(reward_metrics={}, _all_sum=lambda t: t + other_rank)
    filled = PPOTrainer._fill_unjudged(fake, torch.tensor([float("nan"), float("nan")]))
    assert torch.allclose(filled, torch.tensor([0.8, 0.8]))
    assert fake.reward_metrics["reward_unjudged_fraction"] == pytest.approx(2 / 5)
    mixed = PPOTrainer._fill_unjudged(fake, torch.tensor([1.0, float("nan")]))
    assert torch.allclose(mixed, torch.tensor([1.0, 3.4 / 4]))


def test_whitening_over_two_ranks_with_unequal_counts_equals_whitening_their_concatenation():
    """Two ranks (threads here) whose masks keep 5 and 2 entries: the global mean and variance are those of the 7
    entries together, not the mean of the two ranks' means."""
    import threading

    xs = [torch.tensor([[1.0, 2.0, 3.0, 4.0, 5.0]]), torch.tensor([[10.0, 20.0, 0.0, 0.0, 0.0]])]
    masks = [torch.ones(1, 5), torch.tensor([[1.0, 1.0, 0.0, 0.0, 0.0]])]
    barrier, slots, out = threading.Barrier(2), [None, None], [None, None]

    def run(rank: int) -> None:
        def all_sum(t):
            slots[rank] = t
            barrier.wait()
            total = slots[0] + slots[1]
            barrier.wait()
            return total
        out[rank] = (global_mean_var(xs[rank], masks[rank], all_sum), masked_whiten(xs[rank], masks[rank],
                                                                                      all_sum=all_sum))

    threads = [threading.Thread(target=run, args=(r,)) for r in (0, 1)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    together = torch.tensor([1.0, 2.0, 3.0, 4.0, 5.0, 10.0, 20.0])
    for (mean, var, n), _ in out:
        assert n == 7 and mean.item() == pytest.approx(together.mean().item())
        assert var.item() == pytest.approx(together.var().item(), rel=1e-5)
    whitened = torch.cat([out[0][1][0], out[1][1][0, :2]])
    assert whitened.tolist() == pytest.approx(((together - together.mean()) / together.std()).tolist(), abs=1e-4)
