"""Confidence intervals and paired significance tests over per-user metrics.

All functions take per-user metric values (one entry per evaluated user) and
resample *users* with replacement (percentile bootstrap). Bootstrap index
matrices are drawn in chunks of rows so memory stays O(chunk * n_users)
regardless of ``n_boot``. Results are deterministic given ``seed``.
"""
from __future__ import annotations

import numpy as np

__all__ = ["bootstrap_ci", "paired_bootstrap"]

# Max number of int64 indices materialised at once (~16 MB).
_MAX_CHUNK_ELEMS = 2_000_000


def _as_1d(values, name: str) -> np.ndarray:
    arr = np.asarray(values, dtype=np.float64)
    if arr.ndim != 1:
        raise ValueError(f"{name} must be 1-d (one value per user)")
    if arr.size == 0:
        raise ValueError(f"{name} is empty")
    if not np.all(np.isfinite(arr)):
        raise ValueError(f"{name} contains non-finite values")
    return arr


def _check_params(n_boot: int, alpha: float) -> None:
    if int(n_boot) < 1:
        raise ValueError("n_boot must be >= 1")
    if not 0.0 < alpha < 1.0:
        raise ValueError("alpha must be in (0, 1)")


def _bootstrap_means(values: np.ndarray, n_boot: int, seed: int) -> np.ndarray:
    """Means of ``n_boot`` resamples (with replacement) of ``values``."""
    n = values.size
    rng = np.random.default_rng(seed)
    chunk = max(1, _MAX_CHUNK_ELEMS // n)
    out = np.empty(n_boot, dtype=np.float64)
    for start in range(0, n_boot, chunk):
        stop = min(start + chunk, n_boot)
        idx = rng.integers(0, n, size=(stop - start, n))
        out[start:stop] = values[idx].mean(axis=1)
    return out


def _percentiles(boot: np.ndarray, alpha: float) -> tuple[float, float]:
    low, high = np.quantile(boot, [alpha / 2.0, 1.0 - alpha / 2.0])
    return float(low), float(high)


def bootstrap_ci(
    values, n_boot: int = 1000, alpha: float = 0.05, seed: int = 0
) -> dict:
    """Percentile-bootstrap (1 - alpha) CI of the mean of per-user ``values``.

    Returns ``{"mean", "low", "high"}`` where ``mean`` is the sample mean and
    ``low``/``high`` the ``alpha/2`` and ``1 - alpha/2`` quantiles of the
    bootstrap means (users resampled with replacement).
    """
    _check_params(n_boot, alpha)
    x = _as_1d(values, "values")
    boot = _bootstrap_means(x, int(n_boot), seed)
    low, high = _percentiles(boot, alpha)
    mean = float(x.mean())
    if np.ptp(x) == 0:  # constant input: exact zero-width interval (no round-off)
        low = high = mean
    return {"mean": mean, "low": low, "high": high}


def paired_bootstrap(
    a, b, n_boot: int = 1000, alpha: float = 0.05, seed: int = 0
) -> dict:
    """Paired comparison of two models evaluated on the same users.

    ``a[i]`` and ``b[i]`` must be the metric of models A and B for the same
    user ``i``. Users are resampled jointly, i.e. the per-user differences
    ``d = a - b`` are bootstrapped.

    Returns a dict with

    * ``mean_diff``: mean of ``a - b``;
    * ``low``, ``high``: percentile-bootstrap (1 - alpha) CI of the mean diff;
    * ``p_value``: two-sided bootstrap p-value
      ``min(1, 2 * min(P*(mean* <= 0), P*(mean* >= 0)))`` where ``P*`` is the
      fraction of bootstrap mean differences; i.e. twice the fraction of
      bootstrap replicates on the "other side" of 0 from the observed
      direction (replicates exactly at 0 count on both sides), clipped to 1.
      It is 1 when all differences are zero. Its resolution is ``1 / n_boot``
      (a value of 0 means "< 1/n_boot").
    * ``wilcoxon_p``: ``scipy.stats.wilcoxon`` two-sided p-value on ``d``
      (zero differences dropped, scipy default), or ``None`` if all ``d == 0``;
    * ``ttest_p``: paired t-test (``scipy.stats.ttest_rel``) two-sided p-value;
      1.0 if all ``d == 0``, ``0.0`` if ``d`` is a non-zero constant (t is
      infinite), NaN with a single user.
    """
    _check_params(n_boot, alpha)
    a = _as_1d(a, "a")
    b = _as_1d(b, "b")
    if a.shape != b.shape:
        raise ValueError(f"a and b must have the same length ({a.size} != {b.size})")
    from scipy import stats as _sps  # here, not at the top: 1 s of import for every run notebook
    d = a - b
    n_boot = int(n_boot)
    boot = _bootstrap_means(d, n_boot, seed)
    low, high = _percentiles(boot, alpha)
    mean_diff = float(d.mean())

    all_zero = bool(np.all(d == 0))
    if all_zero:
        p_value = 1.0
        mean_diff, low, high = 0.0, 0.0, 0.0
    else:
        frac_le = float(np.mean(boot <= 0))
        frac_ge = float(np.mean(boot >= 0))
        p_value = min(1.0, 2.0 * min(frac_le, frac_ge))

    if all_zero:
        wilcoxon_p = None
    else:
        wilcoxon_p = float(_sps.wilcoxon(d).pvalue)

    if all_zero:
        ttest_p = 1.0
    elif d.size < 2:
        ttest_p = float("nan")  # undefined with a single user
    elif np.ptp(d) == 0:
        # constant non-zero shift: t statistic is infinite
        ttest_p = 0.0
    else:
        ttest_p = float(_sps.ttest_rel(a, b).pvalue)

    return {
        "mean_diff": mean_diff,
        "low": float(low),
        "high": float(high),
        "p_value": float(p_value),
        "wilcoxon_p": wilcoxon_p,
        "ttest_p": ttest_p,
    }
