"""Weighted averaging in parameter space: linear and task arithmetic."""
from __future__ import annotations

from typing import Any, Dict, List, Optional, Sequence, Tuple

from torch import Tensor

from ..registry import Param
from . import MERGES
from .common import weighted_sum

SCALE = Param("scale", "float", 1.0, 0.0, 10.0,
              help="λ: multiplies the merged task vector before it is added to the base "
                   "(mergekit's 'lambda'). Weights are normalised, so λ = N with equal weights "
                   "is the classic sum of N task vectors.")


MergekitParts = Tuple[Optional[Dict[str, Any]], str]  # (config parts, "") or (None, why not)


def linear_to_mergekit(sources: Sequence[str], weights: Sequence[float], params: Dict[str, Any],
                       base: Optional[str]) -> MergekitParts:
    """mergekit linear with normalize=true: the same normalised weighted sum."""
    return {"models": [{"model": s, "parameters": {"weight": w}} for s, w in zip(sources, weights)],
            "parameters": {"normalize": True}}, ""


def task_vector_to_mergekit(sources: Sequence[str], weights: Sequence[float], params: Dict[str, Any],
                            base: Optional[str]) -> MergekitParts:
    """mergekit's generalised task arithmetic (task_arithmetic, TIES, DARE, breadcrumbs, DELLA):
    per-model weight and sparsifier settings, shared λ, normalize and rescale."""
    if params.get("rescale") == "inverse_density":
        return None, "mergekit rescales by the L1 norm only (rescale='inverse_density')"
    models = []
    for i, (s, w) in enumerate(zip(sources, weights)):
        p: Dict[str, Any] = {"weight": w}
        for per in ("density", "gamma", "epsilon"):
            if per in params:
                value = params[per]
                p[per] = value[i] if isinstance(value, list) else value
        models.append({"model": s, "parameters": p})
    shared = {"lambda": params["scale"], "normalize": params.get("normalize", False)}
    if "rescale" in params:
        shared["rescale"] = params["rescale"] == "l1"
    return {"base_model": base, "models": models, "parameters": shared}, ""


@MERGES.register("linear", params=[], family="linear", needs_base=False, needs_data=False,
                 mergekit="linear", min_sources=1, random=False, propagates_nonfinite=True,
                 row_local="entrywise",
                 to_mergekit=linear_to_mergekit)
def linear(tensors: List[Tensor], weights: Tensor, base: Optional[Tensor] = None, *,
           key: str = "", generator=None) -> Tensor:
    """Σ w_i θ_i with normalised weights (mergekit linear, normalize=true).

    Every tensor, the classification head included, is averaged the same way; equal weights give
    the plain average, URIEL/Sinkhorn weights the similarity-weighted one. The base is not used.
    """
    return weighted_sum(tensors, weights.tolist())


@MERGES.register("task_arithmetic", params=[SCALE], family="linear", needs_base=True,
                 needs_data=False, mergekit="task_arithmetic", min_sources=1, random=False,
                 row_local="entrywise",
                 propagates_nonfinite=True, to_mergekit=task_vector_to_mergekit)
def task_arithmetic(tensors: List[Tensor], weights: Tensor, base: Tensor, *, key: str = "",
                    generator=None, scale: float = 1.0) -> Tensor:
    """θ_base + λ Σ w_i (θ_i − θ_base) (mergekit task_arithmetic with normalised weights).

    Computed as (1 − λΣw)·θ_base + λ·Σ w_i θ_i, which reads each tensor once instead of
    materialising K deltas. A classification head is absent from a pretrained base: the engine
    linear-averages it instead (recorded in the MergeReport).
    """
    w = weights.tolist()
    out = weighted_sum(tensors, w)
    if scale != 1.0:
        out.mul_(scale)
    coefficient = 1.0 - scale * sum(w)
    if coefficient != 0.0:
        out.add_(base, alpha=coefficient)
    return out
