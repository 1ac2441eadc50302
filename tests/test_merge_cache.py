"""The merge cache and the fast sparse kernels change speed, never results.

- TIES's cut from the sorted magnitudes is kthvalue's value, ties at the cut are kept exactly as
  mergekit's argsort keeps them (hand-computed cases, heavy ties, every density);
- the slice-by-slice, float-only combination is bit for bit the textbook masks-and-where form
  (signed zeros included);
- every sparse method (and the plain ones) gives bit-identical merges with and without a
  MergeCache, warm or cold, in any order, on the real tiny zoo, in float32 and bfloat16;
- a cache entry follows its tensors: a modified or replaced source or base is re-read;
- EvoMerge's and CMA-ES's merges are the same with the search's cache on and off.
"""
import pytest
import torch

from engine.merge import MERGES, MergeCache, MergeError, merge_state_dicts
from engine.merge.combine import combine, whole
from engine.merge.sparse import magnitude, trim_cut, trimmed

torch.set_num_threads(1)

SPARSE = ["ties", "dare_linear", "dare_ties", "breadcrumbs", "breadcrumbs_ties", "della",
          "della_linear"]


def bits(t: torch.Tensor) -> torch.Tensor:
    return t.contiguous().view(torch.int32) if t.dtype == torch.float32 else t.contiguous().view(
        torch.int16)


def same_bits(a, b) -> bool:
    return a.dtype == b.dtype and a.shape == b.shape and torch.equal(bits(a), bits(b))


def by_definition(delta: torch.Tensor, density: float) -> torch.Tensor:
    """TIES trim as mergekit 0.1.5 writes it: the k = max(1, ⌊density·n⌋) first entries of
    torch.argsort(|δ|, descending=True), whose order among ties is the sort's own (every zero,
    kept or not, a +0)."""
    flat = delta.reshape(-1).tolist()
    k = max(1, int(density * len(flat)))
    keep = torch.argsort(delta.reshape(-1).abs(), descending=True)[:k].tolist()
    out = [0.0] * len(flat)
    for j in keep:
        out[j] = flat[j] if flat[j] != 0 else 0.0
    return torch.tensor(out).reshape(delta.shape)


def sorted_size(delta: torch.Tensor) -> torch.Tensor:
    return torch.sort(delta.reshape(-1).abs()).values


# ---- TIES cut and ties ---------------------------------------------------------------------------

def test_trim_keeps_the_first_ties_in_index_order_by_hand():
    # under 17 entries the CPU sort mergekit calls is an insertion sort: ties stay in index order
    delta = torch.tensor([1., -1., 1., 1., 2.])  # k = 2: the 2, then the first of the four 1s
    for s in (None, sorted_size(delta)):
        assert magnitude(delta, 0.4, s).tolist() == [1., 0., 0., 0., 2.]
    assert magnitude(delta, 0.6, sorted_size(delta)).tolist() == [1., -1., 0., 0., 2.]
    delta = torch.tensor([0., 3., 0., -3.])  # k = 3 but two non-zeros: both kept
    assert magnitude(delta, 0.75, sorted_size(delta)).tolist() == [0., 3., 0., -3.]
    delta = torch.tensor([0.5, -2., 1.])  # no ties: k = 1 keeps the -2 alone
    assert magnitude(delta, 0.4, sorted_size(delta)).tolist() == [0., -2., 0.]


@pytest.mark.parametrize("values", ["ties", "distinct", "zeros"])
def test_sorted_cut_is_kthvalue_and_the_trim_is_the_definition(values):
    g = torch.Generator().manual_seed(1)
    if values == "ties":  # few distinct magnitudes: most cuts land on ties
        delta = (torch.randint(-4, 5, (211,), generator=g) * 0.25).float()
    elif values == "distinct":
        delta = torch.randn(211, generator=g)
    else:
        delta = torch.randn(211, generator=g) * (torch.rand(211, generator=g) < 0.1)
    s, size, n = sorted_size(delta), delta.abs(), delta.numel()
    for density in [0.001, 0.01, 0.05, 0.1, 0.2, 0.25, 0.3, 1 / 3, 0.5, 0.7, 0.9, 0.99, 0.999]:
        k = max(1, int(density * n))
        cut, k2, exact = trim_cut(density, n, sorted_size=s)
        ref_cut, _, ref_exact = trim_cut(density, n, size=size)
        assert k2 == k and cut == torch.kthvalue(size, n - k + 1).values == ref_cut
        assert exact == ref_exact == (int((size >= cut).sum()) == k)
        expected = by_definition(delta, density)
        assert same_bits(magnitude(delta, density), expected)
        assert same_bits(magnitude(delta, density, s), expected)
        # slice by slice (slices of 7 put ties in several slices), weighted
        piece = trimmed(delta, torch.zeros_like(delta), density, 0.3, s)
        sliced = torch.cat([piece(a, min(n, a + 7)) for a in range(0, n, 7)])
        assert same_bits(sliced, expected * 0.3)


