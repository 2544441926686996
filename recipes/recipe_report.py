"""What the recipes share: their runs, and the before/after comparison (pass@1 per evaluation, per-problem change,
and whether it is noise).

With a few dozen held-out problems the question is not only "did pass@1 rise" but "by more than chance": the
unit is the problem (its samples are not independent), so the change is tested over problems, with a sign test
on the problems that moved and a bootstrap interval of the mean per-problem change.
"""

from __future__ import annotations

import dataclasses
import json
import platform
import shlex
import shutil
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from itertools import pairwise
from pathlib import Path
from typing import Any, ClassVar

from qrl.data.records import atomic_write
from qrl.rewards.pass_at_k import summarize_samples

# The recipes' evaluation: sampled pass@1 over n answers a problem is steadier than one greedy answer on a few dozen
# problems; --seed (42 unless given) seeds the draws, so that the models before and after draw the same numbers.
EVAL_FLAGS = ["--eval_num_samples", "4", "--eval_temperature", "0.8", "--max_completion_length", "160"]


@dataclass
class RecipeArguments:
    """The options every recipe has; a recipe's own subclass sets its defaults."""

    output_dir: str = field(default="output/recipes", metadata={"help": "Where the recipe's runs go."})
    name: str = field(default="recipe", metadata={"help": "The recipe's folder under --output_dir."})
    base_model: str | None = field(default=None, metadata={"help": "Starting model (default: the embedded one)."})
    problems: str = field(default="data/problems", metadata={
        "help": "Problems with tests: the 'train' split is trained on, the 'eval' split is held out for evaluation "
                "(a relative path not found here is read from the toolkit's folder: the shipped problems)."})
    rounds: int = field(default=1, metadata={"help": "Rounds of training."})
    eval_each_round: bool = field(default=True, metadata={
        "help": "Evaluate after every round; --no_eval_each_round evaluates the starting and the last model only, "
                "which saves an evaluation a round (the longest step at a high --eval_num_samples)."})
    report: str = field(default="recipes/results/recipe.json", metadata={"help": "The report's JSON file."})
    resume: bool = field(default=False, metadata={
        "help": "Go on with the recipe in its existing folder, after an interruption or with more --rounds: finished "
                "steps are reused, an unfinished training goes on from its last checkpoint, other unfinished steps "
                "run again. The other options and the flags after -- must be those it was started with."})
    counts: ClassVar[tuple[str, ...]] = ("rounds",)  # options that must be at least 1


# What --resume may change: how far the recipe goes, what it evaluates and where the report goes, not what a step does.
RESUMABLE = ("rounds", "eval_each_round", "report", "resume", "output_dir", "name")


def parse_recipe(arguments: type, script: str, doc: str, argv: list[str] | None) -> tuple[Any, RecipeRun | None]:
    """The recipe's options and its runner; no runner (the error printed) when they cannot work. Flags after
    ``--`` (or not the recipe's) go to every run_rl.py step."""
    from transformers import HfArgumentParser

    from qrl.resources import shipped_path

    parser = HfArgumentParser(arguments, description=doc.split("\n\n")[0])
    args, extra = parser.parse_args_into_dataclasses(args=argv, return_remaining_strings=True)
    root = Path(args.output_dir) / args.name
    args.problems = str(shipped_path(args.problems))  # the shipped problems, from any folder
    for name in args.counts:  # checked before an hour of runs, not when a step fails
        if getattr(args, name) < 1:
            print(f"{script}.py: error: --{name} must be at least 1, got {getattr(args, name)}", file=sys.stderr)
            return args, None
    extra = [a for a in extra if a != "--"]
    settings = {"recipe": script, **{k: v for k, v in dataclasses.asdict(args).items() if k not in RESUMABLE},
                "extra": extra}
    problem = _resume_problem(root, settings) if args.resume else None
    if root.exists() and not args.resume:
        problem = f"{root} exists: go on with it with --resume, or choose another --name or remove it"
    if not problem and not args.resume:  # what --resume checks against
        try:
            root.mkdir(parents=True)
            atomic_write(root / "recipe.json", json.dumps({"settings": settings}, indent=2) + "\n")
        except OSError as e:
            problem = f"cannot write {root}: {e.strerror}"
    if problem:
        print(f"{script}.py: error: {problem}", file=sys.stderr)
        return args, None
    last = None if args.eval_each_round else args.rounds
    return args, RecipeRun(script, root, args.problems, extra, last, args.resume)


