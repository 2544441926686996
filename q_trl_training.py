"""Thin wrappers around TRL: the model, LoRA, and the mapping of the specification's names onto TRL's.

The mapping lives here and nowhere else: ``kl_coef`` -> ``beta``, ``batch_size`` ->
``per_device_train_batch_size``, ``max_seq_length`` -> ``max_length``, and so on.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from data_loading import UserError
from embedded_model import ensure_embedded_model
from run_config import EMBEDDED_MODEL_NAME, Config
from run_files import RunFolder


def resolve_base_model(name: str) -> str:
    """A loadable model folder for --base_model, or one clear error naming it."""
    path = Path(name).expanduser()
    if path.is_dir():
        if not (path / "config.json").is_file():
            raise UserError(f"--base_model {name}: not a model folder (no config.json)")
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
        raise UserError(f"--base_model {name}: not a local folder, and not loadable from the Hugging Face cache") from None
    return name


def load_tokenizer(model_path: str):
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(model_path)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def peft_config(cfg: Config):
    """LoRA on all linear layers by default; None for full fine-tuning."""
    if not cfg.lora.use_peft:
        return None
    from peft import LoraConfig

    return LoraConfig(
        r=cfg.lora.lora_r,
        lora_alpha=cfg.lora.lora_alpha,
        lora_dropout=cfg.lora.lora_dropout,
        target_modules=cfg.lora.lora_target_modules or "all-linear",
        task_type="CAUSAL_LM",
    )


def model_init_kwargs(cfg: Config) -> dict[str, Any]:
    import torch

    return {"dtype": torch.bfloat16 if cfg.model.bf16 else torch.float32}


def trl_arguments(cfg: Config, folder: RunFolder, run_name: str, has_eval: bool) -> dict[str, Any]:
    """The specification's options as keyword arguments of TRL's configs (shared by every TRL path)."""
    m = cfg.model
    evaluate = has_eval and m.eval_steps > 0
    return dict(
        output_dir=str(folder.checkpoints),
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
        logging_steps=m.logging_steps,
        bf16=m.bf16,  # TRL defaults to True; the specification makes it opt-in
        activation_checkpointing=m.gradient_checkpointing,  # transformers 5 name of gradient checkpointing
        max_grad_norm=m.max_grad_norm,
        warmup_steps=m.warmup_steps,
        lr_scheduler_type=m.lr_scheduler_type,
        seed=m.seed,
        beta=m.kl_coef,
        report_to=["wandb"] if cfg.tracking.wandb else "none",
        model_init_kwargs=model_init_kwargs(cfg),
    )


def build_dpo_trainer(cfg: Config, model_path: str, tokenizer, train_dataset, eval_dataset, folder: RunFolder,
                      run_name: str, callbacks: list):
    """TRL's DPOTrainer with the run's options; the reference model is the base with adapters off."""
    from trl import DPOConfig, DPOTrainer

    args = DPOConfig(
        **trl_arguments(cfg, folder, run_name, has_eval=eval_dataset is not None),
        max_length=cfg.model.max_seq_length,
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
    model = trainer.accelerator.unwrap_model(trainer.model)
    if hasattr(model, "merge_and_unload"):
        model = model.merge_and_unload()
    if trainer.accelerator.is_main_process:
        model.save_pretrained(folder.final_model)
        tokenizer.save_pretrained(folder.final_model)
    trainer.accelerator.wait_for_everyone()
    return folder.final_model