# ---- the combination against its textbook form --------------------------------------------------

def textbook(deltas, weights, base, consensus, normalize, scale):
    """The sign-consensus merge with boolean masks and where (the form the kernel replaces)."""
    ds = [d * w for d, w in zip(deltas, weights)]
    if not consensus:
        merged = ds[0].clone()
        for d in ds[1:]:
            merged.add_(d)
        divisor = sum(weights) if abs(sum(weights)) >= 1e-8 else 1.0
    else:
        total = ds[0].clone()
        for d in ds[1:]:
            total.add_(d)
        positive = total >= 0
        merged, divisor = torch.zeros_like(base), torch.zeros_like(base)
        for d, w in zip(ds, weights):
            agree = torch.where(positive, d > 0, d < 0)
            merged.add_(torch.where(agree, d, 0.0))
            divisor.add_(agree.to(divisor.dtype), alpha=w)
        divisor[divisor == 0] = 1
    if normalize:
        merged.div_(divisor)
    if scale != 1:
        merged.mul_(scale)
    return merged.add_(base)


@pytest.mark.parametrize("consensus", [True, False])
@pytest.mark.parametrize("normalize", [True, False])
def test_combination_is_bit_identical_to_masks_and_where(consensus, normalize):
    g = torch.Generator().manual_seed(7)
    n = 3001
    base = torch.randn(n, generator=g)
    base[:50] = -0.0  # signed zeros where every delta is zero too
    deltas = []
    for i in range(3):
        d = torch.randn(n, generator=g) * (torch.rand(n, generator=g) < 0.6)
        d[:50] = -0.0 if i % 2 else 0.0
        d[50:60] = -d[50:60] if i == 1 else d[50:60]  # exact cancellations in the sum
        deltas.append(d)
    deltas[2][50:60] = 0.0
    for weights, scale in [([0.5, 0.3, 0.2], 1.0), ([0.0, 0.7, 0.3], 1.7), ([1e-30, 0.5, 0.5], 1.0)]:
        ref = textbook(deltas, weights, base, consensus, normalize, scale)
        for chunk in (64, 1000, None):
            pieces = [whole(d * w) for d, w in zip(deltas, weights)]
            got = combine(pieces, weights, base, consensus=consensus, normalize=normalize,
                          scale=scale, chunk=chunk)
            assert same_bits(got, ref), (weights, chunk)


def inverse_variance_textbook(tensors, w, granularity, epsilon):
    """Inverse-variance weighting with masks and where (the form the kernel replaces)."""
    mean = torch.zeros_like(tensors[0])
    first = True
    for t, wi in zip(tensors, w):
        if wi == 0:
            continue
        mean = t * wi if first else mean.add_(t, alpha=wi)
        first = False
    deviations = [(t - mean).square_() for t in tensors]
    deviations = [v.mean() if granularity == "tensor" else v for v in deviations]
    spread = torch.zeros_like(deviations[0])
    for v, wi in zip(deviations, w):
        spread = spread + wi * v
    variances = [v + epsilon * spread for v in deviations]
    smallest = torch.stack([v for v, wi in zip(variances, w) if wi > 0]).amin(dim=0)
    numerator, denominator = torch.zeros_like(mean), torch.zeros_like(mean)
    for t, v, wi in zip(tensors, variances, w):
        if wi == 0:
            continue
        c = wi * torch.where(v > 0, smallest / torch.where(v > 0, v, torch.ones_like(v)),
                             torch.ones_like(v))
        numerator.add_(c * t)
        denominator.add_(c if c.dim() else c.expand_as(denominator))
    return numerator / denominator


@pytest.mark.parametrize("granularity", ["element", "tensor"])
def test_inverse_variance_slices_are_bit_identical_to_masks_and_where(granularity, monkeypatch):
    from engine.merge import common

    monkeypatch.setattr(common, "CHUNK", 1000)  # several slices, one of them partial
    g = torch.Generator().manual_seed(3)
    a = torch.randn(37, 101, generator=g)
    b = a.clone()
    b[5:20] += torch.randn(15, 101, generator=g) * 0.1  # elsewhere the models agree exactly
    c = torch.randn(37, 101, generator=g)
    kernel = MERGES.get("inverse_variance").fn
    for tensors, w, eps in [([a, b], [0.5, 0.5], 0.01), ([a, b, c], [0.2, 0.0, 0.8], 0.5),
                            ([a, a.clone()], [0.3, 0.7], 1.0)]:
        got = kernel(tensors, torch.tensor(w), granularity=granularity, epsilon=eps)
        assert same_bits(got, inverse_variance_textbook(tensors, w, granularity, eps))


