"""The recipes run end to end in a tiny mode, and their report's statistics say what they should."""

import json
import sys
from pathlib import Path

import pytest
from conftest import problem_rows, write_jsonl

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "recipes"))

from recipe_report import RecipeArguments, bootstrap_interval, change, load_eval, parse_recipe, sign_test


def test_sign_test():
    assert sign_test(0, 0) == 1.0
    assert sign_test(5, 0) == pytest.approx(2 / 32)
    assert sign_test(3, 3) == 1.0
    assert sign_test(10, 1) < 0.05 < sign_test(6, 2)


def test_bootstrap_interval_holds_the_mean():
    low, high = bootstrap_interval([0.0, 0.5, 0.25, 0.0, 1.0])
    assert low < 0.35 < high
    assert bootstrap_interval([0.5] * 10) == (0.5, 0.5)


def _eval(label, passes, tests=None, error_free=None):
    """An evaluation with 4 answers a problem: ``passes`` answers passing per problem, and optionally the summed
    fraction of tests passed and the number of error-free answers (default: as many as passed)."""
    per_problem = {t: {"samples": 4, "passed": k, "tests": (tests or passes)[t], "tests_varied": (tests or passes)[t],
                       "error_free": (error_free or passes)[t]} for t, k in passes.items()}
    return {"label": label, "per_problem": per_problem, "solved_problems": sum(k > 0 for k in passes.values())}


def test_change_counts_problems_not_samples():
    before = _eval("eval-0", {f"t{i}": 0 for i in range(12)})
    after = _eval("eval-1", {**{f"t{i}": 2 for i in range(10)}, "t10": 0, "t11": 0})
    c = change(before, after)
    assert c["problems"] == 12 and c["problems_better"] == 10 and c["problems_worse"] == 0
    assert c["pass@1_change"] == pytest.approx(10 * 0.5 / 12, abs=1e-4)
    assert c["solved_problems_change"] == 10 and c["beyond_noise"] and c["sign_test_p"] < 0.01
    one = change(before, _eval("eval-1", {**{f"t{i}": 0 for i in range(12)}, "t0": 1}))
    assert one["problems_better"] == 1 and not one["beyond_noise"]


def test_change_reports_tests_passed_and_error_free_answers_apart_from_passes():
    """No answer passes before or after, but after training more tests pass and fewer answers crash: the secondary
    rates see it (and a drop counts as beyond noise too), pass@1 does not."""
    tasks = [f"t{i}" for i in range(12)]
    before = _eval("eval-0", dict.fromkeys(tasks, 0), tests=dict.fromkeys(tasks, 0.5), error_free=dict.fromkeys(tasks, 3))
    after = _eval("eval-1", dict.fromkeys(tasks, 0), tests=dict.fromkeys(tasks, 2.0), error_free=dict.fromkeys(tasks, 1))
    c = change(before, after)
    assert c["problems_better"] == c["problems_worse"] == 0 and not c["beyond_noise"]
    tests, runs = c["secondary"]["tests_passed"], c["secondary"]["error_free"]
    assert (tests["before"], tests["after"], tests["problems_better"]) == (0.125, 0.5, 12) and tests["beyond_noise"]
    assert (runs["change"], runs["problems_worse"]) == (-0.5, 12) and runs["beyond_noise"]


def test_load_eval_counts_one_value_answers_apart(tmp_path):
    """An answer that gave every test the same value keeps its tests passed, and counts none in tests_varied; the
    counts come from the samples as judged now, not from the run's metrics."""
    (tmp_path / "logs").mkdir()
    (tmp_path / "results").mkdir()
    metrics = {"steps": [{"problems": 1, "samples": 2, "pass@1": 0, "status/failed": 9}]}  # judged before: stale
    (tmp_path / "logs" / "eval_results.json").write_text(json.dumps(metrics))
    failed = {"task_id": "t", "passed": False, "status": "failed", "tests_passed": 1}
    rows = [{**failed, "tests_total": 2, "same_value": True}, {**failed, "tests_total": 4}]
    write_jsonl(tmp_path / "results" / "samples_m.jsonl", rows)
    evaluation = load_eval(tmp_path, "eval-0")
    problem = evaluation["per_problem"]["t"]
    assert (problem["tests"], problem["tests_varied"], problem["error_free"]) == (0.75, 0.25, 2)
    assert (evaluation["status/failed"], evaluation["same_value"], evaluation["pass@2"]) == (2, 1, 0.0)
    write_jsonl(tmp_path / "results" / "samples_m.jsonl", [{**failed, "tests_total": 2}])  # judged before the mark
    older = load_eval(tmp_path, "eval-1")
    assert "tests_varied" not in older["per_problem"]["t"] and "same_value" not in older
    assert list(change(older, load_eval(tmp_path, "eval-1"))["secondary"]) == ["tests_passed", "error_free"]


