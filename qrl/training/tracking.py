"""What a person reads of a run besides the curves: the answers the model wrote, as W&B tables (at each logging step
and each evaluation); the toolkit's own configuration in the W&B run; the run folder's plots and headline numbers at
the end; and the few lines every training run prints when it ends.

The tables come from the reward itself: a scorer keeps the answers it judged (``Scorer.judged``), each with its
verdict, tests passed and reward components, and a training log takes what was judged since the last one. GRPO and
PPO build the same tables here, so that a run reads the same whichever trainer made it. Every table is a W&B
``INCREMENTAL`` table under one key (``completions``, ``eval/completions``): each log adds its step's rows as an
increment of its own, and the W&B app steps through them, so that no step's answers replace another's.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from transformers import TrainerCallback

from qrl.config.arguments import Config
from qrl.config.run_folder import RunFolder
from qrl.rewards.base import JudgedAnswer

TRAIN_KEY = "completions"
EVAL_KEY = "eval/completions"
EVAL_ROWS = 1000  # an evaluation's table holds every sample up to this many


def wandb_run():
    """The W&B run this process logs to, or None (W&B not installed, not started, or finished)."""
    try:
        import wandb
    except ImportError:
        return None
    return wandb.run


def prompt_as_text(prompt: Any) -> str:
    """A prompt as a person reads it: the text, or the messages' contents (with their roles when there are several)."""
    if prompt is None:
        return ""
    if isinstance(prompt, str):
        return prompt
    if isinstance(prompt, list):
        messages = [m for m in prompt if isinstance(m, dict)]
        if len(messages) == 1:
            return str(messages[0].get("content", ""))
        return "\n\n".join(f"{m.get('role', '')}: {m.get('content', '')}" for m in messages)
    return str(prompt)


def answer_row(result: dict[str, Any], step: int, components: Sequence[str], prompt: Any = None,
               with_prompt: bool = True) -> list[Any]:
    """One table row from a judged answer (``ScoreResult.to_json()`` plus its ``completion``), in ``columns`` order."""
    parts = result.get("components") or {}
    row = [step, result.get("task_id"), result.get("status") or None, result.get("tests_passed"),
           result.get("tests_total"), result.get("reward"), *(parts.get(c.split("/")[-1]) for c in components),
           result.get("detail") or ""]
    return row + ([prompt_as_text(prompt)] if with_prompt else []) + [result.get("completion", "")]


def columns(components: Sequence[str], with_prompt: bool = True) -> list[str]:
    return (["step", "task_id", "verdict", "tests_passed", "tests_total", "reward", *components, "detail"]
            + (["prompt"] if with_prompt else []) + ["completion"])


class CompletionTables:
    """The W&B tables of one run: training answers (the last ``rows`` judged before each logging step; 0: none) and
    evaluation samples, each an incremental table that grows by one increment per log.

    ``reward`` is the training reward: a ``Scorer`` (or TRL's async wrapper of one), whose judged answers feed the
    training table; with PPO, whose evaluation scores through the same reward, an evaluation log takes them too.
    """

    def __init__(self, reward: Any, rows: int = 16):
        self.scorer = getattr(reward, "scorer", reward)  # TRL's async reward wraps the scorer
        name = getattr(self.scorer, "name", "reward")
        self.components = [f"{name}/{c}" for c in getattr(self.scorer, "components", ())]
        self.rows = rows
        self._tables: dict[str, Any] = {}
        self._samples: list[dict[str, Any]] | None = None

    def add_samples(self, samples: list[dict[str, Any]]) -> None:
        """An evaluation's judged samples (``PassAtKEvaluator``), for the evaluation log that follows."""
        self._samples = samples

    def for_log(self, logs: dict[str, Any], step: int) -> dict[str, Any]:
        """The tables to log beside these statistics ({} when W&B is not running or there is nothing to show)."""
        judged = self.scorer.judged.take() if hasattr(self.scorer, "judged") else []
        samples, self._samples = self._samples, None
        if wandb_run() is None or not self.rows or "train_runtime" in logs:
            return {}
        if any(k.startswith("eval_") for k in logs):
            rows = ([answer_row(s, step, self.components, with_prompt=False) for s in samples[:EVAL_ROWS]]
                    if samples is not None else self._judged_rows(judged, step, EVAL_ROWS))
            return self._logged(EVAL_KEY, rows, with_prompt=samples is None)
        return self._logged(TRAIN_KEY, self._judged_rows(judged, step, self.rows), with_prompt=True)

    def _judged_rows(self, judged: list[JudgedAnswer], step: int, limit: int) -> list[list[Any]]:
        return [answer_row({**a.result.to_json(), "completion": a.completion}, step, self.components, a.prompt)
                for a in judged[-limit:]]

    def _logged(self, key: str, rows: list[list[Any]], with_prompt: bool) -> dict[str, Any]:
        if not rows:
            return {}
        import wandb

        table = self._tables.get(key)
        if table is None:
            table = self._tables[key] = wandb.Table(columns=columns(self.components, with_prompt),
                                                    log_mode="INCREMENTAL", allow_mixed_types=True)
        for row in rows:
            table.add_data(*row)
        return {key: table}


def log_tables(tables: dict[str, Any], step: int) -> None:
    """Log tables beside the Trainer's own W&B logs, on its step axis (``train/global_step``)."""
    run = wandb_run()
    if tables and run is not None:
        run.log({**tables, "train/global_step": step})


