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

Fast modes (Params, mergekit-identical by default): ``selection='fast'`` (TIES) finds the same
cut without sorting and keeps every entry tied at it (sparse_trim.fast_cut); ``rng='fast'``
(DARE) draws Bernoulli(density) masks from splitmix64 of (seed, entry) instead of a float32 per
entry, deterministic per seed and independent of the thread count, but not mergekit's draws
(sparse_drop.fast_keep_mask; stream 2 since the fused kernels: runs made with stream 1, numpy's
PCG64 per block, get other keys). Neither exports to mergekit, and searches do not tune them
(``Param.speed``). On CPU float32 TIES (both selections) and DARE rng='fast' run as fused numba
kernels (engine/merge/fused.py), with the same results as the torch kernels here.
Files: sparse_shared.py (Params, L1, whole-delta kernel), sparse_trim.py (TIES, breadcrumbs),
sparse_drop.py (DARE, DELLA), fused.py (the fused CPU kernels); this module registers the
flavours.
"""
from __future__ import annotations

from typing import List

from torch import Tensor

from ..registry import Param
from . import MERGES, fused
from .combine import combine, whole
from .common import MergeError, each
from .linear import SCALE, task_vector_to_mergekit
from .sparse_drop import RNG_STREAM, RNGS, bernoulli, della_magprune, della_rank, dropped, dropped_fast
from .sparse_shared import (EPSILON, GAMMA, RESCALES, as_rows, density_param, l1_norm,
                            normalize_param, rescale_param, task_merge)
from .sparse_trim import (SELECTIONS, cached_ties, digest_once, magnitude, magnitude_order,
                          magnitude_outliers, stored_ties, tied_kept, trim_cut, trimmed,
                          trim_plans, trimmed_fast)

__all__ = ["RESCALES", "RNGS", "SELECTIONS", "bernoulli", "cached_ties",
           "della_magprune", "della_rank", "dropped", "dropped_fast", "l1_norm", "magnitude",
           "magnitude_order", "magnitude_outliers", "task_merge", "tied_kept", "trim_cut",
           "trimmed", "trimmed_fast"]

SELECTION = Param(
    "selection", "choice", "exact", choices=SELECTIONS,
    help="TIES trim: 'exact' keeps mergekit's very entries (where more entries tie at the cut than "
         "fit, its sort order picks them, at the cost of a full sort); 'fast' finds the same cut "
         "without sorting and keeps every entry tied at it (a few more entries, never fewer)",
    speed=True)
RNG = Param(
    "rng", "choice", "mergekit", choices=RNGS,
    help="DARE drops: 'mergekit' draws mergekit's very masks (a float32 per entry from torch's "
         "Mersenne Twister); 'fast' draws the same Bernoulli(density) masks from a counter-based "
         "hash of (seed, entry), deterministic per seed (whatever the thread count) but not "
         "mergekit's draws",
    speed=True, stream=RNG_STREAM)


def sparse_to_mergekit(sources, weights, params, base):
    """task_vector_to_mergekit, refusing the fast modes (mergekit has no equivalent of them)."""
    if params.get("rng", "mergekit") != "mergekit":
        return None, "mergekit draws its own masks (rng='fast')"
    if params.get("selection", "exact") != "exact":
        return None, "mergekit keeps exactly k entries at a tied cut (selection='fast')"
    clean = {k: v for k, v in params.items() if k not in ("rng", "selection")}
    return task_vector_to_mergekit(sources, weights, clean, base)


def _register(name: str, *, mergekit: str, params: list, sparsifier: str, consensus: bool,
              normalize_default: bool, doc: str) -> None:
    """One registry entry per mergekit flavour; the kernel closes over its sparsifier.
    ``inputs`` (a cache.KeyInputs, when the merge has a MergeCache) supplies the deltas, sorted
    magnitudes, norms and draws instead of recomputing them; the result is the same. ``store`` (a
    TrimStore, for a one-shot merge without a cache) supplies TIES' tie orders (stored_ties).
    Keyword defaults are the flavour's Param defaults; settings it has no Param for stay fixed."""
    default = {p.name: p.default for p in params}

    def kernel(tensors: List[Tensor], weights: Tensor, base: Tensor, *, key: str = "",
               generator=None, density=default.get("density", 1.0),
               scale: float = default.get("scale", 1.0),
               normalize=default.get("normalize", normalize_default),
               rescale: str = default.get("rescale", "l1"), gamma=default.get("gamma", 0.01),
               epsilon=default.get("epsilon", 0.15), rng: str = "mergekit",
               selection: str = "exact", inputs=None, store=None) -> Tensor:
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
            if sparsifier == "outliers":  # the cached sort only where a band edge splits ties
                if inputs is None:
                    return magnitude_outliers(d, dens[i], gams[i])
                return magnitude_outliers(d, dens[i], gams[i], sorted_size=inputs.sorted_size(i),
                                          order_of=lambda: inputs.derived(
                                              "order", i, lambda: magnitude_order(d)))
            uniform = l1 = rank = None
            if inputs is not None:
                shape = d.shape if sparsifier == "random" else as_rows(d).shape
                uniform, drawn = inputs.uniform(shape, drawn, generator), drawn + 1
                l1 = inputs.l1(i) if rescale == "l1" else None
            if sparsifier == "random":
                return bernoulli(d, dens[i], rescale, generator, uniform, l1)
            if inputs is not None:
                rank = inputs.derived("della_rank", i, lambda: della_rank(d))
            return della_magprune(d, dens[i], epss[i], rescale, generator, uniform, l1, rank)

        stored_of = None  # one-shot TIES exact: tie orders from the store, hashed only when needed
        if inputs is None and store is not None and sparsifier == "magnitude":
            base_digest = digest_once(base)
            stored_of = lambda i: stored_ties(store, tensors[i], base, base_digest)  # noqa: E731
        if rng not in RNGS:
            raise MergeError(f"{name}: rng must be one of {list(RNGS)}, got {rng!r}")
        if selection not in SELECTIONS:
            raise MergeError(f"{name}: selection must be one of {list(SELECTIONS)}, got "
                             f"{selection!r}")
        if sparsifier in ("magnitude", "random") and fused.usable(tensors, base):
            if sparsifier == "magnitude":  # one pass per slice (engine/merge/fused.py)
                cached = inputs is not None
                return fused.ties(
                    tensors, base, w, dens, selection=selection, consensus=consensus,
                    normalize=normalize, scale=scale,
                    sorted_sizes=[inputs.sorted_size(i) if dens[i] < 1 else None
                                  for i in range(k)] if cached else None,
                    ties_of=(lambda i: cached_ties(inputs, i)) if cached else stored_of)
            if rng == "fast":
                return fused.dare(tensors, base, w, dens, rescale=rescale, generator=generator,
                                  consensus=consensus, normalize=normalize, scale=scale)
        if sparsifier == "magnitude" and selection == "fast":  # a cache only saves the cut
            return combine([trimmed_fast(t, base, dens[i], w[i], None if inputs is None or
                                         dens[i] >= 1 else inputs.sorted_size(i))
                            for i, t in enumerate(tensors)], w, base, consensus=consensus,
                           normalize=normalize, scale=scale)
        if sparsifier == "random" and rng == "fast":  # its draws are cheaper than a cache's
            return combine([dropped_fast(t, base, dens[i], w[i], rescale, generator)
                            for i, t in enumerate(tensors)], w, base, consensus=consensus,
                           normalize=normalize, scale=scale)
        if inputs is None and sparsifier == "magnitude":  # no full sparsified delta held
            plans = trim_plans(tensors, base, dens, ties_of=stored_of)  # side by side
            return combine([trimmed(t, base, dens[i], w[i], plan=plans[i])
                            for i, t in enumerate(tensors)], w, base, consensus=consensus,
                           normalize=normalize, scale=scale)
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
                    row_local="trim" if sparsifier == "magnitude" else "",
                    cache_aware=True, to_mergekit=sparse_to_mergekit)(kernel)