# ---- whole merges: cached == uncached ------------------------------------------------------------

@pytest.fixture(scope="module")
def zoo_states(tiny_ws):
    """Three tiny-zoo models and the base, their tensors up to 200k entries (the sort-based
    methods would take seconds on the big ones without the cache)."""
    zoo = tiny_ws.zoo
    names = [n for n in zoo.locales if n != "nl-NL"][:3]

    def small(state):
        return {k: v for k, v in state.items() if v.numel() <= 200_000}

    return names, [small(zoo.state_dict(n)) for n in names], small(zoo.base_state_dict())


RECIPES = [
    ("ties", {"density": [0.2, 0.3, 0.25]}, [0.5, 0.3, 0.2]),
    ("ties", {"density": 0.5, "scale": 1.3}, [0.0, 0.7, 0.3]),
    ("ties", {"density": [1.0, 0.01, 0.9], "normalize": False}, [0.2, 0.3, 0.5]),
    ("dare_linear", {"density": 0.5}, [0.5, 0.3, 0.2]),
    ("dare_linear", {"density": [0.3, 1.0, 0.7], "rescale": "inverse_density"}, [0.5, 0.3, 0.2]),
    ("dare_ties", {"density": [0.3, 0.6, 0.7]}, [0.5, 0.3, 0.2]),
    ("dare_ties", {"density": 0.4, "rescale": "none", "normalize": True}, [0.1, 0.1, 0.8]),
    ("breadcrumbs", {"density": 0.8, "gamma": 0.02}, [0.5, 0.3, 0.2]),
    ("breadcrumbs_ties", {"density": [0.8, 1.0, 0.7]}, [0.5, 0.3, 0.2]),
    ("della", {"density": 0.5, "epsilon": 0.1}, [0.5, 0.3, 0.2]),
    ("della_linear", {"density": [0.4, 1.0, 0.6]}, [0.1, 0.3, 0.6]),
    ("task_arithmetic", {"scale": 0.8}, [0.5, 0.3, 0.2]),
    ("linear", {}, [0.5, 0.3, 0.2]),
    ("slerp", {}, [0.5, 0.3, 0.2]),
]


def test_recipes_cover_every_cache_aware_method():
    """Every kernel that reads cached inputs (the cache_aware trait) is checked bit for bit below."""
    aware = {m.name for m in MERGES if m.traits.cache_aware}
    assert aware and aware <= {method for method, _, _ in RECIPES}


def run(recipe, names, states, base, cache=None, seed=3):
    method, params, weights = recipe
    needs_base = MERGES.get(method).traits.needs_base
    return merge_state_dicts(method, states, weights, base=base if needs_base else None,
                             params=params, names=names, seed=seed, cache=cache)


def assert_same(a, b, label):
    assert a.keys() == b.keys()
    for k in a:
        assert same_bits(a[k], b[k]), f"{label}: tensor {k} differs"


def test_cached_merges_are_bit_identical_cold_and_warm(zoo_states):
    names, states, base = zoo_states
    expected = [run(r, names, states, base) for r in RECIPES]
    cache = MergeCache()
    for order in (range(len(RECIPES)), reversed(range(len(RECIPES)))):  # cold, then warm
        for i in order:
            assert_same(run(RECIPES[i], names, states, base, cache), expected[i], RECIPES[i][0])
    assert cache.hits > 0 and cache.builds == len(expected[0]) - sum(
        1 for t in states[0].values() if not t.is_floating_point())
    # another seed draws other masks, also exactly as without the cache
    dare = RECIPES[3]
    assert_same(run(dare, names, states, base, cache, seed=11),
                run(dare, names, states, base, seed=11), "dare seed 11")


def test_cache_in_bfloat16_keeps_float32_copies_and_results(zoo_states):
    names, states, base = zoo_states
    half = [{k: v.to(torch.bfloat16) if v.is_floating_point() else v for k, v in s.items()}
            for s in states]
    base16 = {k: v.to(torch.bfloat16) for k, v in base.items()}
    cache = MergeCache()
    for recipe in (RECIPES[0], RECIPES[3]):
        expected = run(recipe, names, half, base16)
        for _ in range(2):
            assert_same(run(recipe, names, half, base16, cache), expected, recipe[0])
    floats = sum(t.numel() for s in half for t in s.values() if t.is_floating_point())
    assert cache.nbytes() >= 4 * floats  # the float32 copies are the cache's own


