"""Scaling out and memory: the accelerate configurations, the memory options, and docs/memory.md's tables."""

import importlib.util
import sys
from pathlib import Path

import pytest

from qrl.config.arguments import RL_SECTIONS, parse_config
from qrl.data.records import UserError
from qrl.training.paths import train

ROOT = Path(__file__).resolve().parents[1]
CONFIGS = ROOT / "configs" / "accelerate"
# file -> (accelerate's distributed type, DeepSpeed ZeRO stage or FSDP version)
EXPECTED = {
    "ddp.yaml": ("MULTI_GPU", None),
    "deepspeed_zero2.yaml": ("DEEPSPEED", 2),
    "deepspeed_zero3.yaml": ("DEEPSPEED", 3),
    "fsdp.yaml": ("FSDP", 2),
}


def test_the_configurations_are_the_documented_ones():
    assert sorted(p.name for p in CONFIGS.glob("*.yaml")) == sorted(EXPECTED)
    readme = (ROOT / "README.md").read_text()
    for name in EXPECTED:
        assert f"--config_file configs/accelerate/{name}" in readme, f"README has no launch line for {name}"
        first = (CONFIGS / name).read_text().splitlines()[0]
        assert first.startswith("# ") and ": " in first, f"{name}: first line should say when to use it"


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_each_configuration_loads_and_validates_in_accelerate(name):
    """accelerate's own config class reads it, and its launcher turns it into the environment the processes get."""
    from accelerate.commands.config.config_args import load_config_from_file
    from accelerate.commands.launch import _validate_launch_command, launch_command_parser
    from accelerate.utils.launch import prepare_deepspeed_cmd_env, prepare_multi_gpu_env

    kind, level = EXPECTED[name]
    path = str(CONFIGS / name)
    config = load_config_from_file(path)
    assert config.distributed_type == kind and config.mixed_precision == "no"
    args, defaults, _ = _validate_launch_command(
        launch_command_parser().parse_args(["--config_file", path, "--num_processes", "2", "run_rl.py"])
    )
    assert args.num_processes == 2
    if kind == "DEEPSPEED":
        assert config.deepspeed_config["zero_stage"] == level
        args.deepspeed_fields_from_accelerate_config = ",".join(defaults.deepspeed_config)
        _, env = prepare_deepspeed_cmd_env(args)
        assert env["ACCELERATE_USE_DEEPSPEED"] == "true" and env["ACCELERATE_DEEPSPEED_ZERO_STAGE"] == str(level)
    else:
        env = prepare_multi_gpu_env(args)
        assert env.get("ACCELERATE_USE_FSDP", "false") == ("true" if kind == "FSDP" else "false")
        if kind == "FSDP":
            assert env["FSDP_VERSION"] == str(level) and env["FSDP_ACTIVATION_CHECKPOINTING"] == "false"


# --- memory options -----------------------------------------------------------------------------------------------

def cfg_of(argv: list[str]):
    return parse_config(RL_SECTIONS, argv)


def test_memory_options_reach_trl(tmp_path):
    import torch
    from trl import DPOConfig, GRPOConfig

    from qrl.config.run_folder import RunFolder
    from qrl.training.trl import generation_arguments, trl_arguments

    cfg = cfg_of(["--optim", "adafactor", "--torch_compile", "--vllm_gpu_memory_utilization", "0.5",
                  "--vllm_server_base_url", "http://h:8000", "--vllm_tensor_parallel_size", "2",
                  "--ds3_gather_for_generation", "false"])
    kwargs = trl_arguments(cfg, RunFolder(tmp_path / "r"), "r", has_eval=False)
    assert kwargs["optim"] == "adafactor" and kwargs["torch_compile"] and not kwargs["fp16"]
    assert kwargs["model_init_kwargs"] == {"dtype": torch.float32}
    DPOConfig(**kwargs)  # TRL accepts every key
    grpo = GRPOConfig(**kwargs, **generation_arguments(cfg))
    assert (grpo.vllm_gpu_memory_utilization, grpo.vllm_server_base_url, grpo.vllm_tensor_parallel_size) == (
        0.5, "http://h:8000", 2)
    assert grpo.ds3_gather_for_generation is False


def test_qlora_loads_4bit_nf4_in_the_compute_dtype():
    import torch

    from qrl.training.trl import model_init_kwargs

    kwargs = model_init_kwargs(cfg_of(["--load_in_4bit", "--bf16"]))
    q = kwargs["quantization_config"]
    assert q.load_in_4bit and q.bnb_4bit_quant_type == "nf4" and q.bnb_4bit_use_double_quant
    assert q.bnb_4bit_compute_dtype == q.bnb_4bit_quant_storage == kwargs["dtype"] == torch.bfloat16
    assert model_init_kwargs(cfg_of(["--fp16"]))["dtype"] == torch.float16  # LoRA: fp16 base, fp32 adapters
    assert model_init_kwargs(cfg_of(["--fp16", "--no_peft"]))["dtype"] == torch.float32  # fp32 master weights


