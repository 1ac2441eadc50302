"""The slice-by-slice kernels (engine/merge/combine.py, sparse.trimmed) against the textbook forms:
same bits on tensors spanning many slices and worker threads, ties at the TIES cut included."""
import torch

from engine.merge import MERGES
from engine.merge.combine import SLICE, combine, run_slices, whole
from engine.merge.sparse import bernoulli, magnitude, task_merge


def bits(t):
    return t.contiguous().view(torch.int32)


def textbook(ps, weights, base, consensus, normalize, scale):
    """mergekit's generalised task arithmetic with boolean masks and ``where``."""
    stacked = torch.stack(ps)
    w = torch.tensor(weights).view(-1, *[1] * base.dim())
    if consensus:
        sign = torch.where(stacked.sum(0) >= 0, 1.0, -1.0)
        mask = (stacked.sign() == sign) & (stacked != 0)
    else:
        mask = torch.ones_like(stacked, dtype=torch.bool)
    merged = torch.zeros_like(base)
    for p, m in zip(stacked, mask):
        merged = merged + torch.where(m, p, torch.zeros_like(p))
    if normalize:
        divisor = torch.zeros_like(base)
        for wi, m in zip(weights, mask):
            divisor = divisor + wi * m
        divisor = torch.where(divisor == 0, torch.ones_like(divisor), divisor) if consensus \
            else torch.full_like(base, sum(weights))
        merged = merged / divisor
    if scale != 1:
        merged = merged * scale
    return base + merged


def sparse_deltas(k, shape, seed=0):
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(shape, generator=g) * (torch.rand(shape, generator=g) < 0.4)
            for _ in range(k)]


def test_run_slices_covers_every_entry_once_on_worker_threads():
    n = 5 * SLICE + 17
    seen = torch.zeros(n, dtype=torch.int64)
    run_slices(n, lambda a, b: seen[a:b].add_(1), workers=3)
    assert torch.equal(seen, torch.ones(n, dtype=torch.int64))


def test_combine_is_the_textbook_merge_bit_for_bit():
    shape = (3 * SLICE // 64 + 5, 64)  # several slices, a ragged last one
    base = torch.randn(shape, generator=torch.Generator().manual_seed(9))
    weights = [0.3, 0.5, 0.2]
    deltas = [d * w for d, w in zip(sparse_deltas(3, shape), weights)]
    for consensus, normalize, scale in [(True, True, 1.0), (True, False, 0.7),
                                        (False, True, 1.0), (False, False, 1.3)]:
        got = combine([whole(d.clone()) for d in deltas], weights, base, consensus=consensus,
                      normalize=normalize, scale=scale)
        want = textbook(deltas, weights, base, consensus, normalize, scale)
        assert torch.equal(bits(got), bits(want)), (consensus, normalize, scale)


def test_ties_without_a_cache_trims_slice_by_slice_to_the_same_bits():
    """The kernel no longer holds K sparsified deltas; its result is magnitude()'s, ties at the
    cut included (deltas on a coarse grid tie at the cut)."""
    shape = (2 * SLICE // 32 + 3, 32)
    g = torch.Generator().manual_seed(3)
    base = torch.randn(shape, generator=g)
    grid = [base + torch.randint(-4, 5, shape, generator=g) / 8 for _ in range(3)]
    smooth = [base + 0.01 * torch.randn(shape, generator=g) for _ in range(3)]
    weights = torch.tensor([0.2, 0.5, 0.3])
    ties = MERGES.get("ties").fn
    for tensors in (grid, smooth):
        for density in (0.2, 1.0):
            got = ties(tensors, weights, base, density=density)
            want = task_merge(tensors, weights, base,
                              sparsify=lambda d, i: magnitude(d, density),
                              consensus=True, normalize=True, scale=1.0)
            assert torch.equal(bits(got), bits(want)), density


def test_dare_without_a_cache_drops_slice_by_slice_to_the_same_bits():
    """Same draws, same rescale, same bits as bernoulli() on whole deltas, for every rescale."""
    shape = (2 * SLICE // 32 + 3, 32)
    g = torch.Generator().manual_seed(4)
    base = torch.randn(shape, generator=g)
    tensors = [base + 0.01 * torch.randn(shape, generator=g) for _ in range(3)]
    tensors[1][:4] = base[:4]  # a block of zero deltas (δ = 0 kept or dropped)
    weights = torch.tensor([0.2, 0.5, 0.3])
    for name, consensus in (("dare_ties", True), ("dare_linear", False)):
        for rescale in ("l1", "inverse_density", "none"):
            for density in (0.3, 1.0):
                got = MERGES.get(name).fn(tensors, weights, base, density=density,
                                          rescale=rescale,
                                          generator=torch.Generator().manual_seed(7))
                gen = torch.Generator().manual_seed(7)
                want = task_merge(tensors, weights, base,
                                  sparsify=lambda d, i: bernoulli(d, density, rescale, gen),
                                  consensus=consensus, normalize=False, scale=1.0)
                assert torch.equal(bits(got), bits(want)), (name, rescale, density)
