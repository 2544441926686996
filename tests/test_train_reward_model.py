"""train_reward_model.py: data formats, RewardTrainer runs on each, the run folder, and bad input."""

import json
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import preference_rows, write_jsonl

from qrl.cli import reward_model as main
from qrl.config.arguments import (
    REWARD_MODEL_SECTIONS,
    RL_SECTIONS,
    ModelArguments,
    build_parser,
    parse_config,
)
from qrl.data.preferences import (
    ScoredAnswer,
    corruptions,
    demonstration_pairs,
    detect_format,
    mined_pairs,
    ranking_pairs,
    split_by_prompt,
)
from qrl.data.records import DataError, Record
from qrl.resources import REWARD_MODEL_CONFIG
from qrl.training.reward_models import parse_options, train_reward_model

ROOT = Path(__file__).resolve().parents[1]


def rec(**data):
    return Record(data, "f.jsonl:1")


# --- options --------------------------------------------------------------------------------------------
def test_reward_model_options_reuse_the_shared_definitions(tmp_path):
    cfg = parse_options([])
    assert cfg.model.learning_rate == 1.0e-4 and cfg.model.batch_size == 4  # its own defaults
    assert not hasattr(cfg.model, "kl_coef") and not hasattr(cfg.run, "use_dpo")  # no RL options
    shared = {f.name: f for f in __import__("dataclasses").fields(ModelArguments)}
    for f in __import__("dataclasses").fields(REWARD_MODEL_SECTIONS["model"]):
        assert f.metadata["help"] == shared[f.name].metadata["help"]  # one definition per option
    text = build_parser(REWARD_MODEL_SECTIONS, default_config=REWARD_MODEL_CONFIG).format_help()
    for flag in ("--data_path", "--data_format", "--base_model", "--learning_rate", "--max_steps", "--batch_size",
                 "--eval_data", "--wandb", "--config", "--no_peft", "--lora_r", "--mine_pairs_from"):
        assert flag in text
    assert "configs/reward_model.yaml" in text
    # the run's config.yaml re-runs it, and the file's values sit between defaults and flags
    saved = tmp_path / "c.yaml"
    saved.write_text(cfg.to_yaml().replace("max_steps: 200", "max_steps: 7"))
    again = parse_config(REWARD_MODEL_SECTIONS, ["--config", str(saved), "--batch_size", "2"])
    assert again.model.max_steps == 7 and again.model.batch_size == 2
    assert "mining" in RL_SECTIONS and "ppo" in RL_SECTIONS


# --- formats --------------------------------------------------------------------------------------------
def test_format_detection():
    assert detect_format(rec(prompt="p", chosen="a", rejected="b")) == "pairs"
    assert detect_format(rec(prompt="p", responses=["a", "b"])) == "rankings"
    assert detect_format(rec(prompt="p", completion="a")) == "demonstrations"
    with pytest.raises(DataError, match="f.jsonl:1: unknown data format.*got fields answer, question"):
        detect_format(rec(question="q", answer="a"))
    with pytest.raises(DataError, match="looks like a problems file: use --mine_pairs_from"):
        detect_format(rec(task_id="t", prompt="p", entry_point="f", tests=[]))


def test_rankings_expand_into_ordered_pairs():
    best_first = ranking_pairs([rec(prompt="p", responses=["A", "B", "C"])])
    assert [(r["chosen"], r["rejected"]) for r in best_first] == [("A", "B"), ("A", "C"), ("B", "C")]
    scored = ranking_pairs([rec(prompt=[{"role": "user", "content": "p"}], responses=["x", "y", "z"],
                                scores=[0.1, 0.9, 0.9])])
    assert {(r["chosen"][0]["content"], r["rejected"][0]["content"]) for r in scored} == {("y", "x"), ("z", "x")}
    assert scored[0]["chosen"][0]["role"] == "assistant"  # text answers follow a conversational prompt
    with pytest.raises(DataError, match="'scores' must be a list of 2 numbers"):
        ranking_pairs([rec(prompt="p", responses=["a", "b"], scores=[1])])
    with pytest.raises(DataError, match="at least 2"):
        ranking_pairs([rec(prompt="p", responses=["a"])])