def test_report_command_names_a_folder_that_is_not_a_run(tmp_path, capsys):
    from recipe_report import main

    report = tmp_path / "report.json"
    with pytest.raises(SystemExit) as exit_:
        main(["--evals", str(tmp_path / "nowhere"), "--recipe", "r", "--report", str(report)])
    assert exit_.value.code == 2 and f"{tmp_path / 'nowhere'} is not an --eval_only run folder" in capsys.readouterr().err
    assert not report.exists()


def tiny_recipe(tiny_model, tmp_path, name: str) -> tuple[list[dict], Path, list[str]]:
    """Two problems (one to train on, one held out), two rounds of one step each, with the tiny model: the problems,
    the report's path and the recipe's arguments."""
    rows = problem_rows(2)
    rows[1] = {**rows[1], "split": "eval"}
    problems = write_jsonl(tmp_path / "problems.jsonl", rows)
    report = tmp_path / "report" / f"{name}.json"
    argv = ["--base_model", str(tiny_model), "--problems", str(problems), "--output_dir", str(tmp_path / "out"),
            "--report", str(report), "--rounds", "2", "--",
            "--max_steps", "1", "--batch_size", "2", "--mine_samples", "2", "--mine_with_reference",
            "--eval_num_samples", "2", "--max_completion_length", "8", "--max_seq_length", "512", "--workers", "1"]
    return rows, report, argv


def test_mined_dpo_recipe_tiny(tiny_model, tmp_path):
    """Two problems (one to mine, one held out), two rounds of one DPO step each (the second mined from the first's
    model), evaluations before and after each, the report."""
    import mined_dpo

    rows, report, argv = tiny_recipe(tiny_model, tmp_path, "mined_dpo")
    assert mined_dpo.main(argv) == 0
    data = json.loads(report.read_text())
    assert [e["label"] for e in data["evaluations"]] == ["eval-0", "eval-1", "eval-2"]
    assert len(data["rounds"]) == 2  # eval-0 to eval-1, eval-1 to eval-2; "change" is eval-0 to eval-2
    assert all(list(e["per_problem"]) == [rows[1]["task_id"]] for e in data["evaluations"])
    assert data["held_out"] == {"problems": 1, "samples_per_problem": 2}
    assert data["change"]["problems"] == 1 and "sign_test_p" in data["change"]
    for training in data["training"]:
        assert training["mining"]["problems"] == 1 and training["mining"]["pairs"] >= 1  # held-out: never mined
        assert [s["step"] for s in training["steps"] if "rewards/margins" in s] == [1]
    assert report.with_suffix(".png").is_file() and (tmp_path / "out" / "mined_dpo" / "results" / "mined_dpo.png").is_file()
    assert data["evaluations"][1]["model"].endswith("dpo-1/checkpoints/final")
    assert data["evaluations"][2]["model"].endswith("dpo-2/checkpoints/final")
    assert data["settings"]["rounds"] == 2
    assert mined_dpo.main(argv) == 2  # the recipe's folder exists: nothing is overwritten


@pytest.mark.parametrize("recipe, flag", [("mined_dpo", "--rounds"), ("expert_iteration", "--rounds"),
                                          ("expert_iteration", "--per_problem")])
def test_recipes_refuse_bad_counts_before_running_anything(recipe, flag, tmp_path, capsys):
    import importlib

    report = tmp_path / "report.json"
    argv = [flag, "0", "--output_dir", str(tmp_path / "out"), "--report", str(report)]
    assert importlib.import_module(recipe).main(argv) == 2
    assert f"{flag} must be at least 1, got 0" in capsys.readouterr().err
    assert not (tmp_path / "out").exists() and not report.exists()


