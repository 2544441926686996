"""What the toolkit adds to a DPO run: `run_rl.py --use_dpo` against plain TRL `DPOTrainer`.

Same model (the embedded SmolLM2-135M-Instruct unless --base_model), same data, same LoRA, same steps,
same checkpoint interval; each variant is a whole process, the variants alternate, in one run.
Reports seconds per optimizer step (the Trainer's own train_runtime / steps), whole-process wall time,
and peak resident memory of each process, with the toolkit/plain ratios.

    python bench/dpo_overhead.py --steps 20 --repeats 2
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

COMMON = dict(batch_size=2, grad_accum=1, learning_rate=5e-5, beta=0.1, max_length=1024, lora_r=16, lora_alpha=32,
              lora_dropout=0.05, seed=42)


def plain_trl(model: str, data: str, out: str, steps: int) -> None:
    """The reference: TRL as its documentation shows it, nothing of the toolkit imported."""
    import torch
    from datasets import load_dataset
    from peft import LoraConfig
    from trl import DPOConfig, DPOTrainer

    args = DPOConfig(
        output_dir=out, per_device_train_batch_size=COMMON["batch_size"],
        gradient_accumulation_steps=COMMON["grad_accum"], learning_rate=COMMON["learning_rate"], max_steps=steps,
        save_steps=steps, logging_steps=1, beta=COMMON["beta"], max_length=COMMON["max_length"], bf16=False,
        activation_checkpointing=True, seed=COMMON["seed"], report_to="none",
        model_init_kwargs={"dtype": torch.float32},
    )
    peft = LoraConfig(r=COMMON["lora_r"], lora_alpha=COMMON["lora_alpha"], lora_dropout=COMMON["lora_dropout"],
                      target_modules="all-linear", task_type="CAUSAL_LM")
    dataset = load_dataset("json", data_files=data, split="train")
    trainer = DPOTrainer(model=model, args=args, train_dataset=dataset, peft_config=peft)
    result = trainer.train()
    trainer.save_model(out)
    print("RESULT " + json.dumps({"train_runtime": result.metrics["train_runtime"]}))


def toolkit_command(model: str, data: str, out: str, steps: int) -> list[str]:
    return [
        sys.executable, str(ROOT / "run_rl.py"), "--use_dpo", "--base_model", model, "--preference_data", data,
        "--output_dir", out, "--experiment_name", "bench", "--max_steps", str(steps), "--save_steps", str(steps),
        "--eval_steps", "0", "--batch_size", str(COMMON["batch_size"]),
        "--gradient_accumulation_steps", str(COMMON["grad_accum"]), "--learning_rate", str(COMMON["learning_rate"]),
        "--kl_coef", str(COMMON["beta"]), "--max_seq_length", str(COMMON["max_length"]),
        "--lora_r", str(COMMON["lora_r"]), "--lora_alpha", str(COMMON["lora_alpha"]),
        "--lora_dropout", str(COMMON["lora_dropout"]), "--seed", str(COMMON["seed"]), "--logging_steps", "1",
    ]


def measure(cmd: list[str], cwd: str) -> dict:
    """Wall time and peak RSS of one whole process."""
    start = time.perf_counter()
    proc = subprocess.Popen(cmd, cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    stdout = proc.stdout.read()
    _, status, usage = os.wait4(proc.pid, 0)
    wall = time.perf_counter() - start
    if status != 0:
        raise SystemExit(f"benchmark command failed ({status}): {' '.join(cmd)}")
    return {"wall_s": wall, "peak_rss_mb": usage.ru_maxrss / 1024, "stdout": stdout}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--base_model", default=None, help="default: the embedded model")
    parser.add_argument("--data", default=str(ROOT / "data" / "preferences.jsonl"))
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--output", default=str(ROOT / "bench" / "results" / "dpo_overhead.json"))
    parser.add_argument("--plain", metavar="OUT", help=argparse.SUPPRESS)  # internal: run the plain TRL variant
    args = parser.parse_args()
    if args.base_model is None:
        from qrl.models.embedded import ensure_embedded_model

        args.base_model = str(ensure_embedded_model())
    if args.plain:
        plain_trl(args.base_model, args.data, args.plain, args.steps)
        return

    runs: dict[str, list[dict]] = {"toolkit": [], "plain_trl": []}
    for repeat in range(args.repeats):
        order = ["plain_trl", "toolkit"] if repeat % 2 == 0 else ["toolkit", "plain_trl"]
        for variant in order:
            with tempfile.TemporaryDirectory() as tmp:
                if variant == "toolkit":
                    m = measure(toolkit_command(args.base_model, args.data, tmp, args.steps), tmp)
                    summary = json.loads((Path(tmp) / "bench" / "logs" / "rewards.json").read_text())["summary"]
                    runtime = summary["train_runtime"]
                else:
                    cmd = [sys.executable, __file__, "--plain", tmp, "--base_model", args.base_model,
                           "--data", args.data, "--steps", str(args.steps)]
                    m = measure(cmd, tmp)
                    line = next(x for x in m["stdout"].splitlines() if x.startswith("RESULT "))
                    runtime = json.loads(line[len("RESULT "):])["train_runtime"]
            m.pop("stdout")
            m["s_per_step"] = runtime / args.steps
            runs[variant].append(m)
            print(f"{variant:10s} repeat {repeat}: {m['s_per_step']:.3f} s/step, wall {m['wall_s']:.1f} s, "
                  f"peak RSS {m['peak_rss_mb']:.0f} MB", flush=True)

    def med(variant: str, key: str) -> float:
        return statistics.median(r[key] for r in runs[variant])

    report = {
        "machine": f"{platform.machine()}, {os.cpu_count()} cores, {platform.python_version()}",
        "model": args.base_model, "steps": args.steps, "repeats": args.repeats, "settings": COMMON, "runs": runs,
        "ratio_s_per_step": med("toolkit", "s_per_step") / med("plain_trl", "s_per_step"),
        "ratio_wall": med("toolkit", "wall_s") / med("plain_trl", "wall_s"),
        "ratio_peak_rss": med("toolkit", "peak_rss_mb") / med("plain_trl", "peak_rss_mb"),
    }
    Path(args.output).parent.mkdir(parents=True, exist_ok=True)
    Path(args.output).write_text(json.dumps(report, indent=2) + "\n")
    print(f"toolkit / plain TRL (medians): per step {report['ratio_s_per_step']:.3f}, whole process "
          f"{report['ratio_wall']:.3f}, peak memory {report['ratio_peak_rss']:.3f}  -> {args.output}")


if __name__ == "__main__":
    main()
