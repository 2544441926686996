"""The toolkit's trainers on TRL: the model and LoRA, and the mapping of the specification's option names onto
TRL's configs, with the DPO, GRPO and reward-model trainers built from them; checks made at start (scaling, W&B,
vLLM, a reward model's folder), and saving the final model.

The mapping lives here (``trl_arguments``, shared by every path, PPO's config included) and nowhere else:
``kl_coef`` -> ``beta``, ``batch_size`` -> ``per_device_train_batch_size``, ``max_seq_length`` -> ``max_length``,
and so on.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from qrl.config import launch
from qrl.config.arguments import Config
from qrl.config.run_folder import RunFolder
from qrl.data.records import UserError
from qrl.models.embedded import EMBEDDED_MODEL_NAME, ensure_embedded_model
from qrl.models.loading import load_tokenizer


def is_adapter(path: str | Path) -> bool:
    return (Path(path) / "adapter_config.json").is_file()


def resolve_base_model(name: str, allow_adapter: bool = False) -> str:
    """A loadable model folder for --base_model, or one clear error naming it."""
    path = Path(name).expanduser()
    if path.is_dir():
        if not (path / "config.json").is_file() and not (allow_adapter and is_adapter(path)):
            adapter = (" (a LoRA adapter checkpoint: train from checkpoints/final, or resume with "
                       "--resume_from_checkpoint)")
            hint = adapter if is_adapter(path) else " (no config.json)"
            raise UserError(f"--base_model {name}: not a model folder{hint}")
        return str(path)
    if name == EMBEDDED_MODEL_NAME:
        try:
            return str(ensure_embedded_model())
        except RuntimeError as e:
            raise UserError(f"embedded model: {e}") from None
    if path.exists() or "/" not in name or name.startswith((".", "/", "~")) or name.count("/") > 1:
        raise UserError(f"--base_model {name}: model folder not found")
    from transformers import AutoConfig

    try:  # a hub id that the local Hugging Face cache (or a reachable hub) holds
        AutoConfig.from_pretrained(name)
    except OSError:
        raise UserError(
            f"--base_model {name}: not a local folder, and not loadable from the Hugging Face cache") from None
    return name


def load_for_generation(model_path: str, cfg: Config):
    """A model (a LoRA checkpoint merged into its base) and its tokenizer, ready to sample from."""
    from transformers import AutoModelForCausalLM

    kwargs = model_init_kwargs(cfg)
    if is_adapter(model_path):
        from peft import AutoPeftModelForCausalLM

        model = AutoPeftModelForCausalLM.from_pretrained(model_path, **kwargs).merge_and_unload()
    else:
        model = AutoModelForCausalLM.from_pretrained(model_path, **kwargs)
    has_tokenizer = (Path(model_path) / "tokenizer_config.json").is_file() or not Path(model_path).is_dir()
    tokenizer = load_tokenizer(model_path if has_tokenizer else model.config._name_or_path)
    return model, tokenizer


def peft_config(cfg: Config, task_type: str = "CAUSAL_LM"):
    """LoRA on all linear layers by default; None for full fine-tuning.

    For a reward model (``SEQ_CLS``) PEFT also trains the new score head in full (``modules_to_save``).
    """
    if not cfg.lora.use_peft:
        return None
    from peft import LoraConfig

    return LoraConfig(
        r=cfg.lora.lora_r,
        lora_alpha=cfg.lora.lora_alpha,
        lora_dropout=cfg.lora.lora_dropout,
        target_modules=cfg.lora.lora_target_modules or "all-linear",
        task_type=task_type,
    )


def model_init_kwargs(cfg: Config) -> dict[str, Any]:
    import torch

    mem = cfg.memory
    # fp16 autocast needs fp32 master weights for what trains; LoRA adapters are fp32 anyway, so the base may be fp16.
    half = torch.float16 if mem.fp16 and cfg.lora.use_peft else torch.float32
    kwargs: dict[str, Any] = {"dtype": torch.bfloat16 if cfg.model.bf16 else half}
    if mem.load_in_4bit:
        from transformers import BitsAndBytesConfig

        kwargs["quantization_config"] = BitsAndBytesConfig(
            load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=True,
            bnb_4bit_compute_dtype=kwargs["dtype"],
            bnb_4bit_quant_storage=kwargs["dtype"],  # stored as the compute dtype, so that ZeRO-3 and FSDP can shard it
        )
    return kwargs


def memory_arguments(cfg: Config) -> dict[str, Any]:
    """The memory options as TrainingArguments (every TRL path); precision's bf16 is mapped with the model's."""
    mem = cfg.memory
    return dict(fp16=mem.fp16, optim=mem.optim, torch_compile=mem.torch_compile)


def generation_arguments(cfg: Config) -> dict[str, Any]:
    """Where GRPO generates: vLLM's share of each GPU (colocate) or the server's URL (server); under ZeRO-3
    without vLLM, whether the weights are gathered whole."""
    mem = cfg.memory
    return dict(
        vllm_gpu_memory_utilization=mem.vllm_gpu_memory_utilization,
        vllm_tensor_parallel_size=mem.vllm_tensor_parallel_size,
        vllm_server_base_url=mem.vllm_server_base_url,
        ds3_gather_for_generation=mem.ds3_gather_for_generation,
    )


def check_scaling(cfg: Config) -> None:
    """Memory and launch options this machine cannot honour: one line each, at start, before any model loads."""
    import importlib.util

    import torch

    mem = cfg.memory
    gpu = torch.cuda.is_available()
    bnb = importlib.util.find_spec("bitsandbytes") is not None
    if mem.fp16 and cfg.model.bf16:
        raise UserError("--fp16 and --bf16: choose one precision")
    if mem.fp16 and not gpu:
        raise UserError("--fp16 needs a CUDA GPU (none found); train in fp32 (the default) or with --bf16")
    if mem.load_in_4bit:
        if not cfg.lora.use_peft:
            raise UserError("--load_in_4bit (QLoRA) trains LoRA adapters on frozen 4-bit weights: drop --no_peft")
        missing = [what for what, ok in (("a CUDA GPU", gpu), ("the bitsandbytes package", bnb)) if not ok]
        if missing:
            raise UserError(
                f"--load_in_4bit (QLoRA) needs {' and '.join(missing)} (pip install bitsandbytes, on a CUDA machine); "
                "without them, train LoRA adapters (the default) on unquantized weights"
            )
    from transformers import trainer_optimizer  # an unknown name is TRL's config check (trl_config)

    if mem.optim in getattr(trainer_optimizer, "_BITSANDBYTES_OPTIMIZERS", ()) and not bnb:
        raise UserError(f"--optim {mem.optim} needs the bitsandbytes package (pip install bitsandbytes)")
    if not 0 < mem.vllm_gpu_memory_utilization <= 1:
        raise UserError(f"--vllm_gpu_memory_utilization must be in (0, 1] (got {mem.vllm_gpu_memory_utilization})")
    if os.environ.get("ACCELERATE_USE_FSDP", "").lower() == "true" and not gpu and launch.is_main_process():
        print("FSDP needs GPUs: without one, accelerate trains these processes with plain DDP (gloo)", flush=True)


def trl_arguments(cfg: Config, folder: RunFolder, run_name: str, has_eval: bool) -> dict[str, Any]:
    """The specification's options as keyword arguments of TRL's configs (shared by every TRL path)."""
    import torch

    m = cfg.model
    evaluate = has_eval and m.eval_steps > 0
    extra = {"beta": m.kl_coef} if hasattr(m, "kl_coef") else {}  # reward-model runs have no KL penalty
    return dict(
        # Without an accelerator, say so: several processes then form a gloo group instead of each training alone.
        use_cpu=not torch.accelerator.is_available(),
        output_dir=str(folder.staging),  # a checkpoint is renamed into checkpoints/ once complete (RunFolderCallback)
        run_name=run_name,
        learning_rate=m.learning_rate,
        per_device_train_batch_size=m.batch_size,
        per_device_eval_batch_size=m.batch_size,
        gradient_accumulation_steps=m.gradient_accumulation_steps,
        max_steps=m.max_steps,
        save_strategy="steps",
        save_steps=m.save_steps,
        save_total_limit=cfg.run.save_total_limit,
        eval_strategy="steps" if evaluate else "no",
        eval_steps=m.eval_steps if evaluate else None,
        eval_on_start=evaluate and cfg.evaluation.eval_on_start if hasattr(cfg, "evaluation") else False,
        logging_steps=m.logging_steps,
        bf16=m.bf16,  # TRL defaults to True; the specification makes it opt-in
        activation_checkpointing=m.gradient_checkpointing,  # transformers 5 name of gradient checkpointing
        max_grad_norm=m.max_grad_norm,
        warmup_steps=m.warmup_steps,
        lr_scheduler_type=m.lr_scheduler_type,
        seed=m.seed,
        report_to=["wandb"] if cfg.tracking.wandb else "none",
        model_init_kwargs=model_init_kwargs(cfg),
        **memory_arguments(cfg),
        **extra,
    )


def trl_config(config_class, **kwargs):
    """A TRL config; the checks TRL makes of the options (batch sizes that do not divide, ...) become one line."""
    try:
        return config_class(**kwargs)
    except ValueError as e:
        raise UserError(f"{config_class.__name__}: {str(e).strip().splitlines()[0]}") from None


def build_dpo_trainer(cfg: Config, model_path: str, tokenizer, train_dataset, eval_dataset, folder: RunFolder,
                      run_name: str, callbacks: list):
    """TRL's DPOTrainer with the run's options; the reference model is the base with adapters off."""
    from trl import DPOConfig, DPOTrainer

    sft = cfg.dpo.dpo_sft_weight
    losses = {"loss_type": ["sigmoid", "sft"], "loss_weights": [1.0, sft]} if sft > 0 else {}
    args = trl_config(
        DPOConfig,
        **trl_arguments(cfg, folder, run_name, has_eval=eval_dataset is not None),
        max_length=cfg.model.max_seq_length,
        **losses,
    )
    return DPOTrainer(
        model=model_path,
        args=args,
        train_dataset=train_dataset,
        eval_dataset=eval_dataset,
        processing_class=tokenizer,
        peft_config=peft_config(cfg),
        callbacks=callbacks,
    )


def check_wandb(cfg: Config, run_name: str) -> None:
    """Fail at start, in one line, when W&B cannot be used; never at the first log step."""
    if not cfg.tracking.wandb:
        return
    try:
        import wandb  # noqa: F401
    except ImportError:
        raise UserError("--wandb: the wandb package is not installed (pip install wandb)") from None
    os.environ.setdefault("WANDB_PROJECT", cfg.tracking.wandb_project)
    os.environ.setdefault("WANDB_NAME", run_name)
    mode = os.environ.get("WANDB_MODE", "").lower()
    if mode in ("offline", "disabled", "dryrun"):
        return
    if not (os.environ.get("WANDB_API_KEY") or _wandb_logged_in()):
        raise UserError("--wandb: not logged in to W&B; run `wandb login`, or set WANDB_MODE=offline to log locally")


def _wandb_logged_in() -> bool:
    import netrc

    try:
        auth = netrc.netrc(os.environ.get("NETRC")).authenticators("api.wandb.ai")
    except (FileNotFoundError, netrc.NetrcParseError):
        return False
    return auth is not None


def save_final_model(trainer, tokenizer, folder: RunFolder) -> Path:
    """The final model as an ordinary checkpoint (LoRA merged into the base), loadable with from_pretrained."""
    if trainer.is_fsdp_enabled:
        return _save_final_sharded(trainer, tokenizer, folder)
    model = trainer.accelerator.unwrap_model(trainer.model)
    if hasattr(model, "merge_and_unload"):
        model = model.merge_and_unload()
    if trainer.accelerator.is_main_process:
        model.save_pretrained(folder.final_model)
        tokenizer.save_pretrained(folder.final_model)
    trainer.accelerator.wait_for_everyone()
    return folder.final_model


def _save_final_sharded(trainer, tokenizer, folder: RunFolder) -> Path:
    """Under FSDP the weights are shards on every rank: the Trainer gathers them into files (whole weights, or the
    adapters for LoRA), then the main process merges the adapters into the base on the CPU."""
    trainer.save_model(str(folder.final_model))
    if trainer.accelerator.is_main_process:
        if is_adapter(folder.final_model):
            _merge_adapters(trainer.accelerator, folder.final_model)
        tokenizer.save_pretrained(folder.final_model)
    trainer.accelerator.wait_for_everyone()
    return folder.final_model


def _merge_adapters(accelerator, final: Path) -> None:
    """Adapters merged into their base, whole, on this process alone: under ZeRO-3 ``from_pretrained`` would
    shard what it loads (a collective the other ranks are not in), so DeepSpeed's hold on it is lifted meanwhile."""
    from transformers.integrations import is_deepspeed_zero3_enabled, unset_hf_deepspeed_config

    zero3 = is_deepspeed_zero3_enabled()
    if zero3:
        unset_hf_deepspeed_config()
    try:
        from peft import AutoPeftModelForCausalLM

        merged = AutoPeftModelForCausalLM.from_pretrained(final, device_map="cpu").merge_and_unload()
        for path in final.glob("adapter_*"):
            path.unlink()
        merged.save_pretrained(final)
    finally:
        if zero3:
            accelerator.state.deepspeed_plugin.set_deepspeed_weakref()


