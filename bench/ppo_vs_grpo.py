"""A PPO step against a GRPO step: the toolkit's PPOTrainer and TRL's GRPOTrainer on the same prompts.

Same model (the embedded SmolLM2-135M-Instruct unless --base_model), same Python problems (train split,
through the chat template), same reward function, same LoRA, same learning rate, same answer length, and
the same number of answers per step (4): GRPO samples 4 answers to 1 prompt, PPO 1 answer to each of 4
prompts. PPO runs with its default 4 optimisation epochs and with 1. Each variant is a whole process;
variants alternate, in one run. Reports the median seconds per step (first step left out: warm-up) and
the peak resident memory of each process (and peak GPU memory on a GPU).

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
sys.path.insert(0, str(ROOT))

COMMON = dict(answers_per_step=4, max_completion_length=32, learning_rate=1e-5, kl_coef=0.1, entropy_coef=0.01,
              temperature=1.0, lora_r=16, lora_alpha=32, seed=42, n_prompts=16)
VARIANTS = {"ppo": {"ppo_epochs": 4}, "ppo_1_epoch": {"ppo_epochs": 1}, "grpo": {}}


def problems() -> list[dict]:
    rows = [json.loads(line) for line in (ROOT / "data" / "problems" / "python.jsonl").read_text().splitlines()]
    rows = [r for r in rows if r["split"] == "train"][: COMMON["n_prompts"]]
    return [{"prompt": [{"role": "user", "content": r["prompt"]}], "entry_point": r["entry_point"]} for r in rows]


def reward(prompts, completions, entry_point, **_):
    """Cheap and the same for both: does the answer define the asked-for function in a Python fence?"""
    return [float("```python" in c[0]["content"]) + float(f"def {e}(" in c[0]["content"])
            for c, e in zip(completions, entry_point)]


def lora():
    from peft import LoraConfig

    return LoraConfig(r=COMMON["lora_r"], lora_alpha=COMMON["lora_alpha"], lora_dropout=0.0,
                      target_modules="all-linear", task_type="CAUSAL_LM")


class StepTimer:
    """Wall time at the end of each step; a TrainerCallback for GRPO, the same hook for PPO."""

    def __init__(self):
        self.times = [time.perf_counter()]

    def __getattr__(self, name):  # every other callback event: nothing to do
        return lambda *a, **k: None

    def on_step_end(self, args, state, control, **kwargs):
        self.times.append(time.perf_counter())


def run_ppo(model: str, out: str, steps: int, ppo_epochs: int) -> list[float]:
    from q_trl_training import PPOConfig, PPOTrainer, load_tokenizer

    n = COMMON["answers_per_step"]
    args = PPOConfig(output_dir=out, learning_rate=COMMON["learning_rate"], batch_size=n // 2,
                     gradient_accumulation_steps=2, ppo_epochs=ppo_epochs, max_steps=steps, save_steps=10 ** 6,
                     max_completion_length=COMMON["max_completion_length"], temperature=COMMON["temperature"],
                     kl_coef=COMMON["kl_coef"], entropy_coef=COMMON["entropy_coef"], seed=COMMON["seed"])
    timer = StepTimer()
    trainer = PPOTrainer(model, args, load_tokenizer(model), reward, problems(), peft_config=lora(), callbacks=[timer])
    timer.times = [time.perf_counter()]
    trainer.train()
    return timer.times


def run_grpo(model: str, out: str, steps: int) -> list[float]:
    import torch
    from datasets import Dataset
    from transformers import TrainerCallback
    from trl import GRPOConfig, GRPOTrainer

    n = COMMON["answers_per_step"]
    args = GRPOConfig(
        output_dir=out, per_device_train_batch_size=n, num_generations=n, gradient_accumulation_steps=1,
        learning_rate=COMMON["learning_rate"], beta=COMMON["kl_coef"], entropy_coef=COMMON["entropy_coef"],
        max_completion_length=COMMON["max_completion_length"], temperature=COMMON["temperature"], max_steps=steps,
        logging_steps=1, save_strategy="no", bf16=False, activation_checkpointing=True, seed=COMMON["seed"],
        report_to="none", model_init_kwargs={"dtype": torch.float32},
    )

    class Timer(StepTimer, TrainerCallback):
        pass

    timer = Timer()
    trainer = GRPOTrainer(model=model, reward_funcs=reward, args=args, train_dataset=Dataset.from_list(problems()),
                          peft_config=lora(), callbacks=[timer])
    timer.times = [time.perf_counter()]
    trainer.train()
    return timer.times


def child(variant: str, model: str, steps: int) -> None:
    import torch

    with tempfile.TemporaryDirectory() as out:
        if variant == "grpo":
            times = run_grpo(model, out, steps)
        else:
            times = run_ppo(model, out, steps, VARIANTS[variant]["ppo_epochs"])
    step_s = [b - a for a, b in zip(times, times[1:])]
    gpu = torch.cuda.max_memory_allocated() / 2 ** 20 if torch.cuda.is_available() else None
    print("RESULT " + json.dumps({"step_s": step_s, "peak_gpu_mb": gpu}))


def measure(cmd: list[str]) -> dict:
    proc = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    stdout = proc.stdout.read()
    _, status, usage = os.wait4(proc.pid, 0)
    if status != 0:
        raise SystemExit(f"benchmark command failed ({status}): {' '.join(cmd)}")
    result = json.loads(next(line for line in stdout.splitlines() if line.startswith("RESULT "))[7:])
    return {**result, "peak_rss_mb": usage.ru_maxrss / 1024}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--base_model", default=None, help="default: the embedded model")
    parser.add_argument("--steps", type=int, default=4)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=list(VARIANTS))
    parser.add_argument("--out", default=str(ROOT / "bench" / "results" / "ppo_vs_grpo.json"))
    parser.add_argument("--child", choices=list(VARIANTS), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.base_model is None:
        from embedded_model import ensure_embedded_model

        args.base_model = str(ensure_embedded_model())
    if args.child:
        return child(args.child, args.base_model, args.steps)

    runs: dict[str, list[dict]] = {v: [] for v in args.variants}
    for r in range(args.repeats):
        for v in args.variants:  # alternate, so that load on the machine hits every variant alike
            cmd = [sys.executable, __file__, "--child", v, "--base_model", args.base_model, "--steps", str(args.steps)]
            res = measure(cmd)
            runs[v].append(res)
            print(f"repeat {r + 1} {v}: steps {[round(s, 2) for s in res['step_s']]} s, "
                  f"peak RSS {res['peak_rss_mb']:.0f} MB", flush=True)
    summary = {}
    for v, results in runs.items():
        steady = [s for res in results for s in res["step_s"][1:]]
        summary[v] = {
            "median_step_s": statistics.median(steady), "min_step_s": min(steady), "max_step_s": max(steady),
            "median_peak_rss_mb": statistics.median(res["peak_rss_mb"] for res in results),
            "peak_gpu_mb": max((res["peak_gpu_mb"] or 0) for res in results) or None,
        }
    import torch

    report = {
        "command": " ".join([Path(sys.executable).name, *sys.argv]),
        "machine": {"platform": platform.platform(), "cpus": os.cpu_count(), "torch": torch.__version__,
                    "gpu": torch.cuda.get_device_name() if torch.cuda.is_available() else None},
        "settings": {**COMMON, "steps": args.steps, "repeats": args.repeats, "variants": VARIANTS},
        "summary": summary, "runs": runs,
    }
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(report, indent=2) + "\n")
    print("\n| variant | median s/step (min-max) | peak RSS MB |\n|---|---|---|")
    for v, s in summary.items():
        print(f"| {v} | {s['median_step_s']:.2f} ({s['min_step_s']:.2f}-{s['max_step_s']:.2f}) | "
              f"{s['median_peak_rss_mb']:.0f} |")
    print(f"\nwritten to {args.out}")


if __name__ == "__main__":
    main()