def test_cache_memory_is_what_the_methods_need(zoo_states):
    names, states, base = zoo_states
    size = sum(t.numel() * 4 for s in states for k, t in s.items()
               if t.is_floating_point() and k in base)
    cache = MergeCache()
    run(RECIPES[-2], names, states, base, cache)  # linear: float32 sources are used as they are
    assert cache.nbytes() == 0
    run(RECIPES[0], names, states, base, cache)   # TIES: the sorted magnitudes, ~1x,
    ties = sum(t.numel() * t.element_size() for e in cache._entries.values()  # + mergekit's
               for (kind, _), t in e._derived.items() if kind == "tie_order")  # order at ties
    assert size * 0.9 <= cache.nbytes() - ties <= size * 1.1 and ties <= size
    cache.clear()
    assert len(cache) == 0 and cache.nbytes() == 0


def test_cache_follows_modified_and_replaced_tensors(zoo_states):
    names, states, base = zoo_states
    states = [dict(s) for s in states]
    base = dict(base)
    key = next(k for k, t in states[0].items() if t.is_floating_point() and t.dim() == 2
               and k in base)
    cache = MergeCache()
    for recipe in (RECIPES[0], RECIPES[3]):
        run(recipe, names, states, base, cache)
    states[1][key] = states[1][key].clone()
    states[1][key].mul_(1.5)  # a new tensor, then changed in place: both must be noticed
    base[key] = base[key] * 0.5
    for recipe in (RECIPES[0], RECIPES[3]):
        assert_same(run(recipe, names, states, base, cache), run(recipe, names, states, base),
                    recipe[0])
    states[1][key].add_(0.25)  # in place only (the version counter moves)
    assert_same(run(RECIPES[0], names, states, base, cache), run(RECIPES[0], names, states, base),
                "in place")


def test_cache_still_rejects_nan_naming_model_and_tensor(zoo_states):
    names, states, base = zoo_states
    states = [dict(s) for s in states]
    key = next(k for k, t in states[0].items() if t.is_floating_point())
    states[2][key] = states[2][key].clone()
    states[2][key].view(-1)[0] = float("nan")
    with pytest.raises(MergeError, match=f"model '{names[2]}' tensor '{key}'"):
        run(RECIPES[0], names, states, base, MergeCache())
    bad_base = dict(base)
    bkey = next(k for k in states[0] if k in base and base[k].is_floating_point())
    bad_base[bkey] = base[bkey].clone()
    bad_base[bkey].view(-1)[0] = float("inf")
    with pytest.raises(MergeError, match=f"model 'base' tensor '{bkey}'"):
        run(RECIPES[0], names, zoo_states[1], bad_base, MergeCache())


# ---- the evolutionary search ---------------------------------------------------------------------

def test_evolutionary_builds_are_the_same_with_and_without_the_cache(tiny_ws):
    import numpy as np

    from engine.evolve import EvolveConfig
    from engine.evolve.build import Sources, build_evomerge, build_grouped
    from engine.evolve.cmaes import CmaSearch
    from engine.evolve.config import DEFAULT_FITNESS
    from engine.evolve.fitness import Fitness
    from engine.evolve.genome import COMBOS, default_genome, mutate

    sources = ["de-DE", "en-US"]
    plain, cached = (Sources(tiny_ws, sources, True, cache=c) for c in (False, True))
    assert plain.cache is None and isinstance(cached.cache, MergeCache)
    score = Fitness(tiny_ws, "nl-NL", DEFAULT_FITNESS, dev_size=4).score
    rng = np.random.default_rng(0)
    for combo in COMBOS:  # EvoMerge's 8 stage combinations, mutated
        g = mutate(default_genome(combo, [0.6, 0.4]), rng, 0.3, 1.0)
        assert_same(build_evomerge(g, cached, score, seed=2),
                    build_evomerge(g, plain, score, seed=2), f"combo {combo}")
    for method in ("ties", "dare_ties"):  # CMA-ES: per-group weights and densities
        config = EvolveConfig(target="nl-NL", sources=sources, algorithm="cmaes", method=method,
                              layer_groups=1)
        search = CmaSearch(config, sources, [0.6, 0.4], plain.keys)
        for _ in range(2):
            x = np.clip(search.x0 + 0.3 * rng.standard_normal(search.dim), 0, 1)
            settings = search.decode(x)
            assert_same(build_grouped(method, search.groups, settings, cached, seed=5),
                        build_grouped(method, search.groups, settings, plain, seed=5), method)