def test_demonstrations_pair_against_corruptions_and_policy_answers():
    code = "```python\ndef f(a, b):\n    if a < b:\n        return a + b\n    return a\n```\nIt adds."
    bad = corruptions(code)
    assert set(bad) == {"truncated", "flipped", "swapped", "no_code"}
    assert "if a > b" in bad["flipped"] and "return a" not in bad["truncated"] and "```" not in bad["no_code"]
    assert all(b != code for b in bad.values())
    assert corruptions("til 10") == {"truncated": "til"}  # one line, no operator: only the cut
    demos = [rec(prompt="p1", completion=code), rec(prompt="p2", completion="x: 1 + 2")]
    rows, counts = demonstration_pairs(demos, "both", policy_answers=lambda prompts: ["mine", "x: 1 + 2"])
    assert counts == {"truncated": 2, "flipped": 2, "swapped": 1, "no_code": 1, "policy": 1}  # p2's own = expert
    assert all(r["chosen"] in (code, "x: 1 + 2") for r in rows)
    assert {"prompt": "p1", "chosen": code, "rejected": "mine"} in rows


def test_held_out_prompts_never_leak_into_training():
    rows = ranking_pairs([rec(prompt=f"p{i}", responses=["a", "b", "c"]) for i in range(10)])
    train, held = split_by_prompt(rows, 0.2, seed=1)
    assert len(held) == 6 and len(train) == 24
    assert not {r["prompt"] for r in train} & {r["prompt"] for r in held}


def test_mined_pair_order():
    answers = [ScoredAnswer("pass", 5, 5, 0.2), ScoredAnswer("pass-clean", 5, 5, 0.9), ScoredAnswer("three", 3, 5),
               ScoredAnswer("none", 0, 5), ScoredAnswer("none", 0, 5), ScoredAnswer("  ", 0, 5)]
    pairs = mined_pairs(answers)
    reasons = [(a.text, b.text, why) for a, b, why in pairs]
    assert reasons[:4] == [("pass-clean", "none", "pass_over_fail"), ("pass", "none", "pass_over_fail"),
                           ("pass-clean", "three", "pass_over_fail"), ("pass", "three", "pass_over_fail")]
    assert ("three", "none", "more_tests") in reasons and ("pass-clean", "pass", "quality") in reasons
    assert len(pairs) == 6  # duplicates and empty answers dropped; no pair either way between equals
    assert len(mined_pairs(answers, max_pairs=2)) == 2


# --- training runs ----------------------------------------------------------------------------------------
@pytest.fixture
def rm_argv(tiny_model, tmp_path):
    return ["--base_model", str(tiny_model), "--output_dir", str(tmp_path / "out"), "--experiment_name", "rm",
            "--max_steps", "3", "--eval_steps", "2", "--save_steps", "2", "--batch_size", "2",
            "--max_seq_length", "128", "--learning_rate", "1e-3"]


