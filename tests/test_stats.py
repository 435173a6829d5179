import numpy as np
import pytest
from scipy import stats as scipy_stats

from codelift.errors import CodeliftError
from codelift.evaluate.stats import (
    bootstrap_interval,
    paired_comparison,
    problem_scores,
    sign_test_p_value,
)


def test_problem_scores_average_each_problems_samples():
    rows = [{"task_id": "a", "passed": True}, {"task_id": "b", "passed": False},
            {"task_id": "a", "passed": False}, {"task_id": "b", "passed": False}, {"task_id": "c", "passed": True}]
    assert problem_scores(rows) == {"a": 0.5, "b": 0.0, "c": 1.0}


def test_bootstrap_interval_matches_scipys_percentile_bootstrap():
    scores = np.random.default_rng(0).integers(0, 2, size=60).astype(float)  # 60 problems, greedy pass/fail
    low, high = bootstrap_interval(list(scores), resamples=20_000)
    reference = scipy_stats.bootstrap((scores,), np.mean, n_resamples=20_000, confidence_level=0.95,
                                      method="percentile", rng=np.random.default_rng(1)).confidence_interval
    assert low < scores.mean() < high
    assert low == pytest.approx(reference.low, abs=0.02) and high == pytest.approx(reference.high, abs=0.02)
    # and the normal approximation of a proportion's interval, mean +- 1.96 * sqrt(p (1 - p) / n)
    half = 1.96 * np.sqrt(scores.mean() * (1 - scores.mean()) / len(scores))
    assert high - low == pytest.approx(2 * half, abs=0.03)


def test_bootstrap_interval_is_a_point_when_every_problem_scores_the_same():
    assert bootstrap_interval([1.0] * 10) == (1.0, 1.0)
    assert bootstrap_interval([0.0, 0.0, 0.0]) == (0.0, 0.0)


def test_bootstrap_interval_rejects_nothing_to_resample():
    with pytest.raises(CodeliftError, match="no problems"):
        bootstrap_interval([])


@pytest.mark.parametrize("wins,losses", [(0, 0), (5, 0), (0, 5), (7, 2), (10, 10), (3, 12), (40, 25)])
def test_sign_test_matches_scipys_exact_binomial_test(wins, losses):
    expected = 1.0 if wins + losses == 0 else scipy_stats.binomtest(wins, wins + losses, 0.5).pvalue
    assert sign_test_p_value(wins, losses) == pytest.approx(expected, rel=1e-12)


def test_sign_test_by_hand():
    assert sign_test_p_value(5, 0) == 2 / 32  # both one-sided extremes of 5 fair coin flips
    assert sign_test_p_value(2, 1) == 1.0  # (1 + 3) * 2 / 8 = 1, capped


def test_paired_comparison_names_newly_solved_and_broken_problems():
    before = {"a": 0.0, "b": 1.0, "c": 0.0, "d": 1.0, "e": 0.0}
    after = {"a": 1.0, "b": 1.0, "c": 1.0, "d": 0.0, "e": 0.0, "x": 1.0}  # x: answered by one variant only
    result = paired_comparison(before, after)
    assert result["problems"] == 5
    assert result["newly_solved"] == ["a", "c"] and result["broken"] == ["d"]
    assert result["p_value"] == pytest.approx(scipy_stats.binomtest(2, 3, 0.5).pvalue)


def test_paired_comparison_needs_shared_problems():
    with pytest.raises(CodeliftError, match="share no problem"):
        paired_comparison({"a": 1.0}, {"b": 0.0})