_register("ties", mergekit="ties", sparsifier="magnitude", consensus=True, normalize_default=True,
          params=[density_param(0.2), SCALE, normalize_param(True), SELECTION],
          doc="TIES: trim each δ_i to its top-density magnitudes, elect a sign per entry by the "
              "weighted sum, average the agreeing entries (normalised by their weights), add λ× "
              "to the base. Head missing from the base: linear average.")
_register("dare_linear", mergekit="dare_linear", sparsifier="random", consensus=False,
          normalize_default=False, params=[density_param(0.5), SCALE, rescale_param("l1"), RNG],
          doc="DARE + linear: drop each δ entry with probability 1 − density, rescale the "
              "survivors, then task arithmetic. Seeded per key. Head missing from the base: "
              "linear average.")
_register("dare_ties", mergekit="dare_ties", sparsifier="random", consensus=True,
          normalize_default=False, params=[density_param(0.5), SCALE, normalize_param(False),
                                           rescale_param("l1"), RNG],
          doc="DARE + TIES: DARE dropping, then TIES sign consensus (mergekit default: no "
              "normalisation). Seeded per key. Head missing from the base: linear average.")
_register("breadcrumbs", mergekit="breadcrumbs", sparsifier="outliers", consensus=False,
          normalize_default=False, params=[density_param(0.9), GAMMA, SCALE],
          doc="Model breadcrumbs: drop the largest γ and the smallest entries of each |δ_i| so "
              "that density remains, then task arithmetic. Head missing from the base: linear "
              "average.")
_register("breadcrumbs_ties", mergekit="breadcrumbs_ties", sparsifier="outliers", consensus=True,
          normalize_default=False, params=[density_param(0.9), GAMMA, SCALE, normalize_param(False)],
          doc="Breadcrumbs sparsification with TIES sign consensus. Head missing from the base: "
              "linear average.")
_register("della", mergekit="della", sparsifier="della", consensus=True, normalize_default=True,
          params=[density_param(0.5), EPSILON, SCALE, normalize_param(True), rescale_param("l1")],
          doc="DELLA: magnitude-ranked random dropping (MagPrune), rescale, TIES sign consensus. "
              "Seeded per key. Head missing from the base: linear average.")
_register("della_linear", mergekit="della_linear", sparsifier="della", consensus=False,
          normalize_default=False, params=[density_param(0.5), EPSILON, SCALE, rescale_param("l1")],
          doc="DELLA MagPrune dropping followed by plain task arithmetic (no sign consensus). "
              "Seeded per key. Head missing from the base: linear average.")
