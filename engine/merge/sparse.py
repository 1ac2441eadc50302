"""Sparsified task-vector merges: TIES, DARE, breadcrumbs, DELLA (mergekit's generalised
task arithmetic).

Each source's task vector δ_i = θ_i − θ_base is sparsified, weighted by w_i, optionally reduced to
the entries agreeing with an elected sign (TIES consensus), summed, optionally divided by the sum
of the contributing weights ("normalize"), scaled by λ and added to the base. Sparsifiers, tie
handling and rescaling follow mergekit 0.1.5's ``sparsify.py``; random draws use the per-key
generator in the same order (source by source) as mergekit's global RNG, so on CPU mergekit
run after ``torch.manual_seed(s)`` draws the same masks as a kernel given
``Generator().manual_seed(s)``.
One deliberate difference: TIES trimming breaks ties in |δ| at the cut by index (see magnitude).
A classification head missing from the pretrained base is linear-averaged by the engine.
"""
from __future__ import annotations

from typing import Callable, List, Optional

import torch
from torch import Tensor

from ..registry import Param
from . import MERGES
from .common import MergeError, each
from .linear import SCALE

RESCALES = ("l1", "inverse_density", "none")


def _density(default: float) -> Param:
    return Param("density", "float", default, 0.0, 1.0, per_model=True, low_open=True,
                 help="fraction of each task vector's entries kept, in (0, 1]; one value or "
                      "one per model")


def _normalize(default: bool) -> Param:
    return Param("normalize", "bool", default,
                 help="divide the merged delta by the summed weights of the entries that "
                      "contribute (per entry under sign consensus)")


def _rescale(default: str) -> Param:
    return Param("rescale", "choice", default, choices=RESCALES,
                 help="after random dropping: 'l1' restores each delta's L1 norm (mergekit), "
                      "'inverse_density' divides survivors by their keep probability (DARE/DELLA "
                      "papers), 'none' keeps them as they are")


GAMMA = Param("gamma", "float", 0.01, 0.0, 1.0, per_model=True,
              help="breadcrumbs: fraction of the largest-magnitude entries removed as outliers")
EPSILON = Param("epsilon", "float", 0.15, 0.0, 0.5, per_model=True,
                help="DELLA: keep probabilities spread over density ± epsilon by magnitude rank")


# ---- sparsifiers (one task vector at a time) ---------------------------------------------------

def _rescaled(delta: Tensor, keep: Tensor, rescale: str, keep_prob, eps: float = 1e-7) -> Tensor:
    """Masked delta, rescaled: 'l1' to the original L1 norm (mergekit, unless either norm is
    below eps), 'inverse_density' by 1/keep_prob, 'none' not at all."""
    masked = torch.where(keep, delta, 0.0)
    if rescale == "none":
        return masked
    if rescale == "inverse_density":
        return masked.div_(keep_prob)
    before = torch.linalg.vector_norm(delta, ord=1)
    after = torch.linalg.vector_norm(masked, ord=1)
    if before < eps or after < eps:
        return masked
    return masked.mul_(before / after)


def _keep(shape, prob, like: Tensor, generator) -> Tensor:
    """Bernoulli(prob) keep-mask drawn as uniform < prob: on CPU the very stream of mergekit's
    ``torch.bernoulli(full_like(t, p))`` (the parity tests check it), without its slowness."""
    return torch.rand(shape, generator=generator, device=like.device, dtype=like.dtype) < prob


def magnitude(delta: Tensor, density: float) -> Tensor:
    """Keeps the top max(1, ⌊density·n⌋) entries by |δ| (TIES trim; no rescaling).

    The cut comes from a selection (kthvalue, O(n)) rather than a full sort. Entries tied in
    magnitude at the cut are kept in index order; mergekit keeps whichever its (unstable)
    argsort puts first, so on such ties the two may keep different, equally large, entries.
    """
    if density >= 1:
        return delta
    flat = delta.reshape(-1)
    size = flat.abs()
    k = max(1, int(density * flat.numel()))
    cut = torch.kthvalue(size, flat.numel() - k + 1).values
    if cut == 0:  # fewer than k non-zeros: keeping them all is the same output
        keep = size > 0
    else:
        keep = size > cut
        missing = k - int(torch.count_nonzero(keep))
        if missing > 0:
            keep[(size == cut).nonzero().squeeze(1)[:missing]] = True
    return torch.where(keep, flat, 0.0).reshape(delta.shape)


