"""The combining step of task-vector merges, slice by slice.

Sparse methods hand over, per source, a ``Piece``: a way to get any flat slice of its weighted
sparse delta p_i = w_i·s(δ_i). ``combine`` adds them up (with TIES sign consensus when asked) over
slices small enough that each torch op on them runs on one thread without a fork/join (below
ATen's 32768-entry grain) and the ~20 passes per slice stay in the CPU cache. Slices are shared out
to Python worker threads (torch releases the GIL inside an op), one per torch thread: a worker on
a core that another process holds only slows itself, where a fork/join per op makes every op wait
for the slowest thread (measured: 1 thread 0.3 s vs 0.7-2.8 s with 2 on a loaded machine).
On CPU float32, TIES and DARE rng='fast' run as fused numba kernels instead (engine/merge/fused.py:
the same operations in one pass per slice, the same bits); this is their reference and the path
for CUDA, other dtypes and machines without numba.
"""
from __future__ import annotations

import threading
from concurrent.futures import ThreadPoolExecutor
from typing import Callable, List, Optional

import torch
from torch import Tensor

# The flat slice [start, stop) of one source's weighted sparse delta w_i·s(δ_i), as a tensor the
# caller may overwrite.
Piece = Callable[[int, int], Tensor]

SLICE = 32704  # entries per slice: under ATen's grain (32768), so each op runs serially in cache


def whole(t: Tensor) -> Piece:
    """Slices of a weighted sparse delta computed whole (a tensor the kernel owns)."""
    flat = t.reshape(-1)
    return lambda start, stop: flat[start:stop]


def run_slices(n: int, work: Callable[[int, int], None], chunk: int = SLICE,
               workers: Optional[int] = None) -> None:
    """Calls work(start, stop) over [0, n) in slices of ``chunk``, on ``workers`` Python threads
    (default: torch's thread count) pulling the next slice as they finish one; inline when one
    slice or one thread would do. CPU tensors only (a GPU op is asynchronous: call work once)."""
    workers = workers or torch.get_num_threads()
    starts = iter(range(0, n, chunk))
    if workers <= 1 or n <= chunk:
        for start in starts:
            work(start, min(n, start + chunk))
        return
    lock = threading.Lock()

    def loop() -> None:
        while True:
            with lock:
                start = next(starts, None)
            if start is None:
                return
            work(start, min(n, start + chunk))

    with ThreadPoolExecutor(max_workers=workers) as pool:
        for future in [pool.submit(loop) for _ in range(workers)]:
            future.result()


def combine(pieces: List[Piece], weights: List[float], base: Tensor, *, consensus: bool,
            normalize: bool, scale: float, chunk: Optional[int] = None) -> Tensor:
    """base + λ · [Σ_i m_i p_i] / [Σ_i w_i m_i if normalize], p_i = w_i s(δ_i) the pieces, m_i the
    sign-consensus mask (all ones without consensus).

    The elected sign per entry is the sign of Σ p_i (zero counts as +, as in mergekit); entries
    with p = 0 never agree, so trimmed entries do not dilute the average. Float-only arithmetic
    whose every rounding is that of the textbook form (masks and ``where``): the sign s = ±1
    multiplies exactly and rounding is symmetric, so relu(p·s) is |p| where p agrees and 0
    elsewhere, Σ_i relu(p_i·s)·s = s·Σ_i relu(p_i·s) and (a·s)/d·λ = (a/d)·(s·λ) bit for bit;
    sign(relu(p·s)) is the agreement mask. (Only the sign of a zero may differ, where no source
    agrees: base + (±0) is base unless base is −0. s is copysign(1, Σ p), which elects − at a sum
    of −0; that needs every p = ±0 there, which agree with neither sign.)
    """
    flat_base = base.reshape(-1)
    out = torch.empty_like(flat_base)
    n = flat_base.numel()
    plain_divisor = sum(weights) if abs(sum(weights)) >= 1e-8 else 1.0
    one = torch.ones((), dtype=out.dtype, device=out.device)

    def work(start: int, stop: int) -> None:
        ps = [piece(start, stop) for piece in pieces]
        if not consensus:  # one running sum
            merged = ps[0]
            for p in ps[1:]:
                merged.add_(p)
            if normalize:
                merged.div_(plain_divisor)
            if scale != 1:
                merged.mul_(scale)
        else:
            sign = torch.add(ps[0], ps[1]) if len(ps) > 1 else ps[0].clone()
            for p in ps[2:]:
                sign.add_(p)
            torch.copysign(one, sign, out=sign)
            agreeing = [p.mul_(sign).relu_() for p in ps]  # |p_i| where p_i agrees, else 0
            merged = torch.add(agreeing[0], agreeing[1]) if len(ps) > 1 else agreeing[0].clone()
            for a in agreeing[2:]:
                merged.add_(a)
            if normalize:
                divisor = torch.mul(agreeing[0].sign_(), weights[0])
                for a, wi in zip(agreeing[1:], weights[1:]):
                    divisor.add_(a.sign_(), alpha=wi)
                divisor.add_(divisor == 0)  # no source agrees: divide by 1
                merged.div_(divisor)
            merged.mul_(sign.mul_(scale) if scale != 1 else sign)
        torch.add(merged, flat_base[start:stop], out=out[start:stop])

    if out.device.type != "cpu":
        work(0, n)
    else:
        one_thread = torch.get_num_threads() == 1  # no fork/join to dodge: halve the per-op calls
        run_slices(n, work, chunk or (2 * SLICE if one_thread else SLICE))
    return out.view(base.shape)
