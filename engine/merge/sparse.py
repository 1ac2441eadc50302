"""Sparsified task-vector merges: TIES, DARE, breadcrumbs, DELLA (mergekit's generalised
task arithmetic).

Each source's task vector δ_i = θ_i − θ_base is sparsified, weighted by w_i, optionally reduced to
the entries agreeing with an elected sign (TIES consensus), summed, optionally divided by the sum
of the contributing weights ("normalize"), scaled by λ and added to the base. Sparsifiers, tie
handling and rescaling follow mergekit 0.1.5's ``sparsify.py``: TIES and breadcrumbs keep the
very entries mergekit keeps, ties in |δ| at the cut included (see magnitude).
Random draws: a kernel draws from the generator it is given, source by source, as mergekit's
per-tensor step draws from torch's global one, so on CPU a kernel given ``Generator()
.manual_seed(s)`` draws mergekit's masks for one tensor after ``torch.manual_seed(s)``. For a
whole model mergekit (``--random-seed s``) draws from one generator, tensor after tensor in
sorted-name order; the engine seeds one per tensor by (seed, name) instead (order-free, cacheable),
so a whole DARE/DELLA model differs from mergekit's by the draws (tests/test_merge_parity_models).
A classification head missing from the pretrained base is linear-averaged by the engine.
"""
from __future__ import annotations

from typing import Callable, List, Optional, Tuple

import torch
import torch.nn.functional as F
from torch import Tensor

from ..registry import Param
from . import MERGES
from .combine import Piece, combine, whole
from .common import MergeError, each, select_kth
from .linear import SCALE, task_vector_to_mergekit

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

def _rescaled(delta: Tensor, keep: Tensor, rescale: str, keep_prob, eps: float = 1e-7,
              before: Optional[Tensor] = None) -> Tensor:
    """Masked delta (``keep``: a 1/0 float mask, overwritten), rescaled: 'l1' to the original L1
    norm ``before`` (mergekit, unless either norm is below eps), 'inverse_density' by
    1/keep_prob, 'none' not at all.

    keep·δ + 0 is where(keep, δ, 0) (a dropped entry becomes +0, never −0) at a fraction of
    where's CPU cost; it differs only on a kept δ = −0, which needs θ_base = +0 there, so the
    merged entry θ_base + (±0) is the same +0."""
    masked = keep.mul_(delta).add_(0.0)
    if rescale == "none":
        return masked
    if rescale == "inverse_density":
        return masked.div_(keep_prob)
    before = l1_norm(delta) if before is None else before
    after = l1_norm(masked)
    if before < eps or after < eps:
        return masked
    return masked.mul_(before / after)


def l1_norm(t: Tensor) -> Tensor:
    """‖t‖₁ summed as mergekit sums it (|t|.sum(): vector_norm's order differs in the last bits,
    enough to flip a sign election where the weighted deltas nearly cancel)."""
    return t.abs().sum()


def _keep(shape, prob, like: Tensor, generator, uniform: Optional[Tensor] = None) -> Tensor:
    """Bernoulli(prob) keep-mask drawn as uniform < prob: on CPU the very stream of mergekit's
    ``torch.bernoulli(full_like(t, p))`` (the parity tests check it), without its slowness.
    ``uniform``: those draws, cached (cache.KeyInputs.uniform). The mask is 1/0 floats,
    relu(sign(prob − u)): a float difference is > 0 exactly when u < prob, and float masks
    multiply faster than boolean ones."""
    if uniform is None:
        uniform = torch.rand(shape, generator=generator, device=like.device, dtype=like.dtype)
    return torch.rsub(uniform, prob).sign_().relu_()


def trim_cut(density: float, n: int, size: Optional[Tensor] = None,
             sorted_size: Optional[Tensor] = None) -> Tuple[Tensor, int, bool]:
    """(cut, k, exact) of TIES trimming over n entries: cut is the k-th largest |δ|, k =
    max(1, ⌊density·n⌋), from ``size`` = |δ| by selection (select_kth) or from ``sorted_size`` = |δ|
    sorted ascending by an index lookup — the same value. exact: |δ| ≥ cut holds for exactly k
    entries (no surplus ties at the cut)."""
    k = max(1, int(density * n))
    if sorted_size is not None:
        cut = sorted_size[n - k]
        reaching = n - int(torch.searchsorted(sorted_size, cut.reshape(1)))
    else:
        cut = select_kth(size, n - k + 1)
        reaching = int(torch.count_nonzero(size >= cut))
    return cut, k, reaching == k