def magnitude_outliers(delta: Tensor, density: float, gamma: float) -> Tensor:
    """Breadcrumbs: drops the ⌊γn⌋ largest |δ| and then the smallest, so ⌊density·n⌋ remain."""
    if density >= 1:
        return delta
    n = delta.numel()
    target, top = int(density * n), int(gamma * n)
    bottom = max(0, n - target - top)
    flat = delta.reshape(-1)
    order = torch.sort(flat.abs(), descending=False).indices
    keep = order[bottom:bottom + target]
    out = torch.zeros_like(flat)
    out[keep] = flat[keep]
    return out.reshape(delta.shape)


def bernoulli(delta: Tensor, density: float, rescale: str, generator) -> Tensor:
    """DARE: drops each entry with probability 1 − density, then rescales the survivors."""
    if density >= 1:
        return delta
    return _rescaled(delta, _keep(delta.shape, density, delta, generator), rescale, density)


def della_magprune(delta: Tensor, density: float, epsilon: float, rescale: str,
                   generator) -> Tensor:
    """DELLA MagPrune: per row, keep probability rises linearly with magnitude rank from
    density − ε (smallest) to density + ε (largest); then rescale."""
    if density >= 1:
        return delta
    if density + epsilon >= 1 or density - epsilon <= 0:
        raise MergeError(f"della: density ± epsilon must stay inside (0, 1); got density "
                         f"{density} and epsilon {epsilon}")
    rows = delta if delta.dim() >= 2 else delta.reshape(1, -1)
    ranks = torch.argsort(torch.argsort(rows.abs(), dim=1, descending=False), dim=1)
    # mergekit: (rank − min) / (max − min) with min = 0, max = n − 1; a row of one entry
    # (0/0 there) gets rank 0 here instead of NaN.
    span = max(rows.shape[1] - 1, 1)
    probs = (density - epsilon) + (ranks.to(rows.dtype) / span).clamp(0, 1) * 2 * epsilon
    keep = _keep(rows.shape, probs, rows, generator)
    return _rescaled(rows, keep, rescale, probs).reshape(delta.shape)


# ---- the generalised kernel ---------------------------------------------------------------------

def task_merge(tensors: List[Tensor], weights: Tensor, base: Tensor, *,
               sparsify: Optional[Callable[[Tensor, int], Tensor]], consensus: bool,
               normalize: bool, scale: float) -> Tensor:
    """base + λ · [Σ_i w_i m_i s(δ_i)] / [Σ_i w_i m_i if normalize], m_i the sign-consensus mask.

    The elected sign per entry is the sign of Σ w_i s(δ_i) (zero counts as +, as in mergekit);
    entries with δ = 0 never agree, so trimmed entries do not dilute the average.
    """
    w = weights.tolist()

    def delta(i: int) -> Tensor:
        d = tensors[i] - base
        return (sparsify(d, i) if sparsify is not None else d).mul_(w[i])

    if not consensus:  # one running sum, no per-source buffers
        merged = delta(0)
        for i in range(1, len(tensors)):
            merged.add_(delta(i))
        divisor = sum(w)
        if abs(divisor) < 1e-8:
            divisor = 1.0
    else:
        deltas = [delta(i) for i in range(len(tensors))]
        total = deltas[0].clone()
        for d in deltas[1:]:
            total.add_(d)
        positive = total >= 0  # the elected sign; a zero sum elects +
        merged, divisor = total.zero_(), torch.zeros_like(base)
        for d, wi in zip(deltas, w):
            agree = torch.where(positive, d > 0, d < 0)
            merged.add_(torch.where(agree, d, 0.0))
            divisor.add_(agree.to(divisor.dtype), alpha=wi)
        divisor[divisor == 0] = 1
    if normalize:
        merged.div_(divisor)
    if scale != 1:
        merged.mul_(scale)
    return merged.add_(base)


