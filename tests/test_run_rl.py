"""The command line as a user meets it: bad input is one line, exit code 2, no traceback, nothing written."""

import subprocess
import sys
from pathlib import Path

import pytest
from conftest import preference_rows, write_jsonl

ROOT = Path(__file__).resolve().parents[1]


def cli(args, cwd):
    return subprocess.run([sys.executable, str(ROOT / "run_rl.py"), *args], cwd=cwd, capture_output=True, text=True,
                          timeout=300)


def assert_one_line_error(proc, *needles):
    assert proc.returncode == 2, proc.stderr
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, proc.stderr
    assert lines[0].startswith("run_rl.py: error: ")
    assert "Traceback" not in proc.stderr
    for needle in needles:
        assert needle in lines[0], lines[0]


@pytest.fixture
def base(tiny_model, preference_file, tmp_path):
    return ["--use_dpo", "--base_model", str(tiny_model), "--preference_data", str(preference_file),
            "--output_dir", str(tmp_path / "out"), "--max_steps", "2"]


def test_bad_inputs_are_one_clear_line(base, tmp_path, tiny_model):
    bad_line = tmp_path / "bad.jsonl"
    bad_line.write_text(write_jsonl(tmp_path / "ok.jsonl", preference_rows(2)).read_text() + "{oops\n")
    no_fields = write_jsonl(tmp_path / "nofields.jsonl", [{"question": "q", "answer": "a"}])
    unknown_key = tmp_path / "c.yaml"
    unknown_key.write_text("model:\n  learning_rate: 1.0e-5\n  warp_speed: 9\n")
    locked = tmp_path / "locked"
    locked.mkdir(mode=0o500)
    cases = [
        (["--learning_rate", "0"], ["--learning_rate must be greater than 0"]),
        (["--learning_rate=-2e-6"], ["--learning_rate must be greater than 0"]),
        (["--max_steps", "0"], ["--max_steps must be greater than 0"]),
        (["--base_model", str(tmp_path / "no-model")], ["model folder not found", "no-model"]),
        (["--test_case_rewards_only"], ["choose one training method"]),
        (["--config", str(unknown_key)], ["unknown key 'model.warp_speed'", str(unknown_key)]),
        (["--preference_data", str(bad_line)], [f"{bad_line}:3: malformed JSON"]),
        (["--preference_data", str(no_fields)], [f"{no_fields}:1: missing fields 'prompt', 'chosen', 'rejected'"]),
        (["--output_dir", str(locked / "sub")], ["output folder", "cannot be created", str(locked / "sub")]),
        (["--bogus"], ["unrecognized arguments: --bogus"]),
    ]
    import os

    for extra, needles in cases:
        if os.geteuid() == 0 and extra[0] == "--output_dir":
            continue  # root can write anywhere; checked below with a file in the way instead
        assert_one_line_error(cli(base + extra, tmp_path), *needles)
    blocker = tmp_path / "file"
    blocker.write_text("x")
    assert_one_line_error(cli(base + ["--output_dir", str(blocker / "sub")], tmp_path), "cannot be created",
                          f"{blocker} is a file")
    assert not (tmp_path / "out").exists(), "a failed start must write nothing"


def test_every_path_is_built_and_ppo_asks_for_its_reward_model(tmp_path):
    proc = cli(["--max_steps", "1", "--use_reward_model"], tmp_path)
    assert_one_line_error(proc, "--use_reward_model needs --reward_model_path")


def test_trl_option_checks_are_one_line(tiny_model, tmp_path):
    proc = cli(["--test_case_rewards_only", "--base_model", str(tiny_model), "--batch_size", "3",
                "--gradient_accumulation_steps", "1", "--num_generations", "4", "--output_dir", str(tmp_path / "o")],
               tmp_path)
    assert_one_line_error(proc, "GRPOConfig:", "divisible")
    assert not (tmp_path / "o").exists()


def test_help_lists_the_flags(tmp_path):
    proc = cli(["--help"], tmp_path)
    assert proc.returncode == 0
    assert "--use_dpo" in proc.stdout and "--kl_coef" in proc.stdout and "(default: 2e-06)" in proc.stdout


@pytest.mark.parametrize("where", ["/proc/qrl-no-such-dir", "/sys/qrl-no-such-dir", "file/sub"])
def test_an_output_folder_that_cannot_be_made_is_one_line(base, tmp_path, where):
    """Found by making the folder, not by asking os.access (which grants root everything, /proc and /sys too), for
    training and for --eval_only alike."""
    (tmp_path / "file").write_text("x")
    out = where if where.startswith("/") else str(tmp_path / where)
    for extra in ([], ["--eval_only"]):
        proc = cli(base + ["--output_dir", out] + extra, tmp_path)
        assert_one_line_error(proc, "output folder", out, "cannot be created")
    assert not Path(out).exists()


def test_the_writable_check_leaves_nothing_behind(tmp_path):
    from qrl.config.run_folder import RunFolder

    folder = RunFolder(tmp_path / "a" / "b" / "run")
    folder.check_writable()
    assert folder.created and list(tmp_path.iterdir()) == []  # the folders it made to try are gone again
    (tmp_path / "old").mkdir()
    RunFolder(tmp_path / "old").check_writable()
    assert list((tmp_path / "old").iterdir()) == []  # the probe file too
