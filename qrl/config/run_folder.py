"""The run folder: one owner for its layout, used by every training path.

```
<output_dir>/<run name>/
├── checkpoints/checkpoint-N/   (written by the Trainer; adapters for LoRA)
├── checkpoints/.incomplete/    (where a checkpoint is written, renamed to checkpoint-N once complete)
├── checkpoints/final/          (the final model, LoRA merged)
├── logs/training_log.txt       (human-readable progress)
├── logs/rewards.json           (statistics per logging step)
├── logs/eval_results.json      (every evaluation)
├── logs/mining.json            (counts of mined preference pairs, when --mine_pairs_from)
├── data/mined_pairs.jsonl      (the mined pairs, in the preference format)
├── results/*.png               (training curves)
├── results/samples_<model>.jsonl  (an --eval_only run's answers with their verdicts)
├── results/verdicts_<model>.png   (an --eval_only run's verdicts, and passes per problem)
└── config.yaml                 (the effective configuration, re-runnable with --config)
```
Every JSON file is replaced atomically and every checkpoint appears under its name only once complete, so a run
killed at any moment leaves readable files and a checkpoint that ``latest`` can resume from.
"""

from __future__ import annotations

import errno
import json
import math
import os
import re
import shutil
import sys
import time
from pathlib import Path
from typing import Any

from transformers import TrainerCallback

from qrl.config import interrupts, launch
from qrl.data.records import UserError, atomic_write, probe_folder

CHECKPOINT_RE = re.compile(r"^checkpoint-(\d+)$")


def _json_safe(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_json_safe(v) for v in value]
    return value


