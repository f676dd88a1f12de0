"""Confidence intervals over queries: a paired percentile bootstrap of ratios of means.

A Re-ID test has a few hundred to a few thousand queries, and a difference of two mAP points
between two models can be noise. Resampling the queries (the same resample for every run, as
every run answered the same queries) gives intervals for each run's figure and for the
difference between two runs. numpy's multinomial draws keep this to a few lines and a matrix
product per chunk of resamples, without a SciPy dependency.
"""

from __future__ import annotations

from typing import Tuple

import numpy as np

from ..errors import InvalidValueError


def paired_bootstrap_ratio(
    num: np.ndarray,
    den: np.ndarray,
    n_resamples: int = 2000,
    seed: int = 0,
    chunk: int = 250,
) -> np.ndarray:
    """Bootstrap samples of ``mean(num[r, Q*]) / mean(den[r, Q*])`` for each row ``r``.

    Args:
        num, den: ``(R, Q)`` per-query values of ``R`` runs (e.g. an altered and the clean AP);
            columns (queries) with a NaN in any row are left out, as queries without a valid
            match are left out of mAP.
        n_resamples: number of resamples ``Q*`` (``Q`` queries drawn with replacement; the same
            draw for every row, so differences between rows are paired).
        seed: seed of the draws (the intervals are reproducible).
        chunk: resamples per matrix product (bounds the memory to ``chunk x Q`` floats).

    Returns ``(n_resamples, R)``; a resample whose denominator mean is 0 gives NaN.
    """
    num = np.atleast_2d(np.asarray(num, dtype=np.float64))
    den = np.atleast_2d(np.asarray(den, dtype=np.float64))
    if num.shape != den.shape:
        raise InvalidValueError(
            f"num and den must have the same shape, got {num.shape} and {den.shape}"
        )
    if n_resamples < 1:
        raise InvalidValueError(f"n_resamples: expected a positive integer, got {n_resamples}")
    keep = ~(np.isnan(num).any(0) | np.isnan(den).any(0))
    num, den = num[:, keep], den[:, keep]
    q = num.shape[1]
    if q == 0:
        raise InvalidValueError("no query has a value in every row (all columns contain NaN)")
    rng = np.random.default_rng(seed)
    out = np.empty((n_resamples, num.shape[0]))
    both = np.concatenate([num, den]).T  # (Q, 2R)
    for a in range(0, n_resamples, chunk):
        b = min(a + chunk, n_resamples)
        counts = rng.multinomial(q, np.full(q, 1.0 / q), size=b - a).astype(np.float64)
        sums = counts @ both  # (b - a, 2R): sums over each resample's queries
        n, d = np.split(sums, 2, axis=1)
        with np.errstate(invalid="ignore", divide="ignore"):
            out[a:b] = np.where(d != 0, n / d, np.nan)
    return out


def percentile_interval(samples: np.ndarray, level: float = 0.95) -> Tuple[float, float]:
    """The central ``level`` interval of bootstrap ``samples`` (NaN samples ignored)."""
    if not 0 < level < 1:
        raise InvalidValueError(f"level: expected a fraction in (0, 1), got {level}")
    tail = 50.0 * (1.0 - level)
    lo, hi = np.nanpercentile(np.asarray(samples, dtype=np.float64), [tail, 100.0 - tail])
    return float(lo), float(hi)


__all__ = ["paired_bootstrap_ratio", "percentile_interval"]
