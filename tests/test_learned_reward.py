"""LearnedReward: alone, inside the composite reward, from `reward_model.py score`, and on PPO's test-case path."""

import json
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import problem_rows, write_jsonl

from qrl.data.records import UserError
from qrl.problems import load_problems
from qrl.rewards.base import Sample
from qrl.rewards.composite import CompositeReward
from qrl.rewards.learned import LearnedReward
from qrl.rewards.test_cases import TestCaseReward

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture
def problem_file(tmp_path):
    return write_jsonl(tmp_path / "problems.jsonl", problem_rows(2))


def test_alone_batched_and_by_task_id(tiny_reward_model, problem_file):
    problems = load_problems(problem_file)
    reward = LearnedReward(str(tiny_reward_model), problems, batch_size=2)
    prompts = [[{"role": "user", "content": f"Write add{i}"}] for i in range(5)]
    answers = [[{"role": "assistant", "content": "def add(a, b):\n    return a + b\n" * (i + 1)}] for i in range(5)]
    batched = reward(prompts=prompts, completions=answers)
    assert batched == pytest.approx([reward([p], [a])[0] for p, a in zip(prompts, answers, strict=False)], abs=1e-5)
    assert len(set(batched)) > 1
    assert len(reward(prompts=["Write add: "], completions=["def add(a, b): return a + b"])) == 1  # plain text
    # without prompts (the composite's and the score command's way): the problem's prompt, as a user turn
    task = problems[0]
    by_task = reward.score_samples([Sample("def f(): pass", task.task_id)])[0]
    direct = reward(prompts=[[{"role": "user", "content": task.prompt}]], completions=["def f(): pass"])[0]
    assert by_task.reward == pytest.approx(direct, abs=1e-6) and by_task.components == {"learned": by_task.reward}
    with pytest.raises(UserError, match="unknown task_id 'nope'"):
        reward.score_samples([Sample("x", "nope")])


def test_not_a_reward_model_is_one_clear_error(tiny_model, tmp_path):
    with pytest.raises(UserError, match="not a sequence-classification reward model .*LlamaForCausalLM"):
        LearnedReward(str(tiny_model))
    (tmp_path / "adapter").mkdir()
    (tmp_path / "adapter" / "adapter_config.json").write_text("{}")
    with pytest.raises(UserError, match="a LoRA checkpoint, not a whole model"):
        LearnedReward(str(tmp_path / "adapter"))


def test_inside_the_composite_reward(tiny_reward_model, problem_file):
    problems = load_problems(problem_file)
    task = problems[0]
    answer = f"```python\n{task.reference}\n```"
    learned = LearnedReward(str(tiny_reward_model), problems)
    from qrl.config.arguments import RewardArguments

    with TestCaseReward(problems, weights=RewardArguments(reward_learned=0.5), workers=1) as tests:
        plain = CompositeReward(tests).score_samples([Sample(answer, task.task_id)])[0]
        both = CompositeReward(tests, learned=learned).score_samples([Sample(answer, task.task_id)])[0]
    score = learned.score_samples([Sample(answer, task.task_id)])[0].reward
    assert both.reward == pytest.approx(plain.reward + 0.5 * score, abs=1e-6)
    assert both.components["learned"] == pytest.approx(score) and plain.passed


def test_score_command_with_a_reward_model(tiny_reward_model, tiny_model, problem_file, tmp_path):
    task = problem_rows(1)[0]
    completions = write_jsonl(tmp_path / "c.jsonl", [
        {"task_id": task["task_id"], "completion": f"```python\n{task['reference_solution']}```"},
        {"task_id": task["task_id"], "completion": "I cannot help."}])
    out = tmp_path / "out.jsonl"
    cmd = [sys.executable, str(ROOT / "reward_model.py"), "score", "--problems", str(problem_file),
           "--completions", str(completions), "--output", str(out), "--workers", "1"]
    proc = subprocess.run(cmd + ["--reward_model_path", str(tiny_reward_model)], capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert [r["passed"] for r in rows] == [True, False]
    assert all(isinstance(r["learned_reward"], float) for r in rows)
    assert "mean learned reward" in proc.stdout
    bad = subprocess.run(cmd + ["--reward_model_path", str(tiny_model)], capture_output=True, text=True, timeout=300)
    lines = [line for line in bad.stderr.splitlines() if line.strip()]
    assert bad.returncode == 2 and len(lines) == 1 and "not a sequence-classification reward model" in lines[0]


def test_ppo_on_the_test_case_path_and_the_learned_term(tiny_model, tiny_reward_model, problem_file, tmp_path):
    """--rl_algorithm ppo: the same problems, prompts and composite reward as GRPO, optimised with PPO."""
    from qrl.config.arguments import RL_SECTIONS, parse_config
    from qrl.training.paths import train

    argv = ["--base_model", str(tiny_model), "--train_data", str(problem_file), "--output_dir", str(tmp_path),
            "--experiment_name", "ppo", "--rl_algorithm", "ppo", "--max_steps", "1", "--batch_size", "2",
            "--gradient_accumulation_steps", "1", "--ppo_epochs", "1", "--max_completion_length", "8",
            "--max_seq_length", "512", "--eval_steps", "0", "--workers", "1", "--reward_model_path",
            str(tiny_reward_model), "--reward_learned", "0.5"]
    folder = train(parse_config(RL_SECTIONS, argv))
    rewards = json.loads(folder.rewards_json.read_text())
    assert rewards["method"] == "ppo_composite"
    step = rewards["steps"][0]
    assert {"reward", "kl", "value/loss", "composite/pass", "composite/quality", "composite/learned"} <= set(step)
    with pytest.raises(UserError, match="--reward_learned needs --reward_model_path"):
        train(parse_config(RL_SECTIONS, argv[:-4] + ["--reward_learned", "0.5", "--overwrite_output_dir"]))
    with pytest.raises(UserError, match="needs --reward_learned > 0"):
        train(parse_config(RL_SECTIONS, argv[:-2] + ["--overwrite_output_dir"]))
