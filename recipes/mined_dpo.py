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

import sys
from dataclasses import dataclass, field

# recipe_report also puts the toolkit's modules on the path
from recipe_report import RecipeArguments, parse_recipe

# The DPO step, as run for docs/recipes.md; later flags override them. The pairs are the policy's own
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


@dataclass
class MinedDPOArguments(RecipeArguments):
    name: str = field(default="mined_dpo", metadata={"help": "The recipe's folder under --output_dir."})
    rounds: int = field(default=1, metadata={
        "help": "Rounds of mining then DPO, each from the previous model."})
    report: str = field(default="recipes/results/mined_dpo.json", metadata={"help": "The report's JSON file."})


def main(argv: list[str] | None = None) -> int:
    args, recipe = parse_recipe(MinedDPOArguments, "mined_dpo", __doc__, argv)
    if recipe is None:
        return 2
    model = args.base_model
    recipe.evaluate(model, "eval-0")
    for r in range(1, args.rounds + 1):
        model = recipe.train(f"dpo-{r}", ["--use_dpo", *DPO_FLAGS, "--mine_pairs_from", args.problems], model)
        recipe.evaluate_round(model, r)
    recipe.finish(args.report, argv, {"dpo": DPO_FLAGS, "rounds": args.rounds,
                                      "base_model": args.base_model or "embedded SmolLM2-135M-Instruct"})
    return 0


if __name__ == "__main__":
    sys.exit(main())