def _resume_problem(root: Path, settings: dict[str, Any]) -> str | None:
    """Why the recipe's folder cannot be resumed with these settings, or None."""
    saved = root / "recipe.json"
    if not saved.is_file():
        return f"--resume: {saved} not found: no recipe was started there (or one from before --resume)"
    try:
        before = json.loads(saved.read_text())["settings"]
    except (ValueError, KeyError, TypeError):
        before = None
    if not isinstance(before, dict):
        return f"--resume: {saved} is not a recipe's settings (JSON with its 'settings'): remove the folder or fix it"
    if before.get("recipe") != settings["recipe"]:
        return f"--resume: {root} holds a run of recipes/{before.get('recipe')}.py, not of {settings['recipe']}.py"
    for key in [*settings, *(k for k in before if k not in settings)]:
        if before.get(key) != settings.get(key):
            return (f"--resume: {root} was started with {key} {before.get(key)!r}, not {settings.get(key)!r}: "
                    "resume it with the settings it was started with")
    return None


class RecipeRun:
    """A recipe's runs under one folder: toolkit commands run in this process, each printed first and timed, and
    the report over their evaluations at the end."""

    def __init__(self, name: str, root: Path, problems: str, extra: list[str], only_round: int | None = None,
                 resume: bool = False):
        self.name, self.root, self.problems, self.extra = name, root, problems, extra
        self.only_round = only_round  # --no_eval_each_round: the last round's number
        self.resume, self.reused = resume, []  # --resume: the steps an earlier run finished
        self.started, self.walls = time.time(), {}
        self.evals: list[dict[str, Any]] = []
        self.trainings: list[Path] = []

    def command(self, script: str, main: Callable[[list[str]], int], argv: list[str], label: str) -> None:
        """One command; stops the recipe on its error (the command has said what it was)."""
        print(f"\n$ python {script} " + shlex.join(argv), flush=True)
        started = time.time()
        if main(argv) != 0:
            if [p.name for p in self.root.iterdir()] == ["recipe.json"]:
                shutil.rmtree(self.root)  # the first step failed: no run to go on with, nothing left behind
            raise SystemExit(2)
        self.walls[label] = time.time() - started

    def run_rl(self, label: str, argv: list[str], model: str | None) -> Path:
        """A run_rl.py run in the recipe's folder (the flags after the recipe's ``--`` last, so that they win).
        Under --resume, a run an earlier invocation finished is reused."""
        from qrl.cli import rl
        from qrl.config.run_folder import (
            RunFolder,  # transformers comes with it: not at import, for the report command
        )

        folder = RunFolder(self.root / label)
        if self.resume and folder.root.exists():
            kind = "eval" if "--eval_only" in argv else "mine" if "--mine_only" in argv else "train"
            if folder.finished(kind):
                print(f"\n= {label}: finished by an earlier run of the recipe, reused", flush=True)
                self.reused.append(label)
                return folder.root
            if kind != "eval":  # an evaluation adds to its folder; a training goes on from its last checkpoint
                latest = kind == "train" and folder.latest_checkpoint()
                argv = [*argv, *(["--resume_from_checkpoint", "latest"] if latest else ["--overwrite_output_dir"])]
        self.command("run_rl.py", rl, [*argv, *self.extra, "--output_dir", str(self.root), "--experiment_name",
                                                label, *(["--base_model", model] if model else [])], label)
        return self.root / label

    def evaluate(self, model: str | None, label: str, flags: tuple[str, ...] | list[str] = ()) -> None:
        """The model on the held-out problems (the "eval" split of the recipe's problems)."""
        argv = ["--eval_only", *EVAL_FLAGS, *flags, "--train_data", self.problems]
        self.evals.append(load_eval(self.run_rl(label, argv, model), label))

    def evaluate_round(self, model: str | None, r: int, flags: tuple[str, ...] | list[str] = ()) -> None:
        """The model after round r, unless --no_eval_each_round and r is not the last."""
        if self.only_round in (None, r):
            self.evaluate(model, f"eval-{r}", flags)

    def train(self, label: str, argv: list[str], model: str | None) -> str:
        """A training run; returns its final model."""
        self.trainings.append(self.run_rl(label, argv, model))
        return str(self.trainings[-1] / "checkpoints" / "final")

    def finish(self, report_path: str, argv: list[str] | None, settings: dict[str, Any], **more: Any) -> None:
        """The report, at report_path and beside the runs (results/<name>.json), with its plot."""
        from qrl.execution.sandbox import default_workers

        report = compare(self.evals, self.trainings)
        report.update({
            "recipe": self.name,
            "command": f"python recipes/{self.name}.py " + shlex.join(argv if argv is not None else sys.argv[1:]),
            "settings": {"eval": EVAL_FLAGS, "extra": self.extra, "problems": self.problems, **settings},
            "machine": f"{platform.machine()}, {default_workers()} cores, Python {platform.python_version()}",
            "wall_s": {"total": round(time.time() - self.started, 1),
                       **{k: round(v, 1) for k, v in self.walls.items()}},
            **({"reused_steps": self.reused} if self.resume else {}),  # run by an earlier invocation: not in wall_s
            **more,
        })
        png = plot(report, self.root / "results" / f"{self.name}.png")
        write_report(report, [Path(report_path), self.root / "results" / f"{self.name}.json"], png)


