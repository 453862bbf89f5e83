"""Exact binomial (Clopper-Pearson) intervals, against beta quantiles computed independently."""

from __future__ import annotations

import pytest

from metashot.stats import _binom_cdf, binomial_ci


@pytest.mark.parametrize(("k", "n", "lo", "hi"), [
    # scipy.stats.beta.ppf(0.025, k, n - k + 1) and beta.ppf(0.975, k + 1, n - k), in percent
    (32, 400, 5.536, 11.106),
    (155, 400, 33.950, 43.718),
    (616, 1000, 58.505, 64.626),
    (0, 20, 0.0, 16.843),
    (20, 20, 83.157, 100.0),
])
def test_matches_beta_quantiles(k: int, n: int, lo: float, hi: float) -> None:
    got = binomial_ci(k, n)
    assert got[0] * 100 == pytest.approx(lo, abs=1e-3) and got[1] * 100 == pytest.approx(hi, abs=1e-3)


def test_tail_probabilities_at_the_bounds_are_alpha_over_two() -> None:
    k, n = 7, 50
    lo, hi = binomial_ci(k, n, level=0.9)
    assert _binom_cdf(k, n, hi) == pytest.approx(0.05, abs=1e-9)
    assert 1 - _binom_cdf(k - 1, n, lo) == pytest.approx(0.05, abs=1e-9)


def test_bad_input_is_refused() -> None:
    with pytest.raises(ValueError, match="0 <= k <= n"):
        binomial_ci(5, 4)
    with pytest.raises(ValueError, match="level"):
        binomial_ci(1, 4, level=1.5)
