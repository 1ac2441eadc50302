"""Shared pieces of the sparsified task-vector merges (engine/merge/sparse.py registers them):
their common Params, the L1 norm as mergekit sums it, and the whole-delta fallback kernel.
TIES' trim lives in sparse_trim.py, DARE's and DELLA's random drops in sparse_drop.py."""
from __future__ import annotations

from typing import Callable, List, Optional

from torch import Tensor

from ..registry import Param
from .combine import combine, whole

RESCALES = ("l1", "inverse_density", "none")


def density_param(default: float) -> Param:
    return Param("density", "float", default, 0.0, 1.0, per_model=True, low_open=True,
                 help="fraction of each task vector's entries kept, in (0, 1]; one value or "
                      "one per model")


def normalize_param(default: bool) -> Param:
    return Param("normalize", "bool", default,
                 help="divide the merged delta by the summed weights of the entries that "
                      "contribute (per entry under sign consensus)")


def rescale_param(default: str) -> Param:
    return Param("rescale", "choice", default, choices=RESCALES,
                 help="after random dropping: 'l1' restores each delta's L1 norm (mergekit), "
                      "'inverse_density' divides survivors by their keep probability (DARE/DELLA "
                      "papers), 'none' keeps them as they are")


GAMMA = Param("gamma", "float", 0.01, 0.0, 1.0, per_model=True,
              help="breadcrumbs: fraction of the largest-magnitude entries removed as outliers")
EPSILON = Param("epsilon", "float", 0.15, 0.0, 0.5, per_model=True,
                help="DELLA: keep probabilities spread over density ± epsilon by magnitude rank")


def l1_norm(t: Tensor) -> Tensor:
    """‖t‖₁ summed as mergekit sums it (|t|.sum(): vector_norm's order differs in the last bits,
    enough to flip a sign election where the weighted deltas nearly cancel)."""
    return t.abs().sum()


def as_rows(delta: Tensor) -> Tensor:
    return delta if delta.dim() >= 2 else delta.reshape(1, -1)


def task_merge(tensors: List[Tensor], weights: Tensor, base: Tensor, *,
               sparsify: Optional[Callable[[Tensor, int], Tensor]], consensus: bool,
               normalize: bool, scale: float) -> Tensor:
    """base + λ · [Σ_i w_i m_i s(δ_i)] / [Σ_i w_i m_i if normalize] (see ``combine``)."""
    w = weights.tolist()
    pieces = []
    for i, t in enumerate(tensors):
        d = t - base
        pieces.append(whole((sparsify(d, i) if sparsify is not None else d).mul_(w[i])))
    return combine(pieces, w, base, consensus=consensus, normalize=normalize, scale=scale)
