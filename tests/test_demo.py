"""`make demo` in reduced form: the same make target and flags (demo-run, which `make demo` runs after installing and
fetching the embedded model), on the tiny model with short answers, ending with the summary a person reads."""

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.skipif(shutil.which("make") is None, reason="make is not installed")
def test_make_demo_runs_the_main_job_and_ends_with_a_summary(tiny_model, tmp_path):
    shrink = (f"--base_model {tiny_model} --max_completion_length 16 --max_steps 2 --eval_steps 2 --save_steps 2 "
              "--gradient_accumulation_steps 1 --eval_max_problems 3 --workers 2")
    proc = subprocess.run(["make", "--no-print-directory", "demo-run", f"PYTHON={sys.executable}",
                           f"DEMO_DIR={tmp_path / 'out'}", f"DEMO_ARGS={shrink}"], cwd=ROOT, capture_output=True,
                          text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    folder = tmp_path / "out" / "demo"
    rewards = json.loads((folder / "logs" / "rewards.json").read_text())
    assert rewards["method"] == "grpo_test_cases"  # the main job: rewards from running the code against tests
    evals = json.loads((folder / "logs" / "eval_results.json").read_text())["steps"]
    assert [e["step"] for e in evals] == [0, 2]  # before training, and after
    assert evals[0]["problems"] == 3 and evals[0]["samples"] == 3  # greedy: one answer each
    tail = proc.stdout.strip().splitlines()[-4:]
    first, last = rewards["steps"][0]["reward"], rewards["steps"][-1]["reward"]
    assert tail[0].startswith("Done: grpo_test_cases, 2 steps in ")
    assert tail[1] == f"  reward: {first:.3f} at step 1, {last:.3f} at step 2"
    assert tail[2] == (f"  held-out pass@1 (3 problems): {evals[0]['pass@1']:.3f} before training, "
                       f"{evals[1]['pass@1']:.3f} at step 2")
    assert tail[3] == f"Run folder: {folder}"
    assert (folder / "results" / "training_curves.png").is_file() and (folder / "checkpoints" / "final").is_dir()
    assert "Done: grpo_test_cases" in (folder / "logs" / "training_log.txt").read_text()