def _below(cut: Tensor) -> float:
    """The largest float under ``cut`` (> 0): hardshrink keeps |x| > it, i.e. |x| ≥ cut."""
    return float(torch.nextafter(cut, torch.zeros_like(cut)))


def tied_kept(size: Tensor, above: int, k: int) -> Tensor:
    """Indices (ascending) of the entries tied at the cut that TIES keeps: mergekit 0.1.5 keeps
    ``torch.argsort(|δ|, descending=True)[:k]``, an unstable sort whose order among equal
    magnitudes is no simple rule (std::sort's introsort on CPU), so the same call on the same
    float32 |δ| (flat, ``size``) decides; its first ``above`` entries are those above the cut.
    Only run when more entries tie at the cut than fit (trim_cut's ``exact`` is False): common
    in real task vectors (differences of float32 weights sit on a grid), and then the trim costs
    a full sort, mergekit's own cost (8.4 M entries: ~9x the selection), to settle a handful of
    equally large entries. A MergeCache keeps the order, so a search sorts each tensor once."""
    order = torch.argsort(size, descending=True)
    return torch.sort(order[above:k]).values


def cached_ties(inputs, i: int) -> Callable[[int, int], Tensor]:
    """tied_kept for source i from a MergeCache entry: the descending argsort of |δ_i| is made
    the first time a cut lands on surplus ties and then kept (int32, 4 bytes an entry, only for
    tensors where that happened), so later merges at other densities only slice it."""
    def make() -> Tensor:
        size = (inputs.tensors[i] - inputs.base).reshape(-1).abs_()
        return torch.argsort(size, descending=True).to(torch.int32)

    def ties(above: int, k: int) -> Tensor:
        return torch.sort(inputs.derived("tie_order", i, make)[above:k].long()).values
    return ties


def magnitude(delta: Tensor, density: float, sorted_size: Optional[Tensor] = None) -> Tensor:
    """Keeps the top max(1, ⌊density·n⌋) entries by |δ| (TIES trim; no rescaling): exactly the
    entries mergekit 0.1.5 keeps, ties at the cut included.

    The cut comes from a selection (introselect, O(n)) rather than a full sort, or from
    ``sorted_size`` (|δ| sorted, cached between merges). Only when more entries tie at the cut
    than fit does the kernel sort, with mergekit's own call (``tied_kept``). Zeroing is
    hardshrink (|x| ≤ λ → +0), a vectorised pass, where a boolean mask and ``where`` would take
    three.
    """
    if density >= 1:
        return delta
    flat = delta.reshape(-1)
    size = flat.abs() if sorted_size is None else None
    cut, k, exact = trim_cut(density, flat.numel(), size, sorted_size)
    if cut == 0:  # fewer than k non-zeros: keeping them all is the same output
        return F.hardshrink(flat, 0.0).view(delta.shape)
    if exact:
        return F.hardshrink(flat, _below(cut)).view(delta.shape)
    out = F.hardshrink(flat, float(cut))  # |δ| > cut, then mergekit's choice among the ties
    size = flat.abs() if size is None else size
    ties = tied_kept(size, int(torch.count_nonzero(out)), k)
    out[ties] = flat[ties]
    return out.view(delta.shape)


def magnitude_outliers(delta: Tensor, density: float, gamma: float,
                       order: Optional[Tensor] = None) -> Tensor:
    """Breadcrumbs: drops the ⌊γn⌋ largest |δ| and then the smallest, so ⌊density·n⌋ remain.
    ``order``: the argsort of |δ| (cached between merges)."""
    if density >= 1:
        return delta
    n = delta.numel()
    target, top = int(density * n), int(gamma * n)
    bottom = max(0, n - target - top)
    flat = delta.reshape(-1)
    if order is None:
        order = magnitude_order(flat)
    keep = order[bottom:bottom + target]
    out = torch.zeros_like(flat)
    out[keep] = flat[keep]
    return out.reshape(delta.shape)


def magnitude_order(delta: Tensor) -> Tensor:
    return torch.sort(delta.reshape(-1).abs(), descending=False).indices


def bernoulli(delta: Tensor, density: float, rescale: str, generator,
              uniform: Optional[Tensor] = None, l1: Optional[Tensor] = None) -> Tensor:
    """DARE: drops each entry with probability 1 − density, then rescales the survivors.
    ``uniform`` / ``l1``: the draws and ‖δ‖₁, cached between merges."""
    if density >= 1:
        return delta
    keep = _keep(delta.shape, density, delta, generator, uniform)
    return _rescaled(delta, keep, rescale, density, before=l1)


def _rows(delta: Tensor) -> Tensor:
    return delta if delta.dim() >= 2 else delta.reshape(1, -1)


