"""mergekit's newer spherical merges: Karcher mean, multi-SLERP and NuSLERP.

Each kernel is mergekit 0.1.5's formula (``mergekit/merge_methods/{karcher,multislerp,nuslerp}.py``)
on whole tensors, with the engine's normalised weights where mergekit takes weights; its
``to_mergekit`` hook writes the mergekit.yaml that reproduces it (tests/test_merge_parity_mergekit_new.py
reruns it). None of them reads the pretrained base: mergekit's multislerp/nuslerp can take a
base_model (then they interpolate task vectors), ours interpolate the models themselves, which
is mergekit's behaviour without base_model. The classification head is merged like every tensor.
"""
from __future__ import annotations

from typing import List, Optional

import torch
from torch import Tensor

from ..registry import Param
from . import MERGES
from .common import MergeError


def _weighted_models(sources, weights, extra=None):
    return [{"model": s, "parameters": {"weight": w, **(extra or {})}}
            for s, w in zip(sources, weights)]


# ---- Karcher mean -------------------------------------------------------------------------------

def karcher_mean(tensors: List[Tensor], alphas: List[float], max_iter: int = 10,
                 tol: float = 1e-5) -> Tensor:
    """Weighted Karcher (Riemannian) mean of the tensors' directions on the unit sphere, scaled
    by the weighted mean norm: mergekit's ``karcher_merge_tensors`` step for step."""
    if len(tensors) == 1:
        return tensors[0].clone()
    dtype = torch.float64 if tensors[0].dtype == torch.float64 else torch.float32
    norms, units = [], []
    for tensor in tensors:
        norm = torch.linalg.vector_norm(tensor.to(dtype))
        norms.append(norm)
        units.append(torch.zeros_like(tensor) if norm.item() == 0.0 else (tensor / norm).to(tensor.dtype))
    valid = [i for i, n in enumerate(norms) if n.item() > tol]
    if not valid:
        return torch.zeros_like(tensors[0])
    total = sum(alphas[i] for i in valid)
    valid_alphas = [alphas[i] / total for i in valid]
    valid_units = [units[i] for i in valid]
    mean = torch.zeros_like(valid_units[0])
    for alpha, unit in zip(valid_alphas, valid_units):
        mean += alpha * unit
    mean_norm = torch.linalg.vector_norm(mean.to(dtype))
    mean = valid_units[0].clone() if mean_norm.item() < tol else (mean / mean_norm).to(mean.dtype)
    for _ in range(max_iter):
        tangent = torch.zeros_like(mean)
        for alpha, unit in zip(valid_alphas, valid_units):
            dot = torch.clamp(torch.dot(mean.flatten(), unit.flatten()), -1.0, 1.0)
            theta = torch.arccos(dot)
            if theta.item() < tol:
                continue
            tangent += alpha * (theta / torch.sin(theta)) * (unit - dot * mean)
        tangent_norm = torch.linalg.vector_norm(tangent.to(dtype))
        if tangent_norm.item() < tol:
            break
        mean = (torch.cos(tangent_norm) * mean
                + torch.sin(tangent_norm) * (tangent / tangent_norm)).to(mean.dtype)
        unit_norm = torch.linalg.vector_norm(mean.to(dtype))
        if unit_norm.item() > tol:
            mean = (mean / unit_norm).to(mean.dtype)
    scale = sum(alpha * norm for alpha, norm in zip(alphas, norms))
    return scale * mean


def karcher_to_mergekit(sources, weights, params, base):
    """mergekit's karcher averages with equal weights: exportable when the used weights are equal."""
    used = [(s, w) for s, w in zip(sources, weights) if w > 0]
    if max(w for _, w in used) - min(w for _, w in used) > 1e-9:
        return None, "mergekit's karcher averages with equal weights only"
    return {"models": [{"model": s} for s, _ in used],
            "parameters": {"max_iter": params["max_iter"], "tol": params["tol"]}}, ""


@MERGES.register("karcher", params=[
    Param("max_iter", "int", 10, 1, 1000, help="Riemannian gradient steps towards the mean direction"),
    Param("tol", "float", 1e-5, 0.0, 1.0,
          help="stop when the tangent step is this small; norms below it count as zero")],
    family="geometric", title="Karcher mean", needs_base=False, mergekit="karcher", min_sources=1,
    data_use="none", to_mergekit=karcher_to_mergekit)
def karcher(tensors: List[Tensor], weights: Tensor, base: Optional[Tensor] = None, *, key: str = "",
            generator=None, max_iter: int = 10, tol: float = 1e-5) -> Tensor:
    """Karcher mean (arXiv 2603.04972), per tensor: the point on the unit sphere minimising the
    weighted squared geodesic distance to each tensor's direction, found by ``max_iter`` Riemannian
    gradient steps, times Σ w_i ‖θ_i‖. Weights are the alphas (mergekit uses 1/N each); zero
    tensors drop out of the direction."""
    return karcher_mean(tensors, weights.tolist(), max_iter=max_iter, tol=tol)


# ---- multi-SLERP --------------------------------------------------------------------------------