# --- GRPO: the test-case paths ------------------------------------------------------------------------------
def check_vllm(cfg: Config) -> None:
    if cfg.grpo.use_vllm:
        import importlib.util

        if importlib.util.find_spec("vllm") is None:
            raise UserError("--use_vllm: the vllm package is not installed (pip install vllm; it needs a GPU)")


def _grpo_class():
    from trl import GRPOTrainer

    class CodeGRPOTrainer(GRPOTrainer):
        """TRL's GRPOTrainer plus what code RL needs: reward_scale that survives group normalisation, groups
        with equal rewards left out of the loss, and evaluation by running sampled code (pass@k)."""

        def __init__(self, *args, reward_scale: float = 1.0, drop_zero_variance_groups: bool = False,
                     evaluator=None, tables=None, **kwargs):
            super().__init__(*args, **kwargs)
            self.reward_scale = reward_scale
            self.drop_zero_variance_groups = drop_zero_variance_groups
            self.evaluator = evaluator
            self.tables = tables  # tracking.CompletionTables: the answers, logged to W&B beside the statistics

        def log(self, logs: dict[str, float], start_time: float | None = None) -> None:
            super().log(logs, start_time)
            if self.tables is not None and self.accelerator.is_main_process:
                from qrl.training.tracking import log_tables

                log_tables(self.tables.for_log(logs, self.state.global_step), self.state.global_step)

        def _generate_and_score_completions(self, inputs):
            import torch

            out = super()._generate_and_score_completions(inputs)
            if self.model.training and self.drop_zero_variance_groups:
                adv, mask = out["advantages"], out["completion_mask"]
                g = self.num_generations
                flat = adv == 0
                if adv.numel() % g == 0:  # whole groups on this process: drop a group only if all of it is flat
                    flat = flat.view(-1, g).all(dim=1).repeat_interleave(g)
                dropped_tokens = mask[flat].sum()
                out["completion_mask"] = mask * (~flat).unsqueeze(1).to(mask.dtype)
                counts = self.accelerator.gather(torch.stack([flat.sum() / g, dropped_tokens.float()]).view(1, 2))
                counts = counts.view(-1, 2).sum(dim=0)
                self._metrics["train"]["dropped_groups"].append(counts[0].item())
                if out.get("num_items_in_batch") is not None:
                    out["num_items_in_batch"] = torch.clamp(out["num_items_in_batch"] - counts[1], min=1)
            out["advantages"] = out["advantages"] * self.reward_scale
            return out

        def evaluate(self, eval_dataset=None, ignore_keys=None, metric_key_prefix: str = "eval"):
            if self.evaluator is None:
                return super().evaluate(eval_dataset, ignore_keys, metric_key_prefix)
            metrics, samples = self.evaluator(self.accelerator.unwrap_model(self.model), self.accelerator)
            metrics = {f"{metric_key_prefix}_{k}": v for k, v in metrics.items()}
            if self.tables is not None:
                self.tables.add_samples(samples)
            self.log(metrics)
            self.control = self.callback_handler.on_evaluate(self.args, self.state, self.control, metrics)
            return metrics

    return CodeGRPOTrainer


