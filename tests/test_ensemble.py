"""Ensembles: every voting rule against hand-computed cases, learned fusions against planted
configurations, calibration, save/load, and every error path."""
import json

import numpy as np
import pytest

from engine.ensemble import ENSEMBLES, EnsembleError, Fitted, combine, fit, load_fitted


pytestmark = pytest.mark.usefixtures("one_torch_thread")


# 3 models x 4 examples x 3 classes, given as probabilities; the logits are their logs, so
# softmax(logits) gives these back. Argmax votes: m0 [0,1,2,0], m1 [0,2,1,1], m2 [1,1,0,2].
P = np.array([
    [[.6, .3, .1], [.2, .5, .3], [.1, .1, .8], [.5, .4, .1]],
    [[.5, .4, .1], [.1, .2, .7], [.2, .6, .2], [.3, .6, .1]],
    [[.2, .7, .1], [.1, .7, .2], [.7, .2, .1], [.2, .2, .6]],
])
LOGITS = np.log(P).astype(np.float32)
W = [5, 3, 2]  # normalised to .5 .3 .2


def close(a, b, tol=1e-5):
    np.testing.assert_allclose(a, np.asarray(b, dtype=np.float64), atol=tol, rtol=0)


# ---------------------------------------------------------------------------------------------
# Voting rules, hand-computed.

def test_registry_lists_every_method_with_its_schema():
    assert set(ENSEMBLES.names()) == {"majority", "weighted_majority", "soft", "weighted_logits",
                                      "geometric_mean", "max", "fixed_pair", "learned_weights",
                                      "fusion_mlp", "entropy_min", "prior_shift"}
    schema = ENSEMBLES.schema()
    assert schema["fixed_pair"]["params"][0]["name"] == "first_weight"
    assert schema["fusion_mlp"]["needs_fit"] and not schema["soft"]["needs_fit"]
    assert schema["soft"]["uses_weights"] and not schema["majority"]["uses_weights"]


def test_majority_with_three_way_ties_broken_by_summed_probability():
    out = combine("majority", LOGITS)
    # n0: 2 votes for 0. n1: 2 votes for 1. n2: one vote each; summed probs 1.0/.9/1.1 -> 2.
    # n3: one vote each; summed probs 1.0/1.2/.8 -> 1.
    assert out.argmax(1).tolist() == [0, 1, 2, 1]
    close(out, [[2 / 3, 1 / 3, 0], [0, 2 / 3, 1 / 3], [1 / 3] * 3, [1 / 3] * 3], tol=2e-5)
    close(out.sum(1), [1] * 4)


def test_majority_ignores_weights_and_equal_sums_go_to_lowest_class_id():
    assert combine("majority", LOGITS, weights=W).argmax(1).tolist() == [0, 1, 2, 1]
    # Two models, one vote each, summed probabilities equal -> the lower class id wins.
    a = np.log([[[.5, .3, .2]], [[.3, .5, .2]]])
    b = np.log([[[.3, .5, .2]], [[.5, .3, .2]]])
    c = np.log([[[.2, .5, .3]], [[.2, .3, .5]]])
    assert combine("majority", a).argmax(1).tolist() == [0]
    assert combine("majority", b).argmax(1).tolist() == [0]
    assert combine("majority", c).argmax(1).tolist() == [1]


def test_weighted_majority():
    out = combine("weighted_majority", LOGITS, weights=W)
    close(out, [[.8, .2, 0], [0, .7, .3], [.2, .3, .5], [.5, .3, .2]], tol=2e-5)
    assert out.argmax(1).tolist() == [0, 1, 2, 0]
    # Weighted tie: weights .5/.25/.25.
    # ex0: m0 votes 0 (.5), m1 and m2 vote 1 (.25 + .25): tie; weighted probability sums
    #      class 0 = .5*.6 + .25*.2 + .25*.3 = .425 < class 1 = .5*.3 + .25*.7 + .25*.6 = .475 -> 1.
    # ex1: m0 votes 0 (.5), m1 votes 1, m2 votes 2 (.25 each) -> 0; plain majority: a 3-way tie,
    #      summed probabilities .7 / 1.35 / .95 -> 1.
    tie = np.log([[[.6, .3, .1], [.4, .35, .25]],
                  [[.2, .7, .1], [.1, .8, .1]],
                  [[.3, .6, .1], [.2, .2, .6]]])
    out = combine("weighted_majority", tie, weights=[2, 1, 1])
    assert out.argmax(1).tolist() == [1, 0]
    close(out, [[.5, .5, 0], [.5, .25, .25]], tol=2e-5)
    assert combine("majority", tie).argmax(1).tolist() == [1, 1]
    assert combine("weighted_majority", tie).argmax(1).tolist() == [1, 1]  # no weights = majority


