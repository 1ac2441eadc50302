"""One current experiment across pages (issue 12 items 1, 2 and 12), with AppTest on the real tiny zoo.

The experiment (target, sources and weights, URIEL features, K, Sinkhorn) is kept in the session
under a non-widget key, shown and changeable in the sidebar and on every page, and mirrored in the
address; a result card always names the target and sources it belongs to.
"""
import json

import pytest
from streamlit.testing.v1 import AppTest

from app_support import APP, TIMEOUT, button, goto, metric, open_app, rerun, wait_for


def experiment(at):
    return at.session_state["experiment"]


def charts(at) -> dict:
    """Plotly figures on the page by chart key (their JSON)."""
    out = {}
    for c in at.get("plotly_chart"):
        spec = json.loads(c.proto.spec)
        title = ((spec.get("layout") or {}).get("title") or {}).get("text", "")
        out[title] = spec
    return out


def weights_table(at):
    return [d.value for d in at.dataframe if "similarity" in d.value.columns][0]


# ---- item 1: Sinkhorn 0 -----------------------------------------------------------------------
def test_similarity_table_columns_do_not_depend_on_the_settings():
    from engine.languages import target_similarity

    zero = target_similarity("de-DE", sources=["nl-NL", "en-US", "es-ES"], sinkhorn_iters=0).table()
    assert list(zero.columns) == ["locale", "name", "similarity", "weight before Sinkhorn", "weight"]
    assert (zero["weight before Sinkhorn"] - zero["weight"]).abs().max() < 1e-12  # 0 rounds: unchanged
    twenty = target_similarity("de-DE", sources=["nl-NL", "en-US", "es-ES"], sinkhorn_iters=20).table()
    assert list(twenty.columns) == list(zero.columns)
    assert twenty["weight before Sinkhorn"].tolist() == pytest.approx(zero["weight"].tolist())
    assert (twenty["weight before Sinkhorn"] - twenty["weight"]).abs().max() > 1e-3


def test_sinkhorn_zero_keeps_the_page_and_the_use_button(app_cache):
    at = goto(open_app(), "Similarity")
    at.slider(key="sim_iters").set_value(0)
    rerun(at)  # raised "Duplicate column names" before
    table = weights_table(at)
    assert table["weight"].sum() == pytest.approx(1.0)
    assert (table["weight before Sinkhorn"] - table["weight"]).abs().max() < 1e-9
    button(at, "sim_use").click()
    rerun(at)
    assert experiment(at).sinkhorn_iters == 0 and experiment(at).origin == "similarity"
    assert dict(experiment(at).weights) == pytest.approx(dict(zip(table["locale"], table["weight"])))


# ---- item 2: one current experiment ----------------------------------------------------------------
def test_target_survives_leaving_the_page_on_merge_ensemble_and_similarity(app_cache):
    at = open_app()
    for page, key, target in (("Merge", "merge_target", "nl-NL"), ("Ensemble", "ens_target", "es-ES"),
                              ("Similarity", "sim_target", "en-US")):
        goto(at, page)
        at.selectbox(key=key).set_value(target)
        rerun(at)
        goto(at, "Compare")  # the page's widgets are not drawn here: Streamlit drops their state
        goto(at, page)
        assert at.selectbox(key=key).value == target, page
        assert experiment(at).target == target and target not in experiment(at).sources


def test_a_target_chosen_anywhere_is_the_target_everywhere(app_cache):
    at = open_app()
    at.selectbox(key="sidebar_target").set_value("es-ES")  # the sidebar (AppTest draws it on Overview only)
    rerun(at)
    assert "es-ES" not in " ".join(c.value for c in at.sidebar.caption if c.value.startswith("Sources"))
    for page, key in (("Ensemble", "ens_target"), ("Merge", "merge_target"), ("Similarity", "sim_target"),
                      ("Evolve", "evo_target")):
        goto(at, page)
        assert at.selectbox(key=key).value == "es-ES", page
    at.selectbox(key="evo_target").set_value("nl-NL")
    rerun(at)
    goto(at, "Merge")
    assert at.selectbox(key="merge_target").value == "nl-NL"
    assert "es-ES" in experiment(at).sources  # the new target's sources were derived again


