"""Pool the model's own passing answers from mining runs, for fine-tuning on them alone (rejection sampling).

    python recipes/pool_passing.py --inputs output/a/dpo-1 output/b/mine --output passing.jsonl --per_problem 8
    python run_rl.py --use_dpo --preference_data passing.jsonl --dpo_sft_weight 1.0 --kl_coef 0.001 ...

Each input is a run folder of `run_rl.py --use_dpo --mine_pairs_from` (with --mine_only, or a DPO run: its
data/mined_pairs.jsonl) or such a file; mine with --mine_max_pairs 0 to see every pair.
The pairs whose chosen answer passes every test (reason "pass_over_fail") give their chosen answers, distinct per
problem, at most --per_problem of them (drawn with --seed), each kept with one failing answer because the DPO path
takes pairs; at DPO's beta of 0.001 only the likelihood term (--dpo_sft_weight) moves the model. A problem whose
answers all pass gives no such pair, so nothing to the pool: the model solves it already. Capping the answers per
problem keeps the easy problems, with many passing answers, from filling the set.
"""

from __future__ import annotations

import json
import random
import sys
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path

from qrl.data.records import DataError, UserError, atomic_write, check_writable, read_records, require_fields
from qrl.rewards.base import completion_text


@dataclass
class PoolArguments:
    inputs: list[str] = field(metadata={"help": "Mining run folders or their data/mined_pairs.jsonl files."})
    output: str = field(metadata={"help": "The pairs file to write (JSONL, for --preference_data)."})
    per_problem: int = field(default=8, metadata={"help": "Most passing answers kept per problem."})
    seed: int = field(default=0, metadata={"help": "Seed of the draw when a problem has more."})


def pool_passing(inputs: list[str], per_problem: int, seed: int) -> tuple[list[dict], int]:
    """The kept pairs, and how many distinct passing answers there were before the cap."""
    answers: dict[str, dict[str, dict]] = defaultdict(dict)
    for name in inputs:
        path = Path(name) / "data" / "mined_pairs.jsonl" if Path(name).is_dir() else Path(name)
        for record in read_records(path):
            require_fields(record, ("prompt", "chosen", "rejected", "task_id", "reason"))
            row = record.data
            if row["reason"] == "pass_over_fail":
                try:
                    chosen = completion_text(row["chosen"])
                except UserError as e:
                    raise DataError(f"{record.where}: chosen: {e}") from None
                pair = {k: row[k] for k in ("prompt", "chosen", "rejected", "task_id")}
                answers[row["task_id"]].setdefault(chosen.strip(), pair)
    rng = random.Random(seed)
    kept = []
    for task in sorted(answers):
        rows = list(answers[task].values())
        rng.shuffle(rows)
        kept += rows[:per_problem]
    rng.shuffle(kept)
    return kept, sum(len(a) for a in answers.values())


def main(argv: list[str] | None = None) -> int:
    from transformers import HfArgumentParser

    (args,) = HfArgumentParser(PoolArguments, description=__doc__.split("\n\n")[0]).parse_args_into_dataclasses(argv)
    try:
        if args.per_problem < 1:
            raise UserError(f"--per_problem must be at least 1, got {args.per_problem}")
        check_writable(args.output)
        kept, distinct = pool_passing(args.inputs, args.per_problem, args.seed)
        if not kept:
            raise UserError("no passing answers in " + ", ".join(args.inputs))
    except UserError as e:
        print(f"pool_passing.py: error: {e}", file=sys.stderr)
        return 2
    atomic_write(args.output, "".join(json.dumps(row) + "\n" for row in kept))
    problems = len({row["task_id"] for row in kept})
    print(f"{len(kept)} passing answers of {problems} problems ({distinct} distinct before the cap): {args.output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
