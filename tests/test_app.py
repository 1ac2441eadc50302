"""The dashboard, page by page, with Streamlit's AppTest on the real tiny zoo.

The app is pointed at the tiny zoo and a fresh results folder through FUSION_ZOO / FUSION_CACHE_DIR.
Jobs run for real in the app's JobRunner (a background thread): a test submits through the page,
waits on that runner, then reruns the page and reads what it shows. Page load times are measured
and printed (``pytest -s``). The Sweeps page has its own module (test_app_sweeps.py).
"""
import time
from pathlib import Path

import pytest
from streamlit.testing.v1 import AppTest

from app_support import LOAD_TIMES, PAGES, button, goto, metric, open_app, rerun, run_evolution, runner, wait_for


@pytest.fixture(scope="module")
def merge_run(app_cache):
    """One linear merge submitted from the Merge page: (AppTest after the run, run id, progress seen)."""
    at = goto(open_app(), "Merge")
    at.selectbox(key="merge_method").set_value("linear")
    rerun(at)
    button(at, "merge_run_button").click()
    rerun(at)
    run_id = at.session_state["merge_run"]
    progress = list(at.get("progress"))
    row = wait_for(app_cache, run_id)
    rerun(at)
    return at, row, progress


# ---- every page renders ---------------------------------------------------------------------------
def test_every_page_renders_on_the_tiny_zoo(app_cache):
    started = time.perf_counter()
    at = open_app()
    first = time.perf_counter() - started
    started = time.perf_counter()
    rerun(at)
    LOAD_TIMES["Overview"] = {"first": first, "rerun": time.perf_counter() - started}
    assert metric(at, "Models") == "4" and metric(at, "Labels") == "4"
    assert not at.error
    for page in PAGES:
        started = time.perf_counter()
        goto(at, page)
        first = time.perf_counter() - started
        started = time.perf_counter()
        rerun(at)
        LOAD_TIMES[page] = {"first": first, "rerun": time.perf_counter() - started}
        assert not at.error, (page, [e.value for e in at.error])
    assert all(t["rerun"] < 10 for t in LOAD_TIMES.values()), LOAD_TIMES


def test_setup_shows_the_zoo_and_the_engine_error(app_cache, tiny_zoo_dir):
    at = goto(open_app(), "Setup")
    assert metric(at, "Source models") == "4" and metric(at, "Target locales") == "4"
    sizes = [d.value for d in at.dataframe if "train" in d.value.columns][0]
    assert list(sizes["locale"]) == ["de-DE", "en-US", "es-ES", "nl-NL"]
    assert (sizes["test"] > 0).all() and sizes["has model"].all()
    at.radio(key="setup_zoo_kind").set_value("manifest")
    at.text_input(key="setup_zoo_path").set_value(str(tiny_zoo_dir / "missing.json"))
    button(at, "setup_open").click()
    rerun(at)
    errors = [e.value for e in at.error]
    assert len(errors) == 1 and str(tiny_zoo_dir / "missing.json") in errors[0] and "does not exist" in errors[0]
    goto(at, "Merge")  # every page says the same, no traceback
    assert "does not exist" in at.error[0].value
    goto(at, "Setup")
    at.radio(key="setup_zoo_kind").set_value("manifest")
    at.text_input(key="setup_zoo_path").set_value(str(tiny_zoo_dir / "zoo.json"))
    button(at, "setup_open").click()
    rerun(at)
    assert not at.error and metric(at, "Source models") == "4"


def test_setup_sets_the_trim_store_budget_and_shows_what_it_holds(app_cache):
    from dashboard.state import SETTINGS_KEY

    at = goto(open_app(), "Setup")
    lines = [c.value for c in at.caption if "trim store" in c.value]
    assert len(lines) == 1 and str(app_cache / "trim") in lines[0], lines
    assert at.number_input(key="setup_trim_store_gb").value == 16.0
    at.number_input(key="setup_trim_store_gb").set_value(0.0)
    button(at, "setup_open").click()
    rerun(at)
    assert not at.error and at.session_state[SETTINGS_KEY].trim_store_gb == 0.0


def weights_table(at: AppTest):
    return [d.value for d in at.dataframe if "similarity" in d.value.columns][0]