def test_recipes_find_the_shipped_problems_from_any_folder(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    run = parse_recipe(RecipeArguments, "recipe", "Doc.", [])[1]
    assert Path(run.problems).resolve() == (Path(__file__).resolve().parent.parent / "data" / "problems").resolve()
    (tmp_path / "data" / "problems").mkdir(parents=True)  # a folder of the user's own, of the same name, wins
    assert parse_recipe(RecipeArguments, "recipe", "Doc.", ["--name", "other"])[1].problems == "data/problems"


def test_expert_iteration_recipe_tiny(tiny_model, tmp_path):
    """Two rounds on two problems (one trained on, one held out): each round mines the newest model's answers, pools
    the passing ones of every round so far, and fine-tunes the starting model on them; the report says so. With
    --no_eval_each_round only the starting and the last model are evaluated (mined_dpo's test has every round)."""
    import expert_iteration

    rows, report, argv = tiny_recipe(tiny_model, tmp_path, "expert_iteration")
    assert expert_iteration.main(["--no_eval_each_round", *argv]) == 0
    data = json.loads(report.read_text())
    root = tmp_path / "out" / "expert_iteration"
    assert [e["label"] for e in data["evaluations"]] == ["eval-0", "eval-2"] and not (root / "eval-1").exists()
    assert all(list(e["per_problem"]) == [rows[1]["task_id"]] for e in data["evaluations"])
    assert data["evaluations"][1]["model"] == str(root / "sft-2" / "checkpoints" / "final")
    for r, pool in enumerate(data["pools"], 1):
        assert pool["round"] == r and pool["mining"]["problems"] == 1  # held out: never mined
        assert pool["pooled_problems"] == 1 and pool["pooled_answers"] >= 1  # the reference passes
        assert not (root / f"mine-{r}" / "checkpoints" / "final").exists()  # mining trains nothing
    # the second round mined the first round's model, and trained the starting model again
    assert str(root / "sft-1" / "checkpoints" / "final") in (root / "mine-2" / "config.yaml").read_text()
    assert str(tiny_model) in (root / "sft-2" / "config.yaml").read_text()
    assert "passing-1.jsonl" in (root / "sft-1" / "config.yaml").read_text()
    assert [len(t["steps"]) > 0 for t in data["training"]] == [True, True]
    assert set(data["wall_s"]) >= {"total", "eval-0", "mine-1", "pool-1", "sft-1", "mine-2", "eval-2"}
    assert "eval-1" not in data["wall_s"]
    assert report.with_suffix(".png").is_file() and (root / "results" / "expert_iteration.png").is_file()
    assert expert_iteration.main(argv) == 2  # the recipe's folder exists: nothing is overwritten


def test_recipe_resume_goes_on_where_it_stopped_and_checks_the_settings(tiny_model, tmp_path, capsys):
    """A one-round run, stopped as if killed while round 1 saved its model: --resume with --rounds 2 reuses what was
    finished, trains round 1 on from its checkpoint, and runs the rest; other settings than the start's are refused."""
    import shutil

    import expert_iteration
    import mined_dpo

    _, report, argv = tiny_recipe(tiny_model, tmp_path, "expert_iteration")
    one_round = [*argv]
    one_round[one_round.index("--rounds") + 1] = "1"
    assert expert_iteration.main(one_round) == 0
    root = tmp_path / "out" / "expert_iteration"
    assert json.loads((root / "recipe.json").read_text())["settings"]["seed"] == 42
    assert (root / "sft-1" / "checkpoints" / "checkpoint-1").is_dir()
    shutil.rmtree(root / "sft-1" / "checkpoints" / "final")
    shutil.rmtree(root / "eval-1")
    mining = (root / "mine-1" / "logs" / "mining.json").stat().st_mtime_ns
    capsys.readouterr()

    assert expert_iteration.main(["--resume", "--seed", "7", *argv]) == 2
    assert "was started with seed 42, not 7" in capsys.readouterr().err
    assert expert_iteration.main(["--resume", "--name", "elsewhere", *argv]) == 2
    assert "recipe.json not found" in capsys.readouterr().err and not (tmp_path / "out" / "elsewhere").exists()
    assert expert_iteration.main(argv) == 2
    assert "--resume" in capsys.readouterr().err
    assert mined_dpo.main(["--resume", "--name", "expert_iteration", *argv]) == 2
    assert "holds a run of recipes/expert_iteration.py, not of mined_dpo.py" in capsys.readouterr().err
    (tmp_path / "out" / "broken").mkdir()
    (tmp_path / "out" / "broken" / "recipe.json").write_text("{")
    assert expert_iteration.main(["--resume", "--name", "broken", *argv]) == 2
    assert "recipe.json is not a recipe's settings" in capsys.readouterr().err

    assert expert_iteration.main(["--resume", *argv]) == 0
    data = json.loads(report.read_text())
    assert data["reused_steps"] == ["eval-0", "mine-1"]
    assert (root / "mine-1" / "logs" / "mining.json").stat().st_mtime_ns == mining  # not mined again
    assert "--resume_from_checkpoint latest" in capsys.readouterr().out
    assert (root / "sft-1" / "checkpoints" / "final" / "tokenizer_config.json").is_file()
    assert [e["label"] for e in data["evaluations"]] == ["eval-0", "eval-1", "eval-2"]
    assert set(data["wall_s"]) >= {"sft-1", "eval-1", "mine-2", "sft-2", "eval-2"} and "mine-1" not in data["wall_s"]


def test_recipe_leaves_nothing_when_its_first_step_fails(tmp_path, capsys):
    import expert_iteration

    argv = ["--problems", str(tmp_path / "problems.jsonl"), "--output_dir", str(tmp_path / "out"),
            "--report", str(tmp_path / "report.json")]
    (tmp_path / "problems.jsonl").write_text("{not json\n")
    with pytest.raises(SystemExit):
        expert_iteration.main(argv)
    assert "problems.jsonl:1" in capsys.readouterr().err
    assert not (tmp_path / "out" / "expert_iteration").exists()


def test_gpu_grpo_recipe_plumbing_tiny(tiny_model, tmp_path):
    """The GPU recipe's commands chain (evaluation, GRPO under accelerate launch, evaluation, report) on the CPU
    with the tiny model; its GPU settings (bf16, vLLM) are replaced, so this checks the script, not the GPU run."""
    import os
    import subprocess

    rows = problem_rows(2)
    rows[1] = {**rows[1], "split": "eval"}
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parent.parent), "MODEL": str(tiny_model), "OUT": str(tmp_path / "out"), "NUM_PROCESSES": "1",
           "PROBLEMS": str(write_jsonl(tmp_path / "problems.jsonl", rows)),
           "GRPO": "--max_steps 1 --save_steps 1 --eval_steps 0 --batch_size 2 --num_generations 2",
           "EVAL": "--eval_num_samples 2",
           "EXTRA": "--gradient_accumulation_steps 1 --max_completion_length 8 --max_seq_length 512 --workers 1"}
    script = Path(__file__).resolve().parent.parent / "recipes" / "gpu_grpo.sh"
    proc = subprocess.run(["bash", str(script)], check=False, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    data = json.loads((tmp_path / "out" / "gpu_grpo" / "results" / "gpu_grpo.json").read_text())
    assert [e["label"] for e in data["evaluations"]] == ["eval-0", "eval-1"]
    assert data["training"][0]["steps"][0]["step"] == 1 and "reward" in data["training"][0]["steps"][0]
    assert data["command"].startswith("python recipes/recipe_report.py --recipe gpu_grpo --evals ")  # its provenance
    again = subprocess.run(["bash", str(script)], check=False, env=env, capture_output=True, text=True, timeout=60)
    assert again.returncode == 2 and "exists" in again.stderr


def mined(task, chosen, reason="pass_over_fail"):
    return {"prompt": [{"role": "user", "content": task}], "chosen": [{"role": "assistant", "content": chosen}],
            "rejected": [{"role": "assistant", "content": "def f(): pass"}], "task_id": task, "reason": reason}


def test_pool_passing_keeps_distinct_passing_answers_capped_per_problem(tmp_path, capsys):
    from pool_passing import main

    run = tmp_path / "run" / "data"
    run.mkdir(parents=True)
    write_jsonl(run / "mined_pairs.jsonl", [mined("a", f"ok {i}") for i in range(5)] + [mined("b", "x", "more_tests")])
    other = write_jsonl(tmp_path / "other.jsonl", [mined("a", "ok 1\n"), mined("c", "yes")])  # "ok 1" seen already
    out = tmp_path / "passing.jsonl"
    assert main(["--inputs", str(tmp_path / "run"), str(other), "--output", str(out), "--per_problem", "3"]) == 0
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    by_task = {t: [r["chosen"][0]["content"].strip() for r in rows if r["task_id"] == t] for t in "abc"}
    assert len(by_task["a"]) == len(set(by_task["a"])) == 3 and by_task["b"] == [] and by_task["c"] == ["yes"]
    assert "4 passing answers of 2 problems (6 distinct before the cap)" in capsys.readouterr().out


def test_pool_passing_names_a_row_that_is_not_a_mined_pair(tmp_path, capsys):
    from pool_passing import main

    pairs = write_jsonl(tmp_path / "pairs.jsonl", [mined("a", "ok"), {"prompt": "p", "chosen": "c", "rejected": "r"}])
    out = tmp_path / "passing.jsonl"
    assert main(["--inputs", str(pairs), "--output", str(out)]) == 2
    assert f"{pairs}:2: missing fields 'task_id', 'reason'" in capsys.readouterr().err and not out.exists()
    odd = write_jsonl(tmp_path / "odd.jsonl", [{**mined("a", "ok"), "chosen": 5}])
    assert main(["--inputs", str(odd), "--output", str(out)]) == 2
    assert f"{odd}:1: chosen: cannot read a completion of type int" in capsys.readouterr().err and not out.exists()


@pytest.mark.parametrize("method", ["dpo", "grpo"])
def test_ladder_recipe_tiny(tiny_model, tmp_path, method, capsys):
    """Both of the ladder recipe's methods run end to end on two problems (one trained on, one held out): the
    evaluations before and after, one training step, the report with its method and seed."""
    import ladder

    rows, report, argv = tiny_recipe(tiny_model, tmp_path, "ladder")
    argv[argv.index("--rounds") + 1] = "1"
    argv = ["--method", method, "--seed", "3", *argv, "--num_generations", "2", "--save_steps", "1"]
    assert ladder.main(argv) == 0
    data = json.loads(report.read_text())
    assert [e["label"] for e in data["evaluations"]] == ["eval-0", "eval-1"]
    assert all(list(e["per_problem"]) == [rows[1]["task_id"]] for e in data["evaluations"])
    assert data["held_out"] == {"problems": 1, "samples_per_problem": 2}  # the flags after -- win
    assert data["settings"]["method"] == method and data["settings"]["seed"] == 3
    assert data["evaluations"][1]["model"].endswith(f"{method}-1/checkpoints/final")
    key = "rewards/margins" if method == "dpo" else "reward"
    assert [s["step"] for s in data["training"][0]["steps"] if key in s] == [1]
    assert "pass@1" in data["change"] or "pass@1_change" in data["change"]
    assert ladder.main(["--resume", *argv]) == 0 and json.loads(report.read_text())["reused_steps"] == [
        "eval-0", f"{method}-1", "eval-1"]
    if method == "grpo":
        return
    # a second training seed with the first's evaluation of the starting model: checked, not run again
    baseline = str(tmp_path / "out" / "ladder" / "eval-0")
    other = [a if a != "3" else "4" for a in argv]
    assert ladder.main(["--name", "seed4", "--baseline", baseline, *other]) == 0
    data = json.loads(report.read_text())
    assert data["settings"]["seed"] == 4 and data["settings"]["baseline"] == baseline
    assert [e["label"] for e in data["evaluations"]] == ["eval-0", "eval-1"]
    assert not (tmp_path / "out" / "seed4" / "eval-0").exists()
    assert ladder.main(["--name", "seed5", "--eval_seed", "5", "--baseline", baseline, *other]) == 2
    assert "was evaluated with" in capsys.readouterr().err


def test_ladder_recipe_refuses_an_unknown_method(tmp_path, capsys):
    import ladder

    with pytest.raises(SystemExit):
        ladder.main(["--method", "sft", "--output_dir", str(tmp_path / "out")])
    assert "invalid choice: 'sft'" in capsys.readouterr().err and not (tmp_path / "out").exists()
