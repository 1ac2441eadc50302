"""Statistics against hand-computed cases (and scipy where it is installed)."""
import math

import numpy as np
import pytest

from engine import stats


def pair(b, c, both=0, neither=0):
    """Correctness vectors with b (A right, B wrong) and c (A wrong, B right) discordant pairs."""
    a = [1] * b + [0] * c + [1] * both + [0] * neither
    bb = [0] * b + [1] * c + [1] * both + [0] * neither
    return np.array(a), np.array(bb)


def test_mcnemar_exact_small_counts_by_hand():
    t = stats.mcnemar(*pair(3, 0, both=5))
    assert (t.b, t.c, t.method) == (3, 0, "exact")
    assert t.p_value == pytest.approx(2 * 1 / 8)                    # 2·P(X≤0), X~Bin(3, ½)
    t = stats.mcnemar(*pair(10, 2, both=20, neither=3))
    assert t.method == "exact"
    assert t.p_value == pytest.approx(2 * (1 + 12 + 66) / 4096)      # 2·P(X≤2), X~Bin(12, ½)
    t = stats.mcnemar(*pair(4, 4))
    assert t.p_value == 1.0                                           # symmetric: capped at 1
    t = stats.mcnemar(*pair(0, 0, both=7))
    assert (t.b, t.c, t.p_value) == (0, 0, 1.0)


def test_mcnemar_chi_square_with_continuity_correction_by_hand():
    t = stats.mcnemar(*pair(30, 10, both=50))
    assert t.method == "chi2"
    assert t.statistic == pytest.approx((20 - 1) ** 2 / 40)
    assert t.p_value == pytest.approx(math.erfc(math.sqrt(9.025 / 2)))
    assert t.p_value == pytest.approx(0.002663, abs=2e-6)            # chi2(1) table value
    forced = stats.mcnemar(*pair(3, 0), exact=False)
    assert forced.method == "chi2" and forced.statistic == pytest.approx(4 / 3)


def test_mcnemar_matches_scipy():
    scipy_stats = pytest.importorskip("scipy.stats", reason="scipy not installed: hand-computed cases only")
    for b, c in [(0, 5), (7, 2), (12, 12), (11, 13), (20, 9), (40, 61), (150, 110)]:
        t = stats.mcnemar(*pair(b, c, both=5))
        if b + c < stats.EXACT_BELOW:
            expected = scipy_stats.binomtest(min(b, c), b + c, 0.5).pvalue
        else:
            expected = scipy_stats.chi2.sf((abs(b - c) - 1) ** 2 / (b + c), 1)
        assert t.p_value == pytest.approx(expected, rel=1e-9), (b, c)
        exact = stats.mcnemar(*pair(b, c), exact=True)
        assert exact.p_value == pytest.approx(scipy_stats.binomtest(b, b + c, 0.5).pvalue, rel=1e-9)


def test_mcnemar_rejects_bad_input():
    with pytest.raises(stats.StatsError, match="different examples"):
        stats.mcnemar([1, 0, 1], [1, 0])
    with pytest.raises(stats.StatsError, match="0/1"):
        stats.mcnemar([1, 2], [1, 0])
    with pytest.raises(stats.StatsError, match="non-empty"):
        stats.mcnemar([], [])


def test_bootstrap_ci_is_seeded_degenerate_and_covers_the_truth():
    x = np.array([1, 0, 1, 1, 0, 1, 1, 1])
    assert stats.bootstrap_ci(x, seed=3) == stats.bootstrap_ci(x, seed=3)
    assert stats.bootstrap_ci(np.ones(20)) == (1.0, 1.0, 1.0)
    mean, lo, hi = stats.bootstrap_ci(x)
    assert mean == 0.75 and lo < mean < hi
    # coverage sanity: 95% intervals from 300 samples of n=200 Bernoulli(0.7) contain 0.7 about 95% of the time
    rng = np.random.default_rng(0)
    hits = sum(lo <= 0.7 <= hi for lo, hi in
               (stats.bootstrap_ci(rng.random(200) < 0.7, n_boot=500, seed=i)[1:] for i in range(300)))
    assert 0.90 <= hits / 300 <= 0.99


def test_bootstrap_binary_shortcut_agrees_with_resampling_indices():
    x = (np.random.default_rng(1).random(150) < 0.6).astype(float)
    _, lo, hi = stats.bootstrap_ci(x, n_boot=4000, seed=0)
    _, lo2, hi2 = stats.bootstrap_ci(2 * x, n_boot=4000, seed=0)   # values {0, 2}: the index path
    assert lo2 / 2 == pytest.approx(lo, abs=0.015) and hi2 / 2 == pytest.approx(hi, abs=0.015)
    # a normal sample: the interval of the mean is about ±1.96·σ/√n
    y = np.random.default_rng(2).normal(5.0, 2.0, size=400)
    m, lo, hi = stats.bootstrap_ci(y, n_boot=3000)
    assert (hi - lo) / 2 == pytest.approx(1.96 * y.std() / 20, rel=0.1) and lo < m < hi
    d, dlo, dhi = stats.paired_bootstrap_ci([1, 1, 1, 0], [0, 1, 0, 0])
    assert d == 0.5 and dlo <= d <= dhi
    with pytest.raises(stats.StatsError):
        stats.bootstrap_ci([], n_boot=10)


def test_win_rate_counts_strict_wins_and_skips_missing():
    w = stats.win_rate([0.5, 0.6, 0.7, np.nan], [0.4, 0.6, 0.8, 0.1])
    assert w == {"wins": 1, "ties": 1, "losses": 1, "n": 3, "rate": pytest.approx(1 / 3)}
    assert math.isnan(stats.win_rate([np.nan], [0.3])["rate"])
    with pytest.raises(stats.StatsError):
        stats.win_rate([0.1, 0.2], [0.1])


def test_gap_closed_between_equal_merge_and_target_model():
    g = stats.gap_closed([0.6, 0.4, 0.9, 0.5, 0.7], [0.5, 0.5, 0.5, 0.8, 0.6], [0.7, 0.8, 0.9, 0.7, np.nan])
    assert g[0] == pytest.approx(0.5)             # half way from the equal merge to the target model
    assert g[1] == pytest.approx(-1 / 3)          # worse than averaging
    assert g[2] == pytest.approx(1.0)             # as good as the target model
    assert math.isnan(g[3]) and math.isnan(g[4])  # nothing to close / missing target model
    assert stats.mean_or_nan(g) == pytest.approx((0.5 - 1 / 3 + 1.0) / 3)
