"""An opt-in cache for many merges over the same sources and base (an evolutionary search).

``merge_state_dicts(..., cache=MergeCache())`` keeps, per tensor name, what does not depend on the
weights or parameters of a merge, so that the next merge over the same tensors skips that work:

- the inputs as float32 on the compute device, checked for NaN/inf once (float32 sources are used
  as they are: no copy);
- each source's task vector δ_i = θ_i − θ_base, for methods that sparsify it whole (DARE, DELLA,
  breadcrumbs), and its L1 norm (their 'l1' rescaling);
- |δ_i| sorted (TIES): the trim cut for any density is then an index lookup instead of a selection
  (kthvalue) per merge — the same value, so the same result;
- the uniform draws of random methods (DARE, DELLA): a key's generator is seeded by (seed, key), so
  every merge with that seed draws the same stream; it is drawn once;
- breadcrumbs' argsort of |δ_i| and DELLA's magnitude ranks (sorts, the slowest part of those).

With ``MergeCache(store=TrimStore(...))`` the sorted magnitudes, mergekit's tie orders (TIES'
one-off sorts: ~38 s per source for an XLM-R embedding) and breadcrumbs' order are also kept on
disk, keyed by the tensors' content (engine/merge/trim_store.py), so the next search over the same
sources maps them instead of sorting again; store-backed arrays cost page cache, not memory.

Results are bit-for-bit those of the uncached merge (tests/test_merge_cache.py).
Memory, filled only as methods ask, in copies of the sources (float32): TIES ~1× (sorted
magnitudes); DARE ~2× (deltas + draws); EvoMerge (TIES and DARE) ~3×; DELLA ~3×; breadcrumbs ~3×
(the argsort is int64). Non-float32 sources add their float32 copy. ``nbytes()`` says what it
holds; ``clear()`` frees it. For models near the memory limit, leave the cache out.
An entry is used only while the caller passes the very same tensor objects, unmodified (checked by
identity and torch's in-place version counter); anything else rebuilds it, so a stale entry can
cost time but never change a result.
"""
from __future__ import annotations

from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np
import torch
from torch import Tensor

from .common import MergeError, all_finite

DURABLE = ("sorted", "tie_order", "order")  # derived kinds a TrimStore keeps on disk


def _refs(tensors: Sequence[Optional[Tensor]]) -> Tuple:
    return tuple((t, t._version) if t is not None else None for t in tensors)


def _same(refs: Tuple, tensors: Sequence[Optional[Tensor]]) -> bool:
    return len(refs) == len(tensors) and all(
        (r is None and t is None) or (r is not None and t is not None and r[0] is t
                                      and r[1] == t._version)
        for r, t in zip(refs, tensors))


def checked(t: Tensor, who: str, key: str) -> Tensor:
    """``t`` itself, after making sure it holds no NaN/inf (a clear error otherwise)."""
    if not all_finite(t):
        raise MergeError(f"model '{who}' tensor '{key}' contains NaN or inf")
    return t


