"""The training paths: one function per path, all writing the same run folder.

- ``train_dpo``: Direct Preference Optimization on preference pairs (TRL DPOTrainer), or on pairs mined
  from test runs (``--mine_pairs_from``).
- ``train_ppo``: PPO against a learned reward model (``--use_reward_model``); ``run_ppo`` takes any reward
  function, for ``--rl_algorithm ppo`` on the test-case paths.
- GRPO on test-case rewards, the default composite path, and PPO on a learned reward are added by their
  own issues; until then they stop at start with a clear line.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable

from data_loading import DataError, UserError, load_preferences, read_records, require_fields
from q_trl_training import (
    PPOTrainer,
    _as_chat,
    build_dpo_trainer,
    check_reward_model,
    check_wandb,
    load_tokenizer,
    peft_config,
    ppo_config,
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
    _check_method_options(cfg, method)
    folder, resume, name = _prepare(cfg)
    try:
        TRAINERS[method](cfg, folder, resume, name)
    except BaseException:
        folder.remove_if_unused()  # a run that failed before training leaves nothing behind
        raise
    return folder


def _check_method_options(cfg: Config, method: str) -> None:
    """Options that only one path reads are refused on the others, rather than silently ignored."""
    if cfg.ppo.rl_algorithm == "ppo" and method == "dpo":
        raise UserError("--rl_algorithm ppo is for the test-case paths; --use_dpo has no reward to optimise")
    if cfg.mining.mine_pairs_from and method != "dpo":
        raise UserError("--mine_pairs_from trains on preference pairs: use it with --use_dpo or train_reward_model.py")


def _prepare(cfg: Config, name: str | None = None) -> tuple[RunFolder, Path | None, str]:
    """Every check that can fail on bad input, before anything is written."""
    name = name or run_name(cfg)
    folder = RunFolder(Path(cfg.run.output_dir) / name)
    resume = folder.resolve_resume(cfg.run.resume_from_checkpoint)
    folder.check_can_start(resume, cfg.run.overwrite_output_dir)
    check_wandb(cfg, name)
    return folder, resume, name


def train_dpo(cfg: Config, folder: RunFolder, resume: Path | None, name: str) -> None:
    on_create = None
    if cfg.mining.mine_pairs_from:
        train_rows, eval_rows, on_create = _mined_splits(cfg, folder)
    else:
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
    _run(trainer, tokenizer, folder, cfg, resume, on_create=on_create)


def _mined_splits(cfg: Config, folder: RunFolder) -> tuple[list[dict], list[dict], Callable[[], None]]:
    """DPO on pairs mined from test runs (plus --preference_data when given), eval by held-out problems."""
    import mining
    from reward_data import same_form, split_by_prompt

    rows, counts = mining.mine(cfg, mining.sandbox_scorer())
    rows = [{k: r[k] for k in ("prompt", "chosen", "rejected")} for r in rows]
    print(mining.summary(counts))
    if cfg.data.preference_data:
        rows += load_preferences(cfg.data.preference_data)
    if cfg.data.eval_data:
        train_rows, eval_rows = rows, load_preferences(cfg.data.eval_data)
    else:
        train_rows, eval_rows = split_by_prompt(rows, cfg.data.eval_split if cfg.model.eval_steps else 0, cfg.model.seed)
    same_form(train_rows + eval_rows, "the DPO pairs")
    return train_rows, eval_rows, lambda: mining.write_mined(folder, rows, counts, cfg.mining.mine_pairs_from)


def train_ppo(cfg: Config, folder: RunFolder, resume: Path | None, name: str) -> None:
    """PPO against a reward model trained with train_reward_model.py."""
    if not cfg.data.reward_model_path:
        raise UserError("--use_reward_model needs --reward_model_path (a model written by train_reward_model.py)")
    check_reward_model(cfg.data.reward_model_path)
    _check_lengths(cfg)
    from q_trl_training import LearnedReward

    train_rows, eval_rows = ppo_prompts(cfg)
    reward = LearnedReward(cfg.data.reward_model_path, max_length=cfg.model.max_seq_length)
    run_ppo(cfg, folder, resume, name, reward, train_rows, eval_rows, method="ppo_reward_model")


def run_ppo(cfg: Config, folder: RunFolder, resume: Path | None, name: str, reward_fn: Callable[..., list],
            train_rows: list[dict[str, Any]], eval_rows: list[dict[str, Any]], method: str) -> None:
    """PPO on any reward function with TRL's signature ``f(prompts, completions, **columns)``.

    Rows hold ``prompt`` and any columns the reward function reads (``tests``, ``entry_point``...); text
    prompts become a user turn of the policy's chat template.
    """
    _check_lengths(cfg)
    model_path = resolve_base_model(cfg.model.base_model)
    tokenizer = load_tokenizer(model_path)
    chat = [{**r, "prompt": _as_chat(tokenizer, r["prompt"])} for r in train_rows]
    chat_eval = [{**r, "prompt": _as_chat(tokenizer, r["prompt"])} for r in eval_rows]
    if isinstance(chat[0]["prompt"], list) and not tokenizer.chat_template:
        raise UserError(f"{model_path}: conversational prompts need a tokenizer with a chat template")
    trainer = PPOTrainer(model_path, ppo_config(cfg, folder, name), tokenizer, reward_fn, chat, chat_eval,
                         peft_config=peft_config(cfg), callbacks=[RunFolderCallback(folder, method)])
    _run(trainer, tokenizer, folder, cfg, resume)


def _check_lengths(cfg: Config) -> None:
    if cfg.model.max_seq_length <= cfg.generation.max_completion_length:
        raise UserError(f"--max_seq_length ({cfg.model.max_seq_length}) must exceed --max_completion_length "
                        f"({cfg.generation.max_completion_length}): the prompt needs room")


def ppo_prompts(cfg: Config) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """PPO's prompts: --train_data's (problems or any file with a prompt field; rows marked split 'eval' are
    held out), else the prompts of the preference pairs the reward model was trained on (--preference_data,
    default the shipped pairs). Evaluation: --eval_data, the rows marked 'eval', the shipped held-out pairs'
    prompts, or else --eval_split of the prompts."""
    d = cfg.data
    if d.train_data:
        rows = prompt_rows(d.train_data)
        held = [r for r in rows if r.get("split") == "eval"]
        rows = [r for r in rows if r.get("split") != "eval"]
    else:
        rows, held = prompt_rows(d.preference_data or SHIPPED_PREFERENCES), []
        if not d.preference_data and SHIPPED_PREFERENCES_EVAL.is_file():
            held = prompt_rows(SHIPPED_PREFERENCES_EVAL)
    if d.eval_data:
        held = prompt_rows(d.eval_data)
    if not rows:
        raise DataError(f"{d.train_data}: no training prompts (every row is marked split 'eval')")
    if not cfg.model.eval_steps:
        return rows, []
    if not held:
        from reward_data import split_by_prompt

        rows, held = split_by_prompt(rows, d.eval_split, cfg.model.seed)
    return rows, held


def prompt_rows(path: str | Path) -> list[dict[str, Any]]:
    """Rows with a prompt: preference pairs give their distinct prompts; other rows keep all their fields."""
    rows, seen = [], set()
    for record in read_records(path):
        require_fields(record, ("prompt",))
        prompt = record.data["prompt"]
        if not (isinstance(prompt, str) and prompt.strip()) and not (isinstance(prompt, list) and prompt):
            raise DataError(f"{record.where}: field 'prompt' must be text or a list of messages")
        if "chosen" in record.data:
            if repr(prompt) in seen:
                continue
            seen.add(repr(prompt))
            rows.append({"prompt": prompt})
        else:
            rows.append(dict(record.data))
    return rows


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


def _run(trainer, tokenizer, folder: RunFolder, cfg: Config, resume: Path | None,
         on_create: Callable[[], None] | None = None, after_train: Callable[[], None] | None = None) -> None:
    """Train with the run folder in place; a failure before the first checkpoint leaves nothing behind.

    ``on_create`` writes the path's own files once the folder exists; ``after_train`` runs before trackers close.
    """
    if trainer.accelerator.is_main_process:
        folder.create(resume, cfg.run.overwrite_output_dir)
        folder.write_config(cfg.to_yaml())
        if on_create:
            on_create()
    trainer.accelerator.wait_for_everyone()
    trainer.train(resume_from_checkpoint=str(resume) if resume else None)
    final = save_final_model(trainer, tokenizer, folder)
    if trainer.accelerator.is_main_process:
        folder.log_line(f"final model saved to {final}")
        if after_train:
            after_train()
        folder.plot()
    _end(trainer)


def _end(trainer) -> None:
    end = getattr(trainer, "end", None)  # transformers >= 5.18 closes trackers and the process group here
    if callable(end):
        end()


TRAINERS = {"dpo": train_dpo, "ppo_reward_model": train_ppo}
