"""Merges that look at the geometry of the weights: SLERP and model stock."""
from __future__ import annotations

import math
from typing import Any, Dict, List, Optional, Sequence

import torch
from torch import Tensor

from ..registry import Param
from . import MERGES
from .common import MergeError
from .linear import MergekitParts

DOT_THRESHOLD = 0.9995  # mergekit: |cos| above this counts as (anti)parallel -> linear
NORM_EPS = 1e-8


SLICE = 1 << 20  # entries per step: the temporaries of a step stay in cache, none is tensor-sized


def slerp_pair(a: Tensor, b: Tensor, t: float) -> Tensor:
    """mergekit's SLERP of two whole tensors, treated as flat vectors.

    The angle comes from the normalised vectors; the sin-weights are applied to the unnormalised
    tensors; near-(anti)parallel pairs (|cos| > 0.9995) and zero vectors fall back to
    (1 − t)·a + t·b. Slice by slice (SLICE entries): the normalised vectors and the weighted
    terms are never whole tensors (an XLM-R embedding made five 768 MB temporaries, each paying
    its page faults: 2x mergekit's time). The dot's slice sums are added in float64; a tensor of
    one slice gets the whole-tensor sum, as before.
    """
    if t == 0:
        return a.clone()
    if t == 1:
        return b.clone()
    fa, fb = a.reshape(-1), b.reshape(-1)
    norm_a, norm_b = torch.linalg.vector_norm(fa), torch.linalg.vector_norm(fb)
    norm_a = norm_a if norm_a > NORM_EPS else torch.ones_like(norm_a)
    norm_b = norm_b if norm_b > NORM_EPS else torch.ones_like(norm_b)
    dot = 0.0
    for at in range(0, fa.numel(), SLICE):
        part = torch.div(fa[at:at + SLICE], norm_a).mul_(torch.div(fb[at:at + SLICE], norm_b))
        dot += float(part.sum())
    dot = min(1.0, max(-1.0, dot))
    if abs(dot) > DOT_THRESHOLD:
        coef_a, coef_b = 1 - t, t
    else:
        theta = math.acos(dot)
        sin_theta = math.sin(theta)
        coef_a, coef_b = math.sin((1 - t) * theta) / sin_theta, math.sin(t * theta) / sin_theta
    out = torch.empty_like(a)
    flat = out.reshape(-1)
    for at in range(0, fa.numel(), SLICE):  # coef_a·a + coef_b·b, the same float32 operations
        piece = flat[at:at + SLICE]
        torch.mul(fa[at:at + SLICE], coef_a, out=piece)
        piece.add_(torch.mul(fb[at:at + SLICE], coef_b))
    return out


def slerp_to_mergekit(sources: Sequence[str], weights: Sequence[float], params: Dict[str, Any],
                      base: Optional[str]) -> MergekitParts:
    """mergekit slerp: base_model = source 1, t = w_2 (weights normalised); two models only."""
    if len(sources) != 2:
        return None, "mergekit's slerp takes exactly two models (ours chains pairs)"
    return {"base_model": sources[0], "models": [{"model": sources[0]}, {"model": sources[1]}],
            "parameters": {"t": weights[1]}}, ""


@MERGES.register("slerp", params=[], family="geometric", needs_base=False, needs_data=False,
                 mergekit="slerp", min_sources=1, random=False, to_mergekit=slerp_to_mergekit)
def slerp(tensors: List[Tensor], weights: Tensor, base: Optional[Tensor] = None, *,
          key: str = "", generator=None) -> Tensor:
    """Spherical interpolation, per tensor; the weights set the interpolation factor.

    Two models: slerp(θ_1, θ_2, t) with t = w_2 / (w_1 + w_2) — exactly mergekit's slerp with
    base_model = source 1 and parameter t. More models: sequential pairs in source order,
    r_1 = θ_1, r_j = slerp(r_{j−1}, θ_j, t_j = w_j / (w_1 + … + w_j)), so the running weights
    accumulate and aligned vectors give exactly the weighted linear average (the result depends
    on source order otherwise). The pretrained base is not used; the classification head is
    interpolated like every other tensor.
    """
    w = weights.tolist()
    out = tensors[0]
    acc = w[0]
    for t_j, w_j in zip(tensors[1:], w[1:]):
        acc += w_j
        if w_j == 0:
            continue
        out = slerp_pair(out, t_j, w_j / acc)
    return out.clone() if out is tensors[0] else out


def model_stock_to_mergekit(sources: Sequence[str], weights: Sequence[float], params: Dict[str, Any],
                            base: Optional[str]) -> MergekitParts:
    """mergekit model_stock: a plain mean of the sources, so equal weights only."""
    if max(weights) - min(weights) > 1e-9:
        return None, "mergekit's model_stock averages with equal weights only"
    return {"base_model": base, "models": [{"model": s} for s in sources],
            "parameters": {"filter_wise": params["filter_wise"]}}, ""


@MERGES.register("model_stock", params=[
    Param("filter_wise", "bool", False,
          help="one interpolation ratio per output row (filter) instead of per tensor")],
    family="geometric", needs_base=True, needs_data=False, mergekit="model_stock", min_sources=2,
    random=False, to_mergekit=model_stock_to_mergekit)
def model_stock(tensors: List[Tensor], weights: Tensor, base: Tensor, *, key: str = "",
                generator=None, filter_wise: bool = False) -> Tensor:
    """Model stock (mergekit formula): t = N·cosθ / (1 + (N − 1)·cosθ), θ ↦ t·avg + (1 − t)·base.

    cosθ is the mean pairwise cosine between the fine-tuned deltas δ_i = θ_i − θ_base (per tensor,
    or per row with filter_wise), avg = Σ w_i θ_i (equal weights = mergekit's plain mean). Where
    1 + (N − 1)·cosθ ≈ 0 the base is kept, as in mergekit. Needs N ≥ 2 sources; sources with
    weight 0 are left out (a single remaining one is returned as is). A classification head
    missing from the pretrained base is linear-averaged by the engine instead.
    """
    if len(tensors) < 2:
        raise MergeError("model_stock needs at least 2 source models")
    w = weights.tolist()
    tensors = [t for t, wi in zip(tensors, w) if wi > 0]  # weight 0: not part of the stock
    w = [wi for wi in w if wi > 0]
    if len(tensors) == 1:
        return tensors[0].clone()
    shape = base.shape
    if filter_wise:
        w0 = base if base.dim() >= 2 else base.unsqueeze(0)
        ws = [t if t.dim() >= 2 else t.unsqueeze(0) for t in tensors]
    else:
        w0, ws = base.reshape(-1), [t.reshape(-1) for t in tensors]
    offsets = [t - w0 for t in ws]
    cosines = []
    for i, a in enumerate(offsets):
        for b in offsets[i + 1:]:
            norms = torch.norm(a, dim=-1) * torch.norm(b, dim=-1)
            cosines.append(((a * b).sum(dim=-1) / norms.clamp(min=1e-6)).clamp(-1, 1))
    cos = torch.stack(cosines).mean(dim=0).unsqueeze(-1)
    n = len(ws)
    denominator = 1 + (n - 1) * cos
    singular = denominator.abs() < 1e-6
    ratio = torch.where(singular, torch.zeros_like(cos),
                        n * cos / torch.where(singular, torch.ones_like(denominator), denominator))
    average = torch.zeros_like(ws[0])
    for t, wi in zip(ws, w):
        average.add_(t, alpha=wi)
    return (ratio * average + (1 - ratio) * w0).reshape(shape)
