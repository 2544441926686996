"""The training paths: one function per path, all writing the same run folder.

- ``train_dpo``: Direct Preference Optimization on preference pairs (TRL DPOTrainer).
- GRPO on test-case rewards, the default composite path, and PPO on a learned reward are added by their
  own issues; until then they stop at start with a clear line.
"""

from __future__ import annotations

from pathlib import Path

from data_loading import DataError, UserError, load_preferences
from q_trl_training import (
    build_dpo_trainer,
    check_scaling,
    check_wandb,
    load_tokenizer,
    resolve_base_model,
    save_final_model,
)
from run_config import PROJECT_DIR, Config
from run_files import RunFolder, RunFolderCallback

SHIPPED_PREFERENCES = PROJECT_DIR / "data" / "preferences.jsonl"
SHIPPED_PREFERENCES_EVAL = PROJECT_DIR / "data" / "preferences_eval.jsonl"

METHODS = {
    "use_dpo": "dpo",
    "use_reward_model": "ppo_reward_model",
    "test_case_rewards_only": "grpo_test_cases",
}
DEFAULT_METHOD = "grpo_composite"


def method_of(cfg: Config) -> str:
    """The training path the method flags pick; they are exclusive, none means the default path."""
    chosen = [flag for flag in METHODS if getattr(cfg.run, flag)]
    if len(chosen) > 1:
        raise UserError(f"choose one training method, not {' and '.join('--' + f for f in chosen)}")
    return METHODS[chosen[0]] if chosen else DEFAULT_METHOD


def run_name(cfg: Config) -> str:
    return cfg.run.experiment_name or Path(cfg.model.base_model.rstrip("/")).name


def train(cfg: Config) -> RunFolder:
    method = method_of(cfg)
    if method not in TRAINERS:
        flag = next((f"--{f}" for f, m in METHODS.items() if m == method), "the default path (no method flag)")
        raise UserError(f"{flag} is not available yet in this version; use --use_dpo")
    folder, resume, name = _prepare(cfg)
    from accelerate import PartialState

    state = PartialState(cpu=_no_accelerator())
    state.wait_for_everyone()  # every rank has checked before any rank writes
    try:
        TRAINERS[method](cfg, folder, resume, name)
    except BaseException:
        if state.is_main_process:
            folder.remove_if_unused()  # a run that failed before training leaves nothing behind
        raise
    return folder


def _prepare(cfg: Config) -> tuple[RunFolder, Path | None, str]:
    """Every check that can fail on bad input, before anything is written."""
    name = run_name(cfg)
    folder = RunFolder(Path(cfg.run.output_dir) / name)
    resume = folder.resolve_resume(cfg.run.resume_from_checkpoint)
    folder.check_can_start(resume, cfg.run.overwrite_output_dir)
    check_wandb(cfg, name)
    check_scaling(cfg)
    return folder, resume, name


def train_dpo(cfg: Config, folder: RunFolder, resume: Path | None, name: str) -> None:
    train_rows, eval_rows = _preference_splits(cfg)
    model_path = resolve_base_model(cfg.model.base_model)
    tokenizer = load_tokenizer(model_path)
    if isinstance(train_rows[0]["prompt"], list) and not tokenizer.chat_template:
        raise UserError(f"{model_path}: conversational preference data needs a tokenizer with a chat template")

    from datasets import Dataset

    trainer = build_dpo_trainer(
        cfg,
        model_path,
        tokenizer,
        Dataset.from_list(train_rows),
        Dataset.from_list(eval_rows) if eval_rows else None,
        folder,
        name,
        callbacks=[RunFolderCallback(folder, "dpo")],
    )
    _run(trainer, tokenizer, folder, cfg, resume)


def _preference_splits(cfg: Config) -> tuple[list[dict], list[dict]]:
    """Training pairs, and evaluation pairs from --eval_data, the shipped eval file, or a held-out split."""
    d = cfg.data
    rows = load_preferences(d.preference_data or SHIPPED_PREFERENCES)
    if d.eval_data:
        return rows, load_preferences(d.eval_data)
    if not d.preference_data and SHIPPED_PREFERENCES_EVAL.is_file():
        return rows, load_preferences(SHIPPED_PREFERENCES_EVAL)
    if cfg.model.eval_steps == 0 or d.eval_split <= 0 or len(rows) < 2:
        return rows, []
    if not d.eval_split < 1:
        raise DataError(f"--eval_split must be below 1 (got {d.eval_split})")
    n_eval = max(1, round(len(rows) * d.eval_split))
    import random

    order = list(range(len(rows)))
    random.Random(cfg.model.seed).shuffle(order)
    held = set(order[:n_eval])
    return [r for i, r in enumerate(rows) if i not in held], [r for i, r in enumerate(rows) if i in held]


def _run(trainer, tokenizer, folder: RunFolder, cfg: Config, resume: Path | None) -> None:
    """Train with the run folder in place; a failure before the first checkpoint leaves nothing behind."""
    if trainer.accelerator.is_main_process:
        folder.create(resume, cfg.run.overwrite_output_dir)
        folder.write_config(cfg.to_yaml())
    trainer.accelerator.wait_for_everyone()
    trainer.train(resume_from_checkpoint=str(resume) if resume else None)
    final = save_final_model(trainer, tokenizer, folder)
    if trainer.accelerator.is_main_process:
        folder.log_line(f"final model saved to {final}")
        folder.plot()
    _end(trainer)


def _no_accelerator() -> bool:
    import torch

    return not torch.accelerator.is_available()


def _end(trainer) -> None:
    end = getattr(trainer, "end", None)  # transformers >= 5.18 closes trackers and the process group here
    if callable(end):
        end()


TRAINERS = {"dpo": train_dpo}
