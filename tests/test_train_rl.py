import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from qrl.config.arguments import RL_SECTIONS, parse_config
from qrl.data.records import UserError
from qrl.training.paths import method_of, train

ROOT = Path(__file__).resolve().parents[1]


def run(argv):
    return train(parse_config(RL_SECTIONS, argv))


def steps(path):
    return [e["step"] for e in json.loads(Path(path).read_text())["steps"]]


def test_dpo_run_writes_the_full_run_folder(dpo_argv, tmp_path):
    folder = run(dpo_argv)
    assert folder.root == tmp_path / "out" / "t"
    for ckpt in ("checkpoint-2", "checkpoint-4"):
        assert (folder.checkpoints / ckpt / "adapter_config.json").is_file()
        assert (folder.checkpoints / ckpt / "trainer_state.json").is_file()
    rewards = json.loads(folder.rewards_json.read_text())
    assert rewards["method"] == "dpo" and [e["step"] for e in rewards["steps"]] == [1, 2, 3, 4]
    for key in ("loss", "rewards/chosen", "rewards/rejected", "rewards/margins", "rewards/accuracies"):
        assert key in rewards["steps"][-1]
    assert "train_runtime" in rewards["summary"]
    assert steps(folder.eval_json) == [2, 4] and "loss" in json.loads(folder.eval_json.read_text())["steps"][0]
    log = folder.training_log.read_text()
    assert "step 4/4 train: loss=" in log and "saved checkpoint-4" in log
    assert sorted(p.name for p in folder.results.glob("*.png")) == ["eval_curves.png", "training_curves.png"]
    # the effective config is complete and re-runnable
    saved = parse_config(RL_SECTIONS, ["--config", str(folder.config_yaml)])
    assert saved.model.max_steps == 4 and saved.run.use_dpo and saved.data.preference_data == dpo_argv[4]

    from peft import AutoPeftModelForCausalLM
    from transformers import AutoModelForCausalLM

    AutoModelForCausalLM.from_pretrained(folder.final_model)  # merged: an ordinary checkpoint
    AutoPeftModelForCausalLM.from_pretrained(folder.checkpoints / "checkpoint-2")


def test_existing_run_is_never_overwritten_silently(dpo_argv):
    folder = run(dpo_argv)
    before = folder.rewards_json.read_text()
    with pytest.raises(UserError, match="already holds a run: resume it with --resume_from_checkpoint latest"):
        run(dpo_argv)
    assert folder.rewards_json.read_text() == before
    run(dpo_argv + ["--overwrite_output_dir", "--max_steps", "2"])
    assert steps(folder.rewards_json) == [1, 2]


def test_resume_latest_continues_without_duplicate_logs(dpo_argv):
    folder = run(dpo_argv[:-2] + ["--max_seq_length", "128", "--max_steps", "2"])
    (folder.checkpoints / "checkpoint-9").mkdir()  # a checkpoint cut off mid-save: no trainer state
    folder = run(dpo_argv + ["--resume_from_checkpoint", "latest"])
    assert steps(folder.rewards_json) == [1, 2, 3, 4]
    state = json.loads((folder.checkpoints / "checkpoint-4" / "trainer_state.json").read_text())
    assert state["global_step"] == 4


def test_resume_without_checkpoint_is_a_clear_error(dpo_argv, tmp_path):
    with pytest.raises(UserError, match="no complete checkpoint"):
        run(dpo_argv + ["--resume_from_checkpoint", "latest"])
    with pytest.raises(UserError, match="is not a checkpoint folder"):
        run(dpo_argv + ["--resume_from_checkpoint", str(tmp_path)])
    assert not (tmp_path / "out").exists()


def test_failure_before_the_first_step_leaves_nothing(dpo_argv, tmp_path, monkeypatch):
    from transformers import Trainer

    def broken(*args, **kwargs):
        raise RuntimeError("simulated crash before training")

    monkeypatch.setattr(Trainer, "train", broken)
    with pytest.raises(RuntimeError, match="simulated"):
        run(dpo_argv)
    assert not (tmp_path / "out" / "t").exists()


