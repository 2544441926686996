"""Where a GRPO step's time goes: generation, reward, optimisation; the toolkit's sandbox reward against plain TRL
GRPO with a trivial reward function, same model, prompts, LoRA and settings, in one run.

Each variant is its own process; the variants alternate. The time of TRL's own `_generate` and
`_calculate_rewards` is measured inside the process by wrapping them; optimisation is the rest of the step.

    python bench/grpo_step.py --steps 4 --repeats 2
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def run_variant(variant: str, model: str, steps: int, generations: int, completion_tokens: int, out: str) -> dict:
    """One variant in this process; prints its timings."""
    from datasets import Dataset

    from qrl.config.arguments import RL_SECTIONS, parse_config
    from qrl.config.run_folder import RunFolder
    from qrl.models.loading import load_tokenizer
    from qrl.problems import load_problems
    from qrl.training.paths import test_case_reward
    from qrl.training.prompts import build_prompt
    from qrl.training.trl import build_grpo_trainer

    cfg = parse_config(RL_SECTIONS, [
        "--base_model", model, "--max_steps", str(steps), "--save_steps", str(steps * 10), "--eval_steps", "0",
        "--batch_size", str(2 * generations), "--gradient_accumulation_steps", "1",
        "--num_generations", str(generations), "--max_completion_length", str(completion_tokens),
        "--learning_rate", "1e-5", "--logging_steps", "1",
    ])
    problems = [p for p in load_problems(ROOT / "data" / "problems" / "python.jsonl") if p.split == "train"]
    tokenizer = load_tokenizer(model)
    rows = [{"prompt": build_prompt(p, tokenizer), "task_id": p.task_id} for p in problems]
    scorer = None
    if variant == "toolkit":
        scorer = test_case_reward(cfg, problems)
        reward = scorer.async_reward
    else:
        def reward(completions, **kwargs):  # the plain-TRL baseline: a reward that costs nothing
            return [float(len(str(c)) % 2) for c in completions]

    trainer = build_grpo_trainer(cfg, model, tokenizer, Dataset.from_list(rows), None, [reward],
                                 RunFolder(out), "bench", callbacks=[])
    spent = {"generate": 0.0, "reward": 0.0}

    def timed(name, fn):
        def wrapper(*args, **kwargs):
            start = time.perf_counter()
            try:
                return fn(*args, **kwargs)
            finally:
                spent[name] += time.perf_counter() - start
        return wrapper

    trainer._generate = timed("generate", trainer._generate)
    trainer._calculate_rewards = timed("reward", trainer._calculate_rewards)
    start = time.perf_counter()
    trainer.train()
    total = time.perf_counter() - start
    if scorer is not None:
        scorer.close()
    per_step = {k: v / steps for k, v in spent.items()}
    per_step["step"] = total / steps
    per_step["optimise"] = per_step["step"] - per_step["generate"] - per_step["reward"]
    return per_step


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--base_model", default=None, help="default: the embedded model")
    parser.add_argument("--steps", type=int, default=4)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--generations", type=int, default=4)
    parser.add_argument("--completion_tokens", type=int, default=96)
    parser.add_argument("--output", default=str(ROOT / "bench" / "results" / "grpo_step.json"))
    parser.add_argument("--variant", help=argparse.SUPPRESS)  # internal: run one variant in this process
    args = parser.parse_args()
    if args.base_model is None:
        from qrl.models.embedded import ensure_embedded_model

        args.base_model = str(ensure_embedded_model())
    if args.variant:
        with tempfile.TemporaryDirectory() as tmp:
            result = run_variant(args.variant, args.base_model, args.steps, args.generations,
                                 args.completion_tokens, tmp)
        print("RESULT " + json.dumps(result))
        return

    runs: dict[str, list[dict]] = {"toolkit": [], "plain_trl": []}
    for repeat in range(args.repeats):
        for variant in (["plain_trl", "toolkit"] if repeat % 2 == 0 else ["toolkit", "plain_trl"]):
            cmd = [sys.executable, __file__, "--variant", variant, "--base_model", args.base_model,
                   "--steps", str(args.steps), "--generations", str(args.generations),
                   "--completion_tokens", str(args.completion_tokens)]
            proc = subprocess.run(cmd, capture_output=True, text=True)
            line = next((x for x in proc.stdout.splitlines() if x.startswith("RESULT ")), None)
            if proc.returncode != 0 or line is None:
                raise SystemExit(f"{variant} failed:\n{proc.stderr[-3000:]}")
            result = json.loads(line[len("RESULT "):])
            runs[variant].append(result)
            print(f"{variant:10s} repeat {repeat}: " + ", ".join(f"{k} {v:.2f} s" for k, v in result.items()),
                  flush=True)

    med = {v: {k: statistics.median(r[k] for r in rs) for k in rs[0]} for v, rs in runs.items()}
    report = {
        "machine": f"{platform.machine()}, {os.cpu_count()} cores, {platform.python_version()}",
        "model": args.base_model, "steps": args.steps, "generations": args.generations,
        "completion_tokens": args.completion_tokens, "runs": runs, "median_s_per_step": med,
        "reward_share_of_step": med["toolkit"]["reward"] / med["toolkit"]["step"],
        "ratio_step_toolkit_over_plain": med["toolkit"]["step"] / med["plain_trl"]["step"],
    }
    Path(args.output).parent.mkdir(parents=True, exist_ok=True)
    Path(args.output).write_text(json.dumps(report, indent=2) + "\n")
    print(f"reward: {100 * report['reward_share_of_step']:.1f}% of a toolkit step; step time toolkit/plain "
          f"{report['ratio_step_toolkit_over_plain']:.3f} -> {args.output}")


if __name__ == "__main__":
    main()
