"""Cost per sample of the code-quality scores, as a GRPO step would pay it.

Python programs of 10-40 lines are built from the shipped reference solutions (data/problems/python.jsonl)
the way a model writes them: imports, docstrings or none, a demo block, some style slips. Variants, in
alternating order within each repeat, in one run:

  batched      python_quality(batch): one ruff process for the whole batch (what the scorer does)
  per_program  python_quality([code]) for each program: one ruff process (and temp folder) per program
  ruff_stdin   ruff alone, one process per program reading stdin (the alternative to files in a folder)
  ruff_batch   ruff alone, one process over a folder of the batch (to compare with ruff_stdin)

and q_quality on Q programs built from data/q. Reports the median ms/sample of each, and ratios.

    python bench/quality_speed.py --sizes 64 256 --repeats 5
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from qrl.rewards.quality import QualityConfig, python_quality, q_quality, ruff_command

ROOT = Path(__file__).resolve().parents[1]

IMPORTS = ["import math", "import os", "import sys", "from collections import Counter, defaultdict",
           "from typing import List, Optional", "import itertools"]


def python_programs(n: int, seed: int = 0) -> list[str]:
    """Completion-like programs of 10-40 lines around the reference solutions, some clean, some sloppy."""
    rows = [json.loads(line) for line in (ROOT / "data" / "problems" / "python.jsonl").read_text().splitlines()]
    rng = random.Random(seed)
    programs = []
    while len(programs) < n:
        row = rng.choice(rows)
        solution = row["reference_solution"].rstrip("\n").splitlines()
        head = rng.sample(IMPORTS, rng.randint(0, 3))
        if rng.random() < 0.5:  # a docstring under the entry point's def line
            at = next(i for i, line in enumerate(solution) if line.startswith(f"def {row['entry_point']}"))
            solution.insert(at + 1, f'    """{row["prompt"].split(".")[0][:90]}."""')
        if rng.random() < 0.3:  # sloppy: camelCase name, comparison to None, one-line if
            solution.append("def checkIt(v):\n    if v == None: return False\n    return True")
        demo = ["", "", 'if __name__ == "__main__":']
        for test in row["tests"][: rng.randint(1, 5)]:
            demo.append(f"    print({row['entry_point']}(*{test['args']!r}))")
        program = "\n".join([*([*head, "", ""] if head else []), *solution, *demo]) + "\n"
        if 10 <= program.count("\n") <= 40:
            programs.append(program)
    return programs


def q_programs(n: int, seed: int = 0) -> list[str]:
    """Q programs: the reference one-liners, with or without a comment, some spread over several lines."""
    solutions = sorted((ROOT / "data" / "q").glob("*/*/q_solution.q"))
    rng = random.Random(seed)
    programs = []
    for _ in range(n):
        path = rng.choice(solutions)
        body = path.read_text().strip()
        lines = [f"/ {path.parent.name.replace('_', ' ')}"] if rng.random() < 0.5 else []
        if rng.random() < 0.5:
            lines += ["helper:{[x;y]", "  r:x+y;  / sum", "  $[r>0; r; neg r]}"]
        programs.append("\n".join([*lines, body]) + "\n")
    return programs


def ruff_stdin(codes: list[str], config: QualityConfig) -> None:
    for code in codes:
        proc = subprocess.run([*ruff_command(config), "--stdin-filename", "x.py", "-"], input=code,
                              capture_output=True, text=True, check=False)
        json.loads(proc.stdout)


def ruff_batch(codes: list[str], config: QualityConfig) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        names = []
        for i, code in enumerate(codes):
            names.append(f"{i}.py")
            Path(tmp, names[-1]).write_text(code, encoding="utf-8")
        proc = subprocess.run([*ruff_command(config), *names], cwd=tmp, capture_output=True, text=True, check=False)
        json.loads(proc.stdout)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[64, 256])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--output", default=str(ROOT / "bench" / "results" / "quality_speed.json"))
    args = parser.parse_args()
    config = QualityConfig()
    python_quality(python_programs(4), config)  # warm: imports (radon), the ruff binary in the page cache

    variants = {
        "batched": lambda codes: python_quality(codes, config),
        "per_program": lambda codes: [python_quality([code], config) for code in codes],
        "ruff_stdin": lambda codes: ruff_stdin(codes, config),
        "ruff_batch": lambda codes: ruff_batch(codes, config),
    }
    report: dict = {
        "machine": f"{platform.machine()}, {os.cpu_count()} cores (shared, noisy), Python {platform.python_version()}",
        "command": "python bench/quality_speed.py " + " ".join(sys.argv[1:]),
        "repeats": args.repeats, "sizes": {},
    }
    for size in args.sizes:
        codes = python_programs(size, seed=size)
        qcodes = q_programs(size, seed=size)
        assert [s.to_dict() for s in python_quality(codes, config)] == [
            python_quality([c], config)[0].to_dict() for c in codes
        ], "batched and one-at-a-time scores differ"
        times: dict[str, list[float]] = {name: [] for name in [*variants, "q"]}
        for repeat in range(args.repeats):
            order = list(variants) if repeat % 2 == 0 else list(reversed(variants))
            for name in [*order, "q"]:
                start = time.perf_counter()
                if name == "q":
                    q_quality(qcodes, config)
                else:
                    variants[name](codes)
                times[name].append((time.perf_counter() - start) * 1000 / size)
        med = {name: statistics.median(t) for name, t in times.items()}
        lines = [c.count("\n") for c in codes]
        report["sizes"][str(size)] = {
            "python_lines_min_median_max": [min(lines), statistics.median(lines), max(lines)],
            "ms_per_sample_median": {k: round(v, 3) for k, v in med.items()},
            "ms_per_sample_all": {k: [round(x, 3) for x in v] for k, v in times.items()},
            "ratio_per_program_over_batched": round(med["per_program"] / med["batched"], 2),
            "ratio_ruff_stdin_over_ruff_batch": round(med["ruff_stdin"] / med["ruff_batch"], 2),
        }
        print(f"{size} programs: " + ", ".join(f"{k} {v:.2f}" for k, v in med.items()) + " ms/sample; "
              f"per_program/batched {med['per_program'] / med['batched']:.2f}x, "
              f"ruff_stdin/ruff_batch {med['ruff_stdin'] / med['ruff_batch']:.2f}x", flush=True)
    Path(args.output).parent.mkdir(parents=True, exist_ok=True)
    Path(args.output).write_text(json.dumps(report, indent=2) + "\n")
    print(f"-> {args.output}")


if __name__ == "__main__":
    main()