class RunFolder:
    """Paths and files of one run, and the rules for starting, resuming and replacing it."""

    def __init__(self, root: str | Path):
        self.root = Path(root)
        self.checkpoints = self.root / "checkpoints"
        self.staging = self.checkpoints / ".incomplete"  # the trainers' output_dir: checkpoints are written here
        self.logs = self.root / "logs"
        self.results = self.root / "results"
        self.training_log = self.logs / "training_log.txt"
        self.rewards_json = self.logs / "rewards.json"
        self.eval_json = self.logs / "eval_results.json"
        self.config_yaml = self.root / "config.yaml"
        self.mined_pairs = self.root / "data" / "mined_pairs.jsonl"
        self.mining_json = self.logs / "mining.json"
        self.final_model = self.checkpoints / "final"
        self.created = False  # whether this process made the folder (and may remove it on early failure)

    # --- starting a run -------------------------------------------------------------------------
    def holds_run(self) -> bool:
        return self.root.is_dir() and any(self.root.iterdir())

    def latest_checkpoint(self) -> Path | None:
        """The newest complete checkpoint: one whose trainer state was written (the Trainer writes it last)."""
        if not self.checkpoints.is_dir():
            return None
        found = []
        for path in self.checkpoints.iterdir():
            m = CHECKPOINT_RE.match(path.name)
            if m and path.is_dir() and _readable_json(path / "trainer_state.json"):
                found.append((int(m.group(1)), path))
        return max(found)[1] if found else None

    def finished(self, kind: str) -> bool:
        """Whether a run got to its end, told by the file it writes last: a training's final model (the tokenizer
        is saved after the weights), a --mine_only run's counts, an --eval_only run's samples."""
        if kind == "eval":
            return bool(self.eval_samples())
        return (self.mining_json if kind == "mine" else self.final_model / "tokenizer_config.json").is_file()

    def eval_samples(self, model: str | None = None) -> list[Path]:
        """An --eval_only run's samples with their verdicts: the file for ``model``, or every one the folder holds."""
        if model is not None:
            return [self.results / f"samples_{Path(model).name}.jsonl"]
        return sorted(self.results.glob("samples_*.jsonl")) if self.results.is_dir() else []

    def resolve_resume(self, resume: str | None) -> Path | None:
        """Turn --resume_from_checkpoint (a path or 'latest') into a checkpoint folder, or fail clearly."""
        if not resume:
            return None
        if resume == "latest":
            latest = self.latest_checkpoint()
            if latest is None:
                raise UserError(f"--resume_from_checkpoint latest: no complete checkpoint in {self.checkpoints}")
            self.check_processes(latest)
            return latest
        path = Path(resume)
        if not (path / "trainer_state.json").is_file():
            raise UserError(f"--resume_from_checkpoint: {path} is not a checkpoint folder (no trainer_state.json)")
        self.check_processes(path)
        return path

    @staticmethod
    def check_processes(checkpoint: Path) -> None:
        """A checkpoint resumes with the number of processes that wrote it (each rank restores its own random
        state; under DeepSpeed its own optimizer shard). Every rank finds the same, so it is said once."""
        saved = len(list(checkpoint.glob("rng_state_*.pth"))) or (1 if (checkpoint / "rng_state.pth").is_file()
                                                                   else None)
        now = launch.world_size()
        if saved is not None and saved != now:
            raise UserError(f"--resume_from_checkpoint: {checkpoint.name} was written by {saved} process"
                            f"{'es' if saved > 1 else ''} and this run has {now}: resume with "
                            f"--num_processes {saved} (or start a new run)", every_rank=True)

    def check_can_start(self, resume: Path | None, overwrite: bool) -> None:
        """Refuse to overwrite an earlier run silently; check the folder is writable. Writes nothing."""
        if self.holds_run() and resume is None and not overwrite:
            raise UserError(
                f"{self.root} already holds a run: resume it with --resume_from_checkpoint latest, "
                "or pass --overwrite_output_dir to replace it"
            )
        self.check_writable()

    def check_writable(self) -> None:
        """Try the folder by making it and a file in it, then removing what was made: nothing stays."""
        self.created = not self.root.exists()
        probe_folder(self.root, "output folder")

    def create(self, resume: Path | None, overwrite: bool) -> None:
        """Make the folder; on resume, drop log entries newer than the checkpoint (they will be logged again)."""
        if overwrite and resume is None and self.root.exists():
            shutil.rmtree(self.root)
        for d in (self.checkpoints, self.logs, self.results):
            d.mkdir(parents=True, exist_ok=True)
        shutil.rmtree(self.staging, ignore_errors=True)  # what a killed save left half-written
        if resume is not None:
            step = json.loads((resume / "trainer_state.json").read_text())["global_step"]
            for path in (self.rewards_json, self.eval_json):
                data = self.read_json(path)
                data["steps"] = [e for e in data["steps"] if e.get("step", 0) <= step]
                self.write_json(path, data)

    def remove_if_unused(self) -> None:
        """After a failure before training got anywhere: leave nothing half-written behind."""
        if not (self.created and self.root.exists()):
            return
        if self.latest_checkpoint() is None and not self.read_json(self.rewards_json)["steps"]:
            shutil.rmtree(self.root)

    # --- checkpoints ----------------------------------------------------------------------------
    def publish_checkpoint(self, step: int, save_total_limit: int | None) -> Path | None:
        """Move a complete ``checkpoint-N`` from the staging folder to its name (one rename), then rotate: an old
        checkpoint is removed only once the new one is in place."""
        written = self.staging / f"checkpoint-{step}"
        if not written.is_dir():
            return None
        target = self.checkpoints / written.name
        replaced = self.staging / f"replaced-{step}"
        if target.exists():  # the same step saved again (a resume from an older checkpoint)
            shutil.rmtree(replaced, ignore_errors=True)
            target.rename(replaced)
        written.rename(target)
        _fsync_dir(self.checkpoints)
        shutil.rmtree(replaced, ignore_errors=True)
        self.rotate_checkpoints(save_total_limit, keep=target)
        return target

    def rotate_checkpoints(self, limit: int | None, keep: Path) -> None:
        """Keep the newest ``limit`` checkpoints (by step), ``keep`` always among them."""
        if not limit:
            return
        others = sorted((int(m.group(1)), p) for p in self.checkpoints.iterdir()
                        if (m := CHECKPOINT_RE.match(p.name)) and p != keep)
        for _, old in others[:max(0, len(others) - (limit - 1))]:
            shutil.rmtree(old, ignore_errors=True)

    def checkpoint_bytes(self, model=None) -> int:
        """The room a checkpoint takes: the newest one's size, or an estimate from the model (weights, or adapters
        with LoRA, and AdamW's two fp32 moments of every trainable parameter)."""
        latest = self.latest_checkpoint()
        if latest is not None:
            return sum(f.stat().st_size for f in latest.rglob("*") if f.is_file())
        if model is None:
            return 0
        weights = trainable = 0
        for p in model.parameters():
            n = getattr(p, "ds_numel", p.numel())  # ZeRO-3 keeps only a shard in p
            if p.requires_grad:
                trainable += n
            if p.requires_grad or not hasattr(model, "peft_config"):
                weights += n * p.element_size()
        return weights + 8 * trainable + 16 * 2**20  # + the tokenizer and the small state files

    def warn_if_short_of_space(self, model=None) -> None:
        """One line at start when the disk cannot hold two more checkpoints."""
        need = self.checkpoint_bytes(model)
        free = shutil.disk_usage(self.checkpoints).free
        if need and free < 2 * need:
            line = (f"warning: {_size(free)} free for {self.checkpoints}, less than two checkpoints "
                    f"({_size(2 * need)}): the run stops at the save that fills the disk")
            print(line, file=sys.stderr, flush=True)
            self.log_line(line)

    def write_failure(self, error: BaseException) -> str | None:
        """For a full disk or a folder that became unwritable: one line naming the folder, what was being written
        and the room a checkpoint needs; the half-written checkpoint is removed. None for any other error."""
        reason, filename = _write_failure(error)
        partial = sorted(self.staging.glob("checkpoint-*")) if self.staging.is_dir() else []
        need = self.checkpoint_bytes() or sum(f.stat().st_size for p in partial for f in p.rglob("*") if f.is_file())
        try:
            short = shutil.disk_usage(self.root).free < max(need, 2**20)
        except OSError:
            short = False
        if reason in (None, _WRITE_FAILED) and short and (partial or reason):  # torch's writer said it in its words
            reason = _WRITE_ERRNOS[errno.ENOSPC]
        if reason is None:
            return None
        shutil.rmtree(self.staging, ignore_errors=True)
        if partial:
            what = f"writing {partial[-1].name} in {self.checkpoints}"
        elif filename:
            what = f"writing {filename}"
        else:
            what = f"writing to {self.root}"
        room = f"; a checkpoint needs about {_size(need)}" if need else ""
        try:
            free = f", {_size(shutil.disk_usage(self.root).free)} free"
        except OSError:
            free = ""
        resume = ("resume with --resume_from_checkpoint latest once there is room" if self.latest_checkpoint()
                  else "no checkpoint was complete yet")
        return f"{what}: {reason}{free}{room}; {resume}"

    # --- files ----------------------------------------------------------------------------------
    def read_json(self, path: Path) -> dict[str, Any]:
        if path.is_file():
            return json.loads(path.read_text(encoding="utf-8"))
        return {"steps": []}

    def write_json(self, path: Path, data: dict[str, Any]) -> None:
        atomic_write(path, json.dumps(_json_safe(data), indent=2) + "\n")

    def append_entry(self, path: Path, entry: dict[str, Any], **header: Any) -> None:
        data = self.read_json(path)
        data.update(header)
        data["steps"].append(entry)
        self.write_json(path, data)

    def log_line(self, text: str) -> None:
        self.logs.mkdir(parents=True, exist_ok=True)
        stamp = time.strftime("%Y-%m-%d %H:%M:%S")
        with open(self.training_log, "a", encoding="utf-8") as f:
            f.write(f"[{stamp}] {text}\n")

    def write_config(self, yaml_text: str) -> None:
        atomic_write(self.config_yaml, yaml_text)

    def plot(self) -> list[Path]:
        """Training curves from rewards.json and eval_results.json, one PNG per metric group."""
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        written = []
        for name, path in (("training", self.rewards_json), ("eval", self.eval_json)):
            steps = self.read_json(path)["steps"]
            groups: dict[str, dict[str, list[tuple[int, float]]]] = {}
            for entry in steps:
                for key, value in entry.items():
                    if key in ("step", "epoch") or not isinstance(value, (int, float)) or isinstance(value, bool):
                        continue
                    group = key.split("/")[0] if "/" in key else key
                    groups.setdefault(group, {}).setdefault(key, []).append((entry["step"], value))
            groups = {g: series for g, series in groups.items() if not g.endswith(("_runtime", "per_second"))}
            if not groups:
                continue
            cols = min(3, len(groups))
            rows = math.ceil(len(groups) / cols)
            fig, axes = plt.subplots(rows, cols, figsize=(5 * cols, 3.2 * rows), squeeze=False)
            for ax, (group, series) in zip(axes.flat, sorted(groups.items()), strict=False):
                for key, points in sorted(series.items()):
                    xs, ys = zip(*points, strict=True)
                    ax.plot(xs, ys, marker="o" if len(xs) < 20 else None, markersize=3, label=key)
                ax.set_title(group)
                ax.set_xlabel("step")
                if len(series) > 1:
                    ax.legend(fontsize=7)
            for ax in list(axes.flat)[len(groups):]:
                ax.axis("off")
            fig.tight_layout()
            out = self.results / f"{name}_curves.png"
            out.parent.mkdir(parents=True, exist_ok=True)
            fig.savefig(out, dpi=90)
            plt.close(fig)
            written.append(out)
        return written

    def plot_verdicts(self, entry: dict[str, Any], name: str) -> Path:
        """One evaluation at a glance (``results/verdicts_<name>.png``): how many answers got each verdict, and how
        many of each problem's answers passed (``entry`` as eval_results.json holds it)."""
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
        import matplotlib.ticker

        statuses = {k.removeprefix("status/"): v for k, v in entry.items() if k.startswith("status/")}
        by_problem = entry.get("passed_by_problem") or {}
        per = entry.get("samples", 0) // max(len(by_problem), 1)
        fig, (left, right) = plt.subplots(1, 2, figsize=(11, max(3.0, 0.18 * len(by_problem) + 1)), squeeze=True)
        _bar_chart(left, list(statuses), list(statuses.values()), f"verdicts of {entry.get('samples', 0)} answers",
                   "answers")
        _bar_chart(right, list(by_problem), list(by_problem.values()),
                   f"answers passed per problem (of {per}); pass@1 {entry.get('pass@1', 0):.3f}", "passed")
        right.set_xlim(0, max(per, 1))
        right.xaxis.set_major_locator(matplotlib.ticker.MaxNLocator(integer=True))
        fig.tight_layout()
        out = self.results / f"verdicts_{name}.png"
        out.parent.mkdir(parents=True, exist_ok=True)
        fig.savefig(out, dpi=90)
        plt.close(fig)
        return out


