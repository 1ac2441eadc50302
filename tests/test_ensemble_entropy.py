"""entropy_min (issue 14): ensemble weights fitted at test time by minimising the fused
prediction's entropy on unlabelled target text, as EMEA does for adapters. Checked against its
definition on constructed logits, and end to end on the tiny zoo without reading a label."""
import dataclasses

import numpy as np
import pytest
from conftest import Unreadable

from engine.ensemble import ENSEMBLES, EnsembleError, combine, fit
from engine.ensemble.entropy import fit_entropy_min
from engine.experiments import Candidate, evaluate_candidate, fit_data
from engine.runinfo import recipe_key_fields, target_data_use


pytestmark = pytest.mark.usefixtures("one_torch_thread")



def entropy(probs):
    p = np.clip(probs.astype(np.float64), 1e-12, 1)
    return float(-(p * np.log(p)).sum(1).mean())


def confident_and_noisy(n=60, c=5, seed=0):
    """Model 0 is sharp and self-consistent; models 1 and 2 are diffuse noise around it."""
    rng = np.random.default_rng(seed)
    y = rng.integers(0, c, size=n)
    sharp = rng.normal(0, 0.3, (n, c))
    sharp[np.arange(n), y] += 6.0
    diffuse = rng.normal(0, 0.4, (2, n, c))
    return np.concatenate([sharp[None], diffuse]).astype(np.float32)


def test_entropy_decreases_and_weights_stay_on_the_simplex():
    x = confident_and_noisy()
    prior = [0.2, 0.4, 0.4]
    f = fit("entropy_min", x, None, weights=prior)
    before = entropy(combine("weighted_logits", x, weights=prior))
    after = entropy(f.predict(x))
    assert after < before - 0.1
    assert f.info["entropy_start"] == pytest.approx(before, abs=1e-4)
    assert f.info["entropy_end"] == pytest.approx(after, abs=1e-4)
    assert f.model_weights.sum() == pytest.approx(1.0, abs=1e-12) and (f.model_weights > 0).all()
    more = fit("entropy_min", x, None, weights=prior, params={"steps": 40})
    assert entropy(more.predict(x)) < after  # more steps: lower still


def test_the_confident_consistent_model_gains_weight_from_a_prior_against_it():
    x = confident_and_noisy()
    for space in ("logits", "probabilities"):
        f = fit("entropy_min", x, None, weights=[0.2, 0.4, 0.4], params={"space": space})
        w = f.model_weights
        assert w[0] > 0.2 + 0.1 and w[0] == w.max(), (space, w)
        assert w[1] < 0.4 and w[2] < 0.4


def test_starts_from_the_given_weights_and_applies_them_like_weighted_logits():
    """With one step of a tiny learning rate the fused prediction is (almost) the URIEL-weighted
    weighted_logits rule: the prior is the start, not ignored."""
    x = confident_and_noisy()
    prior = [0.5, 0.3, 0.2]
    f = fit("entropy_min", x, None, weights=prior, params={"steps": 1, "learning_rate": 1e-6})
    np.testing.assert_allclose(f.model_weights, prior, atol=1e-5)
    np.testing.assert_allclose(f.predict(x), combine("weighted_logits", x, weights=prior), atol=1e-5)


def test_labels_are_never_read():
    x = confident_and_noisy()
    y = np.zeros(x.shape[1], dtype=np.int64)
    with pytest.raises(EnsembleError, match="reads no labels: pass val_labels=None"):
        fit("entropy_min", x, y)
    with pytest.raises(EnsembleError, match="must not be given labels"):
        fit_entropy_min(x, y, None, 0, steps=2, learning_rate=0.1, space="logits")
    traits = ENSEMBLES.get("entropy_min").traits
    assert (traits.uses_labels, traits.data_use, traits.needs_fit) == (False, "target_text", True)
    assert fit("entropy_min", x, None).info["labels_used"] is False


def test_tiny_zoo_run_fits_on_the_targets_texts_without_labels(tiny_ws):
    """fit_data hands entropy_min the sources' logits on the target's validation texts and no
    labels (the label reader is never called); the run is recorded as 'unlabelled target text'
    whatever data_mode says, and scores like any ensemble."""
    ws, target, sources = tiny_ws, "de-DE", ["en-US", "es-ES", "nl-NL"]
    encoded = ws.evaluator.encoded
    ws.evaluator.encoded = lambda loc, split: dataclasses.replace(encoded(loc, split), labels=Unreadable())
    try:
        for mode in ("target", "sources"):
            cand = Candidate("ensemble", "entropy_min", target, sources, [0.5, 0.3, 0.2], data_mode=mode)
            logits, labels = fit_data(ws, cand, ENSEMBLES.get("entropy_min").traits)
            assert labels is None
            n_val = len(ws.dataset.get(target, "validation").texts)
            assert logits.shape[:2] == (3, n_val)
            assert target_data_use(cand) == {"target": "unlabelled target text", "source_data": False}
        learned = Candidate("ensemble", "learned_weights", target, sources, [0.5, 0.3, 0.2], data_mode="target")
        with pytest.raises(AssertionError, match="labels were read"):  # the guard does catch a read
            fit_data(ws, learned, ENSEMBLES.get("learned_weights").traits)
    finally:
        ws.evaluator.encoded = encoded
    keys = [recipe_key_fields(Candidate("ensemble", "entropy_min", target, sources, [1, 1, 1], data_mode=m))
            for m in ("target", "sources")]
    assert keys[0] == keys[1] and "data_mode" not in keys[0]  # data_mode cannot change what it reads
    out = evaluate_candidate(ws, cand, with_baselines=False)
    weights = out["learned_weights"]
    assert set(weights) == set(sources) and sum(weights.values()) == pytest.approx(1.0)
    assert out["fitted"].info["entropy_end"] <= out["fitted"].info["entropy_start"]
    assert 0.0 <= out["metrics"]["test"]["accuracy"] <= 1.0


def test_ensemble_page_runs_entropy_min_and_marks_it_unlabelled(app_cache):
    """On the Ensemble page entropy_min is a learned fusion like the others; its card says the
    run used unlabelled target text (◐), never labelled dev data, and charts its weights."""
    from app_support import button, goto, metric, open_app, rerun, runner, wait_for

    at = goto(open_app(), "Ensemble")
    if "ens_logits" in [b.key for b in at.button]:
        button(at, "ens_logits").click()
        rerun(at)
        wait_for(app_cache, runner(app_cache).store.runs(kind="logits", limit=1)[0]["id"])
        rerun(at)
    at.segmented_control(key="ens_family").set_value("learned fusion")
    rerun(at)
    at.selectbox(key="ens_method_learned fusion").set_value("entropy_min")
    rerun(at)
    wait_for(app_cache, runner(app_cache).store.runs(kind="fit", limit=1)[0]["id"])  # fitted as a job
    rerun(at)
    assert metric(at, "Target data used") == "◐ unlabelled target text"
    assert metric(at, "Test accuracy") != "–"
    assert any("Learned per-model weights" in str(c.proto.spec) for c in at.get("plotly_chart"))