def _register(name: str, *, mergekit: str, params: list, sparsifier: str, consensus: bool,
              normalize_default: bool, doc: str) -> None:
    """One registry entry per mergekit flavour; the kernel closes over its sparsifier."""

    def kernel(tensors: List[Tensor], weights: Tensor, base: Tensor, *, key: str = "",
               generator=None, density=1.0, scale: float = 1.0, normalize=normalize_default,
               rescale: str = "l1", gamma=0.01, epsilon=0.15) -> Tensor:
        k = len(tensors)
        dens, gams, epss = each(density, k, "density"), each(gamma, k, "gamma"), each(epsilon, k,
                                                                                     "epsilon")
        for d in dens:
            if not 0 < d <= 1:
                raise MergeError(f"{name}: density must be in (0, 1], got {d}")
        if sparsifier == "magnitude":
            sp = lambda d, i: magnitude(d, dens[i])  # noqa: E731
        elif sparsifier == "outliers":
            sp = lambda d, i: magnitude_outliers(d, dens[i], gams[i])  # noqa: E731
        elif sparsifier == "random":
            sp = lambda d, i: bernoulli(d, dens[i], rescale, generator)  # noqa: E731
        else:
            sp = lambda d, i: della_magprune(d, dens[i], epss[i], rescale, generator)  # noqa: E731
        return task_merge(tensors, weights, base, sparsify=sp, consensus=consensus,
                          normalize=normalize, scale=scale)

    kernel.__name__ = name
    kernel.__doc__ = doc
    MERGES.register(name, params=params, family="sparse", needs_base=True, needs_data=False,
                    mergekit=mergekit, min_sources=1,
                    random=sparsifier in ("random", "della"))(kernel)


_register("ties", mergekit="ties", sparsifier="magnitude", consensus=True, normalize_default=True,
          params=[_density(0.2), SCALE, _normalize(True)],
          doc="TIES: trim each δ_i to its top-density magnitudes, elect a sign per entry by the "
              "weighted sum, average the agreeing entries (normalised by their weights), add λ× "
              "to the base. Head missing from the base: linear average.")
_register("dare_linear", mergekit="dare_linear", sparsifier="random", consensus=False,
          normalize_default=False, params=[_density(0.5), SCALE, _rescale("l1")],
          doc="DARE + linear: drop each δ entry with probability 1 − density, rescale the "
              "survivors, then task arithmetic. Seeded per key. Head missing from the base: "
              "linear average.")
_register("dare_ties", mergekit="dare_ties", sparsifier="random", consensus=True,
          normalize_default=False, params=[_density(0.5), SCALE, _normalize(False),
                                           _rescale("l1")],
          doc="DARE + TIES: DARE dropping, then TIES sign consensus (mergekit default: no "
              "normalisation). Seeded per key. Head missing from the base: linear average.")
_register("breadcrumbs", mergekit="breadcrumbs", sparsifier="outliers", consensus=False,
          normalize_default=False, params=[_density(0.9), GAMMA, SCALE],
          doc="Model breadcrumbs: drop the largest γ and the smallest entries of each |δ_i| so "
              "that density remains, then task arithmetic. Head missing from the base: linear "
              "average.")
_register("breadcrumbs_ties", mergekit="breadcrumbs_ties", sparsifier="outliers", consensus=True,
          normalize_default=False, params=[_density(0.9), GAMMA, SCALE, _normalize(False)],
          doc="Breadcrumbs sparsification with TIES sign consensus. Head missing from the base: "
              "linear average.")
_register("della", mergekit="della", sparsifier="della", consensus=True, normalize_default=True,
          params=[_density(0.5), EPSILON, SCALE, _normalize(True), _rescale("l1")],
          doc="DELLA: magnitude-ranked random dropping (MagPrune), rescale, TIES sign consensus. "
              "Seeded per key. Head missing from the base: linear average.")
_register("della_linear", mergekit="della_linear", sparsifier="della", consensus=False,
          normalize_default=False, params=[_density(0.5), EPSILON, SCALE, _rescale("l1")],
          doc="DELLA MagPrune dropping followed by plain task arithmetic (no sign consensus). "
              "Seeded per key. Head missing from the base: linear average.")
