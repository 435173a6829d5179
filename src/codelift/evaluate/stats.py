"""How sure a score is, and whether a change is real: a bootstrap interval over problems for
pass@1, and an exact paired sign test (McNemar's test, exact) between two variants that answered
the same problems.

The problem is the unit of resampling: a benchmark is a sample of problems, and a variant's
samples of one problem are not independent of each other.
"""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Iterable, Mapping, Sequence

import numpy as np

from codelift.errors import CodeliftError


def problem_scores(rows: Iterable[dict]) -> dict[str, float]:
    """Each problem's fraction of passing samples (its pass@1 estimate), in first-seen order."""
    passed = defaultdict(list)
    for row in rows:
        passed[row["task_id"]].append(bool(row["passed"]))
    return {task_id: sum(group) / len(group) for task_id, group in passed.items()}


def bootstrap_interval(scores: Sequence[float], *, resamples: int = 10_000, confidence: float = 0.95,
                       seed: int = 42) -> tuple[float, float]:
    """Percentile bootstrap interval of the mean of per-problem `scores` (problems resampled with
    replacement, `resamples` times)."""
    if not scores:
        raise CodeliftError("bootstrap interval: no problems to resample.")
    if not 0 < confidence < 1:
        raise CodeliftError(f"bootstrap interval: confidence must be between 0 and 1, got {confidence}.")
    values = np.asarray(scores, dtype=np.float64)
    draws = np.random.default_rng(seed).integers(0, len(values), size=(resamples, len(values)))
    means = values[draws].mean(axis=1)
    tail = (1 - confidence) / 2
    low, high = np.quantile(means, [tail, 1 - tail])
    return float(low), float(high)


def sign_test_p_value(wins: int, losses: int) -> float:
    """Exact two-sided p-value that wins and losses are equally likely (ties left out):
    2 * P(Binomial(wins + losses, 1/2) <= min(wins, losses)), capped at 1. With one sample per
    problem this is the exact McNemar test."""
    n = wins + losses
    if n == 0:
        return 1.0
    tail = sum(math.comb(n, i) for i in range(min(wins, losses) + 1))
    return min(1.0, 2 * tail / 2**n)


def paired_comparison(before: Mapping[str, float], after: Mapping[str, float]) -> dict:
    """Compare two variants on the problems both answered: which ones `after` newly solves (scores
    higher on) and breaks (scores lower on), and the sign test's p-value."""
    shared = [task_id for task_id in before if task_id in after]
    if not shared:
        raise CodeliftError("paired comparison: the two variants share no problem; evaluate them on the same benchmark.")
    newly_solved = [t for t in shared if after[t] > before[t]]
    broken = [t for t in shared if after[t] < before[t]]
    return {"problems": len(shared), "newly_solved": newly_solved, "broken": broken,
            "p_value": sign_test_p_value(len(newly_solved), len(broken))}
