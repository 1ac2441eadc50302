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
from typing import List

import torch
from torch import Tensor

from ..registry import Param
from . import MERGES

SUBSPACE = dict(family="subspace", needs_base=True, needs_data=False, data_use="none",
                min_sources=1, random=False, version=2)  # 2: the classification head is averaged

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


def is_head(key: str) -> bool:
    """A classification head ('classifier.dense.weight', 'classifier.out_proj.weight', 'score')."""
    return key.split(".")[0] in ("classifier", "score") or ".classifier." in key


def is_matrix(t: Tensor, key: str, embeddings: bool) -> bool:
    """Merged as a matrix (its subspaces): every 2-D tensor, as FusionBench does — except a
    classification head, which is averaged. On purpose: FusionBench's tasks keep their own heads
    and never merge them; our sources share one label set and one merged head, and flattening the
    spectrum of a 12 x 768 head leaves a model that predicts almost one class (demo sweep: Iso-C
    0.169 mean test accuracy with the head as a matrix)."""
    return t.dim() == 2 and not is_head(key) and (embeddings or not is_embedding(key))


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


def svd(m: Tensor):
    """Thin SVD; where float32 LAPACK does not converge (it fails on XLM-R-base's 768 × 3072 task
    residuals in Iso-CTS, as FusionBench would), once more in float64, cast back."""
    try:
        return torch.linalg.svd(m, full_matrices=False)
    except torch.linalg.LinAlgError:
        return tuple(t.to(m.dtype) for t in torch.linalg.svd(m.double(), full_matrices=False))


def polar(m: Tensor) -> Tensor:
    """The orthogonal factor of m (orthogonal Procrustes: the nearest matrix with orthonormal
    columns), U·Vᵀ of m's thin SVD."""
    u, _, vh = svd(m)
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
        u, s, vh = svd(tv)
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
    SCALE, EMBEDDINGS], title="TSV-M", identity=("single", "one_hot"), **SUBSPACE)
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


# ---- Iso-C, Iso-CTS ----------------------------------------------------------------------------

def iso_c_matrix(tvs: List[Tensor]) -> Tensor:
    """The summed task matrix with its singular values all set to their mean: U·σ̄·Vᵀ
    (FusionBench ``iso_c``): every direction the tasks use gets the same weight.

    The sum is rounded as FusionBench rounds it (the mean times K): flattening lifts the sum's
    near-null directions to the mean, and their last bits decide which directions those are."""
    total = sum(tvs).div_(len(tvs)).mul_(len(tvs))
    u, s, vh = svd(total)
    return torch.linalg.multi_dot((u, torch.diag(torch.ones_like(s) * s.mean()), vh))


def iso_cts_dims(rank: int, tasks: int, common_space_fraction: float):
    """(common, per_task) directions out of ``rank``, FusionBench's split: the task-specific part
    rounded to a multiple of the number of tasks. Where that rounding overshoots the rank (few
    directions, many tasks; FusionBench would slice with a negative count) it rounds down."""
    common = int(rank * common_space_fraction)
    per_task = round((rank - common) / tasks)
    if per_task * tasks > rank:
        per_task = (rank - common) // tasks
    return rank - per_task * tasks, per_task


def iso_cts_matrix(tvs: List[Tensor], common_space_fraction: float = 0.8) -> Tensor:
    """Iso-CTS (FusionBench ``iso_cts``): the top ``common`` singular directions of the summed
    task matrix, plus each task's own top ``per_task`` directions outside that common space; both
    bases orthogonalised (Procrustes) and every singular value set to the mean of the kept ones."""
    count = len(tvs)
    rank = min(tvs[0].shape)
    common, per_task = iso_cts_dims(rank, count, common_space_fraction)
    u, s, vh = svd(sum(tvs))
    common_u, common_s, common_vh = u[:, :common], s[:common], vh[:common, :]
    all_u, all_s, all_vh = torch.zeros_like(u), torch.zeros_like(s), torch.zeros_like(vh)
    for i, tv in enumerate(tvs):
        u_ts, s_ts, vh_ts = svd(tv - common_u @ common_u.T @ tv)
        block = slice(i * per_task, (i + 1) * per_task)
        all_u[:, block], all_s[block], all_vh[block, :] = (u_ts[:, :per_task], s_ts[:per_task],
                                                          vh_ts[:per_task, :])
    block = slice(count * per_task, count * per_task + common)
    all_u[:, block], all_s[block], all_vh[block, :] = common_u, common_s, common_vh
    flat = torch.ones_like(all_s) * all_s.mean()
    return torch.linalg.multi_dot((polar(all_u), torch.diag(flat), polar(all_vh)))


@MERGES.register("iso_c", params=[SCALE, EMBEDDINGS], title="Iso-C", identity=(), **SUBSPACE)
def iso_c(tensors: List[Tensor], weights: Tensor, base: Tensor, *, key: str = "",
          generator=None, scale: float = 1.0, embeddings: bool = True) -> Tensor:
    """Isotropic merge in the common subspace (Iso-C, arXiv 2502.04959): a flat spectrum.

    2-D tensors: iso_c_matrix of the task vectors; others: their mean. Weights scale each task
    vector by K·w_i before the sum (equal weights: FusionBench exactly). Even a single source is
    changed (its spectrum flattened): no identity on one model.
    """
    tvs = task_vectors(tensors, weights, base)
    merged = iso_c_matrix(tvs) if is_matrix(base, key, embeddings) else mean(tvs)
    return finish(merged, base, scale)