def load_eval(folder: Path, label: str) -> dict[str, Any]:
    """One --eval_only run, from its samples file (so that answers judged again give numbers to match): pass@k,
    verdict counts, and per problem: answers, passing answers, the fraction of tests passed summed over answers (also
    with answers that gave every test the same value counted as none), and answers that ran through the tests
    (passed or failed, not a syntax error, crash or timeout). The model's name is the run's own."""
    model = json.loads((folder / "logs" / "eval_results.json").read_text())["steps"][-1].get("model")
    per_problem: dict[str, dict[str, float]] = {}
    from qrl.config.run_folder import RunFolder

    (samples,) = RunFolder(folder).eval_samples()
    rows = [json.loads(line) for line in samples.read_text().splitlines()]
    # answers judged before verdicts marked one-value answers: tests passed without them is unknown, not all
    marked = any("same_value" in s for s in rows)
    for s in rows:
        p = per_problem.setdefault(s["task_id"], {"samples": 0, "passed": 0, "tests": 0.0, "error_free": 0,
                                                  **({"tests_varied": 0.0} if marked else {})})  # fmt: skip
        p["samples"] += 1
        p["passed"] += bool(s["passed"])
        tests = (s.get("tests_passed") or 0) / max(1, s.get("tests_total") or 0)
        p["tests"] += tests
        if marked:
            p["tests_varied"] += 0.0 if s.get("same_value") else tests
        p["error_free"] += s.get("status") in ("passed", "failed")
    metrics = summarize_samples(rows, max((p["samples"] for p in per_problem.values()), default=1))
    if not marked:
        del metrics["same_value"]  # unknown, not none
    return {"label": label, "model": model, **metrics,
            "solved_problems": sum(p["passed"] > 0 for p in per_problem.values()), "per_problem": per_problem}


def sign_test(better: int, worse: int) -> float:
    """Two-sided exact sign test: the chance of a split at least this uneven if a change were a coin toss."""
    if better + worse == 0:
        return 1.0
    from scipy.stats import binomtest

    return float(binomtest(better, better + worse, 0.5).pvalue)


def bootstrap_interval(diffs: list[float], resamples: int = 10000, seed: int = 0) -> tuple[float, float]:
    """95% percentile interval of the mean per-problem change, resampling problems."""
    if not diffs:
        return (0.0, 0.0)
    import numpy as np

    means = np.random.default_rng(seed).choice(diffs, size=(resamples, len(diffs))).mean(axis=1)
    low, high = np.percentile(means, [2.5, 97.5])
    return (float(low), float(high))


# Besides pass@1, what an answer can get better at before it passes: more of its tests, and running at all. The tests
# passed again without the answers that gave every test the same value: "return False" passes the tests that expect
# False, and a rise made of such answers is not learning.
SECONDARY = {"tests_passed": "tests", "tests_passed_varied": "tests_varied", "error_free": "error_free"}


def _rate(evaluation: dict[str, Any], task: str, key: str) -> float:
    problem = evaluation["per_problem"][task]
    return problem[key] / problem["samples"]


def mean_rate(evaluation: dict[str, Any], key: str, tasks: list[str] | None = None) -> float:
    """``key`` per answer, averaged over problems (each problem weighs the same, whatever its number of answers)."""
    tasks = list(evaluation["per_problem"]) if tasks is None else tasks
    return sum(_rate(evaluation, t, key) for t in tasks) / max(1, len(tasks))