class KeyInputs:
    """One tensor name's cached inputs and derived tensors (filled lazily, on first use)."""

    def __init__(self, key: str, originals: Sequence[Tensor], names: Sequence[str],
                 device: torch.device, store=None):
        self.key, self.device, self.store = key, device, store
        self.source_refs = _refs(originals)
        self.tensors: List[Tensor] = [checked(t, n, key).to(device=device, dtype=torch.float32)
                                      for t, n in zip(originals, names)]
        self.base: Optional[Tensor] = None
        self.base_ref: Tuple = (None,)
        self._derived: Dict[Tuple, Tensor] = {}   # (kind, source index) -> tensor
        self._draws: Dict[Tuple, List[Tensor]] = {}  # (seed, shape) -> a block per source
        self._digests: Dict[object, bytes] = {}  # source index or "base" -> content digest
        self._mapped: set = set()  # (kind, i) of derived arrays mapped from the store

    def set_base(self, raw: Tensor) -> None:
        """Adopts the merge's base tensor; a different one drops everything derived from the old."""
        if _same(self.base_ref, [raw]):
            return
        self.base = checked(raw, "base", self.key).to(device=self.device, dtype=torch.float32)
        self.base_ref = _refs([raw])
        self._derived.clear()
        self._mapped.clear()
        self._digests.pop("base", None)

    def derived(self, kind: str, i: int, make) -> Tensor:
        """Something computed from source i and the base, kept until either changes."""
        found = self._derived.get((kind, i))
        if found is None:
            if self.store is not None and kind in DURABLE:
                found = self._durable(kind, i, make)
            else:
                found = make()
            self._derived[(kind, i)] = found
        return found

    def digest(self, which) -> bytes:
        """Content digest of source ``which`` (an index) or of the base, made once per entry (the
        first time, with every other source's and the base's; XXH3 at memory bandwidth)."""
        found = self._digests.get(which)
        if found is None:
            from .trim_store import tensor_digests

            missing = [j for j in [*range(len(self.tensors)), "base"] if j not in self._digests]
            made = tensor_digests([self.base if j == "base" else self.tensors[j] for j in missing])
            self._digests.update(zip(missing, made))
            found = self._digests[which]
        return found

    def _durable(self, kind: str, i: int, make) -> Tensor:
        """``make()``'s array from the store when it holds a valid one, else made and stored."""
        from .trim_store import stored

        made = []

        def counted():
            made.append(make())
            return made[0]
        out = stored(self.store, kind, self.tensors[i], self.base, counted, self.digest(i),
                     self.digest("base"), self._derived.get(("sorted", i)))
        if not made or out is not made[0]:  # mapped: page cache on the CPU, a copy elsewhere
            if self.device.type == "cpu":
                self._mapped.add((kind, i))
            out = out.to(self.device)
        return out

    def delta(self, i: int) -> Tensor:
        """δ_i = θ_i − θ_base (read-only: kernels must not modify it)."""
        return self.derived("delta", i, lambda: self.tensors[i] - self.base)

    def l1(self, i: int) -> Tensor:
        """‖δ_i‖₁, computed as the uncached kernel does (same reduction, same value)."""
        from .sparse_shared import l1_norm

        return self.derived("l1", i, lambda: l1_norm(self.delta(i)))

    def sorted_size(self, i: int) -> Tensor:
        """|δ_i| flattened and sorted ascending (numpy's vectorised sort on the CPU: the values
        are those of any sort). δ_i itself is not kept for this."""
        def make():
            size = (self.tensors[i] - self.base).reshape(-1).abs_()
            if size.device.type == "cpu":
                return torch.from_numpy(np.sort(size.numpy()))
            return torch.sort(size).values
        return self.derived("sorted", i, make)

    def uniform(self, shape: torch.Size, j: int, generator: torch.Generator) -> Tensor:
        """The j-th uniform block a random kernel draws for this key (float32, ``shape``).

        ``generator`` must be the merge's fresh per-key generator (nothing drawn from it yet): its
        seed keys the draws. On the first request for (seed, shape) one block per source is drawn
        from it, so block j is exactly the kernel's j-th ``torch.rand(shape, generator=...)``."""
        slot = (generator.initial_seed(), tuple(shape))
        blocks = self._draws.get(slot)
        if blocks is None:
            blocks = [torch.rand(shape, generator=generator, device=self.device,
                                 dtype=torch.float32) for _ in self.tensors]
            self._draws[slot] = blocks
        return blocks[j]

    def nbytes(self) -> int:
        """Bytes this entry holds beyond the caller's own tensors."""
        own = {id(r[0]) for r in self.source_refs + self.base_ref if r is not None}
        tensors = [t for t in self.tensors + [self.base] if t is not None and id(t) not in own]
        tensors += [t for slot, t in self._derived.items() if slot not in self._mapped]
        tensors += [b for bs in self._draws.values() for b in bs]
        return sum(t.numel() * t.element_size() for t in tensors)


class MergeCache:
    """Per-key inputs kept between merges over the same sources (see the module docstring).

    One cache per set of sources (e.g. per evolutionary run); pass it to every
    ``merge_state_dicts`` call over those sources and their base. Not thread-safe.
    """

    def __init__(self, store=None):
        self.store = store  # a TrimStore (engine/merge/trim_store.py) or None
        self._entries: Dict[str, KeyInputs] = {}
        self.hits = 0
        self.builds = 0

    def inputs(self, key: str, originals: Sequence[Tensor], base: Optional[Tensor],
               names: Sequence[str], device: torch.device) -> KeyInputs:
        """The key's cached inputs, rebuilt when the sources are not the ones cached; raises
        MergeError on NaN/inf (checked once per tensor)."""
        entry = self._entries.get(key)
        if entry is None or entry.device != device or not _same(entry.source_refs, originals):
            entry = self._entries[key] = KeyInputs(key, originals, names, device, self.store)
            self.builds += 1
        else:
            self.hits += 1
        if base is not None:  # a merge without a base (linear) leaves the base's tensors be
            entry.set_base(base)
        return entry

    def nbytes(self) -> int:
        """Memory the cache holds beyond the caller's tensors (float32 copies, deltas, sorted
        magnitudes, draws)."""
        return sum(e.nbytes() for e in self._entries.values())

    def clear(self) -> None:
        self._entries.clear()

    def __len__(self) -> int:
        return len(self._entries)
