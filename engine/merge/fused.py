"""Fused CPU kernels (numba) for TIES and DARE on float32: one pass over the sources and the base
per slice, in place of ``combine``'s ~20 eager torch ops per 32K-entry slice.

Each source's weighted sparse delta p_i is made per block of ``BLOCK`` entries inside the kernel
(trim by thresholds, or a fast-RNG drop), then sign election, the disjoint mean and λ are applied
to the block while it sits in L1, and base + merged is written once. Every float operation is the
torch path's, in the same order, in float32 (no fastmath, no FMA contraction: numba's default), so
the results are the same bits (``combine``'s docstring gives the rounding argument; tests compare
bit for bit). The torch path stays the reference and runs on CUDA, other dtypes, and whenever
numba cannot be imported (``ENABLED`` off: tests force it).

TIES selection='fast' folds fast_cut's counting pass into the merge: each source's cut is
bracketed from the seeded sample as before; the merge pass decides every entry whose |δ_i| lie
outside their brackets, counts the entries above each bracket and collects the in-bracket values
(~2 % of entries); the cut is then selected among those (fast_cut's very value) and only the
deferred entries are merged again. TIES exact applies mergekit's cut, and its kept ties at a
surplus cut as a fix-up of those few entries.

DARE rng='fast' draws a counter-based hash inside the kernel (splitmix64 of (source seed, flat
index)): no mask is stored, and the draws do not depend on the thread count or the slicing.
Compiled on first use per process (numba's on-disk cache pickles its index: never cache=True);
long jobs compile up front on a background thread (fused_warm.py), after which every tensor from
MIN_ENTRIES runs here.
"""
from __future__ import annotations

import threading
from typing import List, Optional, Sequence

import numpy as np
import torch
from torch import Tensor

from . import fused_kernels as kernels
from .fused_kernels import AVAILABLE, BLOCK, DROP, MASK64, PLAIN, TRIM, keep_threshold

ENABLED = AVAILABLE  # tests switch it off to run the torch path where numba is installed

SLICE = 1 << 18  # entries per worker call: Python's per-call cost spread over 256K entries

POOL_SLACK = SLICE  # entries a Pool holds beyond twice the brackets' expected shares

MIN_ENTRIES = 1 << 17  # smaller tensors (biases, norms, the tiny test zoo) take the torch path
COLD_MIN = 1 << 22  # the kernels compile on first use (2.7-3.5 s per process and source count,
# measured under load): before that only a tensor this large starts them (an XLM-R embedding, 192 M
# entries, saves ~2 s per TIES merge; the demo's largest, 1.3 M, ~20 ms)
COMPILED: set = set()  # source counts the merge kernel has run for in this process
RUNS = {"ties": 0, "dare": 0, "missed": 0}  # fused merges run in this process, and TIES fast
# merges whose bracket missed (a second full pass): what tests and benches read
_LOCK = threading.Lock()



def usable(tensors: Sequence[Tensor], base: Optional[Tensor]) -> bool:
    """True where the fused kernels apply: numba there, CPU float32 contiguous inputs of at least
    MIN_ENTRIES entries, and COLD_MIN until the kernels are compiled for this many sources in
    this process (a one-shot demo-size merge does not pay a compile it would not win back)."""
    if not ENABLED or base is None or base.numel() < MIN_ENTRIES:
        return False
    if base.numel() < COLD_MIN and len(tensors) not in COMPILED:
        return False
    return all(t.device.type == "cpu" and t.dtype == torch.float32 and t.is_contiguous()
               and t.shape == base.shape for t in [*tensors, base])


def _count(kind: str) -> None:
    with _LOCK:
        RUNS[kind] += 1


def fast_seed(generator) -> int:
    """A 63-bit seed drawn from the kernel's generator: each source gets its own, in order, and a
    key's generator (seeded by (seed, key)) makes the whole merge deterministic per seed."""
    return int(torch.randint(0, 2 ** 62, (1,), generator=generator))