def _moved(before: dict[str, Any], after: dict[str, Any], tasks: list[str], key: str) -> tuple[list[float], dict]:
    """Per-problem changes of one rate (``key`` per answer), and their summary: mean, interval, sign test."""
    diffs = [_rate(after, t, key) - _rate(before, t, key) for t in tasks]
    better, worse = sum(d > 0 for d in diffs), sum(d < 0 for d in diffs)
    low, high = bootstrap_interval(diffs)
    p = sign_test(better, worse)
    return diffs, {
        "before": round(mean_rate(before, key, tasks), 4), "after": round(mean_rate(after, key, tasks), 4),
        "change": round(sum(diffs) / len(diffs), 4) if diffs else 0.0, "change_95ci": [round(low, 4), round(high, 4)],
        "problems_better": better, "problems_worse": worse, "sign_test_p": round(p, 4),
        "beyond_noise": bool((low > 0 or high < 0) and p < 0.05),
    }


def change(before: dict[str, Any], after: dict[str, Any]) -> dict[str, Any]:
    """The change from one evaluation to another over the problems both saw: pass@1 first, then the secondary
    rates. Beyond noise means the 95% interval leaves out zero and the sign test says p < 0.05 (either direction)."""
    tasks = sorted(set(before["per_problem"]) & set(after["per_problem"]))
    diffs, passed = _moved(before, after, tasks, "passed")
    return {
        "from": before["label"], "to": after["label"], "problems": len(tasks),
        "pass@1_change": passed["change"], "pass@1_change_95ci": passed["change_95ci"],
        "problems_better": passed["problems_better"], "problems_worse": passed["problems_worse"],
        "solved_problems_change": after["solved_problems"] - before["solved_problems"],
        "sign_test_p": passed["sign_test_p"], "beyond_noise": passed["beyond_noise"],
        "improved_tasks": [t for t, d in zip(tasks, diffs, strict=True) if d > 0],
        "worsened_tasks": [t for t, d in zip(tasks, diffs, strict=True) if d < 0],
        "secondary": {name: _moved(before, after, tasks, key)[1] for name, key in SECONDARY.items()
                      if all(key in e["per_problem"][t] for e in (before, after) for t in tasks)},
    }


def training_curves(folder: Path) -> dict[str, Any]:
    """What a training round logged: DPO's per-step numbers and what mining found."""
    steps = json.loads((folder / "logs" / "rewards.json").read_text())["steps"]
    wanted = lambda k: k in ("loss", "reward", "reward_std") or k.startswith(("rewards/", "pass"))
    curve = [{"step": s["step"], **{k: round(v, 4) for k, v in s.items() if wanted(k) and isinstance(v, float)}}
             for s in steps]
    mining = folder / "logs" / "mining.json"
    return {"run": str(folder), "steps": curve, "mining": json.loads(mining.read_text()) if mining.is_file() else None}


