"""Seed statistics.

Every table cell is a mean over fine-tuning seeds with a two-sided 95 %
Student-t interval; the t quantile comes from scipy rather than hand-written
numerics.
"""

from __future__ import annotations

import math
from typing import Iterable

import numpy as np
from scipy import stats


def mean_ci95(values: Iterable[float]) -> tuple[float, float]:
    """Mean and half-width of the two-sided 95 % t-interval, t_{0.975, n-1} * s / sqrt(n).

    With a single value (one seed) there is no spread to estimate, so the
    half-width is NaN rather than a misleading 0. Identical values give 0
    (``scipy.stats.t.interval`` would give NaN for a zero scale).
    """
    sample = np.asarray(list(values), dtype=np.float64)
    if sample.size == 0:
        raise ValueError("mean_ci95 needs at least one value")
    mean = float(sample.mean())
    if sample.size == 1:
        return mean, math.nan
    return mean, float(stats.t.ppf(0.975, sample.size - 1) * stats.sem(sample))


def nan_to_none(value: float) -> float | None:
    """A float for JSON, with an undefined (NaN) statistic written as null."""
    value = float(value)
    return None if math.isnan(value) else value