def test_reward_model_on_pairs_writes_the_run_folder(rm_argv, preference_file):
    folder = train_reward_model(parse_options(rm_argv + ["--data_path", str(preference_file),
                                                                               "--eval_split", "0.25"]))
    results = json.loads(folder.eval_json.read_text())
    assert results["method"] == "reward_model" and [e["step"] for e in results["steps"]] == [2, 3]
    assert results["final"]["step"] == 3 and results["final"]["pairs"] == 2
    assert results["final"]["accuracy"] in (0.0, 0.5, 1.0)  # exact, pair by pair
    assert results["eval_pairs"] == 2 and results["train_pairs"] == 6
    assert "accuracy" in json.loads(folder.rewards_json.read_text())["steps"][0]
    log = folder.training_log.read_text()
    assert "6 training pairs, 2 held-out pairs" in log and "step 3/3 eval: loss=" in log
    assert (folder.checkpoints / "checkpoint-2" / "adapter_config.json").is_file()
    saved = parse_config(REWARD_MODEL_SECTIONS, ["--config", str(folder.config_yaml)])
    assert saved.data.data_path == str(preference_file) and saved.model.max_steps == 3

    from transformers import AutoModelForSequenceClassification

    model = AutoModelForSequenceClassification.from_pretrained(folder.final_model)
    assert model.config.num_labels == 1

    # the reward function scores exactly the tokens the trainer trained on
    from trl.data_utils import _tokenize

    from qrl.models.loading import reward_model_texts
    from qrl.rewards.learned import LearnedReward

    reward = LearnedReward(str(folder.final_model))
    row = preference_rows(1)[0]
    text = reward_model_texts(reward.tokenizer, [row["prompt"]], [row["chosen"]])[0]
    assert reward.tokenizer(text, add_special_tokens=False)["input_ids"] == _tokenize(
        reward.tokenizer, row["prompt"] + row["chosen"])["input_ids"]
    assert len(reward([row["prompt"]] * 2, [row["chosen"], row["rejected"]])) == 2


def test_reward_model_on_rankings_and_demonstrations(rm_argv, tmp_path, tiny_model):
    rankings = write_jsonl(tmp_path / "rank.jsonl", [
        {"prompt": f"Write add{i}", "responses": [f"def add{i}(a, b):\n    return a + b\n", "def add(a):\n    pass\n",
                                                  "I cannot help with that."]} for i in range(4)])
    folder = train_reward_model(parse_options(rm_argv + [
        "--data_path", str(rankings), "--experiment_name", "rank", "--max_steps", "2"]))
    assert json.loads(folder.eval_json.read_text())["sources"][str(rankings)] == {"format": "rankings", "pairs": 12}

    demos = write_jsonl(tmp_path / "demo.json", [])
    demos.write_text(json.dumps([{"prompt": [{"role": "user", "content": f"Write is_even{i}"}],
                                  "completion": [{"role": "assistant", "content":
                                                  f"```python\ndef is_even{i}(n):\n    return n % 2 == 0\n```"}]}
                                 for i in range(4)]))
    folder = train_reward_model(parse_options(rm_argv + [
        "--data_path", str(demos), "--data_format", "demonstrations", "--demo_negatives", "both",
        "--experiment_name", "demo", "--max_steps", "2", "--max_completion_length", "8"]))
    source = json.loads(folder.eval_json.read_text())["sources"][str(demos)]
    assert source["format"] == "demonstrations" and source["by_kind"]["policy"] == 4  # the tiny model's own answers
    assert source["by_kind"]["flipped"] == 4  # == became !=


def rm_cli(args, cwd):
    return subprocess.run([sys.executable, str(ROOT / "train_reward_model.py"), *args], cwd=cwd,
                          capture_output=True, text=True, timeout=300)


