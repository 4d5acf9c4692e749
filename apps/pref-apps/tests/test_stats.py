"""Confidence intervals against hand-computed and textbook values."""

from __future__ import annotations

import math

import pytest

from pref_apps import stats


# Textbook Student-t quantiles (two-sided tables, 6 decimals).
@pytest.mark.parametrize(
    ("p", "df", "expected"),
    [
        (0.975, 1, 12.706205),
        (0.975, 9, 2.262157),
        (0.975, 29, 2.045230),
        (0.975, 199, 1.971957),
        (0.95, 5, 2.015048),
        (0.995, 30, 2.749996),
        (0.9995, 3, 12.923979),
        (0.9, 2, 1.885618),
    ],
)
def test_t_ppf_textbook_values(p: float, df: int, expected: float):
    assert stats.t_ppf(p, df) == pytest.approx(expected, abs=1e-6)
    assert stats.t_ppf(1 - p, df) == pytest.approx(-expected, abs=1e-6)


@pytest.mark.parametrize("df", [1, 2, 3, 7.5, 50, 1000, 1e5])
@pytest.mark.parametrize("p", [1e-9, 0.01, 0.2, 0.5, 0.8, 0.975, 1 - 1e-9])
def test_t_cdf_inverts_t_ppf(p: float, df: float):
    assert stats.t_cdf(stats.t_ppf(p, df), df) == pytest.approx(p, rel=1e-9, abs=1e-15)


def test_t_ppf_approaches_the_normal_quantile():
    assert stats.normal_ppf(0.975) == pytest.approx(1.959964, abs=1e-6)
    assert stats.t_ppf(0.975, 1e6) == pytest.approx(1.959966, abs=1e-5)


@pytest.mark.parametrize("x", [0.0, 0.1, 0.37, 0.5, 0.9, 1.0])
def test_incomplete_beta_closed_forms(x: float):
    # I_x(1, 1) = x; I_x(a, 1) = x^a; I_x(1, b) = 1 − (1 − x)^b; I_½(a, a) = ½.
    assert stats.incomplete_beta(x, 1, 1) == pytest.approx(x, abs=1e-14)
    assert stats.incomplete_beta(x, 3.5, 1) == pytest.approx(x**3.5, abs=1e-14)
    assert stats.incomplete_beta(x, 1, 4) == pytest.approx(1 - (1 - x) ** 4, abs=1e-14)
    assert stats.incomplete_beta(0.5, 7.25, 7.25) == pytest.approx(0.5, abs=1e-14)


def test_special_functions_match_scipy():
    scipy_stats = pytest.importorskip("scipy.stats")
    special = pytest.importorskip("scipy.special")
    for df in (1, 3, 12, 150):
        for p in (0.001, 0.05, 0.6, 0.999):
            assert stats.t_ppf(p, df) == pytest.approx(scipy_stats.t.ppf(p, df), rel=1e-9)
    for a, b, x in [(0.5, 0.5, 0.2), (30, 2, 0.95), (2, 40, 0.01), (500, 0.5, 0.999)]:
        assert stats.incomplete_beta(x, a, b) == pytest.approx(special.betainc(a, b, x), abs=1e-12)


def test_mean_ci_by_hand():
    """1..10: mean 5.5, s² = 82.5 / 9 = 9.1667, s/√n = 0.957427, t(0.975, 9) = 2.262157,
    half-width 2.165851 → [3.334149, 7.665851]."""
    mean, low, high = stats.mean_ci(range(1, 11))
    assert mean == 5.5
    assert low == pytest.approx(3.334149, abs=1e-6)
    assert high == pytest.approx(7.665851, abs=1e-6)


def test_mean_ci_confidence_level():
    """[2, 4, 6]: mean 4, s = 2, s/√3 = 1.154701; t(0.95, 2) = 2.919986 → ± 3.371709."""
    mean, low, high = stats.mean_ci([2.0, 4.0, 6.0], confidence=0.90)
    assert mean == 4.0
    assert high - mean == pytest.approx(3.371709, abs=1e-6)
    assert mean - low == pytest.approx(3.371709, abs=1e-6)


def test_mean_ci_edge_cases():
    single = stats.mean_ci([0.3])
    assert single.mean == 0.3
    assert math.isnan(single.low) and math.isnan(single.high)
    assert single.to_json() == {"mean": 0.3, "low": None, "high": None}
    assert stats.mean_ci([2.0, 2.0, 2.0]) == (2.0, 2.0, 2.0)
    with pytest.raises(ValueError, match="empty"):
        stats.mean_ci([])
    with pytest.raises(ValueError, match="non-finite"):
        stats.mean_ci([1.0, math.nan])
    with pytest.raises(ValueError, match="confidence"):
        stats.mean_ci([1.0, 2.0], confidence=1.0)


def test_win_rate_with_ties_by_hand():
    """Outcomes: win (3 > 1), tie (2 = 2), loss (1 < 4), win (5 > 0): rate (2 + ½) / 4 = 0.625.

    Wilson, z = 1.959964, n = 4, p̂ = 0.625: z²/n = 0.960365, centre (p̂ + z²/2n) / (1 + z²/n)
    = 0.563764, half-width z·√(p̂(1 − p̂)/n + z²/4n²) / (1 + z²/n) = 0.344337
    → [0.219427, 0.908101].
    """
    result = stats.win_rate_ci([3, 2, 1, 5], [1, 2, 4, 0])
    assert (result.wins, result.ties, result.losses, result.n) == (2, 1, 1, 4)
    assert result.rate == 0.625
    assert result.low == pytest.approx(0.219427, abs=1e-6)
    assert result.high == pytest.approx(0.908101, abs=1e-6)


def test_win_rate_all_ties_and_extremes():
    ties = stats.win_rate_ci([0.5] * 10, [0.5] * 10)
    assert (ties.rate, ties.wins, ties.ties, ties.losses) == (0.5, 0, 10, 0)
    assert ties.low < 0.5 < ties.high
    assert ties.high - 0.5 == pytest.approx(0.5 - ties.low)
    sweep = stats.win_rate_ci([1.0] * 5, [0.0] * 5)
    assert sweep.rate == 1.0 and sweep.high == 1.0 and 0.0 < sweep.low < 1.0


def test_win_rate_tie_tolerance():
    tuned, base = [0.5, 0.75, 0.25], [0.625, 0.5, 0.5]  # differences −⅛, +¼, −¼ (exact)
    assert stats.win_rate_ci(tuned, base).ties == 0
    loose = stats.win_rate_ci(tuned, base, tie_tolerance=0.125)
    assert (loose.wins, loose.ties, loose.losses) == (1, 1, 1)
    with pytest.raises(ValueError, match="equal lengths"):
        stats.win_rate_ci([1.0], [1.0, 2.0])


def test_by_category():
    values = [1.0, 2.0, 3.0, 10.0]
    categories = ["b", "a", "a", "b"]
    summary = stats.mean_ci_by_category(values, categories)
    assert list(summary) == ["a", "b"]
    assert summary["a"].mean == 2.5
    assert summary["b"].mean == 5.5
    wins = stats.win_rate_by_category([2, 2, 2, 2], [1, 2, 3, 1], categories)
    assert (wins["a"].wins, wins["a"].ties, wins["a"].losses) == (0, 1, 1)
    assert (wins["b"].wins, wins["b"].rate) == (2, 1.0)
    with pytest.raises(ValueError, match="categories"):
        stats.mean_ci_by_category(values, ["a"])
