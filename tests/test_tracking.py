"""What a person sees of a run: the W&B run (read back from an offline run's files), and the summary at the end."""

import json
from pathlib import Path

import pytest
from conftest import write_jsonl
from wandb_records import OfflineRun

from qrl.config.arguments import RL_SECTIONS, parse_config
from qrl.config.run_folder import RunFolder
from qrl.rewards.base import STATUSES, JudgedAnswer, ScoreResult
from qrl.training.paths import train
from qrl.training.tracking import CompletionTables, summary_lines

ROOT = Path(__file__).resolve().parents[1]


def shipped_problems(tmp_path, train_n=3, eval_n=2):
    rows = [json.loads(line) for line in (ROOT / "data" / "problems" / "python.jsonl").read_text().splitlines()]
    picked = [r for r in rows if r["split"] == "train"][:train_n] + [r for r in rows if r["split"] == "eval"][:eval_n]
    return write_jsonl(tmp_path / "problems.jsonl", picked)


@pytest.fixture
def offline_wandb(tmp_path, monkeypatch):
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_DIR", str(tmp_path))
    monkeypatch.setenv("WANDB_SILENT", "true")
    for name in ("WANDB_PROJECT", "WANDB_NAME"):
        monkeypatch.delenv(name, raising=False)
    import wandb

    def read() -> OfflineRun:
        (run_dir,) = (tmp_path / "wandb").glob("offline-run-*")
        return OfflineRun(run_dir)

    yield read
    wandb.teardown()  # wandb keeps its settings (WANDB_DIR) per process; later tests need their own


def grpo_argv(tiny_model, tmp_path):
    return ["--base_model", str(tiny_model), "--train_data", str(shipped_problems(tmp_path)), "--output_dir",
            str(tmp_path / "out"), "--experiment_name", "g", "--max_steps", "2", "--save_steps", "2", "--eval_steps",
            "2", "--batch_size", "4", "--gradient_accumulation_steps", "1", "--num_generations", "4",
            "--max_completion_length", "16", "--eval_num_samples", "2", "--workers", "2", "--test_case_rewards_only",
            "--wandb", "--wandb_project", "q-rl-test", "--eval_on_start"]


def test_grpo_offline_run_holds_tables_the_toolkits_config_and_pass_at_1(tiny_model, tmp_path, offline_wandb):
    folder = train(parse_config(RL_SECTIONS, grpo_argv(tiny_model, tmp_path) + [
        "--kl_coef", "0.07", "--reward_partial", "0.3", "--wandb_table_rows", "3"]))
    run = offline_wandb()

    # the toolkit's effective configuration, every section, as config.yaml holds it
    import yaml

    assert run.config["qrl"] == yaml.safe_load(folder.config_yaml.read_text())
    assert run.config["qrl"]["model"]["kl_coef"] == 0.07 and run.config["qrl"]["rewards"]["reward_partial"] == 0.3
    assert run.config["beta"] == 0.07  # TRL's own arguments stay beside it

    # one table per logging step, each with that step's last 3 answers and what became of them
    tables = run.tables("completions")
    assert [t["step"] for t in tables] == [1, 2]
    for table in tables:
        rows = [dict(zip(table["columns"], row, strict=True)) for row in table["data"]]
        assert len(rows) == 3
        for row in rows:
            assert row["verdict"] in STATUSES and row["task_id"].startswith("py/") and row["prompt"]
            assert isinstance(row["completion"], str) and 0 <= row["tests_passed"] <= row["tests_total"] == 5
            parts = {k: row[f"test_cases/{k}"] for k in ("pass", "partial", "all_pass_bonus", "time")}
            weighed = parts["pass"] + 0.3 * parts["partial"] + 0.2 * parts["all_pass_bonus"] + 0.1 * parts["time"]
            assert row["reward"] == pytest.approx(weighed)
            assert row["test_cases/partial"] == pytest.approx(row["tests_passed"] / 5 * (row["verdict"] in (
                "passed", "failed", "runtime_error")))

    # every evaluation's samples, before training and after, with the verdicts eval_results.json counts
    evals = json.loads(folder.eval_json.read_text())["steps"]
    eval_tables = run.tables("eval/completions")
    assert [t["step"] for t in eval_tables] == [e["step"] for e in evals] == [0, 2]
    for table, entry in zip(eval_tables, evals, strict=True):
        verdicts = [dict(zip(table["columns"], row, strict=True))["verdict"] for row in table["data"]]
        assert len(verdicts) == entry["samples"] == 4
        assert {f"status/{v}": verdicts.count(v) for v in set(verdicts)} == {
            k: v for k, v in entry.items() if k.startswith("status/")}

    # pass@k, the verdict shares and the components in the history and the summary; nothing filed as a test split
    keys = {k for row in run.history for k in row}
    assert {"eval/pass@1", "eval/pass@2", "train/test_cases/pass", "train/test_cases/status/syntax_error"} <= keys
    assert not [k for k in keys if k.startswith("test/")]
    assert run.summary["eval/pass@1"] == evals[-1]["pass@1"]
    assert run.summary["summary/eval_pass@1_first"] == evals[0]["pass@1"]
    assert run.summary["summary/train_reward_last"] == pytest.approx(
        json.loads(folder.rewards_json.read_text())["steps"][-1]["reward"])
    for plot in ("training_curves", "eval_curves"):  # the run folder's plots, as images
        assert (run.files / run.summary[f"plots/{plot}/path"]).is_file()


