"""Tests for lib.stats (bootstrap CIs and paired tests over users)."""
from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

import lib.core.stats as stats
from lib.core.stats import bootstrap_ci, paired_bootstrap

finite = st.floats(min_value=-1e3, max_value=1e3, allow_nan=False, allow_infinity=False)
per_user = arrays(np.float64, st.integers(2, 60), elements=finite)


def test_ci_contains_mean_and_shrinks_with_more_users():
    rng = np.random.default_rng(0)
    small = rng.random(100)
    large = rng.random(5000)
    ci_s = bootstrap_ci(small, n_boot=500, seed=1)
    ci_l = bootstrap_ci(large, n_boot=500, seed=1)
    for ci, x in [(ci_s, small), (ci_l, large)]:
        assert ci["mean"] == pytest.approx(x.mean())
        assert ci["low"] < ci["mean"] < ci["high"]
    width_s = ci_s["high"] - ci_s["low"]
    width_l = ci_l["high"] - ci_l["low"]
    # ~ 1/sqrt(n): expected ratio ~ sqrt(50) ~ 7
    assert width_l < width_s / 4


def test_ci_width_matches_normal_theory():
    rng = np.random.default_rng(2)
    x = rng.normal(size=2000)
    ci = bootstrap_ci(x, n_boot=1000, alpha=0.05, seed=0)
    expected = 2 * 1.96 * x.std(ddof=1) / np.sqrt(x.size)
    assert (ci["high"] - ci["low"]) == pytest.approx(expected, rel=0.15)


def test_constant_values_give_zero_width_interval():
    ci = bootstrap_ci(np.full(300, 0.37), n_boot=200, seed=3)
    assert ci["low"] == ci["high"] == ci["mean"] == pytest.approx(0.37)


def test_chunked_resampling_equals_unchunked(monkeypatch):
    x = np.random.default_rng(4).random(500)
    ref = bootstrap_ci(x, n_boot=300, seed=9)
    monkeypatch.setattr(stats, "_MAX_CHUNK_ELEMS", 1700)  # 3 rows per chunk
    assert bootstrap_ci(x, n_boot=300, seed=9) == ref


def test_paired_identical_inputs():
    a = np.random.default_rng(5).random(200)
    r = paired_bootstrap(a, a.copy(), n_boot=300, seed=0)
    assert r["mean_diff"] == 0.0
    assert r["low"] == r["high"] == 0.0
    assert r["p_value"] == 1.0
    assert r["wilcoxon_p"] is None
    assert r["ttest_p"] == 1.0


def test_paired_clear_shift_gives_small_p():
    rng = np.random.default_rng(6)
    b = rng.random(300)
    a = b + 0.1 + rng.normal(scale=0.05, size=300)
    r = paired_bootstrap(a, b, n_boot=1000, seed=0)
    assert r["mean_diff"] == pytest.approx(0.1, abs=0.02)
    assert r["low"] > 0
    assert r["p_value"] < 0.01
    assert r["wilcoxon_p"] < 1e-6
    assert r["ttest_p"] < 1e-6


def test_paired_no_shift_gives_large_p():
    rng = np.random.default_rng(7)
    b = rng.random(400)
    a = b + rng.normal(scale=0.05, size=400)
    a -= (a - b).mean()  # exactly zero mean difference
    r = paired_bootstrap(a, b, n_boot=1000, seed=0)
    assert r["low"] < 0 < r["high"]
    assert r["p_value"] > 0.5
    assert r["ttest_p"] > 0.5


def test_paired_is_paired_not_unpaired():
    # large between-user variance, tiny consistent within-user shift:
    # an unpaired comparison could not detect it, a paired one must.
    rng = np.random.default_rng(8)
    b = rng.normal(scale=10.0, size=200)
    a = b + 0.05 + rng.normal(scale=0.01, size=200)
    r = paired_bootstrap(a, b, n_boot=500, seed=0)
    assert r["p_value"] < 0.01 and r["low"] > 0


def test_constant_nonzero_shift():
    a = np.arange(50, dtype=float)
    r = paired_bootstrap(a + 1.0, a, n_boot=200, seed=0)
    assert r["mean_diff"] == pytest.approx(1.0)
    assert r["p_value"] == 0.0
    assert r["ttest_p"] == 0.0
    assert r["wilcoxon_p"] < 1e-6


def test_input_validation():
    with pytest.raises(ValueError):
        paired_bootstrap(np.zeros(3), np.zeros(4))
    with pytest.raises(ValueError):
        bootstrap_ci(np.array([]))
    with pytest.raises(ValueError):
        bootstrap_ci(np.array([1.0, np.nan]))
    with pytest.raises(ValueError):
        bootstrap_ci(np.ones(5), alpha=1.5)


@settings(max_examples=40, deadline=None)
@given(x=per_user, seed=st.integers(0, 2**31 - 1))
def test_bootstrap_ci_properties(x, seed):
    r1 = bootstrap_ci(x, n_boot=100, seed=seed)
    r2 = bootstrap_ci(x, n_boot=100, seed=seed)
    assert r1 == r2  # determinism by seed
    tol = 1e-9 * (1 + np.abs(x).max())
    assert r1["low"] <= r1["high"] + tol
    assert x.min() - tol <= r1["low"] and r1["high"] <= x.max() + tol


# n >= 14: for n <= 13 with ties scipy's wilcoxon runs an exhaustive (deterministic
# but ~0.2 s) permutation test, too slow for many examples on 2 cores.
@settings(max_examples=30, deadline=None)
@given(data=st.data(), seed=st.integers(0, 2**31 - 1))
def test_paired_bootstrap_properties(data, seed):
    a = data.draw(arrays(np.float64, st.integers(14, 60), elements=finite))
    b = data.draw(arrays(np.float64, a.size, elements=finite))
    r1 = paired_bootstrap(a, b, n_boot=100, seed=seed)
    assert r1 == paired_bootstrap(a, b, n_boot=100, seed=seed)  # determinism
    assert 0.0 <= r1["p_value"] <= 1.0
    assert r1["mean_diff"] == pytest.approx(np.mean(a - b), abs=1e-9 * (1 + np.abs(a - b).max()))
    # swapping the models flips the sign and keeps the p-values
    r2 = paired_bootstrap(b, a, n_boot=100, seed=seed)
    assert r2["mean_diff"] == pytest.approx(-r1["mean_diff"], abs=1e-9 * (1 + np.abs(a - b).max()))
    assert r2["p_value"] == pytest.approx(r1["p_value"])
    if r1["wilcoxon_p"] is not None:
        assert 0.0 <= r1["wilcoxon_p"] <= 1.0
