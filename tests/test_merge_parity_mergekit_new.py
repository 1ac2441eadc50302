"""mergekit 0.1.5's newer encoder-ready merges (karcher, multislerp, nuslerp, sce) against mergekit.

Per tensor through ``mergekit.merge_methods.merge_tensors`` (mergekit's own kernels), and whole
models: the tiny zoo's real fine-tuned models merged by the engine, exported with the
mergekit.yaml each method's ``to_mergekit`` hook writes, and rerun by mergekit's ``run_merge``.
"""
import json
import math

import pytest
import torch

mk = pytest.importorskip("mergekit.merge_methods", reason="mergekit 0.1.5 not installed")

import test_merge_parity_models as models_parity  # noqa: E402
from engine.merge import MERGES, MergeError, merge_state_dicts  # noqa: E402
from engine.merge.export import mergekit_config  # noqa: E402

torch.set_num_threads(1)
SHAPES = [(24, 16), (16,), (5, 3, 4)]
SOURCES = models_parity.SOURCES


def _models(shape, seed=0, k=3, spread=0.1):
    g = torch.Generator().manual_seed(seed)
    base = torch.randn(shape, generator=g)
    return base, [base + spread * torch.randn(shape, generator=g) for _ in range(k)]


def ours(name, sources, base, params, weights):
    method = MERGES.get(name)
    w = torch.tensor(weights, dtype=torch.float32)
    return method.fn(sources, w / w.sum(), base, key="t", generator=None, **method.resolve(params))


# (method, our params, mergekit parameters, weights, mergekit gets the base)
TENSOR_CASES = [
    ("karcher", {}, {}, [1, 1, 1], False),
    ("karcher", {"max_iter": 3, "tol": 1e-3}, {"max_iter": 3, "tol": 1e-3}, [1, 1, 1], False),
    ("multislerp", {}, {"weight": [0.5, 0.3, 0.2]}, [0.5, 0.3, 0.2], False),
    ("multislerp", {"eps": 1e-4}, {"weight": [0.2, 0.2, 0.6], "eps": 1e-4}, [0.2, 0.2, 0.6], False),
    ("nuslerp", {}, {"weight": [0.6, 0.4]}, [0.6, 0.4], False),
    ("nuslerp", {"flatten": False}, {"weight": [0.3, 0.7], "nuslerp_flatten": False}, [0.3, 0.7],
     False),
    ("nuslerp", {"flatten": False, "row_wise": True},
     {"weight": [0.5, 0.5], "nuslerp_flatten": False, "nuslerp_row_wise": True}, [0.5, 0.5], False),
    ("sce", {}, {}, [1, 1, 1], True),
    ("sce", {"select_topk": 0.3}, {"select_topk": 0.3}, [1, 1, 1], True),
]


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("name,params,kit,weights,with_base", TENSOR_CASES,
                         ids=[f"{c[0]}-{i}" for i, c in enumerate(TENSOR_CASES)])
def test_kernels_match_mergekit_per_tensor(shape, name, params, kit, weights, with_base):
    """The same formula as mergekit's kernel, bit for bit (measured: max |diff| 0)."""
    base, sources = _models(shape, seed=len(name))
    sources = sources[: len(weights)]
    if with_base:
        expected = mk.merge_tensors([base] + sources, name, parameters=kit, base_index=0)
    else:
        expected = mk.merge_tensors(sources, name, parameters=kit)
    got = ours(name, sources, base, params, weights)
    torch.testing.assert_close(got, expected, rtol=0, atol=0)


def test_sce_weights_scale_energy_and_vote_and_zero_leaves_a_source_out():
    """mergekit's sce has no weights: equal weights are its result, weight 0 is the merge
    without that source, and unequal weights move the result towards the heavier source."""
    base, sources = _models((24, 16), seed=3)
    two = mk.merge_tensors([base] + sources[:2], "sce", parameters={}, base_index=0)
    torch.testing.assert_close(ours("sce", sources, base, {}, [2, 2, 0]), two, rtol=0, atol=0)
    even = ours("sce", sources, base, {}, [1, 1, 1])
    heavy = ours("sce", sources, base, {}, [8, 1, 1])
    assert torch.dist(heavy, sources[0]) < torch.dist(even, sources[0])


