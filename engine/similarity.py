"""Similarity maths, free of URIEL: cosine over feature vectors with missing values, top-K per row,
Sinkhorn balancing. ``engine.languages`` applies them to lang2vec vectors."""
from __future__ import annotations

from typing import List

import numpy as np


def cosine_similarity(vectors) -> np.ndarray:
    """Pairwise cosine of the rows, each pair over the features both have (NaN = missing).

    A pair with no common nonzero feature (e.g. an all-zero vector) gets 0, where cosine is
    undefined; the diagonal is always 1. Never NaN."""
    x = np.asarray(vectors, dtype=np.float64)
    if x.ndim != 2:
        raise ValueError(f"vectors must be a 2-D array (one row per language), got shape {x.shape}")
    seen = (~np.isnan(x)).astype(np.float64)
    x0 = np.nan_to_num(x, nan=0.0)
    dot = x0 @ x0.T
    norms2 = (x0 ** 2) @ seen.T  # [i, j]: |x_i|^2 over the features row j has
    denom = np.sqrt(norms2 * norms2.T)
    sim = np.divide(dot, denom, out=np.zeros_like(dot), where=denom > 0)
    sim = np.clip(sim, -1.0, 1.0)
    np.fill_diagonal(sim, 1.0)
    return sim


def _check_int(name: str, value: object, low: int) -> int:
    ok = isinstance(value, (int, np.integer)) and not isinstance(value, bool)
    if not ok or value < low:
        raise ValueError(f"{name} must be a whole number >= {low}, got {value!r}")
    return int(value)


def _square(matrix, what: str) -> np.ndarray:
    m = np.array(matrix, dtype=np.float64)
    if m.ndim != 2 or m.shape[0] != m.shape[1]:
        raise ValueError(f"{what} needs a square matrix, got shape {m.shape}")
    if not np.isfinite(m).all():
        raise ValueError(f"{what} needs finite values, got NaN or infinity")
    return m


TIE_DECIMALS = 12  # similarities equal to 12 decimals are a tie (float noise is not an order)


def _top_indices(row: np.ndarray, self_index: int, k: int, secondary=None) -> List[int]:
    """Indices of the k largest entries but ``self_index``. Ties (equal to TIE_DECIMALS) go to the
    larger ``secondary`` score when one is given (one value per index), then to the earlier index."""
    others = [j for j in range(len(row)) if j != self_index]
    primary = np.round(np.asarray(row, dtype=np.float64)[others], TIE_DECIMALS)
    second = np.zeros(len(others)) if secondary is None else np.asarray(secondary, np.float64)[others]
    order = np.lexsort((np.arange(len(others)), -second, -primary))[:k]
    return [others[j] for j in order]


def top_k_filter(matrix, k: int, secondary=None) -> np.ndarray:
    """Keeps exactly min(k, n-1) largest off-diagonal entries per row; everything else is 0.
    ``secondary`` (a matrix like ``matrix``) breaks ties row by row, see ``_top_indices``."""
    m = _square(matrix, "top_k_filter")
    k = _check_int("top_k", k, 1)
    out = np.zeros_like(m)
    for i in range(m.shape[0]):
        kept = _top_indices(m[i], i, k, None if secondary is None else secondary[i])
        out[i, kept] = m[i, kept]
    return out


def sinkhorn(matrix, iterations: int = 20) -> np.ndarray:
    """Alternately scales rows then columns of a nonnegative matrix to sum 1, ``iterations`` times.

    0 iterations returns the input. All-zero rows/columns stay zero (no division by zero); the
    last step is a column step, so columns sum to 1 exactly and rows approach 1 as it converges."""
    m = _square(matrix, "sinkhorn")
    iterations = _check_int("sinkhorn_iters", iterations, 0)
    if (m < 0).any():
        raise ValueError("sinkhorn needs a nonnegative matrix (clip negative similarities first)")
    for _ in range(iterations):
        rows = m.sum(axis=1, keepdims=True)
        m = np.divide(m, rows, out=np.zeros_like(m), where=rows > 0)
        cols = m.sum(axis=0, keepdims=True)
        m = np.divide(m, cols, out=np.zeros_like(m), where=cols > 0)
    return m


def tie_notes(row: np.ndarray, self_index: int, kept: List[int], names: List[str], k: int,
              rule: str) -> List[str]:
    """One note per group of tied neighbours among the kept top-K (``rule`` says how the tie was
    broken), naming which of them a tie at the K boundary kept."""
    rounded = {j: round(float(row[j]), TIE_DECIMALS) for j in range(len(row)) if j != self_index}
    notes = []
    for value in dict.fromkeys(rounded[j] for j in kept):
        tied = [j for j, v in rounded.items() if v == value]
        if len(tied) < 2 or value <= 0:
            continue
        chosen = [names[j] for j in kept if j in tied]
        if len(chosen) == len(tied):
            notes.append(f"{', '.join(chosen)} tie at {value:.4f}: all kept, listed by {rule}")
        else:
            notes.append(f"{', '.join(names[j] for j in tied)} tie at {value:.4f} for the last "
                         f"{len(chosen)} top-{k} place(s): kept {', '.join(chosen)} (ties broken "
                         f"by {rule})")
    return notes
