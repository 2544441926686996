import dataclasses

import pytest

from qrl.config.arguments import RL_SECTIONS, ConfigError, build_parser, parse_config, validate_training


def write(tmp_path, text):
    path = tmp_path / "c.yaml"
    path.write_text(text)
    return path


def test_precedence_defaults_then_file_then_flags(tmp_path):
    cfg_file = write(tmp_path, "model:\n  learning_rate: 3.0e-5\n  max_steps: 7\nlora:\n  lora_r: 4\n")
    cfg = parse_config(RL_SECTIONS, ["--config", str(cfg_file), "--max_steps", "9"])
    assert cfg.model.learning_rate == 3.0e-5  # from the file
    assert cfg.model.max_steps == 9  # the flag wins over the file
    assert cfg.lora.lora_r == 4
    assert cfg.model.kl_coef == 0.1  # built-in default
    assert cfg.source == cfg_file


def test_shipped_config_is_the_specification(tmp_path):
    cfg = parse_config(RL_SECTIONS, [])
    m = cfg.model
    assert (m.learning_rate, m.batch_size, m.gradient_accumulation_steps, m.max_steps, m.save_steps) == (
        2.0e-6, 1, 8, 1000, 50)
    assert (m.reward_scale, m.kl_coef, m.entropy_coef) == (1.0, 0.1, 0.01)
    assert m.gradient_checkpointing and not m.bf16 and cfg.lora.use_peft


def test_yaml_values_go_through_the_flag_types(tmp_path):
    # PyYAML reads 2e-6 as a string; it must still be a float, and lists/bools must work.
    cfg_file = write(tmp_path, "model:\n  learning_rate: 2e-6\n  bf16: true\nlora:\n  lora_target_modules: [q_proj, v_proj]\n")
    cfg = parse_config(RL_SECTIONS, ["--config", str(cfg_file)])
    assert cfg.model.learning_rate == 2e-6 and cfg.model.bf16 is True
    assert cfg.lora.lora_target_modules == ["q_proj", "v_proj"]


@pytest.mark.parametrize(
    "text, message",
    [
        ("model:\n  learning_rat: 1\n", "unknown key 'model.learning_rat'"),
        ("modle:\n  learning_rate: 1\n", "unknown section 'modle'"),
        ("model:\n  max_steps: many\n", "model.max_steps: cannot read 'many' as int"),
        ("model: [1, 2\n", "malformed YAML"),
        ("- 1\n- 2\n", "expected sections"),
    ],
)
def test_bad_config_files_name_the_problem(tmp_path, text, message):
    cfg_file = write(tmp_path, text)
    with pytest.raises(ConfigError, match=message) as err:
        parse_config(RL_SECTIONS, ["--config", str(cfg_file)])
    assert str(cfg_file) in str(err.value)


def test_missing_config_file_and_bad_flags(tmp_path):
    with pytest.raises(ConfigError, match="config file not found"):
        parse_config(RL_SECTIONS, ["--config", str(tmp_path / "none.yaml")])
    with pytest.raises(ConfigError, match="unrecognized arguments: --no_such_flag"):
        parse_config(RL_SECTIONS, ["--no_such_flag"])
    with pytest.raises(ConfigError, match="invalid float value"):
        parse_config(RL_SECTIONS, ["--learning_rate", "fast"])


def test_peft_switches():
    assert parse_config(RL_SECTIONS, ["--no_peft"]).lora.use_peft is False
    assert parse_config(RL_SECTIONS, ["--no_use_peft"]).lora.use_peft is False
    assert parse_config(RL_SECTIONS, ["--use_peft", "false"]).lora.use_peft is False
    assert parse_config(RL_SECTIONS, ["--no_gradient_checkpointing"]).model.gradient_checkpointing is False


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--learning_rate", "0"], "--learning_rate must be greater than 0"),
        (["--learning_rate=-1e-5"], "--learning_rate must be greater than 0"),
        (["--max_steps", "0"], "--max_steps must be greater than 0"),
        (["--kl_coef", "-0.1"], "--kl_coef must not be negative"),
        (["--dpo_sft_weight=-1"], "--dpo_sft_weight must not be negative"),
        (["--reward_scale", "0"], "--reward_scale must not be 0"),
    ],
)
def test_validation(argv, message):
    with pytest.raises(ConfigError, match=message):
        validate_training(parse_config(RL_SECTIONS, argv))


def test_help_lists_every_option_with_its_default():
    text = build_parser(RL_SECTIONS).format_help()
    for cls in RL_SECTIONS.values():
        for f in dataclasses.fields(cls):
            assert f"--{f.name}" in text, f.name
    spec_flags = ("--base_model --output_dir --learning_rate --use_reward_model --use_dpo --test_case_rewards_only "
                  "--max_seq_length --bf16 --reward_scale --kl_coef --entropy_coef --max_steps --save_steps "
                  "--eval_steps --wandb --wandb_project --experiment_name --config --no_peft").split()
    for flag in spec_flags:
        assert flag in text
    assert "(default: 0.1)" in text


def test_effective_config_round_trips(tmp_path):
    cfg = parse_config(RL_SECTIONS, ["--max_steps", "3", "--lora_target_modules", "q_proj", "k_proj"])
    saved = write(tmp_path, cfg.to_yaml())
    again = parse_config(RL_SECTIONS, ["--config", str(saved)])
    assert again.to_dict() == cfg.to_dict()
