"""The condensation-to-OOD statistics against scipy and closed forms."""

import numpy as np
import pytest
from scipy import stats

from probes.report.tables import correlate, spearman_rho


def test_spearman_matches_scipy_with_ties():
    rng = np.random.default_rng(0)
    x = rng.integers(0, 4, size=(50, 9)).astype(float)
    y = rng.normal(size=(50, 9))
    expected = [stats.spearmanr(a, b).statistic for a, b in zip(x, y)]
    assert np.allclose(spearman_rho(x, y, axis=-1), expected)


def test_perfect_monotone_relation():
    x = np.array([0.1, 0.2, 0.4, 0.5, 0.9, 1.0])
    out = correlate(x, x**3)
    assert out["spearman_rho"] == pytest.approx(1.0)
    assert out["ci_low"] == pytest.approx(1.0) and out["ci_high"] == pytest.approx(1.0)
    assert out["boot_undefined"] < 0.05


def test_interval_contains_the_estimate_on_noisy_data():
    rng = np.random.default_rng(1)
    x = rng.normal(size=12)
    y = x + rng.normal(size=12)
    out = correlate(x, y)
    assert out["spearman_rho"] == pytest.approx(stats.spearmanr(x, y).statistic)
    assert out["ci_low"] <= out["spearman_rho"] <= out["ci_high"]


def test_degenerate_scores_leave_the_interval_empty():
    # 7 of 8 runs score 0: a third of the resamples have a constant score, and the percentile
    # interval over the rest would exclude the estimate itself; it must not be reported
    x = np.array([0.10, 0.50, 0.60, 0.70, 0.75, 0.80, 0.90, 0.95])
    y = np.array([0.19, 0, 0, 0, 0, 0, 0, 0])
    out = correlate(x, y)
    assert out["spearman_rho"] == pytest.approx(stats.spearmanr(x, y).statistic)
    assert out["boot_undefined"] == pytest.approx(1 - (1 - (7 / 8) ** 8 - (1 / 8) ** 8), abs=0.04)
    assert np.isnan(out["ci_low"]) and np.isnan(out["ci_high"])


def test_too_few_or_constant():
    assert np.isnan(correlate(np.array([1.0, 2.0]), np.array([1.0, 2.0]))["spearman_rho"])
    assert np.isnan(correlate(np.ones(5), np.arange(5.0))["spearman_rho"])