def della_rank(delta: Tensor) -> Tensor:
    """Each entry's magnitude rank in its row, scaled to [0, 1] (what MagPrune's probabilities
    rise with)."""
    rows = _rows(delta)
    ranks = torch.argsort(torch.argsort(rows.abs(), dim=1, descending=False), dim=1)
    # mergekit: (rank − min) / (max − min) with min = 0, max = n − 1; a row of one entry
    # (0/0 there) gets rank 0 here instead of NaN.
    span = max(rows.shape[1] - 1, 1)
    return (ranks.to(rows.dtype) / span).clamp(0, 1)


def della_magprune(delta: Tensor, density: float, epsilon: float, rescale: str,
                   generator, uniform: Optional[Tensor] = None, l1: Optional[Tensor] = None,
                   rank: Optional[Tensor] = None) -> Tensor:
    """DELLA MagPrune: per row, keep probability rises linearly with magnitude rank from
    density − ε (smallest) to density + ε (largest); then rescale. ``uniform`` / ``l1`` /
    ``rank``: cached between merges."""
    if density >= 1:
        return delta
    if density + epsilon >= 1 or density - epsilon <= 0:
        raise MergeError(f"della: density ± epsilon must stay inside (0, 1); got density "
                         f"{density} and epsilon {epsilon}")
    rows = _rows(delta)
    rank = della_rank(delta) if rank is None else rank
    probs = (density - epsilon) + rank * 2 * epsilon
    keep = _keep(rows.shape, probs, rows, generator, uniform)
    return _rescaled(rows, keep, rescale, probs, before=l1).reshape(delta.shape)


# ---- the generalised kernel ---------------------------------------------------------------------

def trimmed(x: Tensor, base: Tensor, density: float, weight: float,
            sorted_size: Optional[Tensor] = None,
            ties: Optional[Callable[[int, int], Tensor]] = None) -> Piece:
    """w·trim(x − base) slice by slice, so that no full sparsified delta is ever held: the cut
    comes up front from the sorted magnitudes (``sorted_size``, cached) or, without them, from a
    selection over |x − base| made here and dropped before the slices run (one source's |δ| at a
    time instead of K sparsified deltas at once). Same entries, same bits as ``magnitude``.

    With surplus ties at the cut, the tied entries mergekit keeps come from ``ties(above, k)``
    (tied_kept over |δ|; a cached version may be passed) and each slice adds its share of them."""
    fx, fb = x.reshape(-1), base.reshape(-1)
    if density >= 1:
        return lambda start, stop: torch.sub(fx[start:stop], fb[start:stop]).mul_(weight)
    n = fx.numel()
    size = torch.sub(fx, fb).abs_() if sorted_size is None else None
    cut, k, exact = trim_cut(density, n, size, sorted_size)
    if cut == 0 or exact:
        threshold = _below(cut) if cut != 0 else 0.0
        return lambda start, stop: F.hardshrink(torch.sub(fx[start:stop], fb[start:stop]),
                                                threshold).mul_(weight)
    if sorted_size is not None:
        above = n - int(torch.searchsorted(sorted_size, cut.reshape(1), right=True))
    else:
        above = int(torch.count_nonzero(size > cut))
    if ties is None:
        kept = tied_kept(torch.sub(fx, fb).abs_() if size is None else size, above, k)
    else:
        kept = ties(above, k)
    del size
    value = float(cut)

    def piece(start: int, stop: int) -> Tensor:
        d = torch.sub(fx[start:stop], fb[start:stop])
        out = F.hardshrink(d, value)
        lo, hi = torch.searchsorted(kept, torch.tensor([start, stop], dtype=kept.dtype)).tolist()
        if hi > lo:
            here = kept[lo:hi] - start
            out[here] = d[here]
        return out.mul_(weight)
    return piece


def dropped(x: Tensor, base: Tensor, density: float, weight: float, rescale: str,
            generator) -> Piece:
    """w·DARE(x − base) slice by slice, same draws and bits as ``bernoulli``: this source's full
    δ, draws and L1 norms exist only while its keep mask (1 byte an entry) and rescale factor
    are made, so a merge never holds K fp32 sparsified deltas of a huge tensor at once."""
    fx, fb = x.reshape(-1), base.reshape(-1)
    if density >= 1:  # no draws, as in bernoulli
        return lambda start, stop: torch.sub(fx[start:stop], fb[start:stop]).mul_(weight)
    d = torch.sub(fx, fb)
    keep = _keep(d.shape, density, d, generator)
    factor = None
    if rescale == "l1":
        before = l1_norm(d)
        after = l1_norm(keep.mul_(d).add_(0.0))
        factor = None if before < 1e-7 or after < 1e-7 else before / after
    mask = keep.ne(0)  # keep (or keep·δ + 0 after 'l1': 0 there gives 0 per slice too)
    del d, keep

    def piece(start: int, stop: int) -> Tensor:
        part = torch.sub(fx[start:stop], fb[start:stop])
        out = mask[start:stop].to(part.dtype).mul_(part).add_(0.0)
        if factor is not None:
            out.mul_(factor)
        elif rescale == "inverse_density":
            out.div_(density)
        return out.mul_(weight)
    return piece


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


