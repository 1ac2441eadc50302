"""SCE (select, calculate, erase; FuseChat, arXiv 2408.07990): mergekit 0.1.5's ``sce`` method."""
from __future__ import annotations

from typing import List

import torch
from torch import Tensor

from ..registry import Param
from . import MERGES


def sce_select(task_vectors: Tensor, fraction: float) -> Tensor:
    """Mask of the ``fraction`` of entries (of those that vary at all) where the task vectors
    disagree most (largest variance across models): mergekit's ``sce_mask``."""
    if fraction <= 0:
        return torch.zeros_like(task_vectors[0])
    if fraction >= 1:
        return torch.ones_like(task_vectors[0])
    var = torch.var(task_vectors, dim=0, unbiased=False)
    k = int(torch.count_nonzero(var) * fraction)
    mask = torch.zeros_like(var)
    if k == 0:
        return mask
    _, indices = torch.topk(var.abs().view(-1), k=k, largest=True)
    mask.view(-1)[indices] = 1
    return mask


def sce_to_mergekit(sources, weights, params, base):
    """mergekit's sce takes no weights: exportable when the used weights are equal."""
    used = [(s, w) for s, w in zip(sources, weights) if w > 0]
    if max(w for _, w in used) - min(w for _, w in used) > 1e-9:
        return None, "mergekit's sce takes no per-model weights (equal weights only)"
    if not base:
        return None, "recipe has no base model"
    return {"base_model": base, "models": [{"model": s} for s, _ in used],
            "parameters": {"select_topk": params["select_topk"]}}, ""


@MERGES.register("sce", params=[
    Param("select_topk", "float", 1.0, 0.0, 1.0, low_open=True,
          help="fraction of entries kept: those whose task vectors vary most across models")],
    family="sparse", title="SCE", needs_base=True, mergekit="sce", min_sources=1, data_use="none",
    to_mergekit=sce_to_mergekit)
def sce(tensors: List[Tensor], weights: Tensor, base: Tensor, *, key: str = "", generator=None,
        select_topk: float = 1.0) -> Tensor:
    """SCE on task vectors δ_i = θ_i − θ_base, per tensor: keep the ``select_topk`` fraction of
    entries with the largest variance across models; weight each model by its share of the
    task vectors' energy, mean(δ_i²); elect a sign per entry by the sum of the δ_i (as TIES) and
    average only the agreeing entries with those weights; add to the base.

    The engine's weights w_i (mergekit's sce has none) scale each model's energy weight and its
    vote as w_i / max w, so equal weights are exactly mergekit's and weight 0 leaves a source
    out. A classification head missing from the base is linear-averaged by the engine.
    """
    w = weights.tolist()
    top = max(w)
    used = [(t, wi / top) for t, wi in zip(tensors, w) if wi > 0]
    task_vectors = torch.stack([t - base for t, _ in used], dim=0)
    scale = torch.tensor([s for _, s in used], dtype=task_vectors.dtype, device=task_vectors.device)
    scale = scale.view(-1, *([1] * (task_vectors.dim() - 1)))
    if select_topk < 1:
        task_vectors = task_vectors * sce_select(task_vectors, select_topk).unsqueeze(0)
    majority = ((task_vectors * scale).sum(dim=0) >= 0).to(task_vectors.dtype) * 2 - 1
    agree = task_vectors.sign() == majority
    energy = task_vectors.square().reshape(task_vectors.shape[0], -1).mean(dim=1) * scale.reshape(-1)
    total = torch.sum(energy).item()
    energy = torch.ones_like(energy) / energy.shape[0] if abs(total) < 1e-6 else energy / total
    energy = energy.view(-1, *([1] * (task_vectors.dim() - 1)))
    erased = energy * agree
    merged = (task_vectors * erased).sum(dim=0) / torch.sum(erased, dim=0).clamp(min=1e-6)
    return base + merged