def test_soft_voting_plain_and_weighted():
    close(combine("soft", LOGITS),
          np.array([[1.3, 1.4, .3], [.4, 1.4, 1.2], [1.0, .9, 1.1], [1.0, 1.2, .8]]) / 3)
    close(combine("soft", LOGITS, weights=W),
          [[.49, .41, .10], [.15, .45, .40], [.25, .27, .48], [.38, .42, .20]])


def test_weighted_logits_is_softmax_of_weighted_mean_logit():
    z = np.array([[[2, 0, 0], [0, 1, 0]],
                  [[0, 2, 0], [1, 1, 1]],
                  [[0, 0, 2], [3, 0, 0]]], dtype=np.float32)
    # weights .5/.25/.25: mean logits ex0 = [1, .5, .5], ex1 = [.25 + .75, .5 + .25, .25]
    e0, e1 = np.exp([1, .5, .5]), np.exp([1, .75, .25])
    close(combine("weighted_logits", z, weights=[2, 1, 1]), [e0 / e0.sum(), e1 / e1.sum()])
    e = np.exp(z.mean(0))
    close(combine("weighted_logits", z), e / e.sum(1, keepdims=True))


def test_geometric_mean_plain_weighted_and_floor():
    g = np.cbrt(P.prod(0))  # unweighted: cube root of the product, renormalised
    close(combine("geometric_mean", LOGITS, params={"eps": 0}), g / g.sum(1, keepdims=True))
    close(combine("geometric_mean", LOGITS), g / g.sum(1, keepdims=True))  # eps 1e-8: same here
    gw = P[0] ** .5 * P[1] ** .3 * P[2] ** .2
    close(combine("geometric_mean", LOGITS, weights=W), gw / gw.sum(1, keepdims=True))
    # log-space geometric mean without a floor is exactly the weighted-logits rule
    close(combine("geometric_mean", LOGITS, weights=W, params={"eps": 0}),
          combine("weighted_logits", LOGITS, weights=W))
    # The floor bounds a veto: model 0 gives class 2 ~e^-100, model 1 gives it .8.
    veto = np.array([[[0, 0, -100]], [np.log([.1, .1, .8])]], dtype=np.float32)
    floored = np.sqrt(np.array([.51 * .11, .51 * .11, .01 * .81]))
    close(combine("geometric_mean", veto, params={"eps": .01}), [floored / floored.sum()])
    assert combine("geometric_mean", veto, params={"eps": 0})[0, 2] < 1e-20


def test_max_rule():
    close(combine("max", LOGITS, weights=W),  # weights ignored
          [np.array([.6, .7, .1]) / 1.4, np.array([.2, .7, .7]) / 1.6,
           np.array([.7, .6, .8]) / 2.1, np.array([.5, .6, .6]) / 1.7])


def test_fixed_pair():
    pair = LOGITS[:2]
    close(combine("fixed_pair", pair), [[.57, .33, .10], [.17, .41, .42], [.13, .25, .62],
                                        [.44, .46, .10]])
    close(combine("fixed_pair", pair, params={"first_weight": 0.5}), P[:2].mean(0))
    close(combine("fixed_pair", pair, params={"first_weight": 1.0}), P[0])


def test_list_input_and_weight_normalisation():
    as_list = [LOGITS[0], LOGITS[1].astype(np.float64), LOGITS[2].tolist()]
    close(combine("soft", as_list, weights=W), combine("soft", LOGITS, weights=[.5, .3, .2]))


# ---------------------------------------------------------------------------------------------
# Learned fusion on planted data.

def planted(n, seed, informative=(2,), k=4, c=5, signal=3.0):
    """Noise logits; the models in `informative` add `signal` to the true class."""
    rng = np.random.default_rng(seed)
    y = rng.integers(0, c, n)
    x = rng.normal(size=(k, n, c)).astype(np.float32)
    for m in informative:
        x[m, np.arange(n), y] += signal
    return x, y