def test_bad_inputs_are_one_clear_line(tiny_model, tmp_path, preference_file, capsys):
    base = ["--base_model", str(tiny_model), "--output_dir", str(tmp_path / "out"), "--max_steps", "1"]
    unknown = write_jsonl(tmp_path / "qa.jsonl", [{"question": "q", "answer": "a"}])
    broken = write_jsonl(tmp_path / "broken.jsonl", preference_rows(1))
    broken.write_text(broken.read_text() + "{oops\n")
    no_completion = write_jsonl(tmp_path / "d.jsonl", [{"prompt": "p", "completion": "c"}, {"prompt": "p"}])
    mixed = write_jsonl(tmp_path / "mixed.jsonl", [{"prompt": "p", "responses": ["a", "b"]}])
    cases = [
        ([], "no training data: give --data_path"),
        (["--data_path", str(unknown)], f"{unknown}:1: unknown data format"),
        (["--data_path", str(tmp_path / "none.jsonl")], "none.jsonl: no such file or folder"),
        (["--data_path", str(preference_file), "--data_format", "essays"], "invalid choice: 'essays'"),
        (["--data_path", str(broken)], f"{broken}:2: malformed JSON"),
        (["--data_path", str(no_completion)], f"{no_completion}:2: missing field 'completion'"),
        (["--data_path", str(mixed), "--eval_data", str(preference_file)], "mixes plain-text and conversational"),
        (["--data_path", str(preference_file), "--learning_rate", "0"], "--learning_rate must be greater than 0"),
        (["--data_path", str(preference_file), "--kl_coef", "0.1"], "unrecognized arguments: --kl_coef"),
        (["--data_path", str(preference_file), "--base_model", str(tmp_path / "nope")], "model folder not found"),
        (["--data_path", str(preference_file), "--output_dir", "/proc/qrl-no-such-dir"],
         "output folder /proc/qrl-no-such-dir/tiny-llama-reward cannot be created"),
    ]
    for i, (extra, needle) in enumerate(cases):
        if i < 2:  # as a user meets it: a process that prints one line and exits 2
            proc = rm_cli(base + extra, tmp_path)
            code, err = proc.returncode, proc.stderr
        else:  # the same main(), in this process (fast)
            code, err = main(base + extra), capsys.readouterr().err
        lines = [line for line in err.splitlines() if line.strip()]
        assert code == 2 and len(lines) == 1, (extra, err[-2000:])
        assert lines[0].startswith("train_reward_model.py: error: ") and needle in lines[0], lines[0]
        assert "Traceback" not in err
    assert not (tmp_path / "out").exists(), "a failed start must write nothing"


# --- pairs mined from test runs ---------------------------------------------------------------------------
@pytest.fixture
def problems_file(tmp_path):
    from conftest import problem_rows

    return write_jsonl(tmp_path / "problems.jsonl", problem_rows(3))


def test_mined_pairs_train_a_reward_model(rm_argv, problems_file):
    """The tiny model's answers fail; with the references added, every problem gives passing-over-failing pairs."""
    folder = train_reward_model(parse_options(rm_argv + [
        "--mine_pairs_from", str(problems_file), "--mine_samples", "3", "--mine_with_reference",
        "--max_completion_length", "12", "--max_steps", "1", "--eval_split", "0.34", "--max_seq_length", "512"]))
    counts = json.loads(folder.mining_json.read_text())
    assert counts["problems"] == 3 and counts["samples"] == 12 and counts["passing_samples"] == 3
    assert counts["problems_with_a_passing_sample"] == 3 and counts["pairs_by_reason"]["pass_over_fail"] >= 3
    assert counts["pairs"] == sum(counts["pairs_by_reason"].values())
    pairs = [json.loads(line) for line in folder.mined_pairs.read_text().splitlines()]
    assert len(pairs) == counts["pairs"]
    first = next(p for p in pairs if p["reason"] == "pass_over_fail")
    assert first["chosen_passed"] == first["tests"] > first["rejected_passed"]
    assert first["prompt"][0]["role"] == "user" and "```python" in first["chosen"][0]["content"]
    assert "mined" in folder.training_log.read_text()
    sources = json.loads(folder.eval_json.read_text())["sources"]
    assert sources[str(problems_file)] == {"format": "mined", "pairs": counts["pairs"]}


