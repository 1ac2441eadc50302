"""Every registered ensemble method through the conformance suite (engine/ensemble/checks.py);
exemptions come from traits and hooks, so a newly registered method is checked with no edit here."""
import numpy as np
import pytest

from engine.ensemble import ENSEMBLES, EnsembleError, combine
from engine.ensemble import checks
from engine.registry import Param


pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.mark.parametrize("check", checks.CHECKS, ids=lambda c: c.__name__)
@pytest.mark.parametrize("name", ENSEMBLES.names())
def test_conformance(name, check):
    check(ENSEMBLES.get(name))


def test_exemptions_come_from_traits_and_leave_most_methods_checked():
    """Each check that can exempt runs on most methods: the exemptions are the few the traits
    name (fixed_pair's own weights, fusion_mlp's free function), not a blanket skip."""
    outcomes = {n: checks.run_checks(ENSEMBLES.get(n)) for n in
                ("soft", "majority", "fixed_pair", "fusion_mlp", "entropy_min")}
    assert outcomes["soft"]["check_permutation"] == "passed"
    assert outcomes["majority"]["check_single_model"] == "passed"
    assert outcomes["entropy_min"]["check_identical_models"] == "passed"
    assert "effective_weights hook" in outcomes["fixed_pair"]["check_permutation"]
    assert "min_sources" in outcomes["fixed_pair"]["check_single_model"]
    assert "free function" in outcomes["fusion_mlp"]["check_permutation"]


def test_every_rule_has_its_source_count_enforced_by_combine():
    x, _ = checks.example(3)
    with pytest.raises(EnsembleError, match="'fixed_pair' combines exactly 2 models, got 3"):
        combine("fixed_pair", x)
    with pytest.raises(EnsembleError, match="'fixed_pair' combines exactly 2 models, got 1"):
        combine("fixed_pair", x[:1])


def test_the_checks_catch_a_rule_that_breaks_its_declared_traits():
    """A rule claiming uses_weights=False that reads the weights, one depending on model order,
    one that returns unnormalised scores: each fails the check written for it."""
    @ENSEMBLES.register("_liar", params=[], uses_weights=False, family="pool")
    def liar(logits, weights):
        return np.tensordot(weights.astype(np.float32), checks.softmax(logits), axes=(0, 0))

    @ENSEMBLES.register("_first", params=[], family="pool")
    def first(logits, weights):
        return checks.softmax(logits[0] + 0 * weights.sum())

    @ENSEMBLES.register("_unnormalised", params=[Param("scale", "float", 2.0, 0.0, 5.0)], family="pool")
    def unnormalised(logits, weights, scale):
        return scale * checks.softmax(logits).mean(0)

    try:
        with pytest.raises(AssertionError, match="uses_weights=False but the weights change"):
            checks.check_weights_trait(ENSEMBLES.get("_liar"))
        with pytest.raises(AssertionError, match="order of the models"):
            checks.check_permutation(ENSEMBLES.get("_first"))
        with pytest.raises(AssertionError, match="rows"):
            checks.check_distribution(ENSEMBLES.get("_unnormalised"))
    finally:
        for name in ("_liar", "_first", "_unnormalised"):
            ENSEMBLES.unregister(name)


def test_effective_weights_hook_is_read_for_any_rule_not_by_name():
    """A rule declaring its own weights through the hook reports them (calibrated model_weights,
    effective_weights) exactly as fixed_pair does; no list of names anywhere."""
    from engine.ensemble import effective_weights, fit

    @ENSEMBLES.register("_last_only", params=[], uses_weights=False, family="pool",
                        effective_weights=lambda w, p: np.eye(len(w))[-1])
    def last_only(logits, weights):
        return checks.softmax(logits[-1])

    try:
        x, y = checks.example(3)
        m = ENSEMBLES.get("_last_only")
        assert effective_weights(m, np.full(3, 1 / 3), {}).tolist() == [0, 0, 1]
        assert fit("_last_only", x, y, calibrate=True).model_weights.tolist() == [0, 0, 1]
        assert effective_weights(ENSEMBLES.get("fixed_pair"), np.full(2, .5),
                                 {"first_weight": .9}).tolist() == [.9, pytest.approx(.1)]
        assert effective_weights(ENSEMBLES.get("majority"), np.array([.9, .1]), {}).tolist() == [.5, .5]
    finally:
        ENSEMBLES.unregister("_last_only")


def test_a_kernel_default_disagreeing_with_its_param_is_caught():
    @ENSEMBLES.register("_two_defaults", params=[Param("power", "float", 2.0, 0.1, 4.0)], family="pool")
    def two_defaults(logits, weights, power=1.0):
        return checks.softmax(logits).mean(0)

    try:
        with pytest.raises(AssertionError, match="kernel default power=1.0 but the Param says 2.0"):
            checks.check_traits(ENSEMBLES.get("_two_defaults"))
    finally:
        ENSEMBLES.unregister("_two_defaults")
