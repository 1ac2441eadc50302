"""The weighting radio (uriel | equal | predicted, engine.experiments.WEIGHTINGS) on the Similarity,
Merge and Ensemble pages: it sets the sources' weights exactly as the CLI's --weighting does
(engine.experiments.suggest_sources), is shared by the pages, and is stored with the run."""
import pytest

from app_support import button, goto, open_app, rerun, runner, wait_for
from engine.experiments import WEIGHTINGS, suggest_sources

T = "de-DE"


def weights_of(at):
    return dict(at.session_state["experiment"].weights)


def cli_weights(ws, weighting):
    """The CLI's weights (the sources table shows, and hands back, 4 digits)."""
    found = suggest_sources(ws, T, top_k=5, features="syntax_knn", sinkhorn_iters=20, weighting=weighting)
    return pytest.approx(found, abs=1e-4)


def test_similarity_radio_hands_over_the_cli_weights(app_cache, tiny_ws):
    at = goto(open_app(), "Similarity")
    radio = at.radio(key="sim_weighting")
    assert list(radio.options) == ["URIEL + Sinkhorn", "equal (URIEL top-K)", "predicted transfer"]
    assert radio.value == "uriel" and weights_of(at) == cli_weights(tiny_ws, "uriel")
    radio.set_value("equal")
    rerun(at)
    assert at.session_state["experiment"].weighting == "equal"
    assert weights_of(at) == cli_weights(tiny_ws, "equal")
    assert any(c.value.startswith("Weights handed over (equal") for c in at.caption)
    button(at, "sim_use").click()
    rerun(at)
    assert weights_of(at) == cli_weights(tiny_ws, "equal")
    goto(at, "Merge")  # one choice for every page
    assert at.radio(key="merge_weighting").value == "equal"


def test_merge_radio_predicted_waits_for_its_matrix_then_is_stored_with_the_run(app_cache, tiny_ws):
    at = goto(open_app(), "Merge")
    at.selectbox(key="merge_method").set_value("linear")
    at.radio(key="merge_weighting").set_value("predicted")
    rerun(at)
    store = runner(app_cache).store
    job = store.runs(kind="nxn", limit=1)[0]  # the validation matrix predicted transfer is fitted on
    assert job["params"]["split"] == "validation"
    assert any("Predicted transfer is fitted on" in i.value for i in at.info)
    assert button(at, "merge_run_button").disabled  # no sources yet
    wait_for(app_cache, job["id"])
    rerun(at)
    expected = cli_weights(tiny_ws, "predicted")
    assert weights_of(at) == expected
    assert "from predicted transfer" in " ".join(c.value for c in at.caption)
    at.toggle(key="merge_export").set_value(False)
    rerun(at)
    button(at, "merge_run_button").click()
    rerun(at)
    row = store.get(at.session_state["merge_run"])
    assert row["params"]["weighting"] == "predicted"
    assert dict(zip(row["sources"], row["weights"])) == expected
    wait_for(app_cache, row["id"])


def test_ensemble_radio_sets_equal_weights_and_stores_them(app_cache, tiny_ws):
    at = goto(open_app(), "Ensemble")
    at.radio(key="ens_weighting").set_value("equal")
    rerun(at)
    assert weights_of(at) == cli_weights(tiny_ws, "equal")
    if "ens_logits" in [b.key for b in at.button]:
        button(at, "ens_logits").click()
        rerun(at)
        wait_for(app_cache, runner(app_cache).store.runs(kind="logits", limit=1)[0]["id"])
        rerun(at)
    button(at, "ens_save").click()
    rerun(at)
    row = wait_for(app_cache, at.session_state["ens_run"])
    assert row["params"]["weighting"] == "equal" and len(set(row["weights"])) == 1
    at.radio(key="ens_weighting").set_value("uriel")
    rerun(at)
    assert weights_of(at) == cli_weights(tiny_ws, "uriel")


def test_the_sweep_form_offers_every_weighting(app_cache):
    at = goto(open_app(), "Sweeps")
    assert at.multiselect(key="sw_weighting").options == ["URIEL + Sinkhorn", "equal (URIEL top-K)",
                                                          "predicted transfer"]
    assert len(WEIGHTINGS) == 3
