"""Recipe: fine-tune on the model's own passing answers, in rounds (expert iteration), measured on held-out problems.

    python recipes/expert_iteration.py               # CPU: the embedded model, 2 rounds, about 75 minutes on 2 cores
    python recipes/expert_iteration.py --rounds 3    # a third round
    python recipes/expert_iteration.py -- --bf16     # flags after -- go to every run_rl.py step
    python recipes/expert_iteration.py --no_eval_each_round -- --eval_num_samples 16   # finer pass@1, before and after
    python recipes/expert_iteration.py --rounds 3 --resume   # go on where a run stopped, or add a round to it

Each step is a toolkit command, printed before it runs: an evaluation of the starting model on the held-out problems
(the "eval" split of --problems), then per round: the newest model answers the training problems and the sandbox
judges them (`run_rl.py --use_dpo --mine_pairs_from ... --mine_only`), the passing answers of every round so far are
pooled, distinct and capped per problem (`recipes/pool_passing.py`), the starting model is fine-tuned on them, and the
new model is evaluated. Each round trains the starting model afresh on the grown pool, as STaR does (Zelikman et
al. 2022), rather than the last model again on answers it wrote itself. The report (pass@1 before and after, how
many problems changed, the sign test and a bootstrap interval over problems, what each round's mining found, the
training curves, wall time) goes to --report and beside the runs under --output_dir.
"""

from __future__ import annotations

import json
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import ClassVar

# recipe_report also puts the toolkit's modules on the path
import pool_passing
from recipe_report import RecipeArguments, parse_recipe

from qrl.config.run_folder import RunFolder

# Mining: every pair kept (--mine_max_pairs 0), so that every passing answer with a failing one beside it is found.
MINE_FLAGS = ["--mine_only", "--mine_samples", "6", "--mine_max_pairs", "0", "--temperature", "0.8",
              "--max_completion_length", "160"]
# Fine-tuning on the pooled answers, through the DPO path: each passing answer comes paired with a failing one, and at
# a beta of 0.001 DPO's own term is negligible, so the likelihood term (--dpo_sft_weight) is what trains: supervised
# fine-tuning on the passing answers (recipes/results/rft_passing_answers.json; the settings of recipes/mined_dpo.py
# with a smaller beta and 40 steps).
TRAIN_FLAGS = [
    "--use_dpo", "--dpo_sft_weight", "1.0", "--kl_coef", "0.001", "--learning_rate", "1e-4", "--batch_size", "4",
    "--gradient_accumulation_steps", "1", "--max_steps", "40", "--lora_r", "16", "--lora_alpha", "32",
    "--save_steps", "20", "--eval_steps", "0", "--no_gradient_checkpointing", "--max_completion_length", "160",
]


@dataclass
class ExpertIterationArguments(RecipeArguments):
    name: str = field(default="expert_iteration", metadata={"help": "The recipe's folder under --output_dir."})
    rounds: int = field(default=2, metadata={
        "help": "Rounds of mining, pooling and fine-tuning."})
    per_problem: int = field(default=8, metadata={
        "help": "Most passing answers a problem gives the pool."})
    seed: int = field(default=42, metadata={
        "help": "Seed of training and evaluation; round r mines with seed + r, so that rounds draw other answers."})
    report: str = field(default="recipes/results/expert_iteration.json", metadata={"help": "The report's JSON file."})
    counts: ClassVar[tuple[str, ...]] = ("rounds", "per_problem")


def main(argv: list[str] | None = None) -> int:
    args, recipe = parse_recipe(ExpertIterationArguments, "expert_iteration", __doc__, argv)
    if recipe is None:
        return 2
    seed = ["--seed", str(args.seed)]
    recipe.evaluate(args.base_model, "eval-0", seed)
    model, minings, pools = args.base_model, [], []
    for r in range(1, args.rounds + 1):
        mine = ["--use_dpo", *MINE_FLAGS, "--mine_pairs_from", args.problems, "--seed", str(args.seed + r)]
        minings.append(str(recipe.run_rl(f"mine-{r}", mine, model)))
        pool = recipe.root / f"passing-{r}.jsonl"
        recipe.command("recipes/pool_passing.py", pool_passing.main, [
            "--inputs", *minings, "--output", str(pool), "--per_problem", str(args.per_problem), "--seed", str(r)],
            f"pool-{r}")
        rows = [json.loads(line) for line in pool.read_text().splitlines()]
        pools.append({"round": r, "mining": json.loads(RunFolder(Path(minings[-1])).mining_json.read_text()),
                      "pooled_answers": len(rows), "pooled_problems": len({row["task_id"] for row in rows})})
        model = recipe.train(f"sft-{r}", [*TRAIN_FLAGS, *seed, "--preference_data", str(pool)], args.base_model)
        recipe.evaluate_round(model, r, seed)
    recipe.finish(args.report, argv, {"mine": MINE_FLAGS, "train": TRAIN_FLAGS, "rounds": args.rounds,
                                      "per_problem": args.per_problem, "seed": args.seed,
                                      "base_model": args.base_model or "embedded SmolLM2-135M-Instruct"},
                  pools=pools)
    return 0


if __name__ == "__main__":
    sys.exit(main())
