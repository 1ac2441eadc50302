"""Parity with mergekit 0.1.5: same tensors and parameters in, same tensors out.

mergekit is a test-only dependency; its per-tensor API (``mergekit.merge_methods.merge_tensors``)
runs its own registered kernels. For DARE/DELLA the random masks are aligned: mergekit draws from
the global RNG after ``torch.manual_seed(s)``, our kernel from ``Generator().manual_seed(s)``, in
the same order and shapes, so the masks — and the results — are identical.
"""
import pytest
import torch

mk = pytest.importorskip("mergekit.merge_methods", reason="mergekit 0.1.5 not installed")

from engine.merge import MERGES, merge_state_dicts  # noqa: E402

torch.set_num_threads(1)
SHAPES = [(24, 16), (16,), (5, 3, 4)]
WEIGHTS = [0.5, 0.3, 0.2]


def _models(shape, seed=0, k=3, spread=0.1):
    g = torch.Generator().manual_seed(seed)
    base = torch.randn(shape, generator=g)
    sources = [base + spread * torch.randn(shape, generator=g) for _ in range(k)]
    return base, sources


def ours(name, sources, base, params, weights=WEIGHTS, seed=None):
    method = MERGES.get(name)
    gen = torch.Generator().manual_seed(seed) if seed is not None else None
    w = torch.tensor(weights, dtype=torch.float32)
    return method.fn(sources, w / w.sum(), base, key="t", generator=gen,
                     **method.resolve(params))


def theirs(name, tensors, parameters, base_index=0, seed=None):
    if seed is not None:
        torch.manual_seed(seed)
    return mk.merge_tensors(tensors, name, parameters=parameters, base_index=base_index)


# (our method, our params, mergekit parameters besides 'weight')
TA_CASES = [
    ("task_arithmetic", {"scale": 1.0}, {"lambda": 1.0}),
    ("task_arithmetic", {"scale": 2.5}, {"lambda": 2.5}),
    ("ties", {"density": 0.3}, {"density": 0.3}),
    ("ties", {"density": [0.2, 0.5, 0.9], "scale": 0.7, "normalize": False},
     {"density": [0.2, 0.5, 0.9], "lambda": 0.7, "normalize": False}),
    ("breadcrumbs", {"density": 0.8, "gamma": 0.05}, {"density": 0.8, "gamma": 0.05}),
    ("breadcrumbs", {"density": 0.5, "gamma": 0.6}, {"density": 0.5, "gamma": 0.6}),
    ("breadcrumbs_ties", {"density": 0.7, "gamma": 0.1, "scale": 1.3},
     {"density": 0.7, "gamma": 0.1, "lambda": 1.3}),
]
RANDOM_CASES = [
    ("dare_linear", {"density": 0.4}, {"density": 0.4}),
    ("dare_linear", {"density": 0.4, "rescale": "none"}, {"density": 0.4, "rescale": False}),
    ("dare_ties", {"density": [0.3, 0.6, 0.5]}, {"density": [0.3, 0.6, 0.5]}),
    ("dare_ties", {"density": 0.5, "normalize": True}, {"density": 0.5, "normalize": True}),
    ("della", {"density": 0.5, "epsilon": 0.2}, {"density": 0.5, "epsilon": 0.2}),
    ("della_linear", {"density": 0.6, "epsilon": 0.1, "scale": 0.8},
     {"density": 0.6, "epsilon": 0.1, "lambda": 0.8}),
]


@pytest.mark.parametrize("shape", SHAPES)
def test_linear_matches_mergekit(shape):
    _, sources = _models(shape)
    expected = theirs("linear", sources, {"weight": WEIGHTS, "normalize": True}, base_index=None)
    torch.testing.assert_close(ours("linear", sources, None, {}), expected, rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("name,params,kit", TA_CASES + RANDOM_CASES,
                         ids=[f"{c[0]}-{i}" for i, c in enumerate(TA_CASES + RANDOM_CASES)])
def test_task_vector_methods_match_mergekit(shape, name, params, kit):
    base, sources = _models(shape, seed=len(name))
    seed = 1234 if MERGES.get(name).traits.random else None
    expected = theirs(name, [base] + sources, {"weight": WEIGHTS, **kit}, seed=seed)
    got = ours(name, sources, base, params, seed=seed)
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("t", [0.0, 0.3, 0.5, 1.0])
def test_slerp_matches_mergekit(shape, t):
    g = torch.Generator().manual_seed(7)
    a, b = torch.randn(shape, generator=g), torch.randn(shape, generator=g)
    expected = theirs("slerp", [a, b], {"t": t}, base_index=0)
    got = ours("slerp", [a, b], None, {}, weights=[1 - t, t])
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-6)