def experts(n, seed, c=4, strength=4.0):
    """Model k is right (confidently) exactly on class-k examples; elsewhere it confidently names
    a random class other than k. Each model alone is right half the time; their pattern is
    perfectly informative."""
    rng = np.random.default_rng(seed)
    y = rng.integers(0, c, n)
    x = rng.normal(scale=.5, size=(c, n, c)).astype(np.float32)
    for k in range(c):
        other = (k + rng.integers(1, c, n)) % c           # uniform over classes != k
        picked = np.where(y == k, k, other)
        x[k, np.arange(n), picked] += strength
    return x, y


def accuracy(probs, y):
    return float((probs.argmax(1) == y).mean())


@pytest.mark.parametrize("space", ["probabilities", "logits"])
def test_learned_weights_find_the_informative_model(space):
    x, y = planted(300, seed=1)
    f = fit("learned_weights", x, y, params={"space": space})
    assert int(np.argmax(f.model_weights)) == 2 and f.model_weights[2] > .5
    assert f.model_weights[2] > 4 * np.delete(f.model_weights, 2).max()
    close(f.model_weights.sum(), 1)
    xt, yt = planted(300, seed=2)
    fused = accuracy(combine("learned_weights", xt, fitted=f), yt)
    assert fused >= max(accuracy(xt[k], yt) for k in range(4)) - .02  # nothing to gain, little lost


def test_learned_weights_recover_from_a_wrong_prior_and_reward_fusion():
    x, y = planted(400, seed=3, informative=(1, 3), signal=1.5)
    f = fit("learned_weights", x, y, weights=[.97, .01, .01, .01])
    assert f.prior is not None and np.argsort(f.model_weights)[-2:].tolist() in ([1, 3], [3, 1])
    xt, yt = planted(400, seed=4, informative=(1, 3), signal=1.5)
    fused = accuracy(combine("learned_weights", xt, weights=[.97, .01, .01, .01], fitted=f), yt)
    assert fused > max(accuracy(xt[k], yt) for k in range(4))


def test_fusion_mlp_learns_which_model_to_trust_per_class():
    x, y = experts(400, seed=5)
    f = fit("fusion_mlp", x, y, params={"hidden_size": 32})
    xt, yt = experts(400, seed=6)
    fused = accuracy(combine("fusion_mlp", xt, fitted=f), yt)
    best_single = max(accuracy(xt[k], yt) for k in range(4))
    assert best_single < .6 and fused > .95
    assert fused > accuracy(combine("soft", xt), yt)
    assert f.model_weights.min() > .1 and abs(f.model_weights.sum() - 1) < 1e-9  # all needed
    # seed 003's variant: one linear layer over concatenated probabilities, no skip path
    dense = {"hidden_size": 0, "features": "probs", "residual": False}
    linear = fit("fusion_mlp", x, y, params=dense)
    assert linear.net.skip is None and "skip_stage" not in linear.info
    assert accuracy(combine("fusion_mlp", xt, fitted=linear, params=dense), yt) > .9


def test_fusion_mlp_importance_points_at_the_informative_model():
    x, y = planted(300, seed=7)
    f = fit("fusion_mlp", x, y, params={"hidden_size": 16})
    assert int(np.argmax(f.model_weights)) == 2 and f.model_weights[2] > .5
    assert len(f.info["permutation_nll_increase"]) == 4


def test_fits_are_deterministic_for_a_seed():
    x, y = planted(200, seed=8)
    a, b = fit("fusion_mlp", x, y, seed=3), fit("fusion_mlp", x, y, seed=3)
    assert np.array_equal(a.predict(x), b.predict(x))
    assert not np.array_equal(a.predict(x), fit("fusion_mlp", x, y, seed=4).predict(x))
    w1, w2 = fit("learned_weights", x, y, seed=3), fit("learned_weights", x, y, seed=3)
    assert np.array_equal(w1.model_weights, w2.model_weights)


def test_no_holdout_trains_on_everything():
    x, y = planted(100, seed=9)
    f = fit("learned_weights", x, y, params={"holdout": 0})
    assert f.info["n_holdout"] == 0 and f.info["n_fit"] == 100 and f.holdout_index is None


# ---------------------------------------------------------------------------------------------
# Temperature calibration.

