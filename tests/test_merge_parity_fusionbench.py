"""Fisher and RegMean against FusionBench 0.2.33 (test-only, like mergekit), on the tiny zoo's real
models and data.

FusionBench's ``regmean_merging`` / ``fisher_merging`` read data through an HF Trainer's
``get_train_dataloader`` / ``_train_batch_size`` / ``_prepare_inputs``; ``Feed`` hands them the
same tokenised batches our pre-pass reads. Two kinds of check: the merge formula on identical
statistics (ours computed once, fed to both), and whole merges, statistics included, where the
definitions agree; where they differ on purpose the difference itself is tested.
"""
import pytest
import torch

pytest.importorskip("fusion_bench", reason="fusion-bench 0.2.33 not installed")

from fusion_bench.method.fisher_merging.fisher_merging import (  # noqa: E402
    get_models_fisher_norm, merging_with_fisher_weights)
from fusion_bench.method.regmean.regmean import (  # noqa: E402
    merging_with_regmean_weights, regmean_merging)

from engine.experiments import data_batches  # noqa: E402
from engine.merge import MERGES, MergeContext, merge_state_dicts  # noqa: E402
from engine.merge.data_aware import INPUT_KEYS, fisher_information, linear_grams  # noqa: E402

torch.set_num_threads(1)
SOURCES = ["de-DE", "en-US", "es-ES"]
EXAMPLES = 48


class Feed:
    """The three members of an HF Trainer FusionBench's merges read, over fixed batches."""

    def __init__(self, batches):
        self.batches = batches
        self._train_batch_size = batches[0]["input_ids"].shape[0]

    def get_train_dataloader(self):
        return list(self.batches)

    def _prepare_inputs(self, inputs):
        return {k: inputs[k] for k in INPUT_KEYS if k in inputs}


@pytest.fixture(scope="module")
def zoo(tiny_ws):
    """Sources, a model builder and per-source train batches: one example per batch (no padding,
    FusionBench counts every position) and batches of 8 (padded)."""
    ws = tiny_ws
    states = [{k: v.clone() for k, v in ws.zoo.state_dict(s).items()} for s in SOURCES]
    single = [data_batches(ws, [s], "train", EXAMPLES, batch_size=1) for s in SOURCES]
    padded = [data_batches(ws, [s], "train", EXAMPLES, batch_size=8) for s in SOURCES]
    assert any(bool((b["attention_mask"] == 0).any()) for b in padded[0])
    return {"states": states, "build": ws.zoo.build_model, "single": single, "padded": padded}


def _ours(zoo, method, batches, params, weights=None):
    context = MergeContext(build_model=zoo["build"], batches=lambda i: batches[i])
    return merge_state_dicts(method, zoo["states"], weights, params=params, context=context)


def _models(zoo):
    return [zoo["build"]({k: v.clone() for k, v in s.items()}).eval() for s in zoo["states"]]


def _max_diff(ours, theirs):
    return max(float((ours[k] - theirs[k].float()).abs().max()) for k in theirs)


# ---- RegMean ------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def grams(zoo):
    """Our Gram matrices per source on the unpadded examples (FusionBench's definition there)."""
    return [linear_grams(m, b) for m, b in zip(_models(zoo), zoo["single"])]


def gram_gap(ours, theirs, grams, alpha, weights=(1, 1, 1)) -> float:
    """max over RegMean'd weights of ‖ΔW·G^½‖ / ‖W·G^½‖ with G = Σ w_i G_i (off-diagonals × α):
    how far apart two solutions are on the data, the quantity RegMean minimises."""
    worst = 0.0
    for key in grams[0]:
        g = sum(wi * (alpha * gi[key].double() + (1 - alpha) * torch.diag(torch.diagonal(gi[key].double())))
                for gi, wi in zip(grams, weights))
        d, w = (ours[key] - theirs[key]).double(), theirs[key].double()
        worst = max(worst, float(torch.sqrt(torch.trace(d @ g @ d.T) / torch.trace(w @ g @ w.T))))
    return worst


