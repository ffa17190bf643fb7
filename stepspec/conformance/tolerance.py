"""The tolerance policy of spec/tolerances.md, written once.

A comparison of a series of arrays (a trajectory, a state field over time, one delta) passes when

    deviation = max_t ‖actual_t − expected_t‖_∞ / scale  ≤  tol = K · u · (T + 1) · κ,

scale = max_t ‖expected_t‖_∞ (the size of the whole series, so entries that pass through zero are
judged against the series' magnitude), u the unit roundoff of the less precise side, T the number of
steps the error could accumulate over (0 for one F or G from a shared state), κ ≥ 1 a conditioning
factor the property declares and justifies.
"""

from __future__ import annotations

import numpy as np

SAFETY = 64
"""K: headroom for the handful of roundings per equation and for norm-vs-entry slack."""

UNIT_ROUNDOFF = {"float64": 2.0**-53, "float32": 2.0**-24}


def tolerance(dtype: str = "float64", steps: int = 0, conditioning: float = 1.0) -> float:
    """K · u(dtype) · (steps + 1) · max(κ, 1)."""
    if dtype not in UNIT_ROUNDOFF:
        raise ValueError(f"dtype must be one of {sorted(UNIT_ROUNDOFF)}, got {dtype!r}")
    return SAFETY * UNIT_ROUNDOFF[dtype] * (steps + 1) * max(float(conditioning), 1.0)


def series_scale(expected) -> float:
    """max_t ‖expected_t‖_∞ over a series (or one array); the smallest normal float if all zero,
    so an all-zero reference must be matched exactly."""
    arrays = [np.asarray(e, dtype=np.float64) for e in (expected if isinstance(expected, list) else [expected])]
    largest = max((float(np.max(np.abs(a), initial=0.0)) for a in arrays), default=0.0)
    return max(largest, np.finfo(np.float64).tiny)


def deviation(actual, expected, scale: float) -> tuple[float, tuple]:
    """(‖actual − expected‖_∞ / scale, index of the largest entry); inf on a shape mismatch, NaN or
    overflow (a difference of huge values, or a huge one over a tiny scale, is an infinite deviation)."""
    a = np.atleast_1d(np.asarray(actual, dtype=np.float64))
    e = np.atleast_1d(np.asarray(expected, dtype=np.float64))
    if a.shape != e.shape:
        return np.inf, ()
    if a.size == 0:
        return 0.0, ()
    with np.errstate(over="ignore", invalid="ignore"):
        diff = np.abs(a - e)
        diff[np.isnan(diff)] = np.inf
        index = np.unravel_index(int(np.argmax(diff)), diff.shape)
        return float(diff[index] / scale), tuple(int(i) for i in index)