@pytest.mark.skipif(importlib.util.find_spec("bitsandbytes") is not None, reason="bitsandbytes is installed")
def test_qlora_without_bitsandbytes_or_gpu_is_a_clear_error(dpo_argv, tmp_path, monkeypatch):
    import torch

    with pytest.raises(UserError, match=r"^--load_in_4bit \(QLoRA\) needs .*the bitsandbytes package"):
        train(cfg_of(dpo_argv + ["--load_in_4bit"]))
    if not torch.cuda.is_available():
        with pytest.raises(UserError, match="needs a CUDA GPU and the bitsandbytes package"):
            train(cfg_of(dpo_argv + ["--load_in_4bit"]))
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)  # a GPU, still no bitsandbytes
    with pytest.raises(UserError, match=r"needs the bitsandbytes package \(pip install bitsandbytes"):
        train(cfg_of(dpo_argv + ["--load_in_4bit"]))
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("flags, message", [
    (["--load_in_4bit", "--no_peft"], "trains LoRA adapters on frozen 4-bit weights: drop --no_peft"),
    (["--fp16", "--bf16"], "choose one precision"),
    (["--optim", "adamw_sgd_magic"], "DPOConfig: adamw_sgd_magic is not a valid OptimizerNames"),
    (["--vllm_gpu_memory_utilization", "1.5"], "must be in"),
])
def test_memory_options_that_cannot_work_stop_at_start(dpo_argv, tmp_path, flags, message):
    with pytest.raises(UserError, match=message):
        train(cfg_of(dpo_argv + flags))
    assert not (tmp_path / "out").exists()


@pytest.mark.skipif(importlib.util.find_spec("bitsandbytes") is not None, reason="bitsandbytes is installed")
def test_8bit_and_paged_optimizers_need_bitsandbytes(dpo_argv):
    for optim in ("adamw_8bit", "paged_adamw_8bit"):
        with pytest.raises(UserError, match=f"--optim {optim} needs the bitsandbytes package"):
            train(cfg_of(dpo_argv + ["--optim", optim]))


@pytest.mark.skipif(__import__("torch").cuda.is_available(), reason="a GPU is present")
def test_fp16_without_a_gpu_is_a_clear_error(dpo_argv):
    with pytest.raises(UserError, match="--fp16 needs a CUDA GPU"):
        train(cfg_of(dpo_argv + ["--fp16"]))


def test_another_optimizer_trains(dpo_argv, tmp_path):
    import torch

    folder = train(cfg_of(dpo_argv + ["--optim", "adafactor", "--max_steps", "2", "--eval_steps", "0"]))
    args = torch.load(folder.checkpoints / "checkpoint-2" / "training_args.bin", weights_only=False)
    assert args.optim == "adafactor"


def test_final_model_through_the_fsdp_path_is_merged(dpo_argv, monkeypatch):
    """FSDP needs GPUs, so its way of saving (the Trainer gathers, the main process merges) runs here in one process."""
    from peft import AutoPeftModelForCausalLM
    from transformers import AutoModelForCausalLM

    from qrl.training import paths as train_rl
    from qrl.training import trl as q_trl_training

    monkeypatch.setattr(train_rl, "save_final_model", q_trl_training._save_final_sharded)
    folder = train(cfg_of(dpo_argv + ["--max_steps", "2", "--eval_steps", "0"]))
    assert not list(folder.final_model.glob("adapter_*"))
    final = AutoModelForCausalLM.from_pretrained(folder.final_model).state_dict()
    merged = AutoPeftModelForCausalLM.from_pretrained(folder.checkpoints / "checkpoint-2").merge_and_unload()
    assert all((final[k] - v).abs().max() < 1e-6 for k, v in merged.state_dict().items())


# --- the memory tables of docs/memory.md -------------------------------------------------------------------------

def test_memory_tables_match_the_formula_and_the_saved_measurements():
    sys.path.insert(0, str(ROOT / "bench"))
    import json

    import memory

    tables = (ROOT / "docs" / "memory.md").read_text()
    saved = json.loads(memory.RESULTS.read_text())
    assert memory.gpu_table() in tables, "regenerate with: python bench/memory.py --table"
    assert memory.ppo_table() in tables, "regenerate with: python bench/memory.py --table"
    assert memory.check_table(saved["rows"]) in tables, "regenerate with: python bench/memory.py --table"
    assert {r["method"] for r in saved["rows"]} == {"dpo", "grpo", "ppo"}  # PPO's formula checked too


def test_the_formula_counts_parameters_and_lora_exactly(tiny_model):
    """Parameter and LoRA counts of the formula's shape description, against the real models."""
    sys.path.insert(0, str(ROOT / "bench"))
    import memory
    from peft import LoraConfig, get_peft_model
    from transformers import AutoConfig, AutoModelForCausalLM

    c = AutoConfig.from_pretrained(tiny_model)
    arch = memory.Arch(c.num_hidden_layers, c.hidden_size, c.intermediate_size, c.num_attention_heads,
                       c.num_key_value_heads, c.hidden_size // c.num_attention_heads, c.vocab_size,
                       tied=c.tie_word_embeddings)
    model = AutoModelForCausalLM.from_pretrained(tiny_model)
    assert arch.params == sum(p.numel() for p in model.parameters())
    lora = get_peft_model(model, LoraConfig(r=16, target_modules="all-linear", task_type="CAUSAL_LM"))
    assert arch.lora_params(16) == sum(p.numel() for p in lora.parameters() if p.requires_grad)