@pytest.mark.parametrize("scale, hotter", [(6.0, True), (0.15, False)])
def test_calibration_fixes_confidence_and_keeps_argmax(scale, hotter):
    x, y = planted(400, seed=10, informative=(0, 1), signal=1.0, k=2)
    xt, yt = planted(400, seed=11, informative=(0, 1), signal=1.0, k=2)
    x, xt = x * scale, xt * scale  # over- (6x) or under- (0.15x) confident
    cal = fit("soft", x, y, calibrate=True)
    assert (cal.temperature > 1) == hotter
    raw, fixed = combine("soft", xt), combine("soft", xt, fitted=cal)
    nll = lambda p: -np.log(p[np.arange(len(yt)), yt]).mean()  # noqa: E731
    assert nll(fixed) < nll(raw) - .05
    assert np.array_equal(raw.argmax(1), fixed.argmax(1))
    assert cal.info["nll_after"] < cal.info["nll_before"]


def test_calibration_on_vote_shares_and_on_learned_fusions():
    x, y = planted(200, seed=12)
    cal = fit("majority", x, y, calibrate=True)  # vote shares contain zeros
    out = combine("majority", x, fitted=cal)
    assert np.isfinite(out).all() and out.min() > 0
    assert np.array_equal(out.argmax(1), combine("majority", x).argmax(1))
    f = fit("learned_weights", x, y, calibrate=True)
    assert f.inner is not None and f.info["n_calibration"] == f.inner.info["n_holdout"] == 40
    assert np.array_equal(f.model_weights, f.inner.model_weights)
    pair = fit("fixed_pair", x[:2], y, params={"first_weight": .8}, calibrate=True)
    close(pair.model_weights, [.8, .2])


# ---------------------------------------------------------------------------------------------
# Save / load.

def fitted_examples():
    x, y = planted(120, seed=13)
    yield "learned_weights", fit("learned_weights", x, y, weights=[1, 2, 3, 4]), x
    yield "learned_weights", fit("learned_weights", x, y, params={"space": "logits"}), x
    yield "fusion_mlp", fit("fusion_mlp", x, y, params={"hidden_size": 8}), x
    yield "fusion_mlp", fit("fusion_mlp", x, y, params={"hidden_size": 0}, calibrate=True), x
    yield "fusion_mlp", fit("fusion_mlp", x, y, params={"residual": False, "features": "probs"}), x
    yield "learned_weights", fit("learned_weights", x, y, params={
        "space": "probabilities", "learn_temperature": False}), x
    yield "weighted_majority", fit("weighted_majority", x, y, weights=[4, 3, 2, 1],
                                   calibrate=True), x
    yield "geometric_mean", fit("geometric_mean", x, y, params={"eps": 1e-3}, calibrate=True), x


def test_save_load_round_trip_gives_identical_outputs(tmp_path):
    for i, (name, f, x) in enumerate(fitted_examples()):
        folder = f.save(tmp_path / str(i))
        assert sorted(p.name for p in folder.iterdir()) == ["config.json", "tensors.safetensors"]
        back = load_fitted(folder)
        assert type(back) is type(f) and back.method == name and back.params == f.params
        assert np.array_equal(back.predict(x), f.predict(x))
        assert np.array_equal(combine(name, x, fitted=back), combine(name, x, fitted=f))
        assert np.array_equal(back.model_weights, f.model_weights)
        assert Fitted.load(folder).to_config() == f.to_config()


# ---------------------------------------------------------------------------------------------
# Errors: every one an EnsembleError (a ValueError) that names what is wrong.

def raises(match):
    return pytest.raises(EnsembleError, match=match)


def test_shape_errors_name_the_model():
    with raises(r"model 1 has shape \(4, 2\) but model 0 has \(4, 3\)"):
        combine("soft", [LOGITS[0], LOGITS[1][:, :2]])
    with raises(r"model 2 has shape \(3, 3\)"):
        combine("soft", [LOGITS[0], LOGITS[1], LOGITS[2][:3]])
    with raises("model 1 has shape"):
        combine("soft", [LOGITS[0], LOGITS[1][0]])
    with raises("no models"):
        combine("soft", [])
    for empty in (np.zeros((0, 4, 3)), np.zeros((3, 0, 3)), np.zeros((3, 4, 0))):
        with raises("empty"):
            combine("soft", empty)
    with raises("expected"):
        combine("soft", LOGITS[0])
    with raises("at least 2"):
        combine("soft", np.zeros((2, 4, 1)))
    bad = LOGITS.copy()
    bad[1, 2, 0] = np.nan
    with raises("model 1 has a non-finite logit .* example 2"):
        combine("soft", bad)
    with raises("not a numeric"):
        combine("soft", [["a", "b"], ["c", "d"]])
    with raises("exactly 2 models, got 3"):
        combine("fixed_pair", LOGITS)


