"""TIES selection='fast' and DARE rng='fast' against their definitions: the fast trim keeps every
entry with |δ| at or above the k-th largest (ties at the cut included), the fast drops are
Bernoulli(density) masks, deterministic per seed, rescaled exactly as the rule says."""
import pytest
import torch

from engine.evolve.genome import default_genome, genes
from engine.merge import MERGES
from engine.merge.export import mergekit_config
from engine.merge.sparse_drop import dropped_fast, fast_keep_mask
from engine.merge.sparse_trim import SAMPLE, fast_cut, trim_cut

from test_merge_kernels import bits, textbook


def tensors(k, n, seed=0, grid=None):
    """Base + K sources; with ``grid`` the deltas sit on a coarse grid, so many |δ| tie."""
    g = torch.Generator().manual_seed(seed)
    base = torch.randn(n, generator=g)
    deltas = [torch.randn(n, generator=g) for _ in range(k)]
    if grid:
        deltas = [(d * grid).round() / grid for d in deltas]
    return base, [base + d for d in deltas]


@pytest.mark.parametrize("grid", [None, 4.0])
def test_fast_cut_is_the_kth_largest_magnitude(grid):
    n = 4 * SAMPLE + 12345  # past the size where the sampled bracket is used
    base, (x,) = tensors(1, n, grid=grid)
    size = (x - base).abs()
    for density in (0.01, 0.2, 0.5, 0.97):
        k = max(1, int(density * n))
        want = torch.sort(size, descending=True).values[k - 1]
        assert fast_cut(x, base, density) == want == trim_cut(density, n, size)[0], density


def test_ties_fast_keeps_every_entry_tied_at_the_cut_and_otherwise_merges_as_ties():
    n, density, weights = 4 * SAMPLE + 999, 0.2, [0.5, 0.3, 0.2]
    base, sources = tensors(3, n, seed=1, grid=8.0)  # many ties at every cut
    ties = MERGES.get("ties").fn
    got = ties(sources, torch.tensor(weights), base, density=density, selection="fast")
    kept = []
    for x in sources:  # the definition: |δ| ≥ the k-th largest |δ|
        size = (x - base).abs()
        cut = torch.sort(size, descending=True).values[max(1, int(density * n)) - 1]
        kept.append(torch.where(size >= cut, x - base, torch.zeros(())))
        assert int((size >= cut).sum()) > int(density * n)  # surplus ties: more than k kept
    want = textbook([d * w for d, w in zip(kept, weights)], weights, base, True, True, 1.0)
    assert torch.equal(bits(got), bits(want))
    exact = ties(sources, torch.tensor(weights), base, density=density)  # mergekit: exactly k
    assert not torch.equal(got, exact)
    assert MERGES.get("ties").defaults()["selection"] == "exact"


def test_ties_fast_equals_exact_where_no_entries_tie_at_the_cut():
    n = 4 * SAMPLE + 7
    base, sources = tensors(3, n, seed=2)
    ties, w = MERGES.get("ties").fn, torch.tensor([0.2, 0.3, 0.5])
    assert all(trim_cut(0.3, n, (x - base).abs())[2] for x in sources)  # exactly k reach the cut
    assert torch.equal(ties(sources, w, base, density=0.3, selection="fast"),
                       ties(sources, w, base, density=0.3))


def test_fast_keep_mask_is_bernoulli_and_deterministic_per_seed():
    n = 1 << 21
    for keep in (0.5, 0.3, 0.9, 0.001):
        mask = fast_keep_mask(n, keep, seed=11)
        rate = mask.double().mean().item()
        sigma = (keep * (1 - keep) / n) ** 0.5
        assert abs(rate - keep) < 5 * sigma, (keep, rate)
        assert torch.equal(mask, fast_keep_mask(n, keep, seed=11))
    assert not torch.equal(fast_keep_mask(n, 0.3, 1), fast_keep_mask(n, 0.3, 2))
    threads = torch.get_num_threads()
    try:  # the mask does not depend on how many threads draw it
        torch.set_num_threads(1)
        single = fast_keep_mask(3 * n + 5, 0.3, 4)
    finally:
        torch.set_num_threads(threads)
    assert torch.equal(single, fast_keep_mask(3 * n + 5, 0.3, 4))