def compare(evals: list[dict[str, Any]], trainings: list[Path]) -> dict[str, Any]:
    return {
        "held_out": {"problems": evals[0]["problems"],
                     "samples_per_problem": evals[0]["samples"] // max(1, evals[0]["problems"])},
        "evaluations": evals,
        "change": change(evals[0], evals[-1]),
        "rounds": [change(a, b) for a, b in pairwise(evals)],
        "training": [training_curves(t) for t in trainings],
    }


def plot(report: dict[str, Any], path: Path) -> Path:
    """pass@1, tests passed and error-free answers per evaluation, beside the training curves of each round."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (left, right) = plt.subplots(1, 2, figsize=(12, 4.5))
    evals, c = report["evaluations"], report["change"]
    rates = {"pass@1": "passed", "tests passed": "tests", "error-free": "error_free"}
    width = 0.8 / len(evals)
    for i, e in enumerate(evals):
        values = [mean_rate(e, key) for key in rates.values()]
        xs = [j + (i - (len(evals) - 1) / 2) * width for j in range(len(rates))]
        left.bar(xs, values, width, label=e["label"], color="#999999" if i == 0 else None)
        for x, v in zip(xs, values, strict=True):
            left.text(x, v, f"{v:.3f}", ha="center", va="bottom", fontsize=8)
    ps = [c["sign_test_p"], c["secondary"]["tests_passed"]["sign_test_p"], c["secondary"]["error_free"]["sign_test_p"]]
    left.set_xticks(range(len(rates)), [f"{name}\np{_p(p)}" for name, p in zip(rates, ps, strict=True)])
    left.set_title(f"held-out, {c['problems']} problems (mean per answer; sign test over problems)", fontsize=10)
    left.legend()
    offset = 0
    for r, t in enumerate(report["training"], 1):
        # DPO logs its implicit reward margin and pair accuracy; GRPO and PPO the mean test-case reward; fine-tuning
        # through DPO at a tiny beta (expert_iteration.py) shows in its loss
        for key, style in (("rewards/margins", "-"), ("rewards/accuracies", "--"), ("reward", "-"), ("loss", ":")):
            points = [(s["step"] + offset, s[key]) for s in t["steps"] if key in s]
            if points:
                right.plot(*zip(*points, strict=True), style, label=f"{key.split('/')[-1]} (round {r})")
        offset = max([s["step"] + offset for s in t["steps"]], default=offset)
    right.set_xlabel("training step")
    right.set_title("training curves" if report["training"] else "no training run given")
    if report["training"]:
        right.legend()
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return path


def _p(p: float) -> str:
    """A p value as the report rounds it (4 decimals): one that rounds to 0 is below 0.0001, not 0."""
    return "<0.0001" if p == 0 else f"={p}"


def write_report(report: dict[str, Any], paths: list[Path], png: Path) -> None:
    text = json.dumps(report, indent=2) + "\n"
    for path in paths:
        path.parent.mkdir(parents=True, exist_ok=True)
        atomic_write(path, text)
        if png.parent != path.parent:
            shutil.copyfile(png, path.with_suffix(".png"))
    c = report["change"]
    rows = ", ".join(f"{e['label']} {e['pass@1']:.3f} ({e['solved_problems']} solved)" for e in report["evaluations"])
    print(f"\nheld-out pass@1: {rows}\nchange {c['pass@1_change']:+.3f} (95% CI {c['pass@1_change_95ci']}), "
          f"{c['problems_better']} problems better, {c['problems_worse']} worse, sign test p{_p(c['sign_test_p'])}"
          f"{'' if c['beyond_noise'] else ': within sampling noise'}")
    for name, m in c["secondary"].items():
        label = {"tests_passed_varied": "tests passed, one-value answers as none,"}.get(name, name.replace("_", " "))
        print(f"{label} per answer: {m['before']:.3f} -> {m['after']:.3f}, {m['problems_better']} "
              f"problems better, {m['problems_worse']} worse, sign test p{_p(m['sign_test_p'])}"
              f"{'' if m['beyond_noise'] else ': within sampling noise'}")
    print(f"report: {paths[0]}")


def main(argv: list[str] | None = None) -> int:
    """The report of a recipe run as separate commands (the GPU recipe): --eval_only folders and training runs."""
    import argparse

    from qrl.config.run_folder import RunFolder

    parser = argparse.ArgumentParser(description=main.__doc__)
    parser.add_argument("--evals", nargs="+", required=True, help="--eval_only run folders, the starting model first")
    parser.add_argument("--training", nargs="*", default=[], help="the training run folders, in order")
    parser.add_argument("--recipe", required=True, help="the recipe's name, for the report and its plot")
    parser.add_argument("--report", required=True, help="the report's JSON file (a PNG goes beside it)")
    args = parser.parse_args(argv)
    for folder in args.evals:
        if not (Path(folder) / "logs" / "eval_results.json").is_file() or len(
                RunFolder(Path(folder)).eval_samples()) != 1:
            parser.exit(2, f"recipe_report.py: error: {folder} is not an --eval_only run folder "
                           "(logs/eval_results.json and one results/samples_*.jsonl)\n")
    for folder in args.training:
        if not (Path(folder) / "logs" / "rewards.json").is_file():
            parser.exit(2, f"recipe_report.py: error: {folder} is not a training run folder (no logs/rewards.json)\n")
    evals = [load_eval(Path(f), Path(f).name) for f in args.evals]
    report = {"recipe": args.recipe, **compare(evals, [Path(t) for t in args.training]),
              "command": "python recipes/recipe_report.py " + shlex.join(argv if argv is not None else sys.argv[1:])}
    png = plot(report, Path(args.report).with_suffix(".png"))
    write_report(report, [Path(args.report)], png)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
