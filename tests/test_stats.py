"""Paired statistics: the exact McNemar test against scipy's binomial test and a hand count, the
coverage of Newcombe's (1998) paired interval by simulation, Holm's adjustment by hand."""

from __future__ import annotations

import numpy as np
import pytest
from scipy.stats import binomtest

from workbench.stats import holm, mcnemar_exact


def pairs(both: int, a_only: int, b_only: int, neither: int) -> tuple[np.ndarray, np.ndarray]:
    a = np.array([1] * both + [1] * a_only + [0] * b_only + [0] * neither)
    b = np.array([1] * both + [0] * a_only + [1] * b_only + [0] * neither)
    return a, b


def test_mcnemar_exact_p_value_and_counts():
    a, b = pairs(30, 12, 3, 55)
    r = mcnemar_exact(a, b)
    assert (r["n"], r["a_only"], r["b_only"]) == (100, 12, 3)
    assert r["diff"] == pytest.approx(0.09)
    assert r["p_value"] == pytest.approx(binomtest(3, 15, 0.5).pvalue, rel=1e-12)
    # by hand: P(X <= 3) for X ~ Bin(15, 1/2), doubled
    by_hand = 2 * sum(__import__("math").comb(15, k) for k in range(4)) / 2 ** 15
    assert r["p_value"] == pytest.approx(by_hand, rel=1e-12)
    assert mcnemar_exact(*pairs(5, 0, 0, 5))["p_value"] == 1.0
    assert mcnemar_exact(b, a)["diff"] == pytest.approx(-0.09)


def test_newcombe_interval_covers_the_true_difference_at_its_nominal_rate():
    """Simulated paired outcomes with a known difference (0.10): the 95% interval covers it in about
    95% of 1000 draws (Newcombe's method 10 is near nominal at n = 100), and contains the estimate."""
    rng = np.random.default_rng(0)
    probs = [0.40, 0.15, 0.05, 0.40]  # both, a only, b only, neither
    hits = 0
    for _ in range(1000):
        r = mcnemar_exact(*pairs(*rng.multinomial(100, probs)))
        lo, hi = r["diff_ci"]
        assert -1 <= lo <= r["diff"] <= hi <= 1
        hits += lo <= 0.10 <= hi
    assert 0.93 <= hits / 1000 <= 0.97, hits


def test_mcnemar_rejects_unpaired_input():
    with pytest.raises(ValueError, match="one length"):
        mcnemar_exact(np.ones(3), np.ones(4))
    with pytest.raises(ValueError, match="non-empty"):
        mcnemar_exact(np.ones(0), np.ones(0))


def test_holm_adjustment():
    p = [0.01, 0.04, 0.03, 0.5]
    # sorted: 0.01*4=0.04, 0.03*3=0.09, 0.04*2=0.08 -> running max 0.09, 0.5*1=0.5
    assert holm(p) == pytest.approx([0.04, 0.09, 0.09, 0.5])
    assert holm([]) == []