def test_weight_errors():
    for weights, message in [([1, 2], "shape \\(2,\\) but there are 3 models"),
                             ([1, -1, 2], "non-negative; model 1"),
                             ([1, np.nan, 2], "finite; model 1"),
                             ([0, 0, 0], "all zero"),
                             (["a", 1, 2], "must be numbers")]:
        with raises(message):
            combine("soft", LOGITS, weights=weights)
        with raises(message):
            fit("soft", LOGITS, [0, 1, 2, 1], weights=weights, calibrate=True)


def test_label_errors():
    with raises("label 3 at example 1 is outside \\[0, 3\\)"):
        fit("learned_weights", LOGITS, [0, 3, 1, 1])
    with raises("label -1 at example 0"):
        fit("learned_weights", LOGITS, [-1, 0, 1, 1])
    with raises("labels has shape \\(3,\\) but the logits score 4"):
        fit("learned_weights", LOGITS, [0, 1, 1])
    with raises("integer class ids"):
        fit("learned_weights", LOGITS, [0, 1.5, 1, 1])
    assert fit("learned_weights", LOGITS, np.array([0., 1., 2., 1.]),
               params={"holdout": 0, "max_steps": 2}).n_models == 3


def test_method_and_param_errors():
    with raises("unknown ensemble method 'median'; known: .*soft"):
        combine("median", LOGITS)
    with raises("no parameter\\(s\\) \\['temperature'\\]"):
        combine("soft", LOGITS, params={"temperature": 2})
    with raises("first_weight' must be in"):
        combine("fixed_pair", LOGITS[:2], params={"first_weight": 1.5})
    with raises("hidden_size' must be a whole number"):
        fit("fusion_mlp", LOGITS, [0, 1, 2, 1], params={"hidden_size": 2.5})
    with raises("seed must be a non-negative integer"):
        fit("learned_weights", LOGITS, [0, 1, 2, 1], seed=-1)
    with raises("too few to hold out"):
        fit("learned_weights", LOGITS[:, :1], [0])


def test_fit_and_combine_misuse():
    y = [0, 1, 2, 1]
    with raises("learned fusion: call fit\\('fusion_mlp'"):
        combine("fusion_mlp", LOGITS)
    with raises("nothing to fit"):
        fit("soft", LOGITS, y)
    f = fit("learned_weights", LOGITS, y, weights=W, params={"holdout": 0, "max_steps": 5})
    with raises("fitted fusion is for 'learned_weights', not 'soft'"):
        combine("soft", LOGITS, fitted=f)
    with raises("fitted on 3 models x 3 classes; got logits of shape \\(2, 4, 3\\)"):
        combine("learned_weights", LOGITS[:2], fitted=f)
    with raises("fitted with params"):
        combine("learned_weights", LOGITS, params={"space": "logits"}, fitted=f)
    with raises("fitted with weights"):
        combine("learned_weights", LOGITS, weights=[1, 1, 1], fitted=f)
    assert np.array_equal(combine("learned_weights", LOGITS, weights=W, fitted=f),
                          f.predict(LOGITS))
    with raises("must come from fit"):
        combine("learned_weights", LOGITS, fitted="model.pkl")


def test_load_errors(tmp_path):
    with raises("is not a saved fusion"):
        load_fitted(tmp_path)
    f = fit("soft", LOGITS, [0, 1, 2, 1], calibrate=True)
    folder = f.save(tmp_path / "soft")
    (folder / "config.json").write_text("{not json")
    with raises("cannot read saved fusion"):
        load_fitted(folder)
    (folder / "config.json").write_text(json.dumps({"format": "x", "kind": "pickle"}))
    with raises("not a fitted ensemble config"):
        load_fitted(folder)
    config = f.to_config()
    del config["temperature"]
    (folder / "config.json").write_text(json.dumps(config))
    with raises("missing 'temperature'"):
        load_fitted(folder)
