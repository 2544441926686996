"""Recipe: learning that shows on 2 CPU cores: the embedded model trained on the ladder's easy problems
(data/ladder: 57 train), measured on its 48 held-out ones, other functions, before and after.

    python recipes/ladder.py                        # DPO on pairs mined from test runs (the default)
    python recipes/ladder.py --method grpo          # GRPO on test-case rewards instead
    python recipes/ladder.py --seed 7 --name ladder_seed7 --report recipes/results/ladder_seed7.json
    python recipes/ladder.py --resume               # go on where a run stopped
    python recipes/ladder.py -- --max_steps 30      # flags after -- go to every run_rl.py step

On a machine that others use too, run it with OMP_NUM_THREADS=1: two PyTorch threads on 2 busy cores sampled 8 times
slower than one. Measured (recipes/results/ladder.json, ladder_seed7.json; docs/recipes.md): held-out pass@1
0.159 -> 0.294 (seed 42) and 0.250 (seed 7), about 56 minutes of training each on 2 shared cores.

The other shipped problems are too hard for SmolLM2-135M-Instruct (held-out pass@1 about 0.02: a few answers, so
any change is noise); on the ladder's held-out part it passes about one answer in six (pass@1 0.159, pass@8 0.479),
so a change in whole problems solved can be told from noise. Each step is a run_rl.py command, printed before it
runs: an evaluation of the starting model (8 answers a held-out problem at the training temperature, 0.8), the
training, an evaluation of the new model with the same seeded draws. The report (pass@1 and pass@8 before and
after, problems better and worse, the sign test and a bootstrap interval over problems, tests passed and error-free
answers, the training curves, wall time) goes to --report and beside the runs under --output_dir.
"""

from __future__ import annotations

import json
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import ClassVar

# recipe_report also puts the toolkit's modules on the path
from recipe_report import RecipeArguments, load_eval, parse_recipe

from qrl.data.records import atomic_write

# 8 answers a held-out problem, at the temperature the training samples at (the recipe's other evaluation flags)
EVAL = ["--eval_num_samples", "8", "--eval_temperature", "0.8"]
# DPO on the model's own answers to the train problems, judged by the sandbox, passing over failing (and more tests
# passed over fewer), with the likelihood of the chosen answer trained too: recipes/mined_dpo.py's settings, with 40
# steps instead of 60 (sampling on a shared 2-core machine is slow: mining 57 problems x 6 answers took about 25 min)
DPO = [
    "--use_dpo", "--mine_samples", "6", "--mine_max_pairs", "4", "--temperature", "0.8",
    "--learning_rate", "1e-4", "--dpo_sft_weight", "1.0", "--kl_coef", "0.1", "--batch_size", "4",
    "--gradient_accumulation_steps", "1", "--max_steps", "40", "--lora_r", "16", "--lora_alpha", "32",
    "--save_steps", "10", "--eval_steps", "0", "--no_gradient_checkpointing", "--max_completion_length", "160",
]
# GRPO on the test-case reward: 2 problems x 8 answers a step, short answers, groups without a reward spread left out
GRPO = [
    "--test_case_rewards_only", "--num_generations", "8", "--batch_size", "16", "--gradient_accumulation_steps", "1",
    "--temperature", "0.8", "--max_completion_length", "128", "--learning_rate", "1e-4", "--kl_coef", "0",
    "--lora_r", "16", "--lora_alpha", "32", "--max_steps", "30", "--save_steps", "5", "--eval_steps", "0",
    "--no_gradient_checkpointing", "--drop_zero_variance_groups",
]


@dataclass
class LadderArguments(RecipeArguments):
    name: str = field(default="ladder", metadata={"help": "The recipe's folder under --output_dir."})
    problems: str = field(default="data/ladder/python_ladder.jsonl", metadata={
        "help": "Problems with tests: the 'train' split is trained on, the 'eval' split is held out."})
    method: str = field(default="dpo", metadata={
        "choices": ["dpo", "grpo"],
        "help": "dpo: DPO on pairs mined from the model's test runs; grpo: GRPO on test-case rewards."})
    seed: int = field(default=42, metadata={"help": "Seed of mining and training."})
    eval_seed: int = field(default=42, metadata={
        "help": "Seed of the evaluations' draws: the models before and after draw the same numbers, and runs with "
                "another --seed evaluate the starting model as the first did."})
    baseline: str | None = field(default=None, metadata={
        "help": "An --eval_only folder of the starting model made by this recipe with the same --eval_seed (its "
                "eval-0): the before evaluation, instead of evaluating the starting model again (a second --seed "
                "saves half an hour on 2 cores). Read at the end, so it may still be running."})
    report: str = field(default="recipes/results/ladder.json", metadata={"help": "The report's JSON file."})
    counts: ClassVar[tuple[str, ...]] = ("rounds",)


def training_flags(method: str, problems: str) -> list[str]:
    """The run_rl.py flags of one round of training on the train split of ``problems``."""
    if method == "grpo":
        return [*GRPO, "--train_data", problems]
    return [*DPO, "--mine_pairs_from", problems]


def baseline_problem(folder: str, settings: dict) -> str | None:
    """Why --baseline cannot stand for this run's evaluation of the starting model, or None."""
    from qrl.config.run_folder import RunFolder

    path = Path(folder)
    if not (path / "logs" / "eval_results.json").is_file() or len(RunFolder(path).eval_samples()) != 1:
        return f"--baseline {folder} is not an --eval_only run folder (logs/eval_results.json, one samples file)"
    found = json.loads((path / "recipe_eval.json").read_text()) if (path / "recipe_eval.json").is_file() else {}
    if found != settings:
        return f"--baseline {folder} was evaluated with {found or 'unknown settings'}, not {settings}"
    return None


def main(argv: list[str] | None = None) -> int:
    """Evaluate, train --rounds rounds (each from the last model), evaluate: the report."""
    args, recipe = parse_recipe(LadderArguments, "ladder", __doc__, argv)
    if recipe is None:
        return 2
    seed = [*EVAL, "--seed", str(args.eval_seed)]
    model = args.base_model
    # what the evaluation of the starting model depends on, for --baseline to check
    evaluated = {"base_model": model, "eval_seed": args.eval_seed, "problems": str(Path(args.problems).resolve()),
                 "extra": recipe.extra}
    if args.baseline is None:
        recipe.evaluate(model, "eval-0", seed)
        atomic_write(recipe.root / "eval-0" / "recipe_eval.json", json.dumps(evaluated) + "\n")
    for r in range(1, args.rounds + 1):
        flags = [*training_flags(args.method, args.problems), "--seed", str(args.seed + r - 1)]
        model = recipe.train(f"{args.method}-{r}", flags, model)
        recipe.evaluate_round(model, r, seed)
    if args.baseline is not None:
        problem = baseline_problem(args.baseline, evaluated)
        if problem:
            print(f"ladder.py: error: {problem}", file=sys.stderr)
            return 2
        recipe.evals.insert(0, load_eval(Path(args.baseline), "eval-0"))
    recipe.finish(args.report, argv, {"method": args.method, "train": training_flags(args.method, args.problems),
                                      "eval_extra": EVAL, "rounds": args.rounds, "seed": args.seed,
                                      "eval_seed": args.eval_seed, "baseline": args.baseline,
                                      "base_model": args.base_model or "embedded SmolLM2-135M-Instruct"})
    return 0


if __name__ == "__main__":
    sys.exit(main())