def test_ppo_offline_run_logs_the_same_tables(tiny_model, tmp_path, offline_wandb):
    argv = [a for a in grpo_argv(tiny_model, tmp_path) if a != "--eval_on_start"]
    train(parse_config(RL_SECTIONS, argv + ["--rl_algorithm", "ppo", "--max_seq_length", "400", "--ppo_epochs", "1",
                                            "--eval_max_problems", "1"]))
    run = offline_wandb()
    assert run.config["qrl"]["ppo"]["rl_algorithm"] == "ppo"
    tables = run.tables("completions")
    assert [t["step"] for t in tables] == [1, 2]
    for table in tables:
        assert {"prompt", "completion", "verdict", "tests_passed", "tests_total", "task_id", "reward",
                "test_cases/pass"} <= set(table["columns"]) and len(table["data"]) == 4
    (evaluation,) = run.tables("eval/completions")  # PPO's greedy answers to the held-out prompts
    assert evaluation["step"] == 2 and len(evaluation["data"]) == 1


def judged(n):
    return [JudgedAnswer([{"role": "user", "content": f"task {i}"}], f"answer {i}",
                         ScoreResult(f"t{i}", 0.5, {"pass": 0.0}, "failed", 1, 2)) for i in range(n)]


def test_tables_are_bounded_and_need_a_running_wandb(monkeypatch):
    class Scorer:
        name, components = "test_cases", ("pass",)

        def __init__(self):
            from qrl.rewards.base import JudgedAnswers

            self.judged = JudgedAnswers(limit=5)

    scorer = Scorer()
    tables = CompletionTables(scorer, rows=2)
    scorer.judged.add(judged(7))
    assert len(scorer.judged.take()) == 5  # the record keeps the latest few, never the whole run
    scorer.judged.add(judged(3))
    assert tables.for_log({"loss": 1.0}, 1) == {}  # no W&B run: nothing built ...
    assert scorer.judged.take() == []  # ... and the answers are not kept for later

    import wandb

    monkeypatch.setattr(wandb, "run", object())  # a run is open: tables are built (logging is the trainer's)
    scorer.judged.add(judged(3))
    table = tables.for_log({"loss": 1.0}, 4)["completions"]
    rows = [dict(zip(table.columns, row, strict=True)) for row in table.data]
    assert [r["task_id"] for r in rows] == ["t1", "t2"] and rows[0]["prompt"] == "task 1"
    assert rows[0]["step"] == 4 and rows[0]["verdict"] == "failed" and rows[0]["test_cases/pass"] == 0.0
    scorer.judged.add(judged(1))
    assert tables.for_log({"train_runtime": 3.0}, 4) == {}  # the trainer's closing totals are not a step


def test_the_summary_reads_the_run_folder(tmp_path):
    folder = RunFolder(tmp_path / "run")
    folder.write_json(folder.rewards_json, {"method": "dpo", "steps": [{"step": 1, "loss": 0.6931}, {
        "step": 10, "loss": 0.5012}], "summary": {"train_runtime": 90.0}})
    folder.write_json(folder.eval_json, {"steps": [{"step": 5, "loss": 0.69}, {"step": 10, "loss": 0.61}]})
    assert summary_lines(folder) == ["Done: dpo, 10 steps in 1.5 min", "  loss: 0.693 at step 1, 0.501 at step 10",
                                     "  held-out loss: 0.690 at step 5, 0.610 at step 10"]
    folder.write_json(folder.eval_json, {"steps": []})
    assert summary_lines(folder)[-1] == "  held-out: not evaluated (--eval_steps 0, or no evaluation data)"