def test_slerp_near_parallel_is_linear_as_in_mergekit():
    a = torch.randn(50, generator=torch.Generator().manual_seed(1))
    b = 2.0 * a + 1e-4 * torch.randn(50, generator=torch.Generator().manual_seed(2))
    expected = theirs("slerp", [a, b], {"t": 0.25}, base_index=0)
    got = ours("slerp", [a, b], None, {}, weights=[0.75, 0.25])
    torch.testing.assert_close(got, 0.75 * a + 0.25 * b)
    torch.testing.assert_close(got, expected)


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("filter_wise", [False, True])
@pytest.mark.parametrize("k", [2, 3])
def test_model_stock_matches_mergekit(shape, filter_wise, k):
    base, sources = _models(shape, seed=3, k=k)
    expected = theirs("model_stock", [base] + sources, {"filter_wise": filter_wise})
    got = ours("model_stock", sources, base, {"filter_wise": filter_wise}, weights=[1.0] * k)
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("name", ["linear", "task_arithmetic", "ties", "breadcrumbs",
                                  "breadcrumbs_ties", "model_stock"])
def test_whole_state_dict_matches_mergekit(name):
    """The streaming loop (dtype handling, key order, base lookup) against mergekit's own
    state-dict API, on a bf16 model the base fully covers."""
    keys = {"a.weight": (12, 8), "a.bias": (12,), "b.weight": (3, 12)}
    g = torch.Generator().manual_seed(11)
    base = {k: torch.randn(s, generator=g).bfloat16() for k, s in keys.items()}
    sources = [{k: (v.float() + 0.1 * torch.randn(v.shape, generator=g)).bfloat16()
                for k, v in base.items()} for _ in range(3)]
    params, kit = {}, {}
    if name in ("ties", "breadcrumbs", "breadcrumbs_ties"):
        params, kit = {"density": 0.6}, {"density": 0.6}
    weights = [1.0] * 3 if name == "model_stock" else WEIGHTS
    got = merge_state_dicts(name, sources, weights, base=base, params=params)
    if name == "linear":
        expected = mk.merge_state_dicts(sources, "linear", parameters={"weight": weights},
                                        dtype=torch.float32, out_dtype=torch.bfloat16)
    else:
        if name != "model_stock":
            kit["weight"] = weights
        expected = mk.merge_state_dicts({"base": base, 0: sources[0], 1: sources[1],
                                         2: sources[2]}, name, parameters=kit, base="base",
                                        dtype=torch.float32, out_dtype=torch.bfloat16)
    assert list(got) == list(expected)
    for k in keys:
        assert got[k].dtype == torch.bfloat16
        # float32 results agree to ~1e-7; after the bf16 cast at most one bf16 step (2^-7 rel.)
        torch.testing.assert_close(got[k].float(), expected[k].float(), rtol=8e-3, atol=1e-6)


def _ambiguous_at_cut(delta, density):
    """Entries whose |δ| equals the trimming cut when more of them tie there than are kept."""
    size = delta.abs().reshape(-1)
    k = max(1, int(density * size.numel()))
    cut = torch.sort(size, descending=True).values[k - 1]
    tied = size == cut
    return int(tied.sum()) if cut > 0 and int((size >= cut).sum()) > k else 0


@pytest.mark.parametrize("density", [0.05, 0.3, 0.5, 0.9])
def test_ties_matches_mergekit_on_magnitude_ties(density):
    """bf16 deltas tie in magnitude at the cut; TIES keeps the very tied entries mergekit keeps
    (its unstable argsort's choice, not the first in index order), cached or not."""
    from engine.merge import MergeCache

    g = torch.Generator().manual_seed(5)
    base = torch.randn(64, 64, generator=g).bfloat16().float()
    sources = [(base + 0.05 * torch.randn(64, 64, generator=g)).bfloat16().float()
               for _ in range(3)]
    assert sum(_ambiguous_at_cut(s - base, density) for s in sources) > 0  # ties at the cut
    expected = theirs("ties", [base] + sources, {"weight": WEIGHTS, "density": density})
    assert torch.equal(ours("ties", sources, base, {"density": density}), expected)
    states = [{"t": s} for s in sources]
    cache = MergeCache()
    for _ in range(2):
        got = merge_state_dicts("ties", states, WEIGHTS, base={"t": base},
                                params={"density": density}, cache=cache)
        assert torch.equal(got["t"], expected)


def test_ties_keeps_exactly_k_entries_on_ties():
    from engine.merge.sparse import magnitude
    kept = magnitude(torch.tensor([1., -1., 1., 1., 2.]), 0.4)  # k = 2
    assert kept.tolist() == [1., 0., 0., 0., 2.]
