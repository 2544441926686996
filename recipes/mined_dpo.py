"""Recipe: DPO on pairs mined from test runs, measured on held-out problems before and after.

    python recipes/mined_dpo.py                  # CPU: the embedded model, about 30 minutes on 2 cores
    python recipes/mined_dpo.py --rounds 2       # mine again from the improved model, then DPO again
    python recipes/mined_dpo.py --base_model M -- --bf16 --use_vllm   # flags after -- go to every run_rl.py step

Each step is a run_rl.py command, printed before it runs: an evaluation of the starting model on the held-out
problems (the "eval" split of --problems), then per round: sample answers to the training problems, run them in
the sandbox, pair the model's passing answers over its failing ones, DPO on
those pairs, and an evaluation of the new model. The report (pass@1 before and after, how many problems changed,
the sign test and a bootstrap interval over problems, what mining found, DPO's curves, wall time) goes to
--report and beside the runs under --output_dir.
"""

from __future__ import annotations

import platform
import shlex
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

# recipe_report also puts the toolkit's modules on the path
from recipe_report import compare, load_eval, plot, write_report

from sandbox import default_workers

# The DPO step, as run for the README's "Recipes"; later flags override them. The pairs are the policy's own
# answers, passing over failing: adding the reference solutions as chosen answers made the model copy their terse
# style and lose held-out problems (recipes/results/mined_dpo_reference_pairs.json). The likelihood of the chosen
# answers is trained too (--dpo_sft_weight): plain DPO at 3e-5 moved the model too little to pass more held-out tests
# (recipes/results/mined_dpo_plain.json).
DPO_FLAGS = [
    "--learning_rate", "1e-4", "--dpo_sft_weight", "1.0", "--batch_size", "4", "--gradient_accumulation_steps", "1",
    "--max_steps", "60",
    "--kl_coef", "0.1", "--lora_r", "16", "--lora_alpha", "32", "--save_steps", "20", "--eval_steps", "0",
    "--no_gradient_checkpointing", "--mine_samples", "6", "--mine_max_pairs", "4", "--temperature", "0.8",
    "--max_completion_length", "160",
]
# Evaluation: sampled pass@1 over n answers a problem is steadier than one greedy answer on a few dozen problems.
EVAL_FLAGS = ["--eval_num_samples", "4", "--eval_temperature", "0.8", "--max_completion_length", "160"]


@dataclass
class RecipeArguments:
    output_dir: str = field(default="output/recipes", metadata={"help": "Where the recipe's runs go."})
    name: str = field(default="mined_dpo", metadata={"help": "The recipe's folder under --output_dir."})
    base_model: str | None = field(default=None, metadata={"help": "Starting model (default: the embedded one)."})
    problems: str = field(default="data/problems", metadata={
        "help": "Problems with tests: the 'train' split is mined, the 'eval' split is held out for evaluation."})
    rounds: int = field(default=1, metadata={"help": "Rounds of mining then DPO, each from the previous model."})
    report: str = field(default="recipes/results/mined_dpo.json", metadata={"help": "The report's JSON file."})


def run(argv: list[str]) -> None:
    """One toolkit command, in this process; stops the recipe on its error."""
    import run_rl

    print("\n$ python run_rl.py " + shlex.join(argv), flush=True)
    if run_rl.main(argv) != 0:
        raise SystemExit(2)


def main(argv: list[str] | None = None) -> int:
    from transformers import HfArgumentParser

    parser = HfArgumentParser(RecipeArguments, description=__doc__.split("\n\n")[0])
    args, extra = parser.parse_args_into_dataclasses(args=argv, return_remaining_strings=True)
    extra = [a for a in extra if a != "--"]
    root = Path(args.output_dir) / args.name
    if args.rounds < 1:
        print(f"mined_dpo.py: error: --rounds must be at least 1, got {args.rounds}", file=sys.stderr)
        return 2
    if root.exists():
        print(f"mined_dpo.py: error: {root} exists: choose another --name or remove it", file=sys.stderr)
        return 2
    started, walls, evals, trainings = time.time(), {}, [], []

    def evaluate(model: str | None, label: str) -> None:
        t = time.time()
        run(["--eval_only", *EVAL_FLAGS, "--train_data", args.problems, *extra, "--output_dir", str(root),
             "--experiment_name", label, *(["--base_model", model] if model else [])])
        walls[label] = time.time() - t
        evals.append(load_eval(root / label, label))

    model = args.base_model
    evaluate(model, "eval-0")
    for r in range(1, args.rounds + 1):
        t = time.time()
        run(["--use_dpo", *DPO_FLAGS, "--mine_pairs_from", args.problems, *extra, "--output_dir", str(root),
             "--experiment_name", f"dpo-{r}", *(["--base_model", model] if model else [])])
        walls[f"dpo-{r}"] = time.time() - t
        trainings.append(root / f"dpo-{r}")
        model = str(root / f"dpo-{r}" / "checkpoints" / "final")
        evaluate(model, f"eval-{r}")

    report = compare(evals, trainings)
    report.update({
        "recipe": "mined_dpo",
        "command": "python recipes/mined_dpo.py " + shlex.join(argv if argv is not None else sys.argv[1:]),
        "settings": {"dpo": DPO_FLAGS, "eval": EVAL_FLAGS, "extra": extra, "problems": args.problems,
                     "rounds": args.rounds, "base_model": args.base_model or "embedded SmolLM2-135M-Instruct"},
        "machine": f"{platform.machine()}, {default_workers()} cores, Python {platform.python_version()}",
        "wall_s": {"total": round(time.time() - started, 1), **{k: round(v, 1) for k, v in walls.items()}},
    })
    png = plot(report, root / "results" / "mined_dpo.png")
    write_report(report, [Path(args.report), root / "results" / "mined_dpo.json"], png)
    return 0


if __name__ == "__main__":
    sys.exit(main())