class WandbConfigCallback(TrainerCallback):
    """Puts the toolkit's effective configuration, every section as ``config.yaml`` holds it, into the W&B run's
    config under ``qrl`` (beside the trainer's own arguments), once the run has started (the toolkit's PPO)."""

    def __init__(self, cfg: Config):
        self.config = cfg.to_dict()

    def on_train_begin(self, args, state, control, **kwargs):
        run = wandb_run()
        if run is not None and state.is_world_process_zero:
            run.config.update({"qrl": self.config}, allow_val_change=True)


def _wandb_callback_class():
    from transformers.integrations import WandbCallback

    class QrlWandbCallback(WandbCallback):
        """transformers' W&B callback, with the toolkit's config in the run, and the reward's ``test_cases/...``
        statistics kept with the training ones (``train/test_cases/pass``): transformers files any key that starts
        with ``test_`` under a test split (``test/cases/pass``)."""

        def __init__(self, cfg: Config):
            super().__init__()
            self.config = cfg.to_dict()

        def setup(self, args, state, model, **kwargs):
            super().setup(args, state, model, **kwargs)
            run = wandb_run()
            if run is not None and state.is_world_process_zero:
                run.config.update({"qrl": self.config}, allow_val_change=True)

        def on_log(self, args, state, control, model=None, logs=None, **kwargs):
            logs = logs or {}
            super().on_log(args, state, control, model=model,
                           logs={k: v for k, v in logs.items() if not k.startswith("test_")}, **kwargs)
            moved = {f"train/{k}": v for k, v in logs.items() if k.startswith("test_")}
            run = wandb_run()
            if moved and run is not None and state.is_world_process_zero:
                run.log({**moved, "train/global_step": state.global_step})

    return QrlWandbCallback


def attach(trainer, cfg: Config) -> None:
    """W&B as the toolkit reports to it, on any of its trainers: for transformers' (DPO, GRPO, reward model) the
    toolkit's W&B callback replaces transformers' own; for the toolkit's PPO a callback adds the config."""
    if not cfg.tracking.wandb:
        return
    if hasattr(trainer, "callback_handler"):
        from transformers.integrations import WandbCallback

        trainer.remove_callback(WandbCallback)
        trainer.add_callback(_wandb_callback_class()(cfg))
    else:
        trainer.callbacks.append(WandbConfigCallback(cfg))


# --- the end of a run -----------------------------------------------------------------------------------------
def headline(folder: RunFolder) -> dict[str, Any]:
    """The numbers a person looks at first: the training metric (reward, else loss) at the first and last logged
    steps, the held-out metric (pass@1, else accuracy, loss or reward) at the first and last evaluations."""
    rewards, evals = folder.read_json(folder.rewards_json), folder.read_json(folder.eval_json)
    out: dict[str, Any] = {"method": rewards.get("method") or evals.get("method") or "",
                           "runtime": (rewards.get("summary") or {}).get("train_runtime")}
    for kind, steps, keys in (("train", rewards["steps"], ("reward", "loss")),
                              ("eval", evals["steps"], ("pass@1", "accuracy", "loss", "reward"))):
        key = next((k for k in keys if any(_number(e.get(k)) for e in steps)), None)
        points = [(e.get("step", 0), e[key], e) for e in steps if key and _number(e.get(key))]
        if points:
            out[kind] = {"metric": key, "first": points[0][:2], "last": points[-1][:2],
                         "problems": points[-1][2].get("problems")}
    return out


def _number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def summary_lines(folder: RunFolder) -> list[str]:
    """A run's end in a few lines: the training metric at its first and last steps, and the held-out metric before
    and after (the command line adds where the run folder is)."""
    h = headline(folder)
    steps = f", {h['train']['last'][0]} steps" if "train" in h else ""
    took = f" in {h['runtime'] / 60:.1f} min" if _number(h["runtime"]) else ""
    lines = [f"Done: {h['method'] or 'training'}{steps}{took}"]
    if "train" in h:
        t = h["train"]
        lines.append(f"  {t['metric']}: {t['first'][1]:.3f} at step {t['first'][0]}, "
                     f"{t['last'][1]:.3f} at step {t['last'][0]}")
    if "eval" in h:
        e = h["eval"]
        problems = f" ({e['problems']} problems)" if e["problems"] else ""
        first = f"{e['first'][1]:.3f} " + ("before training" if e["first"][0] == 0 else f"at step {e['first'][0]}")
        after = f", {e['last'][1]:.3f} at step {e['last'][0]}" if e["first"] != e["last"] else ""
        lines.append(f"  held-out {e['metric']}{problems}: {first}{after}")
    elif "train" in h:
        lines.append("  held-out: not evaluated (--eval_steps 0, or no evaluation data)")
    return lines


def report_end(folder: RunFolder, plots: Sequence[Path]) -> None:
    """At the end of training, on the main process: the plots and the headline numbers go to W&B when a run is open,
    and the summary to the training log and the terminal."""
    lines = summary_lines(folder)
    run = wandb_run()
    if run is not None:
        import wandb

        images = {f"plots/{Path(p).stem}": wandb.Image(str(p)) for p in plots}
        if images:
            run.log(images)
        h = headline(folder)
        for kind in ("train", "eval"):
            if kind in h:
                metric = h[kind]["metric"]
                run.summary[f"summary/{kind}_{metric}_first"] = h[kind]["first"][1]
                run.summary[f"summary/{kind}_{metric}_last"] = h[kind]["last"][1]
    for line in lines:
        folder.log_line(line.strip())
    print("\n".join(lines), flush=True)


def finish_run() -> None:
    """Close the W&B run the Trainer's W&B callback opened (PPO's closes with its accelerator), so that its last
    records are written and a later run in this process gets a run of its own."""
    run = wandb_run()
    if run is not None:
        run.finish()
