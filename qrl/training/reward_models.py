"""Train a reward model (a one-output sequence classifier) on preferences, with TRL's RewardTrainer.

The options, the data (pairs, rankings, demonstrations, pairs mined from test runs) and the run folder; the command
line is ``train_reward_model.py`` (``qrl reward-model``), whose docstring shows its use.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from qrl.config.arguments import REWARD_MODEL_SECTIONS, Config, parse_config
from qrl.config.run_folder import RunFolder
from qrl.data.records import DataError, UserError, load_preferences
from qrl.resources import REWARD_MODEL_CONFIG


def parse_options(argv: list[str] | None = None, prog: str = "train_reward_model.py") -> Config:
    """The options, with configs/reward_model.yaml (not run_rl.py's config.yaml) as the default file."""
    return parse_config(REWARD_MODEL_SECTIONS, argv, prog=prog,
                        description=__doc__.split("\n\n")[0], default_config=REWARD_MODEL_CONFIG)


def run_name(cfg: Config) -> str:
    """Distinct from the policy runs' default name, so that the two can share an output folder."""
    return cfg.run.experiment_name or f"{Path(cfg.model.base_model.rstrip('/')).name}-reward"


def reward_pairs(cfg: Config) -> tuple[list[dict], list[dict], dict[str, Any], Any]:
    """Training and evaluation pairs from every source, what each source gave, and mined pairs to write.

    Returns ``(train, eval, counts, mined)`` where ``mined`` is ``(rows, MiningCounts)`` or None.
    """
    from qrl.data.preferences import same_form, split_by_prompt

    d = cfg.data
    if not d.data_path and not cfg.mining.mine_pairs_from:
        raise UserError("no training data: give --data_path (pairs, rankings or demonstrations) "
                        "or --mine_pairs_from (problems with tests)")
    rows: list[dict] = []
    counts: dict[str, Any] = {}
    if d.data_path:
        fmt, got, by_kind = load_pairs(d.data_path, d.data_format, cfg)
        rows += got
        counts[d.data_path] = {"format": fmt, "pairs": len(got), **({"by_kind": by_kind} if by_kind else {})}
    mined = None
    if cfg.mining.mine_pairs_from:
        from qrl.training import mining

        mined = mining.mine(cfg)
        print(mining.summary(mined[1]))
        rows += [{k: r[k] for k in ("prompt", "chosen", "rejected")} for r in mined[0]]
        counts[cfg.mining.mine_pairs_from] = {"format": "mined", "pairs": len(mined[0])}
    from qrl.resources import PREFERENCES as SHIPPED_PREFERENCES
    from qrl.resources import PREFERENCES_EVAL as SHIPPED_PREFERENCES_EVAL

    eval_data = d.eval_data
    if not eval_data and d.data_path and Path(d.data_path).resolve() == SHIPPED_PREFERENCES.resolve():
        eval_data = str(SHIPPED_PREFERENCES_EVAL)  # the shipped pairs come with their held-out prompts
    if eval_data:
        eval_rows = load_pairs(eval_data, d.data_format, cfg)[1]
        train_rows = rows
    else:
        if not 0 <= d.eval_split < 1:
            raise DataError(f"--eval_split must be at least 0 and below 1 (got {d.eval_split})")
        train_rows, eval_rows = split_by_prompt(rows, d.eval_split if cfg.model.eval_steps else 0, cfg.model.seed)
    if not train_rows:
        raise DataError("no training pairs left after holding out the evaluation prompts; lower --eval_split")
    same_form(train_rows + eval_rows, "the reward model's pairs")
    return train_rows, eval_rows, counts, mined


def load_pairs(path: str, data_format: str, cfg: Config) -> tuple[str, list[dict], dict[str, int]]:
    """One file in any accepted format as pairs: (format, pairs, pairs by kind for demonstrations)."""
    from qrl.data.preferences import demonstration_pairs, load_reward_data, ranking_pairs

    fmt, records = load_reward_data(path, data_format)
    if fmt == "pairs":
        return fmt, load_preferences(path), {}
    if fmt == "rankings":
        rows = ranking_pairs(records)
        if not rows:
            raise DataError(f"{path}: the rankings give no pairs (every response scored the same)")
        return fmt, rows, {}
    policy = None
    if cfg.data.demo_negatives in ("policy", "both"):
        policy = lambda prompts: [a[0] for a in _sample(cfg, prompts)]  # noqa: E731
    rows, by_kind = demonstration_pairs(records, cfg.data.demo_negatives, policy)
    if not rows:
        raise DataError(f"{path}: no pairs from the demonstrations (no corruption or policy answer differed)")
    return fmt, rows, by_kind


def _sample(cfg: Config, prompts: list) -> list[list[str]]:
    """One answer per prompt from the policy, for --demo_negatives policy/both."""
    from transformers import set_seed

    from qrl.models.loading import as_chat
    from qrl.training.prompts import sample_completions
    from qrl.training.trl import load_for_generation, resolve_base_model

    model, tokenizer = load_for_generation(resolve_base_model(cfg.mining.policy_model or cfg.model.base_model), cfg)
    set_seed(cfg.model.seed)
    g = cfg.generation
    return sample_completions(model, tokenizer, [as_chat(tokenizer, p) for p in prompts], 1, g.temperature,
                              g.max_completion_length, desc="demonstrations: sampling policy answers")


def train_reward_model(cfg: Config) -> RunFolder:
    from qrl.training.paths import prepare_run

    folder, resume, name = prepare_run(cfg, run_name(cfg))
    try:
        _train(cfg, folder, resume, name)
    except BaseException:
        folder.remove_if_unused()  # a run that failed before training leaves nothing behind
        raise
    return folder


def _train(cfg: Config, folder: RunFolder, resume: Path | None, name: str) -> None:
    from datasets import Dataset
    from transformers import TrainerCallback

    from qrl.config.run_folder import RunFolderCallback
    from qrl.models.loading import load_tokenizer
    from qrl.training.paths import stop_after_mining, train_in_folder
    from qrl.training.trl import build_reward_trainer, resolve_base_model

    train_rows, eval_rows, counts, mined = reward_pairs(cfg)
    if cfg.mining.mine_only:
        from qrl.training import mining

        return stop_after_mining(cfg, folder, lambda: mining.write_mined(folder, *mined, cfg.mining.mine_pairs_from))
    model_path = resolve_base_model(cfg.model.base_model)
    tokenizer = load_tokenizer(model_path)
    if isinstance(train_rows[0]["prompt"], list) and not tokenizer.chat_template:
        raise UserError(f"{model_path}: conversational preference data needs a tokenizer with a chat template")

    class EvaluateAtEnd(TrainerCallback):
        """The final model's held-out accuracy, whether or not max_steps is a multiple of eval_steps."""

        def on_step_end(self, args, state, control, **kwargs):
            if eval_rows and cfg.model.eval_steps and state.global_step >= state.max_steps:
                control.should_evaluate = True

    trainer = build_reward_trainer(
        cfg, model_path, tokenizer, Dataset.from_list(train_rows),
        Dataset.from_list(eval_rows) if eval_rows else None, folder, name,
        callbacks=[RunFolderCallback(folder, "reward_model"), EvaluateAtEnd()],
    )

    def on_create() -> None:
        folder.log_line(f"reward model: {len(train_rows)} training pairs, {len(eval_rows)} held-out pairs; "
                        + "; ".join(f"{src}: {c['pairs']} {c['format']}" for src, c in counts.items()))
        if mined:
            from qrl.training import mining

            mining.write_mined(folder, mined[0], mined[1], cfg.mining.mine_pairs_from)

    def after_train() -> None:
        """The saved model's exact held-out pairwise accuracy and margin, pair by pair (the trainer's own
        evaluations average over batches), scored as LearnedReward will score for PPO."""
        data = folder.read_json(folder.eval_json)
        if eval_rows:
            from qrl.rewards.learned import LearnedReward

            reward = LearnedReward(str(folder.final_model), batch_size=2 * cfg.model.batch_size,
                                   max_length=cfg.model.max_seq_length)
            prompts = [r["prompt"] for r in eval_rows]
            chosen = reward.score_texts(prompts, [r["chosen"] for r in eval_rows])
            rejected = reward.score_texts(prompts, [r["rejected"] for r in eval_rows])
            margins = [c - r for c, r in zip(chosen, rejected, strict=True)]
            data["final"] = {"step": cfg.model.max_steps, "accuracy": sum(m > 0 for m in margins) / len(margins),
                             "margin": sum(margins) / len(margins), "pairs": len(margins)}
            folder.log_line(f"final model on {len(margins)} held-out pairs: accuracy {data['final']['accuracy']:.4f}, "
                            f"margin {data['final']['margin']:.4f}")
        data.update(train_pairs=len(train_rows), eval_pairs=len(eval_rows), sources=counts)
        folder.write_json(folder.eval_json, data)

    train_in_folder(trainer, tokenizer, folder, cfg, resume, on_create=on_create, after_train=after_train)

