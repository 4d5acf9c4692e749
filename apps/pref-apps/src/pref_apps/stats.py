"""Confidence intervals for evaluation scores: Student-t means and paired win rates.

Pure Python and math only (no scipy): the t quantile inverts the Student-t CDF, written with the
regularized incomplete beta function evaluated by its continued fraction, to double precision.

- :func:`mean_ci`: the mean of i.i.d. scores with the Student-t interval
  ``mean ± t(1 − α/2, n − 1) · s / √n``.
- :func:`win_rate_ci`: paired per-prompt comparison of two models scored on the same prompts and
  seeds. Each prompt is a win (1), a tie (½) or a loss (0) for the tuned model; the win rate is
  the mean outcome, ``(wins + ties / 2) / n``, with a Wilson score interval that counts each tie
  as half a win and half a loss (see the function for why Wilson and not a t-interval).
- :func:`mean_ci_by_category`, :func:`win_rate_by_category`: the same per prompt category.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import NamedTuple

__all__ = [
    "MeanCI",
    "WinRate",
    "incomplete_beta",
    "mean_ci",
    "mean_ci_by_category",
    "normal_ppf",
    "t_cdf",
    "t_ppf",
    "win_rate_by_category",
    "win_rate_ci",
]

_EPS = 1e-15
_TINY = 1e-300
_MAX_TERMS = 100_000


# ------------------------------------------------------------------------- special functions
def _beta_continued_fraction(x: float, a: float, b: float) -> float:
    """The continued fraction of I_x(a, b) (DLMF 8.17.22), evaluated with modified Lentz.

    Converges quickly for x < (a + 1) / (a + b + 2); callers use the symmetry
    I_x(a, b) = 1 − I_{1−x}(b, a) to stay in that region.
    """
    # The fraction is 1 / (1 + d1 / (1 + d2 / (1 + ...))) with
    #   d_{2m+1} = −(a + m)(a + b + m) x / ((a + 2m)(a + 2m + 1)),
    #   d_{2m}   =  m (b − m) x / ((a + 2m − 1)(a + 2m)).
    f = _TINY
    c = f
    d = 0.0
    for k in range(_MAX_TERMS):
        if k == 0:
            coefficient = 1.0
        elif k % 2 == 1:
            m = (k - 1) // 2
            coefficient = -(a + m) * (a + b + m) * x / ((a + 2 * m) * (a + 2 * m + 1))
        else:
            m = k // 2
            coefficient = m * (b - m) * x / ((a + 2 * m - 1) * (a + 2 * m))
        d = 1.0 + coefficient * d
        d = 1.0 / (d if abs(d) > _TINY else _TINY)
        c = 1.0 + coefficient / c
        c = c if abs(c) > _TINY else _TINY
        delta = c * d
        f *= delta
        if k > 0 and abs(delta - 1.0) < _EPS:
            return f
    raise ArithmeticError(f"incomplete beta did not converge for x={x}, a={a}, b={b}")


def incomplete_beta(x: float, a: float, b: float) -> float:
    """The regularized incomplete beta function I_x(a, b) = B(x; a, b) / B(a, b), a, b > 0."""
    if a <= 0 or b <= 0:
        raise ValueError(f"incomplete_beta needs a, b > 0, got a={a}, b={b}")
    if not 0.0 <= x <= 1.0:
        raise ValueError(f"incomplete_beta needs 0 ≤ x ≤ 1, got {x}")
    if x == 0.0 or x == 1.0:
        return x
    # x^a (1 − x)^b / (a B(a, b)), in logs.
    log_front = (
        math.lgamma(a + b) - math.lgamma(a) - math.lgamma(b) + a * math.log(x) + b * math.log1p(-x)
    )
    if x < (a + 1.0) / (a + b + 2.0):
        return math.exp(log_front) * _beta_continued_fraction(x, a, b) / a
    return 1.0 - math.exp(log_front) * _beta_continued_fraction(1.0 - x, b, a) / b


def t_cdf(t: float, df: float) -> float:
    """P(T ≤ t) for Student's t with ``df`` degrees of freedom.

    For t ≥ 0: 1 − ½·I_{df/(df+t²)}(df/2, ½); the other side by symmetry.
    """
    if df <= 0:
        raise ValueError(f"degrees of freedom must be positive, got {df}")
    tail = 0.5 * incomplete_beta(df / (df + t * t), df / 2.0, 0.5)
    return 1.0 - tail if t >= 0 else tail


def t_ppf(p: float, df: float) -> float:
    """The p-quantile of Student's t with ``df`` > 0 degrees of freedom (t_cdf inverted).

    Bisection on x = df / (df + t²) ∈ (0, 1], where the upper tail ½·I_x(df/2, ½) is monotone,
    run until the interval stops shrinking: accurate to a few ulps of x, far better than 1e-4
    in t for every df ≥ 1 and p within 1e-12 of 0 or 1. df = 1 and df = 2 have closed forms
    (Cauchy: tan(π(p − ½)); df 2: (2p − 1)/√(2p(1 − p))), used directly.
    """
    if df <= 0:
        raise ValueError(f"degrees of freedom must be positive, got {df}")
    if not 0.0 < p < 1.0:
        raise ValueError(f"t_ppf needs 0 < p < 1, got {p}")
    if p == 0.5:
        return 0.0
    if df == 1:
        return math.tan(math.pi * (p - 0.5))
    if df == 2:
        return (2 * p - 1) / math.sqrt(2 * p * (1 - p))
    upper = 1.0 - p if p > 0.5 else p  # the tail probability, < ½
    target = 2.0 * upper  # I_x(df/2, ½) = 2·tail
    low, high = 0.0, 1.0  # I_0 = 0 < target < 1 = I_1
    while True:
        mid = 0.5 * (low + high)
        if mid in (low, high):
            break
        if incomplete_beta(mid, df / 2.0, 0.5) < target:
            low = mid
        else:
            high = mid
    x = 0.5 * (low + high)
    t = math.sqrt(df * (1.0 - x) / x)
    return t if p > 0.5 else -t


def normal_ppf(p: float) -> float:
    """The p-quantile of the standard normal, by bisection on Φ(z) = ½(1 + erf(z/√2))."""
    if not 0.0 < p < 1.0:
        raise ValueError(f"normal_ppf needs 0 < p < 1, got {p}")
    low, high = -40.0, 40.0
    while True:
        mid = 0.5 * (low + high)
        if mid in (low, high):
            return mid
        if 0.5 * math.erfc(-mid / math.sqrt(2.0)) < p:
            low = mid
        else:
            high = mid


# ---------------------------------------------------------------------------------- intervals
class MeanCI(NamedTuple):
    """A mean with its confidence interval; unpacks as ``(mean, low, high)``.

    ``low``/``high`` are NaN when the interval is undefined (fewer than two values).
    """

    mean: float
    low: float
    high: float

    def to_json(self) -> dict[str, float | None]:
        return {name: _finite_or_none(value) for name, value in self._asdict().items()}


def _finite_or_none(value: float) -> float | None:
    return value if math.isfinite(value) else None


def _check_confidence(confidence: float) -> None:
    if not 0.0 < confidence < 1.0:
        raise ValueError(f"confidence must be in (0, 1), got {confidence}")


def _floats(values: Iterable[float], what: str) -> list[float]:
    out = [float(v) for v in values]
    if not out:
        raise ValueError(f"{what} is empty; need at least one value")
    bad = [v for v in out if not math.isfinite(v)]
    if bad:
        raise ValueError(f"{what} holds {len(bad)} non-finite value(s), e.g. {bad[0]}")
    return out


def mean_ci(values: Iterable[float], confidence: float = 0.95) -> MeanCI:
    """The sample mean and its Student-t confidence interval.

    ``mean ± t(1 − α/2, n − 1) · s / √n`` with s the sample standard deviation (n − 1 in the
    denominator) and α = 1 − confidence. One value gives ``(value, nan, nan)``; identical values
    give a zero-width interval.

    Args:
        values: n ≥ 1 finite numbers (anything iterable: a list, a 1-D tensor or array).
        confidence: coverage of the interval, in (0, 1).
    """
    _check_confidence(confidence)
    data = _floats(values, "values")
    n = len(data)
    mean = math.fsum(data) / n
    if n < 2:
        return MeanCI(mean, math.nan, math.nan)
    variance = math.fsum((v - mean) ** 2 for v in data) / (n - 1)
    half = t_ppf(0.5 + confidence / 2.0, n - 1) * math.sqrt(variance / n)
    return MeanCI(mean, mean - half, mean + half)


@dataclass(frozen=True)
class WinRate:
    """Paired comparison of a tuned model against a base model over n prompts.

    Attributes:
        rate: (wins + ties / 2) / n, the mean per-prompt outcome.
        low, high: Wilson score interval of ``rate`` (ties split half and half).
        wins, ties, losses: prompt counts, from the tuned model's side.
    """

    rate: float
    low: float
    high: float
    wins: int
    ties: int
    losses: int

    @property
    def n(self) -> int:
        return self.wins + self.ties + self.losses

    def to_json(self) -> dict[str, float | int]:
        return {
            "rate": self.rate,
            "low": self.low,
            "high": self.high,
            "wins": self.wins,
            "ties": self.ties,
            "losses": self.losses,
            "n": self.n,
        }


def _wilson(successes: float, n: int, confidence: float) -> tuple[float, float]:
    """Wilson score interval for a proportion ``successes / n`` (successes may be fractional).

    (p̂ + z²/2n ± z·√(p̂(1 − p̂)/n + z²/4n²)) / (1 + z²/n), z the normal (1 + confidence)/2
    quantile.
    """
    z = normal_ppf(0.5 + confidence / 2.0)
    p = successes / n
    z2n = z * z / n
    centre = (p + z2n / 2.0) / (1.0 + z2n)
    half = z * math.sqrt(p * (1.0 - p) / n + z2n / (4.0 * n)) / (1.0 + z2n)
    return max(0.0, centre - half), min(1.0, centre + half)


def win_rate_ci(
    tuned: Iterable[float],
    base: Iterable[float],
    confidence: float = 0.95,
    *,
    tie_tolerance: float = 0.0,
) -> WinRate:
    """Win rate of ``tuned`` over ``base`` from paired per-prompt scores (higher is better).

    Prompt i is a win when ``tuned[i] − base[i] > tie_tolerance``, a loss when it is below
    ``−tie_tolerance`` and a tie otherwise (so with the default 0 only exactly equal scores tie,
    as when a model is compared with itself on the same seeds). The rate is
    ``(wins + ties / 2) / n``.

    The interval is Wilson's score interval with each tie counted as half a win and half a loss.
    Wilson rather than a t-interval over the 0/½/1 outcomes because it stays inside [0, 1] and
    keeps a sensible width at the extremes and for small n (a t-interval collapses to zero
    width when every prompt is a win, or every prompt a tie). Splitting ties treats them as the
    most uncertain outcome, so with many ties the interval is conservative.

    Args:
        tuned, base: n ≥ 1 scores each, same prompt order.
        confidence: coverage of the interval, in (0, 1).
        tie_tolerance: score differences within ± this are ties (≥ 0).
    """
    _check_confidence(confidence)
    if tie_tolerance < 0:
        raise ValueError(f"tie_tolerance must be ≥ 0, got {tie_tolerance}")
    tuned_list = _floats(tuned, "tuned scores")
    base_list = _floats(base, "base scores")
    if len(tuned_list) != len(base_list):
        raise ValueError(
            f"paired scores need equal lengths, got {len(tuned_list)} tuned and "
            f"{len(base_list)} base"
        )
    wins = ties = losses = 0
    for t, b in zip(tuned_list, base_list, strict=True):
        diff = t - b
        if diff > tie_tolerance:
            wins += 1
        elif diff < -tie_tolerance:
            losses += 1
        else:
            ties += 1
    n = len(tuned_list)
    successes = wins + 0.5 * ties
    low, high = _wilson(successes, n, confidence)
    return WinRate(successes / n, low, high, wins, ties, losses)


# ---------------------------------------------------------------------------------- by category
def _groups(categories: Sequence[str], n: int) -> dict[str, list[int]]:
    if len(categories) != n:
        raise ValueError(f"got {len(categories)} categories for {n} values; pass one per value")
    groups: dict[str, list[int]] = {}
    for i, category in enumerate(categories):
        groups.setdefault(str(category), []).append(i)
    return dict(sorted(groups.items()))


def mean_ci_by_category(
    values: Sequence[float], categories: Sequence[str], confidence: float = 0.95
) -> dict[str, MeanCI]:
    """:func:`mean_ci` of the values of each category (sorted by category name)."""
    data = [float(v) for v in values]
    return {
        name: mean_ci([data[i] for i in index], confidence)
        for name, index in _groups(categories, len(data)).items()
    }


def win_rate_by_category(
    tuned: Sequence[float],
    base: Sequence[float],
    categories: Sequence[str],
    confidence: float = 0.95,
    *,
    tie_tolerance: float = 0.0,
) -> dict[str, WinRate]:
    """:func:`win_rate_ci` within each category (sorted by category name)."""
    tuned_list = [float(v) for v in tuned]
    base_list = [float(v) for v in base]
    return {
        name: win_rate_ci(
            [tuned_list[i] for i in index],
            [base_list[i] for i in index],
            confidence,
            tie_tolerance=tie_tolerance,
        )
        for name, index in _groups(categories, len(tuned_list)).items()
    }