def multislerp_to_mergekit(sources, weights, params, base):
    return {"models": _weighted_models(sources, weights),
            "parameters": {"normalize_weights": True, "eps": params["eps"]}}, ""


@MERGES.register("multislerp", params=[
    Param("eps", "float", 1e-8, 0.0, 1e-2, help="added to norms so zero tensors do not divide by 0")],
    family="geometric", title="Multi-SLERP", needs_base=False, mergekit="multislerp", min_sources=1,
    data_use="none", to_mergekit=multislerp_to_mergekit)
def multislerp(tensors: List[Tensor], weights: Tensor, base: Optional[Tensor] = None, *,
               key: str = "", generator=None, eps: float = 1e-8) -> Tensor:
    """Barycentric interpolation on the sphere, per tensor (mergekit's multislerp): project the
    unit directions onto the tangent space at their weighted mean, average there, map back with
    the exponential map and scale by Σ w_i ‖θ_i‖. Unlike ``slerp`` it does not depend on source
    order. Two exactly opposite directions fall back to the weighted average; more than two
    cancelling out is an error (as in mergekit)."""
    if len(tensors) == 1:
        return tensors[0].clone()
    stacked = torch.stack(tensors, dim=0)
    flat = stacked.view(stacked.shape[0], -1)
    w = weights.to(stacked.dtype)
    norms = torch.norm(flat, dim=-1, keepdim=True)
    units = flat / (norms + eps)
    mean = (units * w.view(-1, 1)).sum(0)
    mean_norm = torch.norm(mean)
    if mean_norm < eps:
        if stacked.shape[0] == 2:
            return (stacked[0] * w[0] + stacked[1] * w[1]).view(stacked.shape[1:])
        raise MergeError(f"multislerp: the weighted directions of tensor '{key}' cancel out "
                         "(opposite models with balancing weights); change the weights")
    mean = mean / mean_norm
    dots = (units * mean).sum(-1, keepdim=True)
    tangents = units - dots * mean
    tangent = (tangents * w.view(-1, 1)).sum(0)
    tangent_norm = torch.norm(tangent) + eps
    result = mean * torch.cos(tangent_norm) + tangent * (torch.sin(tangent_norm) / tangent_norm)
    return (result * (norms.squeeze(-1) * w).sum()).view(stacked.shape[1:])


# ---- NuSLERP ------------------------------------------------------------------------------------

def nuslerp_pair(t: float, v0: Tensor, v1: Tensor, row_wise: bool = False, flatten: bool = True,
                 eps: float = 1e-8) -> Tensor:
    """mergekit's ``nuslerp``: SLERP of the whole flattened tensors (flatten), or of each row
    (row_wise) / each last-axis vector; colinear vectors are interpolated linearly."""
    shape = v0.shape
    if flatten:
        v0, v1 = v0.reshape(-1), v1.reshape(-1)
    elif row_wise:
        v0, v1 = v0.transpose(0, -1), v1.transpose(0, -1)
    u0 = v0 / torch.norm(v0, dim=-1, keepdim=True).clamp(min=1e-7)
    u1 = v1 / torch.norm(v1, dim=-1, keepdim=True).clamp(min=1e-7)
    cos = torch.sum(u0 * u1, dim=-1, keepdim=True).clamp(-1, 1)
    colinear = (1 - cos.square()) <= eps ** 2
    theta = torch.acos(torch.where(colinear, 0, cos))
    result = (torch.sin((1 - t) * theta) * v0 + torch.sin(t * theta) * v1) / torch.sin(theta)
    result = torch.where(colinear, (1 - t) * v0 + t * v1, result)
    if row_wise and not flatten:
        result = result.transpose(0, -1)
    return result.reshape(shape)


def nuslerp_to_mergekit(sources, weights, params, base):
    return {"models": _weighted_models(sources, weights),
            "parameters": {"nuslerp_row_wise": params["row_wise"],
                           "nuslerp_flatten": params["flatten"]}}, ""


@MERGES.register("nuslerp", params=[
    Param("row_wise", "bool", False,
          help="interpolate each row (vector along the first axis) on its own; used when flatten "
               "is off"),
    Param("flatten", "bool", True, help="interpolate the whole tensor as one vector")],
    family="geometric", title="NuSLERP", needs_base=False, mergekit="nuslerp", min_sources=2,
    max_sources=2, data_use="none", to_mergekit=nuslerp_to_mergekit)
def nuslerp(tensors: List[Tensor], weights: Tensor, base: Optional[Tensor] = None, *,
            key: str = "", generator=None, row_wise: bool = False, flatten: bool = True) -> Tensor:
    """NuSLERP (mergekit): SLERP of exactly two models with t = w_2 / (w_1 + w_2), over the whole
    tensor (flatten, the default: the same as ``slerp``'s formula up to the colinear fallback), per
    row (row_wise) or per last-axis vector."""
    if len(tensors) != 2:
        raise MergeError(f"nuslerp merges exactly 2 source models, got {len(tensors)}")
    w = weights.tolist()
    return nuslerp_pair(w[1] / (w[0] + w[1]), tensors[0], tensors[1], row_wise, flatten)
