"""PPO and GRPO with one process and with two (`accelerate launch`, configs/accelerate/ddp.yaml), in one run.

Each variant is `bench/ppo_vs_grpo.py`'s (the embedded SmolLM2-135M-Instruct unless --base_model, the shipped Python
training problems, the sandbox's test-case reward, LoRA r 16; PPO one answer to each of 4 prompts per process and
4 optimisation epochs, GRPO a group of 4 answers to one prompt per process), launched whole with 1 and then 2
processes, variants alternating. Each process reports its seconds per step (the first step left out: warm-up) and
its own peak resident memory (VmHWM); a step with two processes answers twice the prompts (the batch is per
process), so the table gives answers per second beside seconds per step.

Threads: one process uses every core; under `accelerate launch` each process gets one thread (OMP_NUM_THREADS=1),
which on a 2-core machine is the same cores split in two.

    python bench/ppo_scaling.py --steps 3 --repeats 1
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
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "bench")]  # this checkout's qrl, not an installed one
ANSWERS_PER_PROCESS = 4  # both variants: ppo_vs_grpo's batch of 4 answers per step and process


def child(variant: str, model: str, steps: int, tokens: int, out: Path) -> None:
    """One process's share of a run: train, then write its step times and peak memory to ``out``."""
    import ppo_vs_grpo
    from accelerate import PartialState

    rank = PartialState(cpu=True).process_index
    result = ppo_vs_grpo.run_variant(variant, model, steps, tokens, str(out / "run"))  # one folder for every rank
    peak_kb = next(int(line.split()[1]) for line in Path("/proc/self/status").read_text().splitlines()
                   if line.startswith("VmHWM:"))
    (out / f"rank{rank}.json").write_text(json.dumps({**result, "rank": rank, "peak_rss_mb": peak_kb / 1024}))


def launch(variant: str, processes: int, args) -> list[dict]:
    """One whole run with ``processes`` processes; every rank's report."""
    with tempfile.TemporaryDirectory() as out:
        own = [__file__, "--child", variant, "--base_model", args.base_model, "--steps", str(args.steps),
               "--completion_tokens", str(args.completion_tokens), "--out", out]
        if processes == 1:
            cmd = [sys.executable, *own]
        else:
            from launching import launch_command

            cmd = launch_command("ddp.yaml", own[1:], script=str(Path(__file__).relative_to(ROOT)),
                                 processes=processes)
        proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True)
        reports = [json.loads(p.read_text()) for p in sorted(Path(out).glob("rank*.json"))]
        if proc.returncode != 0 or len(reports) != processes:
            raise SystemExit(f"benchmark command failed ({proc.returncode}): {' '.join(cmd)}\n{proc.stderr[-3000:]}")
    return reports


def summarise(runs: dict[tuple[str, int], list[list[dict]]]) -> dict[str, dict]:
    summary = {}
    for (variant, processes), repeats in runs.items():
        steps = [s for reports in repeats for r in reports for s in r["step_s"][1:]]
        step = statistics.median(steps)
        summary[f"{variant}_{processes}"] = {
            "variant": variant, "processes": processes, "median_step_s": step,
            "answers_per_step": ANSWERS_PER_PROCESS * processes,
            "answers_per_s": ANSWERS_PER_PROCESS * processes / step,
            "median_generate_s": statistics.median(s for rs in repeats for r in rs for s in r["generate_s"][1:]),
            "peak_rss_mb_per_process": max(r["peak_rss_mb"] for rs in repeats for r in rs),
        }
    for variant in {v for v, _ in runs}:
        one, two = summary.get(f"{variant}_1"), summary.get(f"{variant}_2")
        if one and two:
            two["step_vs_1_process"] = two["median_step_s"] / one["median_step_s"]
            two["throughput_vs_1_process"] = two["answers_per_s"] / one["answers_per_s"]
            two["memory_vs_1_process"] = two["peak_rss_mb_per_process"] / one["peak_rss_mb_per_process"]
    return summary


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--base_model", default=None, help="default: the embedded model")
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--repeats", type=int, default=1)
    parser.add_argument("--completion_tokens", type=int, default=32)
    parser.add_argument("--variants", nargs="+", default=["ppo", "grpo"], choices=["ppo", "ppo_1_epoch", "grpo"])
    parser.add_argument("--processes", nargs="+", type=int, default=[1, 2], choices=[1, 2])
    parser.add_argument("--out", default=str(ROOT / "bench" / "results" / "ppo_scaling.json"))
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.base_model is None:
        from qrl.models.embedded import ensure_embedded_model

        args.base_model = str(ensure_embedded_model())
    if args.child:
        return child(args.child, args.base_model, args.steps, args.completion_tokens, Path(args.out))
    sys.path.insert(0, str(ROOT / "tests"))  # the launch line the multi-process tests use
    runs: dict[tuple[str, int], list[list[dict]]] = {}
    for r in range(args.repeats):
        for processes in args.processes:
            order = args.variants if r % 2 == 0 else args.variants[::-1]
            for v in order:
                reports = launch(v, processes, args)
                runs.setdefault((v, processes), []).append(reports)
                print(f"repeat {r + 1} {v} x{processes}: " + "; ".join(
                    f"rank {x['rank']} steps {[round(s, 2) for s in x['step_s']]} s, peak {x['peak_rss_mb']:.0f} MB"
                    for x in reports), flush=True)
    summary = summarise(runs)
    import torch

    report = {
        "command": " ".join([Path(sys.executable).name, "bench/ppo_scaling.py", *sys.argv[1:]]),
        "machine": {"platform": platform.platform(), "processor": platform.processor() or platform.machine(),
                    "cpus": os.cpu_count(), "torch": torch.__version__, "load_average_at_end": os.getloadavg()},
        "model": args.base_model, "steps": args.steps, "repeats": args.repeats,
        "completion_tokens": args.completion_tokens, "summary": summary,
        "runs": {f"{v}_{n}": reps for (v, n), reps in runs.items()},
    }
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(report, indent=2) + "\n")
    print("\n| variant | processes | s/step | answers/step | answers/s | peak RSS MB per process |")
    print("|---|---|---|---|---|---|")
    for s in summary.values():
        print(f"| {s['variant']} | {s['processes']} | {s['median_step_s']:.1f} | {s['answers_per_step']} | "
              f"{s['answers_per_s']:.2f} | {s['peak_rss_mb_per_process']:.0f} |")
    print(f"\nwritten to {args.out}")


if __name__ == "__main__":
    main()
