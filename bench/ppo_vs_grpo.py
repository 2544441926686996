"""A PPO step against a GRPO step: `--rl_algorithm ppo` against `grpo` on the test-case path, in one run.

Both variants come from the same options (one argv, parsed by the toolkit): the embedded SmolLM2-135M-Instruct
unless --base_model, the shipped Python training problems asked as GRPO asks them (`build_prompt`), the same
test-case reward from the sandbox, LoRA r 16 on all linear layers, learning rate 1e-5, kl_coef 0.1 (GRPO's
reference forward is on), entropy_coef 0.01, the same answer length, and 4 answers per step: GRPO samples 4
answers to one prompt, PPO one answer to each of 4 prompts (micro-batches of 2). PPO runs with its default
4 optimisation epochs and with 1.

Each variant is a whole process; variants alternate. Reports median seconds per step (the first step of each
process left out: warm-up), split into generation, reward and the rest (PPO's rollout forward passes and
updates; GRPO's log-probabilities and update), and the peak resident memory of each process (peak GPU memory
on a GPU).

    python bench/ppo_vs_grpo.py --steps 4 --repeats 2
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

VARIANTS = {"ppo": ["--ppo_epochs", "4"], "ppo_1_epoch": ["--ppo_epochs", "1"], "grpo": []}


def options(model: str, steps: int, tokens: int, variant: str):
    from qrl.config.arguments import RL_SECTIONS, parse_config

    algorithm = "grpo" if variant == "grpo" else "ppo"
    # PPO: 2 x 2 answers per step, one per prompt; GRPO: a batch of 4 = one group of 4 answers to one prompt
    batch = ["--batch_size", "2", "--gradient_accumulation_steps", "2"] if algorithm == "ppo" else \
        ["--batch_size", "4", "--gradient_accumulation_steps", "1", "--num_generations", "4"]
    return parse_config(RL_SECTIONS, [
        "--base_model", model, "--rl_algorithm", algorithm, "--test_case_rewards_only", "--max_steps", str(steps),
        "--save_steps", str(steps * 10), "--eval_steps", "0", "--learning_rate", "1e-5", "--kl_coef", "0.1",
        "--entropy_coef", "0.01", "--max_completion_length", str(tokens), "--temperature", "1.0",
        "--lora_r", "16", "--lora_alpha", "32", "--lora_dropout", "0", "--seed", "42", "--workers", "1",
        *batch, *VARIANTS[variant],
    ])


def run_variant(variant: str, model: str, steps: int, tokens: int, out: str) -> dict:
    from datasets import Dataset

    from qrl.config.run_folder import RunFolder
    from qrl.models.loading import load_tokenizer
    from qrl.problems import load_problems
    from qrl.training.paths import test_case_reward
    from qrl.training.ppo import PPOTrainer, ppo_config
    from qrl.training.prompts import build_prompt
    from qrl.training.trl import build_grpo_trainer, peft_config

    cfg = options(model, steps, tokens, variant)
    problems = [p for p in load_problems(ROOT / "data" / "problems" / "python.jsonl") if p.split == "train"]
    tokenizer = load_tokenizer(model)
    rows = [{"prompt": build_prompt(p, tokenizer), "task_id": p.task_id} for p in problems]
    scorer = test_case_reward(cfg, problems)
    folder = RunFolder(out)
    ends: list[float] = []
    spent = {"generate": [0.0], "reward": [0.0]}  # seconds per step, the last entry the running step's

    class StepEnd:
        def __getattr__(self, name):  # every other callback event: nothing to do
            return lambda *a, **k: None

        def on_step_end(self, *a, **k):
            ends.append(time.perf_counter())
            for v in spent.values():
                v.append(0.0)

    if variant == "grpo":
        from transformers import TrainerCallback

        class Timer(StepEnd, TrainerCallback):
            pass

        trainer = build_grpo_trainer(cfg, model, tokenizer, Dataset.from_list(rows), None, [scorer.async_reward],
                                     folder, "bench", callbacks=[Timer()])
        names = {"generate": "_generate", "reward": "_calculate_rewards"}
    else:
        trainer = PPOTrainer(model, ppo_config(cfg, folder, "bench"), tokenizer, scorer, rows,
                             peft_config=peft_config(cfg), callbacks=[StepEnd()])
        names = {"generate": "_generate", "reward": "_score"}

    def timed(name, fn):
        def wrapper(*args, **kwargs):
            start = time.perf_counter()
            try:
                return fn(*args, **kwargs)
            finally:
                spent[name][-1] += time.perf_counter() - start
        return wrapper

    for key, attr in names.items():
        setattr(trainer, attr, timed(key, getattr(trainer, attr)))
    ends.append(time.perf_counter())
    trainer.train()
    scorer.close()
    step = [b - a for a, b in zip(ends, ends[1:], strict=False)]
    return {"step_s": step, **{f"{k}_s": v[:len(step)] for k, v in spent.items()}}


def child(variant: str, model: str, steps: int, tokens: int) -> None:
    import torch

    with tempfile.TemporaryDirectory() as out:
        result = run_variant(variant, model, steps, tokens, out)
    result["peak_gpu_mb"] = torch.cuda.max_memory_allocated() / 2 ** 20 if torch.cuda.is_available() else None
    print("RESULT " + json.dumps(result))


def measure(cmd: list[str]) -> dict:
    """Run one child; its result line, plus its own peak resident memory (wait4's rusage of that process)."""
    with tempfile.TemporaryFile("w+") as err:
        proc = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.PIPE, stderr=err, text=True)
        stdout = proc.stdout.read()
        _, status, usage = os.wait4(proc.pid, 0)
        line = next((x for x in stdout.splitlines() if x.startswith("RESULT ")), None)
        if status != 0 or line is None:
            err.seek(0)
            raise SystemExit(f"benchmark command failed ({status}): {' '.join(cmd)}\n{err.read()[-3000:]}")
    return {**json.loads(line[len("RESULT "):]), "peak_rss_mb": usage.ru_maxrss / 1024}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--base_model", default=None, help="default: the embedded model")
    parser.add_argument("--steps", type=int, default=4)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--completion_tokens", type=int, default=32)
    parser.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=list(VARIANTS))
    parser.add_argument("--out", default=str(ROOT / "bench" / "results" / "ppo_vs_grpo.json"))
    parser.add_argument("--child", choices=list(VARIANTS), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.base_model is None:
        from qrl.models.embedded import ensure_embedded_model

        args.base_model = str(ensure_embedded_model())
    if args.child:
        return child(args.child, args.base_model, args.steps, args.completion_tokens)

    runs: dict[str, list[dict]] = {v: [] for v in args.variants}
    for r in range(args.repeats):
        order = args.variants if r % 2 == 0 else args.variants[::-1]  # alternate, so load hits every variant alike
        for v in order:
            cmd = [sys.executable, __file__, "--child", v, "--base_model", args.base_model, "--steps", str(args.steps),
                   "--completion_tokens", str(args.completion_tokens)]
            res = measure(cmd)
            runs[v].append(res)
            print(f"repeat {r + 1} {v}: steps {[round(s, 2) for s in res['step_s']]} s, "
                  f"generate {[round(s, 2) for s in res['generate_s']]} s, peak RSS {res['peak_rss_mb']:.0f} MB",
                  flush=True)
    summary = {}
    for v, results in runs.items():
        steady = {k: [x for res in results for x in res[k][1:]] for k in ("step_s", "generate_s", "reward_s")}
        med = {k: statistics.median(xs) for k, xs in steady.items()}
        summary[v] = {
            "median_step_s": med["step_s"], "min_step_s": min(steady["step_s"]), "max_step_s": max(steady["step_s"]),
            "median_generate_s": med["generate_s"], "median_reward_s": med["reward_s"],
            "median_rest_s": med["step_s"] - med["generate_s"] - med["reward_s"],
            "median_peak_rss_mb": statistics.median(res["peak_rss_mb"] for res in results),
            "peak_gpu_mb": max((res["peak_gpu_mb"] or 0) for res in results) or None,
        }
    import torch

    report = {
        "command": " ".join([Path(sys.executable).name, "bench/ppo_vs_grpo.py", *sys.argv[1:]]),
        "machine": {"platform": platform.platform(), "cpus": os.cpu_count(), "torch": torch.__version__,
                    "gpu": torch.cuda.get_device_name() if torch.cuda.is_available() else None,
                    "load_average_at_end": os.getloadavg()},
        "model": args.base_model, "steps": args.steps, "repeats": args.repeats,
        "completion_tokens": args.completion_tokens, "variants": VARIANTS, "summary": summary, "runs": runs,
    }
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(report, indent=2) + "\n")
    print("\n| variant | median s/step (min-max) | generation | reward | rest (forward passes, updates) "
          "| peak RSS MB |")
    print("|---|---|---|---|---|---|")
    for v, s in summary.items():
        print(f"| {v} | {s['median_step_s']:.1f} ({s['min_step_s']:.1f}-{s['max_step_s']:.1f}) | "
              f"{s['median_generate_s']:.1f} | {s['median_reward_s']:.2f} | {s['median_rest_s']:.1f} | "
              f"{s['median_peak_rss_mb']:.0f} |")
    print(f"\nwritten to {args.out}")


if __name__ == "__main__":
    main()