def _bar_chart(ax, labels: list[str], values: list[float], title: str, xlabel: str) -> None:
    ax.barh(range(len(labels)), values, color="tab:blue")
    ax.set_yticks(range(len(labels)), labels, fontsize=7)
    ax.invert_yaxis()
    ax.set_title(title)
    ax.set_xlabel(xlabel)


_WRITE_ERRNOS = {errno.ENOSPC: "no space left on the device", errno.EDQUOT: "disk quota exceeded",
                 errno.EROFS: "the file system became read-only", errno.EACCES: "permission denied",
                 errno.EPERM: "operation not permitted"}


_WRITE_FAILED = "the write failed (a full disk, or a folder that became unwritable)"


def _write_failure(error: BaseException) -> tuple[str | None, str | None]:
    """(reason, file) when an error, or one it came from, is a failed write: an OSError with a write errno, or
    torch's and safetensors' writers, which report ENOSPC only in words."""
    seen = set()
    while error is not None and id(error) not in seen:
        seen.add(id(error))
        if isinstance(error, OSError) and error.errno in _WRITE_ERRNOS:
            return _WRITE_ERRNOS[error.errno], error.filename
        text = str(error)
        if "No space left" in text or "os error 28" in text or "StorageFull" in text:
            return _WRITE_ERRNOS[errno.ENOSPC], None
        if any(words in text for words in ("file write failed", "iostream error", "unexpected pos")):
            return _WRITE_FAILED, None  # torch's zip writer: the errno is lost
        error = error.__cause__ or error.__context__
    return None, None


