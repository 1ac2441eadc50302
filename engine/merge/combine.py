"""The combining step of task-vector merges, slice by slice.

Sparse methods hand over, per source, a ``Piece``: a way to get any flat slice of its weighted
sparse delta p_i = w_i·s(δ_i). ``combine`` adds them up (with TIES sign consensus when asked) over
slices of a few tens of thousands of entries, so that the dozen passes each slice needs stay in
the CPU cache instead of streaming whole tensors through memory a dozen times.
"""
from __future__ import annotations

from typing import Callable, List, Optional

import torch
from torch import Tensor

from .common import chunk_size

# The flat slice [start, stop) of one source's weighted sparse delta w_i·s(δ_i), as a tensor the
# caller may overwrite.
Piece = Callable[[int, int], Tensor]


def whole(t: Tensor) -> Piece:
    """Slices of a weighted sparse delta computed whole (a tensor the kernel owns)."""
    flat = t.reshape(-1)
    return lambda start, stop: flat[start:stop]


def combine(pieces: List[Piece], weights: List[float], base: Tensor, *, consensus: bool,
            normalize: bool, scale: float, chunk: Optional[int] = None) -> Tensor:
    """base + λ · [Σ_i m_i p_i] / [Σ_i w_i m_i if normalize], p_i = w_i s(δ_i) the pieces, m_i the
    sign-consensus mask (all ones without consensus).

    The elected sign per entry is the sign of Σ p_i (zero counts as +, as in mergekit); entries
    with p = 0 never agree, so trimmed entries do not dilute the average. Runs over slices of
    ``chunk`` entries so that the dozen passes per slice stay in the CPU cache, with float-only
    arithmetic in the same order as the textbook form (the sign s = ±1 multiplies exactly, so
    relu(p·s)·s is p where p agrees and 0 elsewhere, and sign(relu(p·s)) is the agreement mask):
    the result is bit for bit that of masks and ``where``. (s is copysign(1, Σ p), which elects −
    at a sum of −0; that needs every p = ±0 there, which agree with neither sign.)
    """
    flat_base = base.reshape(-1)
    out = torch.empty_like(flat_base)
    n = flat_base.numel()
    chunk = chunk or chunk_size()
    plain_divisor = sum(weights) if abs(sum(weights)) >= 1e-8 else 1.0
    one = torch.ones((), dtype=out.dtype, device=out.device)
    for start in range(0, n, chunk):
        stop = min(n, start + chunk)
        ps = [piece(start, stop) for piece in pieces]
        if not consensus:  # one running sum
            merged = ps[0]
            for p in ps[1:]:
                merged.add_(p)
            divisor = plain_divisor
        else:
            total = torch.add(ps[0], ps[1]) if len(ps) > 1 else ps[0].clone()
            for p in ps[2:]:
                total.add_(p)
            sign = torch.copysign(one, total)
            merged = torch.zeros_like(total)
            divisor = torch.zeros_like(total) if normalize else None
            for p, wi in zip(ps, weights):
                agreeing = p.mul_(sign).relu_()
                merged.addcmul_(agreeing, sign)
                if normalize:
                    divisor.add_(agreeing.sign_(), alpha=wi)
            if normalize:
                divisor.add_(divisor == 0)  # no source agrees: divide by 1
        if normalize:
            merged.div_(divisor)
        if scale != 1:
            merged.mul_(scale)
        torch.add(merged, flat_base[start:stop], out=out[start:stop])
    return out.view(base.shape)