def _fusionbench_regmean(zoo, batches, alpha):
    return regmean_merging(_models(zoo), [Feed(b) for b in batches], [], [EXAMPLES] * 3,
                           reduce_non_diagonal_ratio=alpha)


@pytest.fixture(scope="module")
def fusionbench_regmean(zoo):
    """FusionBench's RegMean (off-diagonals × 0.9) over the unpadded examples."""
    return _fusionbench_regmean(zoo, zoo["single"], 0.9)


def test_regmean_whole_merge_matches_fusionbench(zoo, grams, fusionbench_regmean):
    """Statistics and formula: FusionBench's regmean_merging over the same unpadded examples.
    Every nn.Linear weight (the classification head's two included) is RegMean-merged by both and
    the two solutions agree on the data (Gram-metric gap ≤ 1e-3; 4.6e-4 measured, on the
    1536-input FFN output whose Gram has condition ~10⁹); weights whose Gram is well conditioned
    (query/key/value: every token's input) agree entry by entry (≤ 1e-4); everything else is the
    plain average in both (≤ 1e-6).

    On purpose ours adds a ridge of 1e-6 × mean diagonal and solves in float64: directions the
    data never spans go to the weighted average, where FusionBench's float32 inverse gives
    arbitrary values (max |diff| 6.4 there, on source weights of 6.2)."""
    alpha, theirs = 0.9, fusionbench_regmean
    ours = _ours(zoo, "regmean", zoo["single"], {"examples": EXAMPLES, "alpha": alpha})
    assert set(theirs) <= set(ours) and "classifier.out_proj.weight" in grams[0]
    assert ours.report.treatment["classifier.out_proj.weight"] == "regmean"
    assert gram_gap(ours, theirs, grams, alpha) < 1e-3
    for key in theirs:
        if key not in grams[0]:
            torch.testing.assert_close(ours[key], theirs[key], rtol=0, atol=1e-6, msg=key)
        elif ".attention.self." in key:  # every token's input: well-conditioned Grams
            assert float((ours[key] - theirs[key]).abs().max()) < 1e-4, key


def test_regmean_grams_leave_padding_out_where_fusionbench_counts_it(zoo, grams, fusionbench_regmean):
    """FusionBench's Gram counts every position of a padded batch; ours leaves padding out, so our
    merge over padded batches is FusionBench's over the same examples unpadded, not over the
    padded batches."""
    ours = _ours(zoo, "regmean", zoo["padded"], {"examples": EXAMPLES, "alpha": 0.9})
    unpadded = fusionbench_regmean
    padded = _fusionbench_regmean(zoo, zoo["padded"], 0.9)
    assert gram_gap(ours, unpadded, grams, 0.9) < 1e-3
    assert gram_gap(ours, padded, grams, 0.9) > 1e-2


def test_regmean_formula_on_the_same_grams_and_weights_scale_the_grams(zoo, grams):
    """On identical Gram matrices (ours, fed to both) the merge formula agrees; FusionBench has no
    per-model weights: ours equals theirs on Grams pre-scaled by w_i, W = (Σ w_i G_i)⁻¹ Σ w_i G_i W_i."""
    method = MERGES.get("regmean")
    keys = list(grams[0])
    params = {k: [s[k] for s in zoo["states"]] for k in keys}
    gaps = {}
    for weights in ((1 / 3, 1 / 3, 1 / 3), (0.6, 0.3, 0.1)):
        w = torch.tensor(weights)
        ours = {k: method.fn(params[k], w, None, key=k, alpha=0.8, grams=[g[k] for g in grams])
                for k in keys}
        scaled = [{k[: -len(".weight")]: g[k] * wi for k in keys} for g, wi in zip(grams, weights)]
        theirs = merging_with_regmean_weights(params, scaled, 0.8)
        assert gram_gap(ours, theirs, grams, 0.8, weights) < 1e-3
        gaps[weights] = ours
    even, skewed = gaps.values()
    assert max(float((even[k] - skewed[k]).abs().max()) for k in keys) > 1e-3  # weights do act


# ---- Fisher -------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def fishers(zoo):
    """Our per-source empirical Fisher on the unpadded examples, computed once."""
    return [fisher_information(m, iter(b)) for m, b in zip(_models(zoo), zoo["single"])]