@MERGES.register("iso_cts", params=[
    Param("common_space_fraction", "float", 0.8, 0.0, 1.0,
          help="share of each matrix's rank spanned by the merged sum's top directions; the rest "
               "is split equally among the tasks' own directions (1.0: Iso-C)"),
    SCALE, EMBEDDINGS], title="Iso-CTS", identity=(), **SUBSPACE)
def iso_cts(tensors: List[Tensor], weights: Tensor, base: Tensor, *, key: str = "",
            generator=None, common_space_fraction: float = 0.8, scale: float = 1.0,
            embeddings: bool = True) -> Tensor:
    """Isotropic merge in common and task-specific subspaces (Iso-CTS, arXiv 2502.04959).

    2-D tensors: iso_cts_matrix of the task vectors; others: their mean. Weights scale each task
    vector by K·w_i before the sum and the per-task SVDs (equal weights: FusionBench exactly);
    every task still gets the same number of own directions.
    """
    tvs = task_vectors(tensors, weights, base)
    if not is_matrix(base, key, embeddings):
        return finish(mean(tvs), base, scale)
    return finish(iso_cts_matrix(tvs, common_space_fraction), base, scale)


# ---- WUDI --------------------------------------------------------------------------------------

ADAM_BETAS, ADAM_EPS = (0.9, 0.999), 1e-8  # torch.optim.Adam's defaults, as FusionBench uses them


def wudi_loss(merged: Tensor, tvs: List[Tensor]) -> Tensor:
    """Σ_i ‖(τ_m − τ_i)·τ_iᵀ‖²_F / ‖τ_i‖²_F: the interference τ_m causes on inputs in each task
    vector's row space, relative to that task's size (task vectors of norm 0 add nothing)."""
    loss = merged.new_zeros(())
    for tv in tvs:
        norm = tv.square().sum()
        if norm > 0:
            loss = loss + ((merged - tv) @ tv.T).square().sum() / norm
    return loss


def wudi_matrix(tvs: List[Tensor], iterations: int = 400, step_size: float = 1e-5) -> Tensor:
    """WUDI (FusionBench ``wudi_merging``): from τ_m = Σ τ_i, ``iterations`` Adam steps of size
    ``step_size`` on wudi_loss.

    The gradient is taken in closed form, 2·(τ_m·A − B) with A = Σ τ_iᵀτ_i / n_i and
    B = Σ τ_i·τ_iᵀτ_i / n_i computed once, so a step costs one matrix product whatever the number
    of tasks (FusionBench's autograd pays 4 per task); when A is the larger (wide matrices,
    few tasks) τ_m·A is taken as (τ_m·Tᵀ)·T with T the stacked τ_i / √n_i. Adam is torch's
    single-tensor update, written out, so no autograd is needed."""
    merged = sum(tvs)
    terms = [(tv, tv.square().sum()) for tv in tvs]
    terms = [(tv, n) for tv, n in terms if n > 0]
    if len(terms) <= 1 or iterations == 0:  # one task: τ_m = τ has loss 0, Adam moves nothing
        return merged
    rows, cols = merged.shape
    factored = cols * cols > 2 * len(terms) * rows * cols
    if factored:
        stacked = torch.cat([tv / n.sqrt() for tv, n in terms])
        target = sum((tv @ tv.T) @ tv / n for tv, n in terms)
    else:
        grams = [tv.T @ tv / n for tv, n in terms]
        gram = sum(grams)
        target = sum(tv @ g for (tv, _), g in zip(terms, grams))
        del grams
    beta1, beta2 = ADAM_BETAS
    avg, avg_sq = torch.zeros_like(merged), torch.zeros_like(merged)
    for step in range(1, iterations + 1):
        product = (merged @ stacked.T) @ stacked if factored else merged @ gram
        grad = product.sub_(target).mul_(2.0)
        avg.lerp_(grad, 1 - beta1)
        avg_sq.mul_(beta2).addcmul_(grad, grad, value=1 - beta2)
        denom = (avg_sq.sqrt() / math.sqrt(1 - beta2 ** step)).add_(ADAM_EPS)
        merged.addcdiv_(avg, denom, value=-step_size / (1 - beta1 ** step))
    return merged


@MERGES.register("wudi", params=[
    Param("iterations", "int", 400, 0, 5000,
          help="Adam steps per matrix (FusionBench's config: 400)"),
    Param("step_size", "float", 1e-5, 0.0, 1e-2, low_open=True,
          help="Adam's learning rate (FusionBench: 1e-5)"),
    SCALE, EMBEDDINGS], title="WUDI", identity=("single", "one_hot"), **SUBSPACE)
def wudi(tensors: List[Tensor], weights: Tensor, base: Tensor, *, key: str = "", generator=None,
         iterations: int = 400, step_size: float = 1e-5, scale: float = 1.0,
         embeddings: bool = True) -> Tensor:
    """WUDI (arXiv 2503.08099): per matrix, the task vector least interfering with each task's.

    2-D tensors: wudi_matrix of the task vectors (it starts from their sum, as FusionBench does,
    so K copies of one model give about K·τ); others: their mean. Weights scale each task vector
    by K·w_i (equal weights: FusionBench exactly). ``scale`` (not in FusionBench, 1.0 there)
    multiplies the result. On a 250k-word embedding table each step costs ~150 GFLOP: turn
    ``embeddings`` off on a CPU.
    """
    tvs = task_vectors(tensors, weights, base)
    if not is_matrix(base, key, embeddings):
        return finish(mean(tvs), base, scale)
    return finish(wudi_matrix(tvs, iterations, step_size), base, scale)
