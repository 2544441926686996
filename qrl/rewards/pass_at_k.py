"""pass@k: the unbiased estimator of one problem's (Chen et al. 2021) and its mean over problems, the one aggregate
that the score command's table, the training evaluation and the recipes' reports all report."""

from __future__ import annotations

import math
from collections import Counter, defaultdict
from collections.abc import Iterable, Sequence
from typing import Any

from qrl.rewards.base import ScoreResult


def pass_at_k(n: int, c: int, k: int) -> float:
    """Unbiased pass@k (Chen et al. 2021): the chance that at least one of k samples drawn without replacement from
    n, of which c are correct, is correct: 1 - C(n-c, k) / C(n, k), as a product for numerical stability."""
    if not 0 <= c <= n or not 1 <= k <= n:
        raise ValueError(f"pass@k needs 0 <= c <= n and 1 <= k <= n, got n={n}, c={c}, k={k}")
    if n - c < k:
        return 1.0
    return 1.0 - math.prod((n - c - i) / (n - i) for i in range(k))


def mean_pass_at_k(outcomes: Iterable[Sequence[bool]], k: int) -> float:
    """Mean pass@k over problems, each given by whether each of its samples passed; problems with fewer than k
    samples are left out (0.0 when none is left)."""
    scores = [pass_at_k(len(v), sum(v), k) for v in outcomes if len(v) >= k]
    return sum(scores) / len(scores) if scores else 0.0


def pass_at_k_table(results: Sequence[ScoreResult]) -> dict[int, float]:
    """Mean pass@k over tasks for each k the samples allow (k up to the smallest number of samples of a task)."""
    samples: dict[str, list[bool]] = defaultdict(list)
    for r in results:
        if r.reward is not None:  # infra errors say nothing about the program
            samples[str(r.task_id)].append(r.passed)
    if not samples:
        return {}
    n_min = min(len(v) for v in samples.values())
    ks = sorted(
        {k for k in range(1, n_min + 1) if k <= 10 or k in (20, 50, 100, 200, 500, 1000) or k == n_min}
    )
    return {k: mean_pass_at_k(samples.values(), k) for k in ks}


def summarize_samples(samples: Sequence[dict], n: int) -> dict[str, Any]:
    """An evaluation's numbers from its judged samples (``ScoreResult.to_json`` rows): pass@k for k = 1 and n, mean
    reward, verdict counts and one-value answers; from the rows, so that answers judged again get numbers to match."""
    by_task: dict[str, list[bool]] = defaultdict(list)
    for s in samples:
        by_task[s["task_id"]].append(bool(s["passed"]))
    metrics: dict[str, Any] = {"problems": len(by_task), "samples": len(samples)}
    for k in sorted({1, n}):
        metrics[f"pass@{k}"] = mean_pass_at_k(by_task.values(), k)
    scored = [s["reward"] for s in samples if s.get("reward") is not None]
    metrics["reward"] = sum(scored) / len(scored) if scored else None
    for status, count in sorted(Counter(s["status"] for s in samples).items()):
        metrics[f"status/{status}"] = count
    metrics["same_value"] = sum(bool(s.get("same_value")) for s in samples)  # failed, one value for every test
    return metrics
