"""DARE's and DELLA's random drops: Bernoulli keep masks and the rescaling of the survivors.
Mergekit-identical: on CPU the very draws of mergekit 0.1.5's ``torch.bernoulli`` for one tensor."""
from __future__ import annotations

from typing import Optional

import torch
from torch import Tensor

from .combine import Piece
from .common import MergeError
from .sparse_shared import as_rows, l1_norm

def rescaled(delta: Tensor, keep: Tensor, rescale: str, keep_prob, eps: float = 1e-7,
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


def keep_mask(shape, prob, like: Tensor, generator, uniform: Optional[Tensor] = None) -> Tensor:
    """Bernoulli(prob) keep-mask drawn as uniform < prob: on CPU the very stream of mergekit's
    ``torch.bernoulli(full_like(t, p))`` (the parity tests check it), without its slowness.
    ``uniform``: those draws, cached (cache.KeyInputs.uniform). The mask is 1/0 floats,
    relu(sign(prob − u)): a float difference is > 0 exactly when u < prob, and float masks
    multiply faster than boolean ones."""
    if uniform is None:
        uniform = torch.rand(shape, generator=generator, device=like.device, dtype=like.dtype)
    return torch.rsub(uniform, prob).sign_().relu_()


def bernoulli(delta: Tensor, density: float, rescale: str, generator,
              uniform: Optional[Tensor] = None, l1: Optional[Tensor] = None) -> Tensor:
    """DARE: drops each entry with probability 1 − density, then rescales the survivors.
    ``uniform`` / ``l1``: the draws and ‖δ‖₁, cached between merges."""
    if density >= 1:
        return delta
    keep = keep_mask(delta.shape, density, delta, generator, uniform)
    return rescaled(delta, keep, rescale, density, before=l1)


def della_rank(delta: Tensor) -> Tensor:
    """Each entry's magnitude rank in its row, scaled to [0, 1] (what MagPrune's probabilities
    rise with)."""
    rows = as_rows(delta)
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
    rows = as_rows(delta)
    rank = della_rank(delta) if rank is None else rank
    probs = (density - epsilon) + rank * 2 * epsilon
    keep = keep_mask(rows.shape, probs, rows, generator, uniform)
    return rescaled(rows, keep, rescale, probs, before=l1).reshape(delta.shape)


def dropped(x: Tensor, base: Tensor, density: float, weight: float, rescale: str,
            generator) -> Piece:
    """w·DARE(x − base) slice by slice, same draws and bits as ``bernoulli``: this source's full
    δ, draws and L1 norms exist only while its keep mask (1 byte an entry) and rescale factor
    are made, so a merge never holds K fp32 sparsified deltas of a huge tensor at once."""
    fx, fb = x.reshape(-1), base.reshape(-1)
    if density >= 1:  # no draws, as in bernoulli
        return lambda start, stop: torch.sub(fx[start:stop], fb[start:stop]).mul_(weight)
    d = torch.sub(fx, fb)
    keep = keep_mask(d.shape, density, d, generator)
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


# ---- fast mode: the same Bernoulli(density) masks from a cheaper generator ----------------------

RNGS = ("mergekit", "fast")
RNG_STREAM = "2"  # rng='fast' draws, versioned in a run's content key (engine/runinfo.py):
# 1 was numpy PCG64 bytes per 1M-entry block; 2 hashes (seed, flat index) with splitmix64


def fast_keep_mask(n: int, keep_prob: float, seed: int) -> Tensor:
    """A uint8 keep mask (1 = keep) over n entries, each kept independently with probability
    keep_prob (exact to 2⁻⁶⁴): entry i is kept iff splitmix64(seed, i) < ⌊keep_prob·2⁶⁴⌋, a
    counter-based hash, so any slice of the mask is drawn on its own: the fused kernel
    (engine/merge/fused.py) draws the same bits inside its pass, and neither depends on the thread
    count. Blocks run on torch's thread count (numpy releases the GIL). uint8, not bool: a float
    times a uint8 mask is ~6x faster in torch than masked_fill with a bool one."""
    import numpy as np

    from .combine import run_slices
    from .fused_kernels import keep_threshold, splitmix

    bound = np.uint64(keep_threshold(keep_prob))
    keep = np.empty(n, dtype=np.uint8)

    def block(start: int, stop: int) -> None:
        np.less(splitmix(seed, np.arange(start, stop, dtype=np.uint64)), bound,
                out=keep[start:stop].view(np.bool_))
    run_slices(n, block, chunk=1 << 18)
    return torch.from_numpy(keep)


def dropped_fast(x: Tensor, base: Tensor, density: float, weight: float, rescale: str,
                 generator) -> Piece:
    """w·DARE(x − base) with ``fast_keep_mask``'s masks (rng='fast'): the same Bernoulli(density)
    drops and the same rescaling rules, not mergekit's draws. 'l1' sums ‖δ‖₁ and ‖kept δ‖₁ in one
    pass slice by slice (float64 sums per slice, added in slice order: deterministic), so δ is
    never held whole; each slice then costs a subtraction, the mask and one multiply (w·factor
    folded into one scalar). The torch reference of fused.dare (same masks; the norms may differ
    in the last bits, being summed in another order)."""
    fx, fb = x.reshape(-1), base.reshape(-1)
    if density >= 1:
        return lambda start, stop: torch.sub(fx[start:stop], fb[start:stop]).mul_(weight)
    from .combine import SLICE, run_slices
    from .fused import fast_seed

    n = fx.numel()
    keep = fast_keep_mask(n, density, fast_seed(generator)).to(fx.device)
    factor = 1.0
    if rescale == "inverse_density":
        factor = 1.0 / density
    elif rescale == "l1":
        sums = {}

        def norms(start: int, stop: int) -> None:
            size = torch.sub(fx[start:stop], fb[start:stop]).abs_().double()
            before = float(size.sum())
            sums[start] = (before, float(size.mul_(keep[start:stop]).sum()))
        if fx.device.type == "cpu":
            run_slices(n, norms, chunk=SLICE)
        else:
            norms(0, n)
        before = sum(sums[s][0] for s in sorted(sums))
        after = sum(sums[s][1] for s in sorted(sums))
        factor = 1.0 if before < 1e-7 or after < 1e-7 else before / after
    scale = weight * factor

    def piece(start: int, stop: int) -> Tensor:
        part = torch.sub(fx[start:stop], fb[start:stop])
        return part.mul_(keep[start:stop]).add_(0.0).mul_(scale)  # + 0: a dropped entry is +0
    return piece