def test_similarity_hand_over_keeps_its_sources_across_pages(app_cache):
    at = goto(open_app(), "Similarity")
    at.selectbox(key="sim_target").set_value("es-ES")
    rerun(at)
    at.slider(key="sim_top_k").set_value(2)
    rerun(at)
    chosen = list(weights_table(at).query("weight > 0")["locale"])
    assert len(chosen) == 2
    button(at, "sim_use").click()
    rerun(at)
    for page in ("Merge", "Compare", "Ensemble", "Setup", "Merge"):
        goto(at, page)
    assert at.selectbox(key="merge_target").value == "es-ES"
    assert experiment(at).sources == chosen and experiment(at).top_k == 2
    assert any("from the Similarity page" in c.value for c in at.caption)
    at.switch_page("app.py").run()
    assert at.selectbox(key="sidebar_target").value == "es-ES"
    assert any(c.value.startswith(f"Sources: {chosen[0]}") for c in at.sidebar.caption)


def test_the_address_keeps_the_experiment_across_a_reload(app_cache):
    at = goto(open_app(), "Merge")
    at.selectbox(key="merge_target").set_value("nl-NL")
    rerun(at)
    params = dict(at.query_params)
    flat = {k: v[-1] if isinstance(v, list) else v for k, v in params.items()}
    assert flat["target"] == "nl-NL" and "nl-NL" not in flat["sources"]
    # a reload: a new session, only the address is left
    fresh = AppTest.from_file(str(APP), default_timeout=TIMEOUT)
    fresh.query_params.update({"target": "nl-NL", "sources": "de-DE:0.7,en-US:0.3", "k": "2", "sinkhorn": "0"})
    fresh.run()
    assert not fresh.exception
    goto(fresh, "Merge")
    exp = experiment(fresh)
    assert exp.target == "nl-NL" and exp.weights == (("de-DE", 0.7), ("en-US", 0.3))
    assert (exp.top_k, exp.sinkhorn_iters) == (2, 0)
    assert fresh.selectbox(key="merge_target").value == "nl-NL"
    # a bad address: dropped with a note, never an error page
    bad = AppTest.from_file(str(APP), default_timeout=TIMEOUT)
    bad.query_params.update({"target": "xx-XX", "sources": "de-DE:-1,nl-NL:0.5,fr-FR:1", "k": "zero"})
    bad.run()
    goto(bad, "Merge")
    assert not bad.error
    assert experiment(bad).target == "de-DE" and experiment(bad).top_k == 5
    notes = " ".join(c.value for c in bad.caption)
    assert "xx-XX" in notes and "k='zero'" in notes


def test_query_parsing_and_validation_are_pure():
    from dashboard import experiment as xp

    exp = xp.Experiment("de-DE", (("nl-NL", 0.5), ("en-US", 0.25)), "syntax_knn+fam", 3, 0, xp.EDITED)
    fields, notes = xp.from_query(xp.to_query(exp))
    assert not notes and xp.Experiment(**fields).weights == exp.weights
    assert (fields["features"], fields["top_k"], fields["sinkhorn_iters"]) == ("syntax_knn+fam", 3, 0)
    checked, notes = xp.validate(xp.Experiment("de-DE", (("de-DE", 1.0), ("fr-FR", 1.0), ("nl-NL", 2.0))),
                                 ["de-DE", "nl-NL"], ["de-DE", "nl-NL", "en-US"])
    assert checked.weights == (("nl-NL", 2.0),) and "de-DE, fr-FR" in notes[0]
    _, notes = xp.from_query({"features": "learned", "sinkhorn": "500", "sources": "nl-NL:nan"})
    assert len(notes) == 3


def test_a_result_is_shown_only_for_its_own_target(app_cache):
    at = goto(open_app(), "Merge")
    at.selectbox(key="merge_target").set_value("de-DE")
    rerun(at)
    at.selectbox(key="merge_method").set_value("linear")
    rerun(at)
    sources = experiment(at).sources
    button(at, "merge_run_button").click()
    rerun(at)
    wait_for(app_cache, at.session_state["merge_run"])
    rerun(at)
    assert metric(at, "Test accuracy") != "–"
    card = " ".join(m.value for m in at.markdown)
    assert "**Linear** for **de-DE (German)** from " + sources[0] in card
    assert any("Linear → de-DE" in o for sb in at.selectbox if sb.label.startswith("Run") for o in sb.options)
    at.selectbox(key="merge_target").set_value("es-ES")
    rerun(at)
    assert not [m for m in at.metric if m.label == "Test accuracy"], "de-DE's result shown under es-ES"
    assert any("No merge for es-ES (Spanish) yet" in c.value for c in at.caption)
    goto(at, "Compare")
    goto(at, "Merge")
    assert at.selectbox(key="merge_target").value == "es-ES"
    assert not [m for m in at.metric if m.label == "Test accuracy"]


