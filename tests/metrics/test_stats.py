import math

import numpy as np
import pytest

from occbench.metrics.stats import mean_ci95, nan_to_none, student_t_cdf, student_t_quantile


@pytest.mark.parametrize(
    ("df", "expected"),
    [(1, 12.706205), (2, 4.302653), (4, 2.776445), (9, 2.262157), (29, 2.045230), (10**7, 1.959964)],
)
def test_t_quantile_matches_tables(df, expected):
    assert student_t_quantile(0.975, df) == pytest.approx(expected, abs=1e-6)


def test_t_quantile_closed_forms_and_symmetry():
    # df=1 is Cauchy: tan(pi (p - 1/2)); df=2: (2p - 1) / sqrt(2 p (1 - p)).
    for p in (0.6, 0.9, 0.995):
        assert student_t_quantile(p, 1) == pytest.approx(math.tan(math.pi * (p - 0.5)), rel=1e-10)
        assert student_t_quantile(p, 2) == pytest.approx((2 * p - 1) / math.sqrt(2 * p * (1 - p)), rel=1e-10)
    assert student_t_quantile(0.025, 5) == pytest.approx(-student_t_quantile(0.975, 5))
    assert student_t_cdf(0.0, 3) == pytest.approx(0.5)
    with pytest.raises(ValueError):
        student_t_quantile(1.0, 3)


def test_mean_ci95_by_hand():
    mean, half_width = mean_ci95([0.30, 0.34])
    # s = 0.02 * sqrt(2), so t * s / sqrt(2) = 12.706205 * 0.02.
    assert mean == pytest.approx(0.32)
    assert half_width == pytest.approx(12.706205 * 0.02, rel=1e-6)
    values = np.array([1.0, 2.0, 4.0, 7.0, 11.0])
    _, half_width = mean_ci95(values)
    assert half_width == pytest.approx(2.776445 * values.std(ddof=1) / math.sqrt(5), rel=1e-6)


def test_single_value_has_no_interval():
    mean, half_width = mean_ci95([0.41])
    assert mean == 0.41
    assert math.isnan(half_width)
    with pytest.raises(ValueError):
        mean_ci95([])


def test_nan_to_none():
    assert nan_to_none(float("nan")) is None
    assert nan_to_none(np.float64(0.5)) == 0.5