def test_mined_pairs_for_dpo_and_a_harvest_of_nothing(tiny_model, problems_file, tmp_path):
    from qrl.config.arguments import RL_SECTIONS
    from qrl.data.preferences import ScoredAnswer
    from qrl.training import mining
    from qrl.training.paths import train

    argv = ["--use_dpo", "--base_model", str(tiny_model), "--mine_pairs_from", str(problems_file),
            "--mine_samples", "2", "--mine_with_reference", "--max_completion_length", "8", "--output_dir",
            str(tmp_path / "out"), "--max_steps", "1", "--batch_size", "2", "--gradient_accumulation_steps", "1",
            "--max_seq_length", "512", "--eval_steps", "0", "--workers", "1"]
    folder = train(parse_config(RL_SECTIONS, argv))
    assert json.loads(folder.rewards_json.read_text())["method"] == "dpo"
    pairs = [json.loads(line) for line in folder.mined_pairs.read_text().splitlines()]
    assert pairs and all(p["reason"] and p["task_id"] for p in pairs)  # what decided each pair, as for reward models
    again = train(parse_config(RL_SECTIONS, [
        "--use_dpo", "--base_model", str(tiny_model), "--preference_data", str(folder.mined_pairs), "--output_dir",
        str(tmp_path / "out"), "--experiment_name", "from_mined_file", "--max_steps", "1", "--batch_size", "2",
        "--gradient_accumulation_steps", "1", "--max_seq_length", "512", "--eval_steps", "0"]))
    assert json.loads(again.rewards_json.read_text())["method"] == "dpo"  # the file is reusable as DPO data

    cfg = parse_config(RL_SECTIONS, argv)
    same = lambda problems, answers: [[ScoredAnswer(a, 0, 5) for a in group] for group in answers]  # noqa: E731
    with pytest.raises(DataError, match="mining found no pairs .*--mine_samples"):
        mining.mine(cfg, scorer=same)


def test_mining_never_samples_held_out_problems(tiny_model, tmp_path):
    """Problems in the 'eval' split are held out: mining (for DPO or a reward model) never sees them."""
    from conftest import problem_rows

    from qrl.config.arguments import RL_SECTIONS
    from qrl.data.preferences import ScoredAnswer
    from qrl.training import mining

    rows = problem_rows(3)
    rows[1] = {**rows[1], "split": "eval"}
    path = write_jsonl(tmp_path / "problems.jsonl", rows)
    cfg = parse_config(RL_SECTIONS, ["--base_model", str(tiny_model), "--mine_pairs_from", str(path),
                                     "--mine_samples", "2", "--max_completion_length", "4"])
    seen = []

    def scorer(problems, answers):
        seen.extend(p.task_id for p in problems)
        return [[ScoredAnswer(a, i % 2, 1) for i, a in enumerate(group)] for group in answers]

    mined, _ = mining.mine(cfg, scorer=scorer)
    assert seen == [rows[0]["task_id"], rows[2]["task_id"]]
    assert {r["task_id"] for r in mined} == set(seen)
    write_jsonl(path, [{**r, "split": "eval"} for r in rows])
    with pytest.raises(DataError, match="no problems to mine .*'eval' split"):
        mining.mine(cfg, scorer=scorer)


def test_mine_only_writes_the_pairs_and_no_model(tiny_model, problems_file, tmp_path, rm_argv):
    """--mine_only (both scripts): the run folder holds the config and the mined pairs; nothing is trained."""
    from qrl.config.arguments import RL_SECTIONS
    from qrl.training.paths import train

    mine = ["--mine_pairs_from", str(problems_file), "--mine_samples", "2", "--mine_with_reference",
            "--max_completion_length", "8", "--mine_only"]
    folder = train(parse_config(RL_SECTIONS, ["--use_dpo", "--workers", "1", "--base_model", str(tiny_model),
                                              "--output_dir", str(tmp_path / "out"), "--experiment_name", "mine", *mine]))
    pairs = [json.loads(line) for line in folder.mined_pairs.read_text().splitlines()]
    assert pairs and {p["task_id"] for p in pairs} == {r["task_id"] for r in map(json.loads, problems_file.open())}
    assert json.loads(folder.mining_json.read_text())["pairs"] == len(pairs)
    assert "mine_only: true" in folder.config_yaml.read_text()
    assert folder.latest_checkpoint() is None and not folder.final_model.exists()

    rm = train_reward_model(parse_options(rm_argv + mine))
    assert rm.mined_pairs.is_file() and not rm.final_model.exists()


@pytest.mark.parametrize("extra, message", [
    ([], "--mine_only writes mined pairs: give --mine_pairs_from"),
    (["--mine_pairs_from", "p.jsonl", "--resume_from_checkpoint", "latest"], "--mine_only trains nothing"),
])
def test_mine_only_refuses_what_it_cannot_do(extra, message, capsys):
    import run_rl

    assert run_rl.main(["--use_dpo", "--mine_only", *extra]) == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err
