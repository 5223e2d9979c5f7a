import math

import numpy as np
import pytest

from occbench.metrics.stats import mean_ci95, nan_to_none

# t_{0.975, df} from printed tables.
T_DF1, T_DF2, T_DF4 = 12.706205, 4.302653, 2.776445


def test_mean_ci95_by_hand():
    mean, half_width = mean_ci95([0.30, 0.34])
    # s = 0.02 * sqrt(2), so t * s / sqrt(2) = t_{0.975,1} * 0.02.
    assert mean == pytest.approx(0.32)
    assert half_width == pytest.approx(T_DF1 * 0.02, rel=1e-6)
    # Deviations 0, -0.03, +0.03: s^2 = 0.0018 / 2, s = 0.03.
    mean, half_width = mean_ci95([0.04, 0.01, 0.07])
    assert mean == pytest.approx(0.04)
    assert half_width == pytest.approx(T_DF2 * 0.03 / math.sqrt(3), rel=1e-6)
    # 1, 2, 4, 7, 11: mean 5, squared deviations 16 + 9 + 1 + 4 + 36 = 66, s^2 = 66 / 4.
    mean, half_width = mean_ci95(np.array([1.0, 2.0, 4.0, 7.0, 11.0]))
    assert mean == 5.0
    assert half_width == pytest.approx(T_DF4 * math.sqrt(66 / 4) / math.sqrt(5), rel=1e-6)


def test_identical_values_have_zero_width():
    mean, half_width = mean_ci95([0.8, 0.8, 0.8])
    assert mean == pytest.approx(0.8)
    assert half_width == pytest.approx(0.0, abs=1e-12)  # not NaN, as a zero-scale t-interval would be


def test_single_value_has_no_interval():
    mean, half_width = mean_ci95([0.41])
    assert mean == 0.41
    assert math.isnan(half_width)
    with pytest.raises(ValueError):
        mean_ci95([])


def test_nan_to_none():
    assert nan_to_none(float("nan")) is None
    assert nan_to_none(np.float64(0.5)) == 0.5
