"""Confidence intervals for figures that are counts of successes (Lake's error rates, small trial counts)."""

from __future__ import annotations

import math


def _binom_cdf(k: int, n: int, p: float) -> float:
    """P(X <= k) for X ~ Binomial(n, p), summed in log space (exact enough for n up to a few thousand)."""
    if p <= 0.0:
        return 1.0
    if p >= 1.0:
        return 1.0 if k >= n else 0.0
    lp, lq = math.log(p), math.log1p(-p)
    return min(1.0, sum(math.exp(math.lgamma(n + 1) - math.lgamma(i + 1) - math.lgamma(n - i + 1)
                                 + i * lp + (n - i) * lq) for i in range(k + 1)))


def _solve(f, lo: float = 0.0, hi: float = 1.0) -> float:
    """Root of a function that decreases from >= 0 at ``lo`` to <= 0 at ``hi``, by bisection."""
    for _ in range(100):
        mid = (lo + hi) / 2
        if f(mid) > 0:
            lo = mid
        else:
            hi = mid
    return (lo + hi) / 2


def binomial_ci(k: int, n: int, level: float = 0.95) -> tuple[float, float]:
    """Exact (Clopper-Pearson) two-sided confidence interval of a proportion ``k / n``, as fractions.

    ``lower`` solves P(X >= k | lower) = alpha / 2 and ``upper`` solves P(X <= k | upper) = alpha / 2 (0 and 1
    at the ends). Conservative: its coverage is at least ``level`` for every true proportion.
    """
    if n < 1 or not 0 <= k <= n:
        raise ValueError(f"binomial_ci: need 0 <= k <= n and n >= 1, got k={k}, n={n}")
    if not 0.0 < level < 1.0:
        raise ValueError(f"binomial_ci: level must lie in (0, 1), got {level}")
    a = (1.0 - level) / 2
    lower = 0.0 if k == 0 else _solve(lambda p: a - (1.0 - _binom_cdf(k - 1, n, p)))
    upper = 1.0 if k == n else _solve(lambda p: _binom_cdf(k, n, p) - a)
    return lower, upper