def piece_of(x, base, density, rescale, seed, weight=1.0):
    piece = dropped_fast(x, base, density, weight, rescale, torch.Generator().manual_seed(seed))
    return torch.cat([piece(s, min(x.numel(), s + 40000)) for s in range(0, x.numel(), 40000)])


def test_dare_fast_rescales_the_survivors_exactly():
    base, (x,) = tensors(1, 300_001, seed=3)
    delta = x - base
    inv = piece_of(x, base, 0.4, "inverse_density", seed=5)
    kept = inv != 0
    assert torch.equal(inv[kept], delta[kept] * (1 / 0.4)) and torch.all(inv[~kept] == 0)
    assert not torch.any(torch.signbit(inv[~kept]))  # dropped entries are +0
    l1 = piece_of(x, base, 0.4, "l1", seed=5)
    assert torch.equal(l1 != 0, kept)  # the same seed draws the same mask
    assert torch.allclose(l1.abs().double().sum(), delta.abs().double().sum(), rtol=1e-6)
    ratio = l1[kept] / delta[kept]
    assert torch.allclose(ratio, ratio[0].expand_as(ratio), rtol=1e-6)
    assert torch.equal(piece_of(x, base, 0.4, "none", seed=5)[kept], delta[kept])


def test_dare_fast_merge_is_unbiased():
    """E[merge] = the undropped merge: averaged over seeds, inverse-density DARE-linear converges
    to task arithmetic (within 5 standard errors)."""
    base, sources = tensors(2, 4000, seed=6)
    w = torch.tensor([0.6, 0.4])
    dare = MERGES.get("dare_linear").fn
    runs = 200
    mean = sum(dare(sources, w, base, density=0.5, rescale="inverse_density", rng="fast",
                    generator=torch.Generator().manual_seed(s)) for s in range(runs)) / runs
    undropped = MERGES.get("task_arithmetic").fn(sources, w, base)
    var = sum(wi ** 2 * (x - base) ** 2 for wi, x in zip(w.tolist(), sources)) * (1 / 0.5 - 1)
    z = (mean - undropped) / (var / runs).sqrt()
    assert z.abs().mean() < 1.0 and z.abs().max() < 6
    assert MERGES.get("dare_ties").defaults()["rng"] == "mergekit"


def test_fast_modes_are_not_exported_to_mergekit_nor_tuned_by_a_search():
    recipe = {"sources": ["a", "b"], "weights": [0.5, 0.5], "base": "base"}
    for method, params in (("ties", {"selection": "fast"}), ("dare_ties", {"rng": "fast"})):
        params = MERGES.get(method).resolve(params)
        config, why = mergekit_config({**recipe, "method": method, "params": params})
        assert config is None and "fast" in why
        config, _ = mergekit_config({**recipe, "method": method,
                                     "params": MERGES.get(method).resolve({})})
        assert config is not None and "rng" not in str(config) and "selection" not in str(config)
    names = {g.name for g in genes(default_genome(0, [0.5, 0.5]), active_only=False)}
    assert "density" in names and not names & {"rng", "selection"}


def test_a_speed_knob_at_its_default_keeps_the_content_key_runs_had_before_it():
    """Stored TIES/DARE runs predate the speed knobs: at the default the key must not mention them
    (so those runs are reused); a fast run is a different experiment with its own key."""
    from engine.experiments import Candidate
    from engine.runinfo import recipe_key_fields

    for method, knob in (("ties", "selection"), ("dare_ties", "rng")):
        plain = recipe_key_fields(Candidate("merge", method, "xx", ["a", "b"], [1.0, 1.0]))
        assert knob not in plain["params"]
        assert set(plain["params"]) == {p.name for p in MERGES.get(method).params if not p.speed}
        fast = recipe_key_fields(Candidate("merge", method, "xx", ["a", "b"], [1.0, 1.0],
                                           params={knob: "fast"}))
        assert fast["params"][knob] == ("fast@2" if knob == "rng" else "fast") and fast != plain
