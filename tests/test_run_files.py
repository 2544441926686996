import json

import pytest

from qrl.config.run_folder import RunFolder, atomic_write
from qrl.data.records import UserError


def make_checkpoint(folder, step, complete=True):
    path = folder.checkpoints / f"checkpoint-{step}"
    path.mkdir(parents=True)
    if complete:
        (path / "trainer_state.json").write_text(json.dumps({"global_step": step}))
    return path


def test_latest_checkpoint_skips_incomplete_ones(tmp_path):
    folder = RunFolder(tmp_path / "run")
    assert folder.latest_checkpoint() is None
    make_checkpoint(folder, 2)
    ten = make_checkpoint(folder, 10)
    make_checkpoint(folder, 12, complete=False)
    (folder.checkpoints / "checkpoint-14").mkdir()
    (folder.checkpoints / "checkpoint-14" / "trainer_state.json").write_text("{trunc")
    assert folder.latest_checkpoint() == ten  # numeric order, not text order; cut-off saves ignored
    assert folder.resolve_resume("latest") == ten


def test_finished_is_told_by_the_file_a_run_writes_last(tmp_path):
    folder = RunFolder(tmp_path / "run")
    assert not any(folder.finished(kind) for kind in ("train", "mine", "eval"))
    make_checkpoint(folder, 1)
    folder.final_model.mkdir()
    (folder.final_model / "model.safetensors").write_text("")  # weights saved, the tokenizer not yet: cut off
    folder.append_entry(folder.eval_json, {"step": 0})  # an evaluation's metrics, its samples not yet
    folder.config_yaml.write_text("")  # a mining run's config, its counts not yet
    assert not any(folder.finished(kind) for kind in ("train", "mine", "eval"))
    (folder.final_model / "tokenizer_config.json").write_text("{}")
    folder.write_json(folder.mining_json, {"pairs": 0})
    folder.results.mkdir()
    (folder.results / "samples_m.jsonl").write_text("")
    assert all(folder.finished(kind) for kind in ("train", "mine", "eval"))


def test_resume_drops_entries_after_the_checkpoint(tmp_path):
    folder = RunFolder(tmp_path / "run")
    for step in (1, 2, 3, 4, 5):
        folder.append_entry(folder.rewards_json, {"step": step, "loss": 1.0 / step}, method="dpo")
    ckpt = make_checkpoint(folder, 4)
    folder.create(ckpt, overwrite=False)
    data = folder.read_json(folder.rewards_json)
    assert [e["step"] for e in data["steps"]] == [1, 2, 3, 4] and data["method"] == "dpo"


def test_refuses_to_overwrite_and_overwrite_replaces(tmp_path):
    folder = RunFolder(tmp_path / "run")
    folder.check_can_start(None, overwrite=False)  # nothing there yet: fine
    folder.create(None, overwrite=False)
    folder.log_line("first run")
    with pytest.raises(UserError, match="already holds a run"):
        folder.check_can_start(None, overwrite=False)
    folder.check_can_start(None, overwrite=True)
    folder.create(None, overwrite=True)
    assert not folder.training_log.exists()


def test_atomic_write_and_non_finite_numbers(tmp_path):
    folder = RunFolder(tmp_path / "run")
    folder.append_entry(folder.rewards_json, {"step": 1, "loss": float("nan")})
    assert json.loads(folder.rewards_json.read_text())["steps"][0]["loss"] is None
    atomic_write(tmp_path / "a.txt", "x")
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []


def test_remove_if_unused_keeps_runs_that_trained(tmp_path):
    folder = RunFolder(tmp_path / "run")
    folder.check_can_start(None, overwrite=False)
    folder.create(None, overwrite=False)
    folder.append_entry(folder.rewards_json, {"step": 1, "loss": 0.5})
    folder.remove_if_unused()
    assert folder.root.exists()
    other = RunFolder(tmp_path / "other")
    other.check_can_start(None, overwrite=False)
    other.create(None, overwrite=False)
    other.remove_if_unused()
    assert not other.root.exists()


def test_plot_writes_pngs(tmp_path):
    folder = RunFolder(tmp_path / "run")
    for step in (1, 2, 3):
        folder.append_entry(folder.rewards_json, {"step": step, "loss": 1.0 / step, "rewards/chosen": 0.1 * step,
                                                  "rewards/rejected": -0.1 * step})
    assert [p.name for p in folder.plot()] == ["training_curves.png"]
