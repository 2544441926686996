import pytest

from data_loading import UserError
from q_trl_training import peft_config, resolve_base_model, trl_arguments
from run_config import RL_SECTIONS, parse_config
from run_files import RunFolder


def test_specification_names_map_onto_trl(tmp_path):
    cfg = parse_config(RL_SECTIONS, ["--kl_coef", "0.25", "--batch_size", "3", "--gradient_accumulation_steps", "2",
                                     "--max_seq_length", "256", "--eval_steps", "5", "--wandb"])
    from trl import DPOConfig

    args = DPOConfig(**trl_arguments(cfg, RunFolder(tmp_path / "r"), "r", has_eval=True), max_length=256)
    assert args.beta == 0.25
    assert args.per_device_train_batch_size == 3 and args.gradient_accumulation_steps == 2
    assert args.bf16 is False  # TRL defaults to True; the specification makes it opt-in
    assert args.gradient_checkpointing is True
    assert args.eval_strategy == "steps" and args.eval_steps == 5
    assert args.report_to == ["wandb"]
    assert args.output_dir == str(tmp_path / "r" / "checkpoints")
    no_eval = trl_arguments(cfg, RunFolder(tmp_path / "r"), "r", has_eval=False)
    assert no_eval["eval_strategy"] == "no"


def test_lora_defaults_and_full_fine_tuning():
    lora = peft_config(parse_config(RL_SECTIONS, ["--lora_r", "8", "--lora_target_modules", "q_proj", "v_proj"]))
    assert lora.r == 8 and set(lora.target_modules) == {"q_proj", "v_proj"}
    assert peft_config(parse_config(RL_SECTIONS, [])).target_modules == "all-linear"
    assert peft_config(parse_config(RL_SECTIONS, ["--no_peft"])) is None


def test_model_resolution(tmp_path, tiny_model):
    assert resolve_base_model(str(tiny_model)) == str(tiny_model)
    with pytest.raises(UserError, match="no-such-model: model folder not found"):
        resolve_base_model(str(tmp_path / "no-such-model"))
    (tmp_path / "empty").mkdir()
    with pytest.raises(UserError, match="not a model folder"):
        resolve_base_model(str(tmp_path / "empty"))