def _size(n: int) -> str:
    return f"{n / 2**20:.0f} MB" if n < 10 * 2**30 else f"{n / 2**30:.1f} GB"


def _fsync_dir(path: Path) -> None:
    """Make a rename durable: a power cut after it must not bring the old name back."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _readable_json(path: Path) -> bool:
    try:
        json.loads(path.read_text(encoding="utf-8"))
        return True
    except (OSError, ValueError):
        return False


class RunFolderCallback(TrainerCallback):
    """Writes the run folder's logs from the Trainer's events, on the main process only."""

    def __init__(self, folder: RunFolder, method: str):
        self.folder = folder
        self.method = method

    def on_train_begin(self, args, state, control, model=None, **kwargs):
        if state.is_world_process_zero:
            start = f" from step {state.global_step}" if state.global_step else ""
            self.folder.log_line(f"{self.method}: training{start} to step {state.max_steps}")
            self.folder.warn_if_short_of_space(model)

    def on_log(self, args, state, control, logs=None, **kwargs):
        if not state.is_world_process_zero or not logs:
            return
        logs = {k: v for k, v in logs.items() if k != "epoch"}
        entry = {"step": state.global_step, "epoch": round(state.epoch or 0.0, 4)}
        if "train_runtime" in logs:  # the Trainer's closing summary, not a step
            data = self.folder.read_json(self.folder.rewards_json)
            data["summary"] = {**entry, **logs}
            self.folder.write_json(self.folder.rewards_json, data)
            self.folder.log_line("summary: " + ", ".join(f"{k}={_fmt(v)}" for k, v in logs.items()))
            return
        if any(k.startswith("eval_") for k in logs):
            entry.update({k.removeprefix("eval_"): v for k, v in logs.items()})
            self.folder.append_entry(self.folder.eval_json, entry, method=self.method)
            kind = "eval"
        else:
            entry.update(logs)
            self.folder.append_entry(self.folder.rewards_json, entry, method=self.method)
            kind = "train"
        shown = ", ".join(f"{k}={_fmt(v)}" for k, v in entry.items() if k not in ("step", "epoch"))
        self.folder.log_line(f"step {state.global_step}/{state.max_steps} {kind}: {shown}")

    def on_save(self, args, state, control, **kwargs):
        from accelerate import PartialState

        PartialState().wait_for_everyone()  # every rank has written its part (ZeRO shards, RNG states)
        if state.is_world_process_zero and self.folder.publish_checkpoint(state.global_step, args.save_total_limit):
            self.folder.log_line(f"saved checkpoint-{state.global_step}")

    def on_train_end(self, args, state, control, **kwargs):
        if state.is_world_process_zero:
            self.folder.log_line(f"training ended at step {state.global_step}")


class StopAtSignal(TrainerCallback):
    """At each step boundary: if any rank got SIGINT or SIGTERM (``interrupts``), save this step and stop."""

    def __init__(self) -> None:
        self.signum = 0
        self.step: int | None = None

    def on_step_end(self, args, state, control, **kwargs):
        signum = interrupts.agreed_signal()
        if signum:
            interrupts.stop_requested(signum)
            self.signum, self.step = signum, state.global_step
            control.should_save = True
            control.should_training_stop = True
        return control


def _fmt(value: Any) -> str:
    return f"{value:.4g}" if isinstance(value, float) else str(value)
