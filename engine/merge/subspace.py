"""Data-free merges in the task matrices' singular subspaces (2024–25), as FusionBench 0.2.33 does them.

Every kernel works on task vectors τ_i = θ_i − θ_base. Which tensors count as matrices is
FusionBench's rule: every 2-D tensor (linear weights, embedding tables, a classification head the
base has); everything else (biases, LayerNorm) gets the mean of the task vectors. The merged task
vector, times ``scale``, is added to the base.

Weights: FusionBench's merges are unweighted. Here a source of weight 0 takes no part, and the K
others enter as τ_i · K·w_i, so equal weights are FusionBench's merge exactly, and the weighted
mean of the non-matrix tensors is Σ w_i τ_i. A classification head the base lacks is
linear-averaged by the engine (FusionBench keeps heads apart altogether).
"""
from __future__ import annotations

import math
from typing import List, Optional

import torch
from torch import Tensor

from ..registry import Param
from . import MERGES

SUBSPACE = dict(family="subspace", needs_base=True, needs_data=False, data_use="none",
                min_sources=1, random=False)

SCALE = Param("scale", "float", 1.0, 0.0, 10.0,
              help="λ: multiplies the merged task vector before it is added to the base "
                   "(FusionBench's scaling factor / alpha)")
EMBEDDINGS = Param("embeddings", "bool", True,
                   help="merge embedding tables as matrices, as FusionBench does (every 2-D "
                        "tensor); off: average them like biases")


def is_embedding(key: str) -> bool:
    """An embedding table ('…embeddings.word_embeddings.weight', 'embed_tokens', 'wte')."""
    return any(part.startswith("embed") or part in ("wte", "wpe") for part in key.split("."))


def task_vectors(tensors: List[Tensor], weights: Tensor, base: Tensor) -> List[Tensor]:
    """τ_i of the sources with a non-zero weight, each times K·w_i (K: how many there are);
    with equal weights left unscaled, so the kernels see FusionBench's inputs bit for bit."""
    kept = [(t, w) for t, w in zip(tensors, weights.tolist()) if w > 0]
    count = len(kept)
    top = max(w for _, w in kept)
    equal = top - min(w for _, w in kept) <= 1e-6 * top
    out = []
    for t, w in kept:
        tv = t - base
        if not equal:
            tv.mul_(count * w)
        out.append(tv)
    return out


def is_matrix(t: Tensor, key: str, embeddings: bool) -> bool:
    return t.dim() == 2 and (embeddings or not is_embedding(key))


def mean(tvs: List[Tensor]) -> Tensor:
    out = tvs[0].clone()
    for tv in tvs[1:]:
        out.add_(tv)
    return out.div_(len(tvs))


def finish(merged_tv: Tensor, base: Tensor, scale: float) -> Tensor:
    """θ_base + λ·τ_merged (τ_merged is the kernel's own scratch, overwritten)."""
    if scale != 1.0:
        merged_tv.mul_(scale)
    return merged_tv.add_(base)


def polar(m: Tensor) -> Tensor:
    """The orthogonal factor of m (orthogonal Procrustes: the nearest matrix with orthonormal
    columns), U·Vᵀ of m's thin SVD."""
    u, _, vh = torch.linalg.svd(m, full_matrices=False)
    return u @ vh


# ---- TSV-M -------------------------------------------------------------------------------------

def tsv_matrix(tvs: List[Tensor], rank_fraction: float = 1.0) -> Tensor:
    """Task singular vectors merged (FusionBench ``compute_and_sum_svd_mem_reduction``).

    Each task matrix keeps its top k = ⌊r·rank_fraction/K⌋ singular triplets (r = min(shape));
    the K·k left and right singular vectors are placed side by side and decorrelated by
    orthogonal Procrustes (each block replaced by its nearest orthonormal one), and the kept
    singular values put back between them: U⊥ · diag(σ) · V⊥ᵀ."""
    count = len(tvs)
    for i, tv in enumerate(tvs):
        u, s, vh = torch.linalg.svd(tv, full_matrices=False)
        if i == 0:
            sum_u, sum_s, sum_vh = torch.zeros_like(u), torch.zeros_like(s), torch.zeros_like(vh)
        k = int(s.shape[0] * (rank_fraction / count))
        sum_u[:, i * k:(i + 1) * k] = u[:, :k]
        sum_s[i * k:(i + 1) * k] = s[:k]
        sum_vh[i * k:(i + 1) * k, :] = vh[:k, :]
    return torch.linalg.multi_dot((polar(sum_u), torch.diag(sum_s), polar(sum_vh)))


@MERGES.register("tsv_m", params=[
    Param("rank_fraction", "float", 1.0, 0.0, 1.0, low_open=True,
          help="share of each matrix's rank given to the tasks, split equally among them "
               "(FusionBench: all of it, 1/K each)"),
    SCALE, EMBEDDINGS], title="TSV-M", **SUBSPACE)
def tsv_m(tensors: List[Tensor], weights: Tensor, base: Tensor, *, key: str = "",
          generator=None, rank_fraction: float = 1.0, scale: float = 1.0,
          embeddings: bool = True) -> Tensor:
    """Task Singular Vectors merge (TSV-M, arXiv 2412.00081): low-rank per task, decorrelated.

    2-D tensors: tsv_matrix of the task vectors; others: their mean. Weights scale each task
    vector before its SVD, as FusionBench's per-task alpha list does (equal weights: FusionBench's
    default merge exactly). With more sources than a matrix has rank (a 4-label head, 5 sources)
    every task keeps k = 0 triplets and that task vector is zero, as in FusionBench.
    """
    tvs = task_vectors(tensors, weights, base)
    merged = tsv_matrix(tvs, rank_fraction) if is_matrix(base, key, embeddings) else mean(tvs)
    return finish(merged, base, scale)
