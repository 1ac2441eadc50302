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
    rerun(at)  # the report is written by a light-lane job, shown on the page while it runs
    report = wait_for(app_cache, at.session_state[f"sw_report_job_{run_id}"])
    assert report["kind"] == "report" and report["params"]["sweep"] == run_id
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


def fill_store(store, n: int) -> None:
    """``n`` finished page runs (merges, ensembles, logits jobs) written straight into the store's
    SQLite file: a results folder after months of use."""
    import json

    now = time.time()
    rows = [(f"filler-{i:06d}", ("merge", "ensemble", "logits")[i % 3], "done", "de-DE", "linear",
             json.dumps({"cell_key": f"filler-{i}"}), now - 10 - i) for i in range(n)]
    conn = store._conn()
    with conn:
        conn.executemany("INSERT INTO runs (id, kind, status, target, method, params, created) "
                         "VALUES (?,?,?,?,?,?,?)", rows)


def vm_steps(store, at):
    """SQLite virtual-machine steps (in hundreds) the store's queries take during one page rerun
    (rows scanned cost steps, index lookups few), and the query plans that scan the runs table."""
    steps, statements = [0], []
    original = store._conn

    def counted():
        conn = original()
        conn.set_progress_handler(lambda: steps.__setitem__(0, steps[0] + 1) or 0, 100)
        conn.set_trace_callback(statements.append)
        return conn

    store._conn = counted
    try:
        rerun(at)
    finally:
        store._conn = original
        original().set_progress_handler(None, 100)
        original().set_trace_callback(None)
    scans = {}
    for sql in dict.fromkeys(statements):
        if sql.lstrip().upper().startswith("SELECT"):
            plan = [tuple(r)[3] for r in original().execute("EXPLAIN QUERY PLAN " + sql)]
            if any(p.startswith("SCAN runs") for p in plan) and "LIMIT" not in sql.upper():
                scans[sql[:160]] = plan
    return steps[0], scans


def test_the_sweeps_page_reads_what_it_shows_not_every_run(app_cache):
    """The page's rerun costs the same on a store with 200 other runs as on one with 20 000: its
    queries (sweeps, a sweep's cells, active jobs, stored cells) are index searches."""
    store = runner(app_cache).store
    at = goto(open_app(), "Sweeps")
    if not store.runs(kind="sweep", status=["done"], limit=1):
        at = fill_form(at, ["nl-NL"], ["ensemble:soft"], 1)
        button(at, "sw_start").click()
        rerun(at)
        wait_for(app_cache, at.session_state["sw_run"], timeout=300)
    fill_store(store, 200)
    rerun(at)
    small, _ = vm_steps(store, at)
    many = 20_000
    conn = store._conn()
    with conn:
        conn.execute("DELETE FROM runs WHERE id LIKE 'filler-%'")
    fill_store(store, many)
    large, scans = vm_steps(store, at)
    assert not at.error, [e.value for e in at.error]
    assert any("mean_accuracy" in d.value.columns for d in at.dataframe)
    print(f"\nSweeps page rerun: {small} vs {large} hundred SQLite steps with 200 vs {many} other runs")
    assert large < 2 * small + 20 and not scans, (small, large, scans)  # main's code: 18 vs 1602