def test_similarity_controls_drive_the_weights(app_cache):
    at = goto(open_app(), "Similarity")
    table = weights_table(at)
    assert at.selectbox(key="sim_target").value == "de-DE"
    assert list(table["locale"]) == ["nl-NL", "en-US", "es-ES"]  # Dutch is German's nearest
    sinkhorn = table["weight"]
    assert sinkhorn.sum() == pytest.approx(1.0)
    # raw similarity weights sit beside the Sinkhorn ones and differ from them
    raw = table["weight before Sinkhorn"]
    assert raw.sum() == pytest.approx(1.0) and not (raw - sinkhorn).abs().max() < 1e-6
    at.slider(key="sim_top_k").set_value(1)
    rerun(at)
    table = weights_table(at)
    assert list(table["locale"]) == ["nl-NL"] and table["weight"].tolist() == [1.0]
    at.selectbox(key="sim_target").set_value("es-ES")
    at.slider(key="sim_top_k").set_value(2)
    rerun(at)
    table = weights_table(at)
    assert "es-ES" not in set(table["locale"]) and len(table) == 2
    button(at, "sim_use").click()
    rerun(at)
    selection = at.session_state["experiment"]
    assert selection.target == "es-ES" and set(selection.sources) == set(table["locale"])
    goto(at, "Merge")  # the hand-over pre-fills the Merge page
    assert at.selectbox(key="merge_target").value == "es-ES"
    assert "from the Similarity page" in " ".join(c.value for c in at.caption)


def test_merge_job_shows_progress_then_its_result(merge_run):
    at, row, progress = merge_run
    assert progress, "the page showed no progress bar while the merge ran"
    assert not at.error
    accuracy = row["metrics"]["test"]["accuracy"]
    assert metric(at, "Test accuracy") == f"{accuracy:.3f}"
    assert metric(at, "Validation accuracy") == f"{row['metrics']['validation']['accuracy']:.3f}"
    base = row["result"]["baselines"]
    assert set(base) == {"best_source", "best_zero_shot", "target_model"}
    made_on = row["result"]["provenance"]   # what the run was computed on
    assert made_on["zoo"] and made_on["device"] == "cpu" and len(made_on["inputs"]) == 24
    export = Path(row["result"]["export"])
    assert (export / "model.safetensors").is_file() and (export / "recipe.json").is_file()
    assert str(export) in " ".join(m.value for m in at.markdown)
    assert {b.label for b in at.get("download_button")} >= {"recipe.json", "mergekit.yaml"}
    assert at.get("plotly_chart"), "no result chart"


def test_ensemble_rescoring_is_instant_once_logits_are_cached(app_cache):
    at = goto(open_app(), "Ensemble")
    store = runner(app_cache).store
    assert "ens_logits" in [b.key for b in at.button], "the sources' validation logits cannot be cached yet"
    assert any("not cached yet" in i.value for i in at.info)
    button(at, "ens_logits").click()
    rerun(at)
    job = store.runs(kind="logits", limit=1)[0]
    assert job["status"] in ("queued", "running", "done")
    wait_for(app_cache, job["id"])
    rerun(at)
    first = metric(at, "Test accuracy")
    jobs_before = len(store.runs(limit=1000))
    at.selectbox(key="ens_method_voting").set_value("majority")
    started = time.perf_counter()
    rerun(at)
    assert time.perf_counter() - started < 5
    assert len(store.runs(limit=1000)) == jobs_before, "re-scoring must not start a job"
    assert metric(at, "Test accuracy") != "–" and first != "–"
    at.segmented_control(key="ens_family").set_value("learned fusion")
    rerun(at)
    at.selectbox(key="ens_method_learned fusion").set_value("learned_weights")
    rerun(at)  # the fit runs as a light-lane job, its progress on the page
    fit = store.runs(kind="fit", limit=1)[0]
    assert fit["method"] == "learned_weights"
    # its progress shows while it runs (a quick fit may already be done by the time the page draws)
    assert at.get("progress") or store.runs(kind="fit", limit=1)[0]["status"] == "done"
    wait_for(app_cache, fit["id"])
    rerun(at)
    assert any("Learned per-model weights" in str(c.proto.spec) for c in at.get("plotly_chart"))
    button(at, "ens_save").click()
    rerun(at)
    row = wait_for(app_cache, at.session_state["ens_run"])
    rerun(at)
    assert row["kind"] == "ensemble" and row["method"] == "learned_weights"
    assert any("Saved as run" in s.value for s in at.success)


