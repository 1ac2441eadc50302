"""Compiling the fused kernels (fused.py) before a long job needs them.

Until the merge kernel has run once for a source count, fused.usable sends every tensor under
COLD_MIN (4 M entries) to the torch kernels, so that a one-shot demo merge never pays the ~3 s
compile. A search or a sweep merges the same source count hundreds of times, and none of its
tensors may reach COLD_MIN (rows-only embeddings, demo-size models): it would never leave the
torch path. ``warm_in_background`` compiles the kernels its merges will take on a daemon thread,
overlapping the first candidates (which meanwhile merge on the torch path, the same bits); once
done, every tensor from MIN_ENTRIES entries runs fused.
"""
from __future__ import annotations

import threading
from typing import Iterable, Mapping, Optional, Sequence, Tuple

import numpy as np
import torch

from . import fused

TIES, DROP, L1 = "ties", "drop", "l1"  # kernel sets: the merge pass + the exact-ties fix-up; the
# merge pass alone (DARE rng='fast'); DARE's L1 norm pass


def kernels_for(method: str, params: Optional[Mapping] = None) -> Tuple[str, ...]:
    """The kernel sets a merge with ``method`` and ``params`` runs fused (sparse.py's dispatch):
    TIES always, DARE only with rng='fast' (plus the L1 pass for its default rescale)."""
    params = params or {}
    if method == "ties":
        return (TIES,)
    if method in ("dare_linear", "dare_ties") and params.get("rng") == "fast":
        return (DROP, L1) if params.get("rescale", "l1") == "l1" else (DROP,)
    return ()


def warm(n_sources: int, kernels: Iterable[str] = (TIES,)) -> bool:
    """Compiles ``kernels`` for ``n_sources`` sources now (a few seconds the first time, nothing
    after) by running them on a few thousand entries; afterwards fused.usable admits tensors from
    MIN_ENTRIES. False where the fused kernels are off or ``n_sources`` < 1."""
    kernels = set(kernels)
    if not fused.ENABLED or n_sources < 1 or not kernels:
        return False
    k, n = n_sources, 2 * fused.BLOCK + 7
    g = torch.Generator().manual_seed(k)
    base = torch.randn(n, generator=g)
    sources = [base + torch.randn(n, generator=g) for _ in range(k)]
    weights = [1.0 / k] * k
    plan = fused.Plan(k)
    for i in range(k):
        if TIES in kernels:  # a bracket (deferred entries) and a forced entry (the fix-up)
            plan.trim(i, weights[i], np.float32(1.0), lo=np.float32(0.5),
                      forced=np.array([i], np.int64))
        else:
            plan.drop(i, weights[i], seed=i, keep_prob=0.5)
    if L1 in kernels:
        fused.l1_sums(sources, base, plan)
    out, deferred = fused.merge(sources, base, weights, plan, consensus=True, normalize=True,
                                scale=1.0)
    if TIES in kernels:
        for i in range(k):
            plan.trim(i, weights[i], np.float32(0.75))
        fused.fix_deferred(out, deferred, plan, weights, consensus=True, normalize=True,
                           scale=1.0)
    return True


def warm_in_background(jobs: Iterable[Tuple[int, Sequence[str]]]) -> Optional[threading.Thread]:
    """``warm(n_sources, kernels)`` for each job on a daemon thread (started; returned so that a
    caller may join it); None where nothing needs compiling. A failure only leaves the torch
    path in use."""
    todo = [(k, tuple(kernels)) for k, kernels in jobs if kernels]
    if not fused.ENABLED or not todo:
        return None

    def run() -> None:
        for k, kernels in dict.fromkeys(todo):
            try:
                warm(k, kernels)
            except Exception:  # noqa: BLE001 - the torch kernels give the same results
                return
    thread = threading.Thread(target=run, name="fused-warm", daemon=True)
    thread.start()
    return thread