def _register(name: str, *, mergekit: str, params: list, sparsifier: str, consensus: bool,
              normalize_default: bool, doc: str) -> None:
    """One registry entry per mergekit flavour; the kernel closes over its sparsifier.
    ``inputs`` (a cache.KeyInputs, when the merge has a MergeCache) supplies the deltas, sorted
    magnitudes, norms and draws instead of recomputing them; the result is the same.
    Keyword defaults are the flavour's Param defaults; settings it has no Param for stay fixed."""
    default = {p.name: p.default for p in params}

    def kernel(tensors: List[Tensor], weights: Tensor, base: Tensor, *, key: str = "",
               generator=None, density=default.get("density", 1.0),
               scale: float = default.get("scale", 1.0),
               normalize=default.get("normalize", normalize_default),
               rescale: str = default.get("rescale", "l1"), gamma=default.get("gamma", 0.01),
               epsilon=default.get("epsilon", 0.15), inputs=None) -> Tensor:
        k = len(tensors)
        dens, gams, epss = each(density, k, "density"), each(gamma, k, "gamma"), each(epsilon, k,
                                                                                     "epsilon")
        for d in dens:
            if not 0 < d <= 1:
                raise MergeError(f"{name}: density must be in (0, 1], got {d}")
        w = weights.tolist()
        drawn = 0  # sources that drew from the key's generator so far (cached draws follow it)

        def sparse(d: Tensor, i: int) -> Tensor:
            """s(δ_i) with the flavour's sparsifier; with ``inputs``, from their cached parts."""
            nonlocal drawn
            if dens[i] >= 1:
                return d
            if sparsifier == "magnitude":
                return magnitude(d, dens[i])
            if sparsifier == "outliers":
                order = None if inputs is None else inputs.derived(
                    "order", i, lambda: magnitude_order(d))
                return magnitude_outliers(d, dens[i], gams[i], order)
            uniform = l1 = rank = None
            if inputs is not None:
                shape = d.shape if sparsifier == "random" else _rows(d).shape
                uniform, drawn = inputs.uniform(shape, drawn, generator), drawn + 1
                l1 = inputs.l1(i) if rescale == "l1" else None
            if sparsifier == "random":
                return bernoulli(d, dens[i], rescale, generator, uniform, l1)
            if inputs is not None:
                rank = inputs.derived("della_rank", i, lambda: della_rank(d))
            return della_magprune(d, dens[i], epss[i], rescale, generator, uniform, l1, rank)

        if inputs is None and sparsifier == "magnitude":  # no full sparsified delta held
            return combine([trimmed(t, base, dens[i], w[i]) for i, t in enumerate(tensors)], w,
                           base, consensus=consensus, normalize=normalize, scale=scale)
        if inputs is None and sparsifier == "random":  # no full sparsified delta held
            return combine([dropped(t, base, dens[i], w[i], rescale, generator)
                            for i, t in enumerate(tensors)], w, base, consensus=consensus,
                           normalize=normalize, scale=scale)
        if inputs is None:
            return task_merge(tensors, weights, base, sparsify=sparse, consensus=consensus,
                              normalize=normalize, scale=scale)
        pieces = []
        for i in range(k):
            if sparsifier == "magnitude":
                sorted_size = inputs.sorted_size(i) if dens[i] < 1 else None
                pieces.append(trimmed(tensors[i], base, dens[i], w[i], sorted_size,
                                      ties=cached_ties(inputs, i)))
                continue
            d = inputs.delta(i)
            s = sparse(d, i)
            pieces.append(whole(s * w[i] if s is d else s.mul_(w[i])))  # the cache's δ stays
        return combine(pieces, w, base, consensus=consensus, normalize=normalize, scale=scale)

    kernel.__name__ = name
    kernel.__doc__ = doc
    MERGES.register(name, params=params, family="sparse", needs_base=True, needs_data=False,
                    mergekit=mergekit, min_sources=1, random=sparsifier in ("random", "della"),
                    cache_aware=True, to_mergekit=task_vector_to_mergekit)(kernel)


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
