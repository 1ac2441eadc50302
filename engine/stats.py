"""Statistics for comparing candidates: bootstrap intervals, McNemar's test, win rates, gap closed.

numpy and the standard library only (scipy is optional in this project), so a report can be made
anywhere the engine runs. Every function takes plain arrays and says what it assumes.
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Dict, Optional, Sequence, Tuple

import numpy as np

EXACT_BELOW = 25  # discordant pairs under this use the exact binomial test (the usual rule of thumb)


class StatsError(ValueError):
    """Inputs that cannot be compared (empty, different lengths, not 0/1)."""


def _correct(values, name: str) -> np.ndarray:
    arr = np.asarray(values)
    if arr.ndim != 1 or arr.size == 0:
        raise StatsError(f"{name} must be a non-empty 1-D array of per-example correctness")
    if arr.dtype == bool:
        return arr
    if not np.isin(arr, (0, 1)).all():
        raise StatsError(f"{name} must hold 0/1 (or booleans) per example")
    return arr.astype(bool)


# ---- bootstrap ---------------------------------------------------------------------------------
def bootstrap_ci(values: Sequence[float], n_boot: int = 2000, alpha: float = 0.05, seed: int = 0,
                 chunk: int = 250) -> Tuple[float, float, float]:
    """(mean, low, high): percentile bootstrap interval of the mean of per-example values.

    For 0/1 correctness the number of correct examples in a resample of n is exactly
    Binomial(n, accuracy), so that case draws binomials (same distribution, no n×B index array);
    other values resample indices in chunks of ``chunk`` resamples.
    """
    x = np.asarray(values, dtype=np.float64)
    if x.ndim != 1 or x.size == 0:
        raise StatsError("bootstrap_ci needs a non-empty 1-D array")
    if not 0 < alpha < 1:
        raise StatsError(f"alpha must be in (0, 1), got {alpha}")
    if n_boot < 1:
        raise StatsError(f"n_boot must be at least 1, got {n_boot}")
    rng = np.random.default_rng(seed)
    n, mean = x.size, float(x.mean())
    if np.isin(x, (0.0, 1.0)).all():
        means = rng.binomial(n, mean, size=n_boot) / n
    else:
        parts = []
        for lo in range(0, n_boot, chunk):
            idx = rng.integers(0, n, size=(min(chunk, n_boot - lo), n))
            parts.append(x[idx].mean(axis=1))
        means = np.concatenate(parts)
    low, high = np.quantile(means, [alpha / 2, 1 - alpha / 2])
    return mean, float(low), float(high)


def paired_bootstrap_ci(a: Sequence[float], b: Sequence[float], n_boot: int = 2000, alpha: float = 0.05,
                        seed: int = 0) -> Tuple[float, float, float]:
    """Interval of mean(a − b) resampling examples jointly (the two scores are paired)."""
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    if a.shape != b.shape:
        raise StatsError(f"paired values differ in length: {a.shape} vs {b.shape}")
    return bootstrap_ci(a - b, n_boot=n_boot, alpha=alpha, seed=seed)


# ---- McNemar -------------------------------------------------------------------------------------
@dataclass(frozen=True)
class McNemar:
    """b = A right & B wrong, c = A wrong & B right; test of H0: both are right equally often."""

    b: int
    c: int
    statistic: float
    p_value: float
    method: str          # "exact" (two-sided binomial) or "chi2" (continuity corrected)

    def to_dict(self) -> Dict[str, object]:
        return asdict(self)


def binomial_two_sided(k: int, n: int) -> float:
    """Exact two-sided p-value of k successes in n fair coin flips: 2·P(X ≤ min(k, n−k)), capped at 1."""
    if n == 0:
        return 1.0
    low = min(k, n - k)
    tail = sum(math.comb(n, i) for i in range(low + 1))
    return min(1.0, 2 * tail / 2 ** n)   # exact integers, one correctly rounded division


def chi2_sf_1df(x: float) -> float:
    """Survival function of the chi-square distribution with one degree of freedom."""
    return math.erfc(math.sqrt(max(x, 0.0) / 2.0))


def mcnemar(a_correct, b_correct, exact: Optional[bool] = None) -> McNemar:
    """Paired McNemar test between two methods' per-example correctness on the same examples.

    ``exact=None`` picks the exact binomial test when b + c < 25 and the continuity-corrected
    chi-square statistic (|b − c| − 1)² / (b + c) otherwise.
    """
    a, b_ = _correct(a_correct, "a_correct"), _correct(b_correct, "b_correct")
    if a.shape != b_.shape:
        raise StatsError(f"the two methods were scored on different examples ({a.size} vs {b_.size})")
    b = int(np.sum(a & ~b_))
    c = int(np.sum(~a & b_))
    n = b + c
    use_exact = n < EXACT_BELOW if exact is None else exact
    if n == 0:
        return McNemar(b, c, 0.0, 1.0, "exact" if use_exact else "chi2")
    if use_exact:
        return McNemar(b, c, float(min(b, c)), binomial_two_sided(min(b, c), n), "exact")
    stat = (abs(b - c) - 1) ** 2 / n
    return McNemar(b, c, float(stat), chi2_sf_1df(stat), "chi2")


# ---- across targets -------------------------------------------------------------------------------
def win_rate(method: Sequence[float], baseline: Sequence[float]) -> Dict[str, float]:
    """Share of targets where the method is strictly better than the baseline.

    Pairs where either value is missing (NaN) are skipped; ties are counted separately and are not
    wins. ``rate`` is NaN when no pair is left.
    """
    m, b = np.asarray(method, dtype=np.float64), np.asarray(baseline, dtype=np.float64)
    if m.shape != b.shape:
        raise StatsError(f"win_rate needs one baseline value per method value ({m.shape} vs {b.shape})")
    ok = ~(np.isnan(m) | np.isnan(b))
    m, b = m[ok], b[ok]
    wins, ties = int(np.sum(m > b)), int(np.sum(m == b))
    n = int(m.size)
    return {"wins": wins, "ties": ties, "losses": n - wins - ties, "n": n,
            "rate": wins / n if n else float("nan")}


def gap_closed(method: Sequence[float], equal_merge: Sequence[float],
               target_model: Sequence[float]) -> np.ndarray:
    """Per target, (method − equal_merge) / (target_model − equal_merge).

    How much of the distance from the naive baseline (the equal-weight linear merge of the same
    sources) to the upper bound (the target language's own model) a method covers: 0 = no better
    than averaging, 1 = as good as having a model for the target, negative = worse than averaging.
    Undefined (NaN) where the target model is not better than the equal merge (nothing to close)
    or a value is missing.
    """
    m, e, t = (np.asarray(v, dtype=np.float64) for v in (method, equal_merge, target_model))
    if not (m.shape == e.shape == t.shape):
        raise StatsError(f"gap_closed needs aligned arrays ({m.shape}, {e.shape}, {t.shape})")
    gap = t - e
    with np.errstate(divide="ignore", invalid="ignore"):
        out = (m - e) / gap
    out[~(gap > 0)] = np.nan
    return out


def mean_or_nan(values: Sequence[float]) -> float:
    arr = np.asarray(values, dtype=np.float64)
    arr = arr[~np.isnan(arr)]
    return float(arr.mean()) if arr.size else float("nan")