def test_evolve_runs_live_and_sends_the_champion_to_compare(app_cache):
    at = goto(open_app(), "Evolve")
    at.segmented_control(key="evo_algorithm").set_value("cmaes")
    rerun(at)
    at.selectbox(key="evo_method").set_value("linear")
    row = run_evolution(at, app_cache, generations=1, population=2, layer_groups=0)
    run_id = at.session_state["evo_run"]
    assert not at.error
    champion = row["result"]["champion"]
    assert metric(at, "Champion test accuracy") == f"{champion['test']['accuracy']:.3f}"
    assert metric(at, "Generation") == "2 / 2"
    charts = " ".join(str(c.proto.spec) for c in at.get("plotly_chart"))
    assert "Fitness per generation" in charts and "Champion accuracy" in charts
    button(at, "evo_compare").click()
    rerun(at)
    assert at.title[0].value == "Compare"
    store = runner(app_cache).store
    assert store.pinned() == [run_id]           # kept in the store: survives a restart
    at = goto(open_app(), "Compare")            # a new session sees the pin too
    assert any("1 pinned" in c.value for c in at.caption)
    button(at, "cmp_unpin").click()
    rerun(at)
    assert store.pinned() == []


def test_compare_lists_the_runs_and_exports_them(app_cache, merge_run):
    _, row, _ = merge_run
    at = goto(open_app(), "Compare")
    table = [d.value for d in at.dataframe if "test_accuracy" in d.value.columns][0]
    assert row["id"] in set(table["id"])
    mine = table[table["id"] == row["id"]].iloc[0]
    assert mine["test_accuracy"] == pytest.approx(row["metrics"]["test"]["accuracy"])
    assert mine["gain_vs_best_source"] == pytest.approx(
        row["metrics"]["test"]["accuracy"] - row["result"]["baselines"]["best_source"]["accuracy"])
    assert {b.label for b in at.get("download_button")} >= {"CSV", "JSON", "Markdown"}
    at.multiselect(key="cmp_kind").set_value(["merge"])
    rerun(at)
    table = [d.value for d in at.dataframe if "test_accuracy" in d.value.columns][0]
    assert set(table["kind"]) == {"merge"}
    button(at, "nxn_run").click()
    rerun(at)
    job = runner(app_cache).store.runs(kind="nxn", limit=1)[0]
    wait_for(app_cache, job["id"])
    rerun(at)
    matrix = job and runner(app_cache).store.get(job["id"])["result"]["matrix"]
    assert set(matrix) == {"de-DE", "en-US", "es-ES", "nl-NL"}
    assert any("Zero-shot" in str(c.proto.spec) for c in at.get("plotly_chart"))
    assert {b.label for b in at.get("download_button")} >= {"Matrix as CSV"}


def test_overview_builds_the_demo_zoo_as_a_job(app_cache, tmp_path, monkeypatch):
    monkeypatch.setenv("FUSION_ZOO", "")
    monkeypatch.setenv("FUSION_DEMO_DIR", str(tmp_path / "demo"))
    at = open_app()
    assert "not built yet" in at.error[0].value
    at.segmented_control(key="demo_size").set_value("tiny")
    rerun(at)
    button(at, "demo_build").click()
    rerun(at)
    run_id = at.session_state["demo_run"]
    assert at.get("progress"), "no progress bar for the demo build"
    assert runner(app_cache).cancel(run_id)
    row = runner(app_cache).wait(run_id, timeout=60)
    assert row["status"] == "cancelled"
    rerun(at)
    assert any("cancelled" in w.value for w in at.warning)


def test_similarity_builds_the_uriel_cache_as_a_job_first(tiny_zoo_dir, tmp_path, monkeypatch):
    from dashboard import state

    monkeypatch.setenv("FUSION_ZOO", str(tiny_zoo_dir))
    monkeypatch.setenv("FUSION_CACHE_DIR", str(tmp_path))
    monkeypatch.setenv("FUSION_DEVICE", "cpu")
    try:
        at = goto(open_app(), "Similarity")
        assert any("URIEL" in i.value for i in at.info) and at.get("progress")
        job = runner(tmp_path).store.runs(kind="uriel", limit=1)[0]
        wait_for(tmp_path, job["id"], timeout=60)
        rerun(at)
        assert list(weights_table(at)["locale"]) == ["nl-NL", "en-US", "es-ES"]
    finally:
        state.services(str(tmp_path.resolve()))[1].shutdown(wait=True)


def test_pages_with_results_load_quickly(app_cache, merge_run):
    """Load times once runs exist (result cards, run tables, the N×N matrix): a fresh session."""
    at = open_app()
    for page in PAGES:
        started = time.perf_counter()
        goto(at, page)
        LOAD_TIMES.setdefault(page, {})["with runs"] = time.perf_counter() - started
        assert not at.error, (page, [e.value for e in at.error])
    assert all(t["with runs"] < 10 for t in LOAD_TIMES.values() if "with runs" in t), LOAD_TIMES