def test_karcher_of_two_is_the_geodesic_point_at_the_weight():
    """Two directions: the weighted Karcher mean lies on their great circle at fraction w_2 of
    the angle (the SLERP point), with norm w_1‖a‖ + w_2‖b‖ — the definition, for unequal
    weights that mergekit cannot express."""
    g = torch.Generator().manual_seed(1)
    a, b = torch.randn(50, generator=g), torch.randn(50, generator=g)
    got = ours("karcher", [a, b], None, {"max_iter": 100, "tol": 1e-7}, [0.7, 0.3])
    ua, ub = a / a.norm(), b / b.norm()
    theta = math.acos(float(ua @ ub))
    direction = (math.sin(0.7 * theta) * ua + math.sin(0.3 * theta) * ub) / math.sin(theta)
    torch.testing.assert_close(got, direction * (0.7 * a.norm() + 0.3 * b.norm()),
                               rtol=1e-5, atol=1e-5)


def test_nuslerp_takes_exactly_two_and_multislerp_refuses_cancelling_directions():
    base, sources = _models((8, 4))
    with pytest.raises(MergeError, match="at most 2 source models, got 3"):
        merge_state_dicts("nuslerp", [{"w": s} for s in sources])
    a = torch.ones(6)
    with pytest.raises(MergeError, match="cancel out"):
        merge_state_dicts("multislerp", [{"w": a}, {"w": -a}, {"w": a * 0}], [1, 1, 1])


# (method, params, weights, sources): whole models, exported and rerun by mergekit
MODEL_CASES = [
    ("karcher", {}, [1, 1, 1], SOURCES),
    ("multislerp", {}, models_parity.W3, SOURCES),
    ("nuslerp", {}, [0.6, 0.4], SOURCES[:2]),
    ("nuslerp", {"flatten": False, "row_wise": True}, [0.35, 0.65], SOURCES[1:]),
    ("sce", {}, [1, 1, 1], SOURCES),
    ("sce", {"select_topk": 0.4}, [1, 1], SOURCES[:2]),
]
ROUNDING = {"karcher": 1e-6}  # alphas: float32-normalised 1/3 vs mergekit's Python 1/3


@pytest.mark.parametrize("method,params,weights,sources", MODEL_CASES,
                         ids=[f"{c[0]}-{i}" for i, c in enumerate(MODEL_CASES)])
def test_mergekit_reruns_the_export_to_the_same_tensors(tiny_ws, tmp_path, method, params,
                                                        weights, sources):
    """Every tensor of mergekit's rerun of our mergekit.yaml equals our export's (bit for bit;
    karcher within 1e-6), the classification head included (sce: linear-averaged by both)."""
    _, mine, theirs = models_parity.export_and_rerun(tiny_ws, tmp_path, method, params, weights,
                                                     sources)
    assert models_parity.differing(mine, theirs, atol=ROUNDING.get(method, 0.0)) == {}


@pytest.mark.parametrize("method", ["karcher", "sce"])
def test_unequal_weights_are_not_exported_to_mergekit(method):
    """mergekit's karcher and sce take no weights: no mergekit.yaml, and the recipe says why."""
    recipe = {"method": method, "sources": ["a", "b"], "weights": [0.7, 0.3], "base": "base",
              "params": {}}
    config, reason = mergekit_config(recipe)
    assert config is None and "equal weights only" in reason
    config, _ = mergekit_config({**recipe, "weights": [0.5, 0.5]})
    assert config["merge_method"] == method and json.dumps(config)


def test_merge_page_draws_the_new_methods_from_their_schema(app_cache):
    """Each new method on the Merge page: its controls, named by its parameters, with mergekit's
    defaults, and no error."""
    from app_support import goto, open_app, rerun

    at = goto(open_app(), "Merge")
    expected = {"karcher": {"max_iter": 10, "tol": 1e-5}, "multislerp": {"eps": 1e-8},
                "nuslerp": {"row_wise": False, "flatten": True}, "sce": {"select_topk": 1.0},
                "regmean_plusplus": {"examples": 256, "alpha": 0.9}}
    for name, defaults in expected.items():
        at.selectbox(key="merge_method").set_value(name)
        rerun(at)
        assert not at.exception, name
        for param, value in defaults.items():
            assert at.session_state[f"merge.{name}.{param}"] == value, (name, param)