class Plan:
    """Per source: how its weighted sparse delta p_i is made (``mode``), the trim thresholds
    (keep |δ| > hi; lo ≤ hi brackets an unknown cut), the multiplier ``pw`` of p_i (w_i, or
    w_i·factor after a drop), the drop stream (seed, bound) and the entries a trim keeps whatever
    their size (``forced``, ascending)."""

    def __init__(self, k: int):
        self.mode = np.zeros(k, np.int8)
        self.lo = np.full(k, np.float32(1.0))
        self.hi = np.full(k, np.float32(-1.0))
        self.pw = np.zeros(k, np.float32)
        self.seed = np.zeros(k, np.uint64)
        self.bound = np.zeros(k, np.uint64)
        self.forced: List[np.ndarray] = [np.zeros(0, np.int64) for _ in range(k)]

    def plain(self, i: int, weight: float) -> None:
        self.mode[i], self.pw[i] = PLAIN, weight

    def trim(self, i: int, weight: float, threshold: float, lo: Optional[float] = None,
             forced: Optional[np.ndarray] = None) -> None:
        """Keeps |δ| > threshold (hardshrink's rule); ``lo`` < threshold: [lo, threshold] is a
        bracket whose entries are deferred (the cut lies in it, not yet known)."""
        self.mode[i], self.pw[i], self.hi[i] = TRIM, weight, threshold
        self.lo[i] = np.nextafter(np.float32(threshold), np.float32(np.inf)) if lo is None else lo
        if forced is not None:
            self.forced[i] = np.ascontiguousarray(forced, dtype=np.int64)

    def drop(self, i: int, multiplier: float, seed: int, keep_prob: float) -> None:
        self.mode[i], self.pw[i] = DROP, multiplier
        self.seed[i], self.bound[i] = seed & MASK64, keep_threshold(keep_prob)


def _subplan(plan: Plan, which: List[int]) -> Plan:
    sub = Plan(len(which))
    for j, i in enumerate(which):
        sub.mode[j], sub.pw[j], sub.seed[j], sub.bound[j] = (plan.mode[i], plan.pw[i],
                                                             plan.seed[i], plan.bound[i])
    return sub


def _flat(t: Tensor) -> np.ndarray:
    return t.detach().reshape(-1).numpy()


def _workers() -> int:
    return max(1, torch.get_num_threads())


class Deferred:
    """What a bracketed merge pass leaves, per slice in entry order (``parts``: the undecided
    entries, ascending, their δ_i as a k × m array and their base values), and per source the
    in-bracket |δ| (``inside``, in no particular order: only their k-th largest is read) and the
    count above the bracket. Kept per slice as views into one ``Pool``: joining them would copy
    ~0.5 GB at 250002×768 with 5 sources for nothing (``index``, ``deltas``, ``base`` join them
    for inspection)."""

    def __init__(self, k: int, parts: dict, inside: List[np.ndarray], above: np.ndarray):
        self.parts = [parts[s] for s in sorted(parts)]
        self.inside, self.above, self.k = inside, [int(a) for a in above], k

    @property
    def size(self) -> int:
        return sum(p[0].size for p in self.parts)

    @property
    def index(self) -> np.ndarray:
        return np.concatenate([p[0] for p in self.parts]) if self.parts else np.zeros(0, np.int64)

    @property
    def deltas(self) -> np.ndarray:
        return np.concatenate([p[1] for p in self.parts], axis=1) if self.parts \
            else np.zeros((self.k, 0), np.float32)

    @property
    def base(self) -> np.ndarray:
        return np.concatenate([p[2] for p in self.parts]) if self.parts \
            else np.zeros(0, np.float32)


class Pool:
    """One allocation per merge for what the bracketed pass keeps, handed out slice by slice
    under a lock. Per-slice copies cost ~60 K page faults and malloc churn per 250002×768 merge at
    k=5 (the pass's time swung 0.5-1.6 s); numpy's one large array takes huge pages, and pages
    never handed out are never touched. A slice that does not fit (entries bunched near the cut
    in a few slices) gets copies of its own."""

    def __init__(self, k: int, entries: int, inside: int):
        self.index = np.empty(entries, np.int64)
        self.deltas = np.empty((k, entries), np.float32)
        self.base = np.empty(entries, np.float32)
        self.values = np.empty((k, inside), np.float32)
        self.used, self.used_values = 0, np.zeros(k, np.int64)
        self.spilled = [[] for _ in range(k)]  # in-bracket values that did not fit
        self.above = np.zeros(k, np.int64)
        self.lock = threading.Lock()

    def keep(self, got: int, deferred, dvals, bvals, inside, counts, above):
        """Copies one slice's deferred entries and in-bracket values in; returns its part."""
        k = len(counts)
        with self.lock:
            at = self.used
            fits = at + got <= self.index.size
            self.used += got if fits else 0
            spots = self.used_values.copy()
            room = spots + counts <= self.values.shape[1]
            self.used_values += np.where(room, counts, 0)
            self.above += above
        for i in range(k):
            c = int(counts[i])
            if room[i]:
                self.values[i, spots[i]:spots[i] + c] = inside[i, :c]
            else:
                with self.lock:
                    self.spilled[i].append(inside[i, :c].copy())
        if not fits:
            return deferred[:got].copy(), dvals[:, :got].copy(), bvals[:got].copy()
        self.index[at:at + got] = deferred[:got]
        self.deltas[:, at:at + got] = dvals[:, :got]
        self.base[at:at + got] = bvals[:got]
        return self.index[at:at + got], self.deltas[:, at:at + got], self.base[at:at + got]

    def inside(self) -> List[np.ndarray]:
        return [np.concatenate([self.values[i, :self.used_values[i]], *self.spilled[i]])
                if self.spilled[i] else self.values[i, :self.used_values[i]]
                for i in range(len(self.spilled))]