# ---- item 12: smaller things ------------------------------------------------------------------------
def test_similarity_heatmap_follows_k_and_sinkhorn_and_one_source_order(app_cache):
    at = goto(open_app(), "Similarity")
    at.selectbox(key="sim_target").set_value("de-DE")
    rerun(at)
    figs = charts(at)
    balanced = [f for t, f in figs.items() if t.startswith("After top-")]
    assert balanced and any(t.startswith("URIEL cosine similarity") for t in figs)
    before = balanced[0]["data"][0]["z"]
    at.slider(key="sim_top_k").set_value(1)
    rerun(at)
    after = [f for t, f in charts(at).items() if t.startswith("After top-1")][0]["data"][0]["z"]
    assert before != after
    at.slider(key="sim_top_k").set_value(3)
    rerun(at)
    figs = charts(at)
    order = list(weights_table(at)["locale"])
    weights_fig = [f for t, f in figs.items() if t.startswith("Source weights")][0]
    neighbours_fig = [f for t, f in figs.items() if "neighbours" in t][0]
    assert weights_fig["data"][0]["x"] == order == neighbours_fig["data"][0]["x"]
    heat = [f for t, f in figs.items() if t.startswith("URIEL cosine similarity")][0]
    assert heat["layout"]["xaxis"]["tickvals"] == heat["data"][0]["x"]  # every label, not every other


def test_heatmaps_label_every_row_and_column():
    import pandas as pd

    from dashboard import figures
    from engine.languages import LOCALES

    matrix = pd.DataFrame(0.5, index=list(LOCALES), columns=list(LOCALES))
    fig = figures.similarity_heatmap(matrix, "de-DE")
    assert list(fig.layout.xaxis.tickvals) == list(LOCALES) == list(fig.layout.yaxis.tickvals)


def test_setup_disables_what_does_not_apply(app_cache):
    at = goto(open_app(), "Setup")
    at.radio(key="setup_zoo_kind").set_value("demo")
    at.radio(key="setup_data").set_value("zoo")
    rerun(at)
    disabled = {k: at.text_input(key=k).disabled for k in
                ("setup_zoo_path", "setup_pattern", "setup_base", "setup_data_path", "setup_text_column")}
    assert all(disabled.values()), disabled
    at.radio(key="setup_zoo_kind").set_value("folder")
    at.radio(key="setup_data").set_value("table")
    rerun(at)
    assert not any(at.text_input(key=k).disabled for k in disabled)


def test_one_way_of_writing_numbers_and_names(app_cache):
    from dashboard.widgets import params_text

    assert [params_text(n) for n in (12_312_345, 278_043_648, 1_500, 2_000_000_000)] == \
        ["12.3 M", "278 M", "1.5 k", "2.0 B"]
    at = open_app()
    assert "de-DE (German)" in at.selectbox(key="sidebar_target").options
    overview = metric(at, "Parameters / model")
    goto(at, "Setup")
    assert metric(at, "Parameters / model") == overview
    goto(at, "Merge")
    options = at.selectbox(key="merge_method").options
    assert "Breadcrumbs-TIES" in options and "breadcrumbs_ties" not in options
    assert "de-DE (German)" in at.selectbox(key="merge_target").options
    goto(at, "Ensemble")
    assert "Weighted logits" in at.selectbox(key="ens_method_voting").options
    info = " ".join(i.value for i in at.info)  # what the outputs are, not just how many
    assert "not cached yet" in info and "on de-DE validation (the sources, validation score)" in info
    goto(at, "Evolve")
    labels = " ".join(t.label for t in at.toggle)
    assert "seed 004" not in labels and "Cost-aware fitness" in labels


def test_ensemble_says_which_outputs_are_missing(tiny_ws):
    from engine import tasks

    pairs = tasks.ensemble_pairs(tiny_ws, "de-DE", ["nl-NL", "en-US"])
    text = tasks.describe_pairs(pairs, pairs[:1], "de-DE")
    assert "2 on de-DE validation" in text and "4 on de-DE test" in text
    assert "1 not cached: nl-NL" in text and "all cached" in text