@pytest.mark.parametrize("weights", [[1 / 3] * 3, [0.5, 0.3, 0.2]])
def test_fisher_formula_on_the_same_fishers(zoo, fishers, weights):
    """On identical Fisher values our kernel is FusionBench's merging_with_fisher_weights without
    its norm equalisation (normalize_fisher_weight=False), the scaling coefficients being our
    weights and its minimal_fisher_weight our floor ε·F̄ (ε × the tensor's mean Fisher over the
    sources; FusionBench's floor is one constant for every tensor)."""
    method = MERGES.get("fisher")
    w = torch.tensor(weights)
    for key in zoo["states"][0]:
        tensors = [s[key] for s in zoo["states"]]
        fs = [f[key] for f in fishers]
        ours = method.fn(tensors, w, None, key=key, epsilon=1e-3, fishers=fs)
        floor = 1e-3 * sum(float(f.mean()) for f in fs) / 3
        theirs = merging_with_fisher_weights({key: tensors}, [{key: f} for f in fs], w,
                                             normalize_fisher_weight=False,
                                             minimal_fisher_weight=floor)[key]
        torch.testing.assert_close(ours, theirs, rtol=1e-5, atol=1e-6, msg=key)


def test_fisher_does_not_equalise_the_sources_fisher_norms(zoo, fishers):
    """FusionBench by default (normalize_fisher_weight=True) scales each source by 1/‖F_i‖ (the
    norm over all its parameters), so a source whose Fisher is larger overall counts no more; ours
    keeps the magnitudes (a source that is more certain on the data counts more). The two agree
    exactly when our weights carry that factor: w_i ∝ c_i / (‖F_i‖ + m)."""
    method = MERGES.get("fisher")
    keys = list(zoo["states"][0])
    params = {k: [s[k] for s in zoo["states"]] for k in keys}
    coefficients = torch.tensor([0.5, 0.3, 0.2])
    m = 1e-6
    theirs = merging_with_fisher_weights(params, fishers, coefficients, normalize_fisher_weight=True,
                                         minimal_fisher_weight=m)
    norms = get_models_fisher_norm(params, fishers)
    assert float(norms.max() / norms.min()) > 1.05  # the sources' Fisher norms do differ
    equalised = coefficients / (norms + m)
    equalised = equalised / equalised.sum()
    gaps = []
    for key in keys:
        fs = [f[key] for f in fishers]
        floor_eps = m / (sum(float(f.mean()) for f in fs) / 3)  # the same floor as theirs
        same = method.fn(params[key], equalised, None, key=key, epsilon=floor_eps, fishers=fs)
        torch.testing.assert_close(same, theirs[key], rtol=1e-5, atol=1e-6, msg=key)
        plain = method.fn(params[key], coefficients, None, key=key, epsilon=floor_eps, fishers=fs)
        gaps.append(float((plain - theirs[key]).abs().max()))
    assert max(gaps) > 1e-4


def test_our_fisher_statistic_is_the_mean_squared_per_example_gradient(zoo, fishers):
    """Our statistic by its definition, computed independently: per-example gradients of
    log p(y|x) by torch.func, squared, averaged. (FusionBench's differs on purpose: per batch it
    squares the gradient of Σ_c √p_c · log p_c, the label expectation taken inside the square.)"""
    from torch.func import functional_call, grad

    model = _models(zoo)[0]
    params = {k: v.detach() for k, v in model.named_parameters()}
    examples = zoo["single"][0]

    def log_p(p, example):
        inputs = {k: example[k] for k in INPUT_KEYS if k in example}
        logits = functional_call(model, p, (), inputs).logits
        return torch.log_softmax(logits, -1)[0, int(example["labels"][0])]

    total = {k: torch.zeros_like(v) for k, v in params.items()}
    for example in examples:
        g = grad(log_p)(params, example)
        for k in total:
            total[k] += g[k].square()
    for k, v in total.items():
        torch.testing.assert_close(fishers[0][k], v / len(examples), rtol=1e-4, atol=1e-10, msg=k)