_SCRATCH = threading.local()  # per worker thread: the bracketed pass's buffers, reused


def _scratch(k: int):
    """(deferred, dvals, bvals, inside) buffers for one SLICE of k sources, made once per thread
    and source count: fresh ones per slice cost ~13 MB of page faults each at k=5."""
    held = getattr(_SCRATCH, "buffers", None)
    if held is None or held[1].shape[0] != k:
        held = (np.empty(SLICE, np.int64), np.empty((k, SLICE), np.float32),
                np.empty(SLICE, np.float32), np.empty((k, SLICE), np.float32))
        _SCRATCH.buffers = held
    return held


def _divisor(weights: List[float]):
    total = sum(weights)
    return np.float32(total if abs(total) >= 1e-8 else 1.0)


def merge(tensors: Sequence[Tensor], base: Tensor, weights: List[float], plan: Plan, *,
          consensus: bool, normalize: bool, scale: float, shares: Sequence[float] = ()):
    """base + λ·[Σ m_i p_i]/[Σ w_i m_i] in one pass per slice (``combine``'s result, bit for bit).
    Returns (out, Deferred): the entries a bracket left undecided are merged by
    ``fix_deferred`` once the cuts are known. ``shares``: the brackets' expected shares of the
    entries, which size the Pool (twice their sum; only what is used is ever touched)."""
    from .combine import run_slices

    consensus, normalize = bool(consensus), bool(normalize)  # one compiled signature per k
    xs, b = tuple(_flat(t) for t in tensors), _flat(base)
    n, k = b.size, len(xs)
    out = np.empty(n, np.float32)
    w = np.asarray(weights, np.float32)
    bracketed = bool(np.any((plan.mode == TRIM) & (plan.lo <= plan.hi)))
    parts = {}
    pool = (Pool(k, min(n, int(2 * sum(shares) * n) + POOL_SLACK),
                 min(n, int(2 * max(shares) * n) + POOL_SLACK)) if bracketed and shares else None)

    def work(start: int, stop: int) -> None:
        if bracketed:
            deferred, dvals, bvals, inside = _scratch(k)
        else:
            deferred, bvals = np.empty(1, np.int64), np.empty(1, np.float32)
            dvals, inside = np.empty((k, 1), np.float32), np.empty((k, 1), np.float32)
        counts, above = np.zeros(k, np.int64), np.zeros(k, np.int64)
        got = kernels.merge_slice(
            xs, b, b, out, start, stop, plan.mode, plan.lo, plan.hi, plan.pw, w, plan.seed,
            plan.bound, consensus, normalize, _divisor(weights), np.float32(scale), scale != 1,
            deferred, dvals, bvals, inside, counts, above)
        if pool is not None:
            parts[start] = pool.keep(got, deferred, dvals, bvals, inside, counts, above)
        elif bracketed:
            parts[start] = (deferred[:got].copy(), dvals[:, :got].copy(), bvals[:got].copy(),
                            [inside[i, :counts[i]].copy() for i in range(k)], above)
    run_slices(n, work, chunk=SLICE, workers=_workers())
    forced = [f for f in plan.forced if f.size]
    if forced:
        fix(xs, b, out, np.unique(np.concatenate(forced)), plan, w, consensus=consensus,
            normalize=normalize, divisor=_divisor(weights), scale=scale)
    COMPILED.add(k)
    if pool is not None:
        return out, Deferred(k, parts, pool.inside(), pool.above)
    order = sorted(parts)
    inside = [np.concatenate([parts[s][3][i] for s in order]) if order
              else np.zeros(0, np.float32) for i in range(k)]
    above = np.sum([parts[s][4] for s in order], axis=0) if order else np.zeros(k, np.int64)
    return out, Deferred(k, {s: parts[s][:3] for s in order}, inside, above)