# ---- the pure helpers behind the pages ------------------------------------------------------------
def test_coinciding_baselines_share_one_reference_line():
    from dashboard import figures

    fig = figures.accuracy_bars([("merge", 0.4)], {
        "best_source": {"model": "nl-NL", "accuracy": 0.5}, "best_zero_shot": {"model": "nl-NL", "accuracy": 0.5},
        "target_model": {"model": "de-DE", "accuracy": 0.65}})
    lines = [s for s in fig.layout.shapes if s.type == "line"]
    assert sorted(round(s.y0, 3) for s in lines) == [0.5, 0.65]
    names = [t.name for t in fig.data if t.type == "scatter"]
    assert names == ["target's own model (de-DE): 0.650", "best source (nl-NL) = best zero-shot (nl-NL): 0.500"]



def test_many_runs_become_rows_best_on_top():
    import pandas as pd

    from dashboard import figures

    runs = pd.DataFrame({"target": ["de-DE"] * 10, "kind": ["merge"] * 9 + ["ensemble"],
                         "label": [f"run {i}" for i in range(10)], "test_accuracy": [i / 10 for i in range(10)]})
    base = {"de-DE": {"target_model": {"model": "de-DE", "accuracy": 0.9}}}
    (_, many), = figures.compare_bars(runs, base)
    bar = many.data[0]
    assert bar.orientation == "h" and list(bar.x) == sorted(bar.x)          # best drawn at the top
    assert bar.y[-1] == "ensemble · run 9" and bar.marker.color[-1] != bar.marker.color[0]
    assert [round(s.x0, 3) for s in many.layout.shapes if s.type == "line"] == [0.9]
    (_, few), = figures.compare_bars(runs.head(3), base)
    assert few.data[0].orientation in (None, "v")


def test_recipe_frames_for_both_searches():
    from dashboard import figures

    cma = {"groups": [{"group": "layers 0-1", "weights": {"a": 0.2, "b": 0.8}, "params": {"density": [0.5, 0.7]}},
                      {"group": "head", "weights": {"a": 0.6, "b": 0.4}, "params": {"density": [0.9, 0.1]}}]}
    frames = figures.recipe_frames(cma)
    assert frames["weight"].loc["b", "layers 0-1"] == 0.8 and frames["density"].loc["b", "head"] == 0.1
    evo = {"weights": {"a": 0.3, "b": 0.7}, "stages": [{"method": "ties", "params": {"density": [0.2, 0.4],
                                                                                        "scale": 1.0}}]}
    frames = figures.recipe_frames(evo)
    assert list(frames) == ["weight", "ties.density"] and frames["ties.density"].loc["b", "all layers"] == 0.4


def test_controls_follow_the_parameter_schema():
    from dashboard.widgets import _slider_ok
    from engine.registry import Param

    assert _slider_ok(Param("density", "float", 0.2, 0.0, 1.0, low_open=True))
    assert _slider_ok(Param("scale", "float", 1.0, 0.0, 10.0))
    assert not _slider_ok(Param("epsilon", "float", 1e-6, 0.0, 1.0))      # typed, not slid
    assert not _slider_ok(Param("learning_rate", "float", 0.01, 0.0, 1.0))
    assert not _slider_ok(Param("examples", "float", 256, 1, 1_000_000))


def test_table_exports():
    import pandas as pd

    from engine.report import tables

    frame = pd.DataFrame({"method": ["a|b"], "acc": [0.12345], "none": [None]})
    assert tables.markdown(frame) == "| method | acc | none |\n| --- | --- | --- |\n| a\\|b | 0.123 |  |\n"
    runs = [{"id": "r1", "kind": "evolve", "method": "evomerge", "target": "de-DE", "status": "cancelled",
             "created": 0.0, "sources": ["nl-NL"], "weights": [1.0], "params": {}, "metrics": {},
             "result": {"champion": {"test": {"accuracy": 0.6}, "dev": {"accuracy": 0.7}},
                        "baselines": {"best_source": {"model": "nl-NL", "accuracy": 0.5}}}}]
    row = tables.runs_frame(runs).iloc[0]  # a cancelled evolution still shows its champion so far
    assert row["test_accuracy"] == 0.6 and row["gain_vs_best_source"] == pytest.approx(0.1)