def test_method_flags_are_exclusive_and_unbuilt_paths_say_so(dpo_argv):
    cfg = parse_config(RL_SECTIONS, ["--use_dpo", "--test_case_rewards_only"])
    with pytest.raises(UserError, match="choose one training method, not --use_dpo and --test_case_rewards_only"):
        method_of(cfg)
    assert method_of(parse_config(RL_SECTIONS, [])) == "grpo_composite"


def test_wandb_offline_run(dpo_argv, tmp_path, monkeypatch):
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_DIR", str(tmp_path))
    monkeypatch.delenv("WANDB_PROJECT", raising=False)
    monkeypatch.delenv("WANDB_NAME", raising=False)
    run(dpo_argv + ["--wandb", "--wandb_project", "q-rl-test", "--max_steps", "2"])
    runs = list((tmp_path / "wandb").glob("offline-run-*"))
    assert len(runs) == 1 and list(runs[0].glob("*.wandb"))


def test_wandb_without_login_fails_at_start(dpo_argv, tmp_path, monkeypatch):
    for var in ("WANDB_MODE", "WANDB_API_KEY"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("NETRC", str(tmp_path / "no-netrc"))
    with pytest.raises(UserError, match="not logged in to W&B"):
        run(dpo_argv + ["--wandb"])
    assert not (tmp_path / "out").exists()


def test_killed_run_resumes_and_loses_at_most_one_save_interval(dpo_argv, tmp_path):
    """SIGKILL a real run mid-training, then resume 'latest' to the end."""
    argv = dpo_argv[:]
    argv[argv.index("--max_steps") + 1] = "400"
    cmd = [sys.executable, str(ROOT / "run_rl.py"), *argv, "--eval_steps", "0"]
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    proc = subprocess.Popen(cmd, cwd=tmp_path, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    ckpts = tmp_path / "out" / "t" / "checkpoints"
    deadline = time.time() + 120
    while time.time() < deadline and not (ckpts / "checkpoint-6" / "trainer_state.json").exists():
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert (ckpts / "checkpoint-6").exists(), "the run never reached its third checkpoint"
    done = subprocess.run(cmd + ["--resume_from_checkpoint", "latest"], cwd=tmp_path, env=env,
                          capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-2000:]
    logged = steps(tmp_path / "out" / "t" / "logs" / "rewards.json")
    assert logged == list(range(1, 401))


# --- the test-case paths (GRPO) -------------------------------------------------------------------------------

def problem_rows():
    def add(i, split):
        return {"task_id": f"py/{i}", "language": "python", "split": split, "difficulty": "easy",
                "prompt": f"Write a Python function `add{i}(a, b)` that returns a + b.", "entry_point": f"add{i}",
                "reference_solution": f"def add{i}(a, b):\n    return a + b\n",
                "tests": [{"args": [1, 2], "expected": 3}, {"args": [0, 0], "expected": 0}]}

    return [add(0, "train"), add(1, "train"), add(2, "eval")]


@pytest.fixture
def grpo_argv(tiny_model, tmp_path):
    from conftest import write_jsonl

    problems = write_jsonl(tmp_path / "problems.jsonl", problem_rows())
    return ["--base_model", str(tiny_model), "--train_data", str(problems), "--output_dir", str(tmp_path / "out"),
            "--experiment_name", "g", "--max_steps", "2", "--save_steps", "2", "--eval_steps", "2",
            "--batch_size", "4", "--gradient_accumulation_steps", "1", "--num_generations", "4",
            "--max_completion_length", "16", "--eval_num_samples", "2", "--workers", "2", "--logging_steps", "1"]


def test_test_case_rewards_only_run(grpo_argv):
    folder = run(grpo_argv + ["--test_case_rewards_only"])
    rewards = json.loads(folder.rewards_json.read_text())
    assert rewards["method"] == "grpo_test_cases" and [e["step"] for e in rewards["steps"]] == [1, 2]
    last = rewards["steps"][-1]
    for key in ("reward", "test_cases/pass", "test_cases/partial", "test_cases/time", "frac_reward_zero_std", "kl"):
        assert key in last, key
    assert any(k.startswith("test_cases/status/") for k in last)
    evals = json.loads(folder.eval_json.read_text())["steps"]
    assert [e["step"] for e in evals] == [2]
    assert evals[0]["problems"] == 1 and evals[0]["samples"] == 2 and 0.0 <= evals[0]["pass@1"] <= 1.0
    assert "pass@2" in evals[0]
    assert (folder.checkpoints / "checkpoint-2" / "adapter_config.json").is_file()
    assert (folder.final_model / "config.json").is_file()


def test_too_few_problems_for_one_generation_batch_is_a_clear_error(grpo_argv, tmp_path):
    """TRL's sampler yields nothing when a generation batch wants more prompts than there are: say so, not step 0."""
    with pytest.raises(UserError, match=r"2 training problems, but one GRPO generation batch takes 4 distinct prompts"):
        run(grpo_argv + ["--test_case_rewards_only", "--gradient_accumulation_steps", "4"])
    assert not (tmp_path / "out" / "g").exists()


def test_default_path_logs_every_composite_component(grpo_argv):
    folder = run(grpo_argv + ["--eval_steps", "0"])
    last = json.loads(folder.rewards_json.read_text())["steps"][-1]
    for key in ("composite/pass", "composite/quality", "composite/quality_style", "composite/quality_docs",
                "composite/quality_complexity"):
        assert key in last, key
    assert json.loads(folder.rewards_json.read_text())["method"] == "grpo_composite"


def test_eval_only_writes_results_and_readable_samples(grpo_argv, tiny_model):
    folder = run(grpo_argv + ["--eval_only", "--eval_num_samples", "3"])
    evals = json.loads(folder.eval_json.read_text())
    assert evals["method"] == "eval_only" and evals["steps"][0]["samples"] == 3
    samples = [json.loads(line) for line in (folder.results / f"samples_{tiny_model.name}.jsonl").read_text().splitlines()]
    assert len(samples) == 3 and {"task_id", "completion", "passed", "status", "same_value"} <= samples[0].keys()
    assert samples[0]["task_id"] == "py/2"  # the eval split only
    assert evals["steps"][0]["same_value"] == sum(s["same_value"] for s in samples)
    assert evals["steps"][0]["passed_by_problem"] == {"py/2": sum(s["passed"] for s in samples)}
    assert (folder.results / f"verdicts_{tiny_model.name}.png").stat().st_size > 1000  # the verdicts, plotted
    assert not folder.checkpoints.exists()


def test_evaluation_is_seeded_and_leaves_the_random_state_alone(grpo_argv):
    import torch

    argv = grpo_argv + ["--eval_only", "--eval_num_samples", "3", "--eval_temperature", "1.0"]
    answers = lambda folder: [json.loads(line)["completion"] for line in next(folder.results.glob("samples_*.jsonl"))
                              .read_text().splitlines()]  # fmt: skip
    state = torch.random.get_rng_state()
    first = answers(run(argv + ["--experiment_name", "a"]))
    assert torch.equal(torch.random.get_rng_state(), state)
    assert answers(run(argv + ["--experiment_name", "b"])) == first  # a re-run samples the same answers
    assert len(set(first)) > 1  # sampled, not greedy
    assert answers(run(argv + ["--experiment_name", "c", "--seed", "7"])) != first


def test_dpo_sft_weight_adds_the_chosen_answers_likelihood_to_the_loss(dpo_argv, tmp_path):
    """Step 1's DPO loss is log 2 (policy = reference); the added NLL of the chosen answers lifts it above that."""
    plain = run(dpo_argv + ["--max_steps", "1", "--eval_steps", "0"])
    with_sft = run(dpo_argv + ["--max_steps", "1", "--eval_steps", "0", "--dpo_sft_weight", "0.5",
                               "--experiment_name", "sft"])  # fmt: skip
    first = lambda folder: json.loads(folder.rewards_json.read_text())["steps"][0]["loss"]
    assert first(plain) == pytest.approx(0.6931, abs=1e-3)
    assert first(with_sft) > first(plain) + 0.1  # a random tiny model's NLL per token is several nats
    saved = parse_config(RL_SECTIONS, ["--config", str(with_sft.config_yaml)])
    assert saved.dpo.dpo_sft_weight == 0.5