def build_grpo_trainer(cfg: Config, model_path: str, tokenizer, train_dataset, eval_dataset, reward_funcs: list,
                       folder: RunFolder, run_name: str, callbacks: list, evaluator=None):
    """TRL's GRPOTrainer with the run's options: kl_coef -> beta, entropy_coef -> entropy_coef, and TRL's own
    GRPO names passed through.

    TRL's completions table (``log_completions``) stays off: the toolkit's (``qrl.training.tracking``) carries each
    answer's verdict, tests passed and reward components, keeps every step's rows (TRL's replaces the last under one
    key), and writes nothing into the checkpoints folder."""
    from trl import GRPOConfig

    from qrl.training.tracking import CompletionTables

    g = cfg.grpo
    common = trl_arguments(cfg, folder, run_name, has_eval=evaluator is not None)
    common["per_device_eval_batch_size"] = g.num_generations  # TRL checks it; evaluation is ours (pass@k)
    args = trl_config(
        GRPOConfig,
        **common,
        entropy_coef=cfg.model.entropy_coef,
        num_generations=g.num_generations,
        temperature=g.temperature,
        max_completion_length=g.max_completion_length,
        loss_type=g.loss_type,
        epsilon=g.epsilon,
        epsilon_high=g.epsilon_high,
        num_iterations=g.num_iterations,
        scale_rewards=g.scale_rewards,
        mask_truncated_completions=g.mask_truncated_completions,
        use_vllm=g.use_vllm,
        vllm_mode=g.vllm_mode,
        **generation_arguments(cfg),
        log_completions=False,
    )
    return _grpo_class()(
        model=model_path,
        reward_funcs=reward_funcs,
        args=args,
        train_dataset=train_dataset,
        eval_dataset=eval_dataset,
        processing_class=tokenizer,
        peft_config=peft_config(cfg),
        callbacks=callbacks,
        reward_scale=cfg.model.reward_scale,
        drop_zero_variance_groups=g.drop_zero_variance_groups,
        evaluator=evaluator,
        tables=CompletionTables(reward_funcs[0], cfg.tracking.wandb_table_rows) if cfg.tracking.wandb else None,
    )

# --- reward models ----------------------------------------------------------------------------------
def build_reward_trainer(cfg: Config, model_path: str, tokenizer, train_dataset, eval_dataset, folder: RunFolder,
                         run_name: str, callbacks: list):
    """TRL's RewardTrainer: a one-output sequence classifier on the base model, Bradley-Terry loss on pairs."""
    from trl import RewardConfig, RewardTrainer

    args = trl_config(
        RewardConfig,
        **trl_arguments(cfg, folder, run_name, has_eval=eval_dataset is not None),
        max_length=cfg.model.max_seq_length,
    )
    return RewardTrainer(
        model=model_path,
        args=args,
        train_dataset=train_dataset,
        eval_dataset=eval_dataset,
        processing_class=tokenizer,
        peft_config=peft_config(cfg, task_type="SEQ_CLS"),
        callbacks=callbacks,
    )


