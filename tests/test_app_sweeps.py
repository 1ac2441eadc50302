"""The Sweeps page with AppTest on the real tiny zoo: a sweep from the form, its views and report,
the same sweep on Compare, a bad YAML spec, and a cancelled sweep resumed from the page."""
import time
from pathlib import Path

from app_support import button, goto, open_app, rerun, runner, wait_for


def fill_form(at, targets, methods, k):
    """The form's targets, methods and number of sources (the other fields keep their defaults)."""
    at.toggle(key="sw_all").set_value(False)
    rerun(at)
    at.multiselect(key="sw_targets").set_value(targets)
    at.multiselect(key="sw_methods").set_value(methods)
    at.multiselect(key="sw_k").set_value([k])
    return rerun(at)


def test_sweep_from_the_form_then_its_views_and_report(app_cache):
    at = fill_form(goto(open_app(), "Sweeps"), ["de-DE", "nl-NL"], ["merge:linear", "merge:ties", "ensemble:soft"], 2)
    # 2 targets × (3 methods + the equal-weight merge) = 8 cells
    assert any(c.value.startswith("8 cells over 2 target(s)") for c in at.caption), [c.value for c in at.caption]
    button(at, "sw_start").click()
    rerun(at)
    run_id = at.session_state["sw_run"]
    row = wait_for(app_cache, run_id, timeout=300)
    assert row["result"]["cells_total"] == 8 and not row["result"]["failed"]
    rerun(at)
    assert not at.error, [e.value for e in at.error]
    text = " ".join(m.value for m in at.markdown)
    assert "Which strategy is best?" in text and "Does merging beat ensembling?" in text
    head = [d.value for d in at.dataframe if "mean_accuracy" in d.value.columns][0]
    assert {"merge:ties", "ensemble:soft"} <= set(head["variant"])
    charts = " ".join(str(c.proto.spec) for c in at.get("plotly_chart"))
    assert "Test accuracy: variant" in charts and "Win rate" in charts and "parcoords" in charts
    at.selectbox(key="sw_va").set_value("merge:ties")
    at.selectbox(key="sw_vb").set_value("ensemble:soft")
    rerun(at)
    tests = [d.value for d in at.dataframe if "p_value" in d.value.columns][0]
    assert set(tests["target"]) == {"de-DE", "nl-NL"}
    button(at, "sw_report").click()
    rerun(at)
    folder = Path(app_cache) / "reports" / run_id
    assert (folder / "report.md").exists() and (folder / "accuracy_heatmap.html").exists()
    assert {b.label for b in at.get("download_button")} >= {"report.md", "results.csv", "results.json",
                                                             "Everything (.zip)"}
    # the Compare page shows the same sweep
    at = goto(at, "Compare")
    assert any("mean_accuracy" in d.value.columns for d in at.dataframe)
    # a bad YAML spec is an error where it is written; nothing else breaks
    at = goto(at, "Sweeps")
    at.segmented_control(key="sw_mode").set_value("YAML")
    rerun(at)
    at.text_area(key="sw_yaml").set_value("name: x\nmethods: [merge:nonsense]\n")
    rerun(at)
    assert any("nonsense" in e.value for e in at.error)
    assert at.button(key="sw_start").disabled


def test_a_cancelled_sweep_resumes_from_the_page(app_cache):
    at = fill_form(goto(open_app(), "Sweeps"), ["es-ES", "en-US"],
                   ["merge:task_arithmetic", "merge:dare_linear", "ensemble:majority"], 2)
    button(at, "sw_start").click()
    rerun(at)
    first = at.session_state["sw_run"]
    store = runner(app_cache).store
    deadline = time.time() + 120
    while not store.runs(parent=first, status=["done"]) and time.time() < deadline:
        time.sleep(0.01)
    runner(app_cache).cancel(first)
    assert runner(app_cache).wait(first, timeout=60)["status"] == "cancelled"
    done_before = len(store.runs(parent=first, status=["done"]))
    rerun(at)
    assert any("cancelled" in w.value for w in at.warning)
    button(at, "sw_resume").click()
    rerun(at)
    resumed = at.session_state["sw_run"]
    assert resumed != first
    row = wait_for(app_cache, resumed, timeout=300)
    assert row["params"]["resumed_from"] == first
    assert row["metrics"]["reused"] >= done_before and row["metrics"]["computed"] + row["metrics"]["reused"] == 8
    rerun(at)
    assert not at.error, [e.value for e in at.error]
    assert any("mean_accuracy" in d.value.columns for d in at.dataframe)