def fix_deferred(out: np.ndarray, deferred: Deferred, plan: Plan, weights: List[float], *,
                 consensus: bool, normalize: bool, scale: float) -> None:
    """Merges the deferred entries under ``plan`` (cuts now final) from their kept δ_i and base,
    slice part by slice part, with the pass's own kernel (δ − 0 is δ, bit for bit; no second
    kernel to compile)."""
    from .combine import run_slices

    assert not np.any(plan.mode == DROP)  # a drop's draw depends on the entry's index
    consensus, normalize = bool(consensus), bool(normalize)
    parts, k = deferred.parts, len(plan.mode)
    if not parts:
        return
    zeros = np.zeros(max(p[0].size for p in parts), np.float32)
    w, none = np.asarray(weights, np.float32), np.zeros(1, np.int64)

    def work(first: int, last: int) -> None:  # disjoint entries: any split gives the same bits
        for index, deltas, base in parts[first:last]:
            size = index.size
            if not size:
                continue
            merged = np.empty(size, np.float32)
            kernels.merge_slice(tuple(deltas[i] for i in range(k)), zeros[:size], base, merged, 0,
                         size, plan.mode, plan.lo, plan.hi, plan.pw, w, plan.seed, plan.bound,
                         consensus, normalize, _divisor(weights), np.float32(scale), scale != 1,
                         none, np.zeros((k, 1), np.float32), np.zeros(1, np.float32),
                         np.zeros((k, 1), np.float32), np.zeros(k, np.int64),
                         np.zeros(k, np.int64))
            out[index] = merged
    run_slices(len(parts), work, chunk=max(1, -(-len(parts) // (4 * _workers()))),
               workers=_workers())


def fix(xs, b, out, where: np.ndarray, plan: Plan, w: np.ndarray, *, consensus: bool,
        normalize: bool, divisor, scale: float) -> None:
    """Merges the entries ``where`` (ascending) again under ``plan`` (thresholds now final)."""
    forced_at = np.zeros(len(xs) + 1, np.int64)
    forced_at[1:] = np.cumsum([f.size for f in plan.forced])
    from .combine import run_slices

    forced = np.concatenate(plan.forced) if forced_at[-1] else np.zeros(1, np.int64)
    where = np.ascontiguousarray(where, np.int64)

    def work(start: int, stop: int) -> None:  # disjoint entries: any split gives the same bits
        kernels.fix_entries(
            xs, b, out, where[start:stop], plan.mode, plan.hi, plan.pw, w, plan.seed, plan.bound,
            forced, forced_at, consensus, normalize, divisor, np.float32(scale), scale != 1)
    run_slices(where.size, work, chunk=max(BLOCK, -(-where.size // _workers())),
               workers=_workers())


def l1_sums(tensors: Sequence[Tensor], base: Tensor, plan: Plan) -> np.ndarray:
    """(‖δ_i‖₁, ‖kept δ_i‖₁) per source under ``plan``'s fast drops, read-only, in float64: per
    fixed slice in entry order, the slices added in order (independent of the thread count)."""
    from .combine import run_slices

    xs, b = tuple(_flat(t) for t in tensors), _flat(base)
    sums = {}

    def work(start: int, stop: int) -> None:
        part = np.zeros((len(xs), 2), np.float64)
        kernels.l1_slice(xs, b, start, stop, plan.seed, plan.bound, part)
        sums[start] = part
    run_slices(b.size, work, chunk=SLICE, workers=_workers())  # 16 K-entry calls cost ~25 ms
    # of call overhead per 16.7 M entries and K=5
    total = np.zeros((len(xs), 2), np.float64)
    for start in sorted(sums):
        total += sums[start]
    return total


def ties(tensors: Sequence[Tensor], base: Tensor, weights: List[float], densities: List[float],
         *, selection: str, consensus: bool, normalize: bool, scale: float,
         sorted_sizes: Optional[Sequence[Optional[Tensor]]] = None, ties_of=None) -> Tensor:
    """TIES (trim + consensus + disjoint mean + λ + base), fused: sparse.py's kernel on CPU
    float32. selection='exact': mergekit's cut and kept ties (trim_plan), applied in the pass and
    as a fix-up of the tied entries; 'fast': fast_cut's cut, found inside the merge pass where a
    bracket applies (see the module docstring). ``sorted_sizes`` / ``ties_of(i)``: a MergeCache's
    sorted |δ_i| and tied-order lookups."""
    from .sparse_trim import (SAMPLE, below, bracketed_cut, fast_bracket, fast_cut, trim_cut,
                              trim_plans)

    _count("ties")
    k, n = len(tensors), base.numel()
    plan = Plan(k)
    flat_base = base.reshape(-1)
    brackets, shares = {}, []
    plans = (trim_plans(tensors, base, densities, sorted_sizes, ties_of)
             if selection == "exact" else None)  # the sources' plans side by side
    for i, (x, d, w) in enumerate(zip(tensors, densities, weights)):
        sorted_size = None if sorted_sizes is None else sorted_sizes[i]
        if d >= 1:
            plan.plain(i, w)
        elif selection == "exact":
            threshold, kept = plans[i]
            plan.trim(i, w, threshold, forced=None if kept is None else kept.numpy())
        elif sorted_size is not None or n <= 4 * SAMPLE:
            cut = (trim_cut(d, n, sorted_size=sorted_size)[0] if sorted_size is not None
                   else fast_cut(x.reshape(-1), flat_base, d))
            plan.trim(i, w, below(cut) if cut != 0 else 0.0)
        else:
            kth, lo, hi, share = fast_bracket(x.reshape(-1), flat_base, d)
            shares.append(share)
            if share > 0.1:  # an extreme density: a wide bracket would defer too much
                cut = fast_cut(x.reshape(-1), flat_base, d)
                plan.trim(i, w, below(cut) if cut != 0 else 0.0)
            else:
                brackets[i] = kth
                plan.trim(i, w, np.float32(hi), lo=np.float32(lo))
    out, deferred = merge(tensors, base, weights, plan, consensus=consensus,
                          normalize=normalize, scale=scale, shares=shares)
    if brackets:
        missed = False
        for i, kth in brackets.items():
            cut = bracketed_cut(kth, deferred.above[i], torch.from_numpy(deferred.inside[i]))
            if cut is None:  # the bracket missed (rarely): the full selection decides
                missed = True
                size = torch.sub(tensors[i].reshape(-1), flat_base).abs_()
                cut = trim_cut(densities[i], n, size)[0]
            plan.trim(i, weights[i], below(cut) if cut != 0 else 0.0)
        if missed:  # entries outside a missed bracket were decided on a wrong premise
            _count("missed")
            out = merge(tensors, base, weights, plan, consensus=consensus,
                        normalize=normalize, scale=scale)[0]
        else:
            fix_deferred(out, deferred, plan, weights, consensus=consensus,
                         normalize=normalize, scale=scale)
    return torch.from_numpy(out).view(base.shape)


def dare(tensors: Sequence[Tensor], base: Tensor, weights: List[float], densities: List[float],
         *, rescale: str, generator, consensus: bool, normalize: bool, scale: float) -> Tensor:
    """DARE rng='fast' (drop + rescale + optional consensus + λ + base), fused: the keep draws
    are hashed inside the kernel (no mask held); 'l1' first sums each source's norms in a
    read-only pass. The same drops and bits as sparse_drop.dropped_fast under ``combine``."""

    _count("dare")
    plan = Plan(len(tensors))
    for i, (d, w) in enumerate(zip(densities, weights)):
        if d >= 1:  # no draws, as in the torch path
            plan.plain(i, w)
        else:
            factor = 1.0 / d if rescale == "inverse_density" else 1.0  # as dropped_fast rounds
            plan.drop(i, w * factor, fast_seed(generator), d)
    dropping = [i for i in range(len(tensors)) if plan.mode[i] == DROP]
    if rescale == "l1" and dropping:
        sums = l1_sums([tensors[i] for i in dropping], base, _subplan(plan, dropping))
        for (before, after), i in zip(sums, dropping):
            factor = 1.0 if before < 1e-7 or after < 1e-7 else before / after
            plan.pw[i] = weights[i] * factor
    out = merge(tensors, base, weights, plan, consensus=consensus, normalize=normalize,
                scale=scale)[0]
    return torch.from_numpy(out).view(base.shape)
