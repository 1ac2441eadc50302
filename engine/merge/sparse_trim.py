"""TIES' trim (and breadcrumbs' outlier trim): which entries of a task vector survive by
magnitude. Mergekit-identical: the very entries mergekit 0.1.5 keeps, ties at the cut included."""
from __future__ import annotations

from typing import Callable, List, Optional, Sequence, Tuple

import torch
import torch.nn.functional as F
from torch import Tensor

from .combine import Piece
from .common import select_kth

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


def below(cut: Tensor) -> float:
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
    equally large entries. A MergeCache keeps the order, so a search sorts each tensor once,
    and a TrimStore keeps it on disk for later searches and one-shot merges (stored_ties)."""
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


def stored_ties(store, x: Tensor, base: Tensor,
                base_digest: Callable[[], bytes]) -> Callable[[int, int], Tensor]:
    """tied_kept for a one-shot merge (no MergeCache) from a TrimStore: only when a cut lands on
    surplus ties (trim_plan calls it then) are x and the base hashed and the descending argsort
    of |x − base| read from the store, or made (mergekit's sort) and written there, so merging
    the same sources again at another density or weights only slices it. ``base_digest()``: the
    base's tensor_digest, made once for all sources (see digest_once)."""
    from .trim_store import stored, tensor_digest

    def make() -> Tensor:
        size = torch.sub(x.reshape(-1), base.reshape(-1)).abs_()
        return torch.argsort(size, descending=True).to(torch.int32)

    def ties(above: int, k: int) -> Tensor:
        order = stored(store, "tie_order", x, base, make, tensor_digest(x), base_digest())
        return torch.sort(order[above:k].to(device=x.device, dtype=torch.long)).values
    return ties


def digest_once(t: Tensor) -> Callable[[], bytes]:
    """``t``'s tensor_digest, computed on the first call only (the base's, shared by sources)."""
    memo: list = []

    def get() -> bytes:
        if not memo:
            from .trim_store import tensor_digest

            memo.append(tensor_digest(t))
        return memo[0]
    return get


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
        return F.hardshrink(flat, below(cut)).view(delta.shape)
    out = F.hardshrink(flat, float(cut))  # |δ| > cut, then mergekit's choice among the ties
    size = flat.abs() if size is None else size
    ties = tied_kept(size, int(torch.count_nonzero(out)), k)
    out[ties] = flat[ties]
    return out.view(delta.shape)


def trim_plan(x: Tensor, base: Tensor, density: float, sorted_size: Optional[Tensor] = None,
              ties: Optional[Callable[[int, int], Tensor]] = None
              ) -> Tuple[float, Optional[Tensor]]:
    """(threshold, kept) of TIES' trim of x − base: keep |δ| > threshold (hardshrink's rule), and
    with surplus ties at the cut also the entries ``kept`` (ascending indices; else None). The cut
    comes from ``sorted_size`` (cached) or a selection over |x − base| made and dropped here;
    the tied entries mergekit keeps from ``ties(above, k)`` (a cached tied_kept) or tied_kept."""
    fx, fb = x.reshape(-1), base.reshape(-1)
    n = fx.numel()
    size = torch.sub(fx, fb).abs_() if sorted_size is None else None
    cut, k, exact = trim_cut(density, n, size, sorted_size)
    if cut == 0 or exact:
        return (below(cut) if cut != 0 else 0.0), None
    if sorted_size is not None:
        above = n - int(torch.searchsorted(sorted_size, cut.reshape(1), right=True))
    else:
        above = int(torch.count_nonzero(size > cut))
    if ties is None:
        kept = tied_kept(torch.sub(fx, fb).abs_() if size is None else size, above, k)
    else:
        kept = ties(above, k)
    return float(cut), kept


PARALLEL_MIN = 1 << 22  # entries: below this, the plans' thread hand-offs cost more than they save
PLAN_BYTES = 16  # a running plan's memory an entry: |δ| (4), torch's argsort (int64 + values: 12)
Plan = Tuple[float, Optional[Tensor]]


def available_bytes() -> int:
    """Memory the kernel says is available (MemAvailable: free plus reclaimable page cache)."""
    import os

    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_AVPHYS_PAGES")


def trim_plans(tensors: Sequence[Tensor], base: Tensor, densities: Sequence[float],
               sorted_sizes: Optional[Sequence[Optional[Tensor]]] = None,
               ties_of: Optional[Callable[[int], Callable[[int, int], Tensor]]] = None
               ) -> List[Optional[Plan]]:
    """trim_plan for every source (None where density ≥ 1), on up to torch's thread count Python
    threads for large CPU tensors: a plan's selection and, with surplus ties at the cut,
    mergekit's argsort are single-threaded calls that let go of the GIL, so the K sources'
    plans of an XLM-R embedding take about K / threads times one instead of K times. The same
    plans, in source order. Each running plan holds |δ| and, with ties, its argsort (~16 bytes
    an entry: 3 GB for an XLM-R embedding), so only as many run at once as twice that fits in
    the available memory (measured at XLM-R size, 5 sources: 82 s instead of 114 s, 9.1 GB peak
    instead of 4.6 GB; mergekit 13.3 GB)."""
    def one(i: int) -> Optional[Plan]:
        if densities[i] >= 1:
            return None
        sorted_size = None if sorted_sizes is None else sorted_sizes[i]
        return trim_plan(tensors[i], base, densities[i], sorted_size,
                         ties_of(i) if ties_of is not None else None)
    n = base.numel()
    workers = min(torch.get_num_threads(), len(tensors))
    if workers > 1 and n >= PARALLEL_MIN and base.device.type == "cpu":
        workers = min(workers, int(available_bytes() // (2 * PLAN_BYTES * n)))
    if workers <= 1 or n < PARALLEL_MIN or base.device.type != "cpu":
        return [one(i) for i in range(len(tensors))]
    from concurrent.futures import ThreadPoolExecutor

    with ThreadPoolExecutor(workers, thread_name_prefix="trim-plan") as pool:
        return list(pool.map(one, range(len(tensors))))


def trimmed(x: Tensor, base: Tensor, density: float, weight: float,
            sorted_size: Optional[Tensor] = None,
            ties: Optional[Callable[[int, int], Tensor]] = None,
            plan: Optional[Plan] = None) -> Piece:
    """w·trim(x − base) slice by slice, so that no full sparsified delta is ever held: the cut
    comes up front from the sorted magnitudes (``sorted_size``, cached) or, without them, from a
    selection over |x − base| made here and dropped before the slices run (one source's |δ| at a
    time instead of K sparsified deltas at once). Same entries, same bits as ``magnitude``.

    With surplus ties at the cut, the tied entries mergekit keeps come from ``ties(above, k)``
    (tied_kept over |δ|; a cached version may be passed) and each slice adds its share of them."""
    fx, fb = x.reshape(-1), base.reshape(-1)
    if density >= 1:
        return lambda start, stop: torch.sub(fx[start:stop], fb[start:stop]).mul_(weight)
    value, kept = plan if plan is not None else trim_plan(x, base, density, sorted_size, ties)
    if kept is None:
        return lambda start, stop: F.hardshrink(torch.sub(fx[start:stop], fb[start:stop]),
                                                value).mul_(weight)

    def piece(start: int, stop: int) -> Tensor:
        d = torch.sub(fx[start:stop], fb[start:stop])
        out = F.hardshrink(d, value)
        lo, hi = torch.searchsorted(kept, torch.tensor([start, stop], dtype=kept.dtype)).tolist()
        if hi > lo:
            here = kept[lo:hi] - start
            out[here] = d[here]
        return out.mul_(weight)
    return piece


def magnitude_outliers(delta: Tensor, density: float, gamma: float,
                       order: Optional[Tensor] = None, sorted_size: Optional[Tensor] = None,
                       order_of: Optional[Callable[[], Tensor]] = None) -> Tensor:
    """Breadcrumbs: drops the ⌊γn⌋ largest |δ| and then the smallest, so ⌊density·n⌋ remain:
    mergekit 0.1.5 keeps ranks [bottom, bottom + target) of ``torch.sort(|δ|).indices``. The two
    boundary values come from a selection (or ``sorted_size``, cached); only where a boundary
    splits a run of equal magnitudes does the order among them matter, and then mergekit's own
    sort decides (``order``, or ``order_of()`` for a cached one, else sorted here)."""
    if density >= 1:
        return delta
    n = delta.numel()
    target, top = int(density * n), int(gamma * n)
    bottom = max(0, n - target - top)
    flat = delta.reshape(-1)
    if order is None and target > 0:
        kept = outlier_band(flat, bottom, target, sorted_size)
        if kept is not None:
            return torch.where(kept, flat, torch.zeros((), dtype=flat.dtype,
                                                       device=flat.device)).reshape(delta.shape)
        order = order_of() if order_of is not None else magnitude_order(flat)
    out = torch.zeros_like(flat)
    if target > 0:
        keep = order[bottom:bottom + target]
        out[keep] = flat[keep]
    return out.reshape(delta.shape)


def outlier_band(flat: Tensor, bottom: int, target: int,
                 sorted_size: Optional[Tensor] = None) -> Optional[Tensor]:
    """The mask of ascending |δ| ranks [bottom, bottom + target) as a band of values lo ≤ |δ| ≤ hi,
    or None where a band edge splits entries of equal magnitude (which of them fall inside is
    then the sort's tie order). lo and hi by one two-rank selection (numpy's introselect), or by
    index lookups in ``sorted_size``."""
    last = bottom + target - 1
    size = flat.abs()
    if sorted_size is not None:
        lo, hi = sorted_size[bottom], sorted_size[last]
        under = int(torch.searchsorted(sorted_size, lo.reshape(1)))
        upto = int(torch.searchsorted(sorted_size, hi.reshape(1), right=True))
    else:
        if size.device.type == "cpu" and size.numel() >= 1024:
            import numpy as np

            part = np.partition(size.detach().numpy(), [bottom, last])
            lo, hi = torch.tensor(part[bottom]), torch.tensor(part[last])
            del part
        else:
            lo, hi = torch.kthvalue(size, bottom + 1).values, torch.kthvalue(size, last + 1).values
        under, upto = int(torch.count_nonzero(size < lo)), int(torch.count_nonzero(size <= hi))
    if under != bottom or upto != last + 1:
        return None
    return (size >= lo) & (size <= hi)


def magnitude_order(delta: Tensor) -> Tensor:
    return torch.sort(delta.reshape(-1).abs(), descending=False).indices


# ---- fast mode: the same cut by a sampled bracket, every entry tied at it kept ------------------

SELECTIONS = ("exact", "fast")
SAMPLE = 1 << 16  # |δ| entries sampled to bracket the cut


def fast_bracket(fx: Tensor, fb: Tensor, density: float) -> Tuple[int, float, float, float]:
    """(k, lo, hi, share): fast_cut's bracket of the k-th largest |x − b| from its seeded sample
    (±5 standard deviations of a sample quantile), and the sample's share inside it."""
    n = fx.numel()
    k = max(1, int(density * n))
    import numpy as np

    where = torch.randint(0, n, (SAMPLE,), generator=torch.Generator().manual_seed(n))
    if fx.device.type == "cpu":  # numpy: no fork/join per op (torch's: ~10x slower here)
        at, xs, bs = where.numpy(), fx.numpy(), fb.numpy()
        sample = torch.from_numpy(np.sort(np.abs(np.subtract(xs[at], bs[at]))))
    else:
        sample = torch.sort(torch.sub(fx[where], fb[where]).abs_()).values
    q = (n - k) / n * SAMPLE  # the cut's expected position in the sorted sample
    margin = 5 * (SAMPLE * (k / n) * (1 - k / n)) ** 0.5 + 2
    lo_at, hi_at = int(q - margin), int(q + margin) + 1
    lo = float(sample[lo_at]) if lo_at > 0 else 0.0
    hi = float(sample[hi_at]) if hi_at < SAMPLE else float("inf")
    return k, lo, hi, (min(hi_at, SAMPLE) - max(lo_at, 0)) / SAMPLE


def bracketed_cut(k: int, above: int, inside: Tensor) -> Optional[Tensor]:
    """The k-th largest |δ| from a bracket's counts: ``above`` entries over it and the values
    ``inside`` it; None where the bracket missed the cut."""
    rank = k - above  # the cut is the rank-th largest inside the bracket
    if not 1 <= rank <= inside.numel():
        return None
    return select_kth(inside, inside.numel() - rank + 1)


def fast_cut(fx: Tensor, fb: Tensor, density: float) -> Tensor:
    """The k-th largest |x − b| (k = max(1, ⌊density·n⌋)): the value trim_cut finds, without a
    sort or a selection over all n entries. A seeded sample of |δ| brackets the cut (fast_bracket);
    one pass over slices counts the entries above the bracket and keeps those inside it (about
    2 % of n), and the cut is selected among those. Should the bracket miss (rarely), the full
    selection decides. Deterministic; the value is exact."""
    import numpy as np

    from .combine import SLICE, run_slices

    n = fx.numel()
    if n <= 4 * SAMPLE or fx.device.type != "cpu":
        return trim_cut(density, n, torch.sub(fx, fb).abs_())[0]
    k, low, high, _ = fast_bracket(fx, fb, density)
    above, inside = {}, {}
    xs, bs = fx.numpy(), fb.numpy()

    def scan(start: int, stop: int) -> None:  # numpy: its boolean ops are ~4x torch's here
        size = np.subtract(xs[start:stop], bs[start:stop])
        np.abs(size, out=size)
        above[start] = int(np.count_nonzero(size > high))
        inside[start] = size[(size >= low) & (size <= high)]
    run_slices(n, scan, chunk=SLICE)
    values = torch.from_numpy(np.concatenate([inside[s] for s in sorted(inside)]))
    cut = bracketed_cut(k, sum(above.values()), values)
    return trim_cut(density, n, torch.sub(fx, fb).abs_())[0] if cut is None else cut


def trimmed_fast(x: Tensor, base: Tensor, density: float, weight: float,
                 sorted_size: Optional[Tensor] = None) -> Piece:
    """w·trim(x − base) with selection='fast': keeps every entry with |δ| ≥ the k-th largest |δ|
    (k = ⌊density·n⌋), so where several entries tie at the cut all of them stay (k + the surplus
    ties), where mergekit keeps exactly k, choosing among the ties by its sort order. The cut is
    fast_cut's (or, with ``sorted_size`` cached by a MergeCache, an index lookup); no sort is
    made."""
    fx, fb = x.reshape(-1), base.reshape(-1)
    if density >= 1:
        return lambda start, stop: torch.sub(fx[start:stop], fb[start:stop]).mul_(weight)
    if sorted_size is not None:
        cut = trim_cut(density, fx.numel(), sorted_size=sorted_size)[0]
    else:
        cut = fast_cut(fx, fb, density)
    threshold = below(cut) if cut != 0 else 0.0
    return lambda start, stop: F.hardshrink(torch.sub(fx[start:stop], fb[start:stop]),
                                            threshold).mul_(weight)
