"""Numbers a researcher can trust, on the pages (issue 12, items 6-11), with AppTest on the real tiny
zoo: result cards with gap closed, target data and readable settings; a merge report in words; a
saved run's message that stays with its recipe; Compare showing pinned runs whatever their status,
one row per experiment with where it came from; sweeps reusing page runs; a sweep selector that
reads 'done' once the sweep is done."""
import json
import re
import time
from pathlib import Path

from app_support import button, goto, metric, open_app, rerun, runner, wait_for

GAP = "Gap closed (best source → own model)"


def frames(at, column):
    return [d.value for d in at.dataframe if column in d.value.columns]


def test_merge_card_says_gap_target_data_settings_and_treatments(app_cache):
    at = goto(open_app(), "Merge")
    at.selectbox(key="merge_target").set_value("de-DE")
    rerun(at)
    button(at, "merge_run_button").click()
    rerun(at)
    row = wait_for(app_cache, at.session_state["merge_run"], timeout=300)
    rerun(at)
    assert not at.error, [e.value for e in at.error]
    base = row["result"]["baselines"]
    low, high = base["best_source"]["accuracy"], base["target_model"]["accuracy"]
    acc = row["metrics"]["test"]["accuracy"]
    expected = f"{100 * (acc - low) / (high - low):.0f} %" if high > low else "–"
    assert metric(at, GAP) == expected
    assert metric(at, "Target data used") == "○ none"
    assert not any("params {" in c.value for c in at.caption), "params shown as a raw dict"
    settings = frames(at, "setting")[0]
    assert {"density", "scale"} <= set(settings["setting"]) and "what it does" in settings.columns
    report = frames(at, "treatment")[0]
    assert list(report.columns) == ["treatment", "tensors", "where", "meaning"]
    assert report["tensors"].sum() == sum(row["result"]["merge_report"]["counts"].values())
    assert "layer 0" in " ".join(report["where"]) and "TIES" in " ".join(report["meaning"])
    yaml_text = (Path(row["result"]["export"]) / "mergekit.yaml").read_text()
    assert not re.search(r"\d\.\d{8,}", yaml_text), yaml_text     # 0.314, not 0.31400000000000006


def test_a_sweep_reuses_the_merge_pages_run(app_cache):
    """The Merge page's TIES run (previous test) is the sweep's TIES cell: it is counted as stored,
    not computed again; and with the equal-merge cell off the text says 'not run', never 'nan'."""
    store = runner(app_cache).store
    page_run = store.runs(kind="merge", limit=1)[0]
    at = goto(open_app(), "Sweeps")
    at.toggle(key="sw_all").set_value(False)
    rerun(at)
    at.multiselect(key="sw_targets").set_value(["de-DE"])
    at.multiselect(key="sw_methods").set_value(["merge:ties"])
    at.multiselect(key="sw_k").set_value([len(page_run["sources"])])
    at.checkbox(key="sw_equal").set_value(False)
    rerun(at)
    assert any(c.value.startswith("1 cells over 1 target(s); 1 already stored") for c in at.caption), \
        [c.value for c in at.caption]
    button(at, "sw_start").click()
    rerun(at)
    sweep = wait_for(app_cache, at.session_state["sw_run"], timeout=120)
    assert sweep["metrics"]["reused"] == 1 and sweep["metrics"]["computed"] == 0
    assert sweep["result"]["cells"] == {page_run["params"]["cell_key"]: page_run["id"]}
    rerun(at)
    text = " ".join([m.value for m in at.markdown] + [c.value for c in at.caption])
    assert "nan" not in text and "equal-weight merge not run" in text


def test_a_saved_runs_message_stays_with_its_recipe(app_cache):
    at = goto(open_app(), "Ensemble")
    at.selectbox(key="ens_target").set_value("de-DE")
    rerun(at)
    if "ens_logits" in [b.key for b in at.button]:
        button(at, "ens_logits").click()
        rerun(at)
        wait_for(app_cache, runner(app_cache).store.runs(kind="logits", limit=1)[0]["id"])
        rerun(at)
    at.selectbox(key="ens_method_voting").set_value("soft")
    rerun(at)
    assert metric(at, "Target data used") == "○ none"
    button(at, "ens_save").click()
    rerun(at)
    wait_for(app_cache, at.session_state["ens_run"])
    rerun(at)
    assert any("Saved as run" in s.value for s in at.success)
    at.selectbox(key="ens_method_voting").set_value("weighted_logits")   # another recipe
    rerun(at)
    assert not any("Saved as run" in s.value for s in at.success), "the soft vote's message stayed"
    at.segmented_control(key="ens_family").set_value("learned fusion")
    rerun(at)  # fitted by a light-lane job
    wait_for(app_cache, runner(app_cache).store.runs(kind="fit", limit=1)[0]["id"])
    rerun(at)
    assert metric(at, "Target data used") == "● labelled target dev"
    at.segmented_control(key="ens_family").set_value("voting")
    rerun(at)
    at.selectbox(key="ens_method_voting").set_value("soft")              # back to the saved recipe
    rerun(at)
    assert any("Saved as run" in s.value for s in at.success)


def _copy(store, row, **result):
    """A second stored run of the same recipe (as a sweep cell of the same content key would be)."""
    run_id = store.create(row["kind"], name=row["name"], target=row["target"], method=row["method"],
                          params=row["params"], sources=row["sources"], weights=row["weights"],
                          status="done")
    store.update(run_id, metrics=row["metrics"], result={**row["result"], **result}, finished=time.time())
    return run_id


def test_compare_pins_any_status_one_row_per_experiment_and_target_data(app_cache):
    store = runner(app_cache).store
    page_run = store.runs(kind="merge", limit=1)[0]
    twin = _copy(store, page_run, origin="sweep", sweep="s1")
    champion = store.create("evolve", name="evomerge → de-DE", target="de-DE", method="evomerge",
                            params={"generations": 3}, sources=page_run["sources"], weights=page_run["weights"],
                            status="cancelled")
    store.update(champion, result={"champion": {"test": {"accuracy": 0.5}, "dev": {"accuracy": 0.6}, "fitness": 0.6},
                                   "baselines": page_run["result"]["baselines"]})
    store.pin(champion)
    at = goto(open_app(), "Compare")
    assert not at.error, [e.value for e in at.error]
    table = frames(at, "target_data")[0]
    assert champion in set(table["id"]), "the pinned, cancelled champion is hidden"
    key_rows = table[table["cell_key"] == page_run["params"]["cell_key"]]
    assert len(key_rows) == 1 and key_rows["origin"].iloc[0] == "page + sweep" and twin not in set(table["id"])
    assert set(table[table["kind"] == "evolve"]["target_data"]) == {"● labelled target dev"}
    assert key_rows["target_data"].iloc[0] == "○ none"
    bars = [t for c in at.get("plotly_chart") for t in json.loads(c.proto.spec)["data"] if t["type"] == "bar"]
    drawn = [(x, shape) for t in bars if "x" in t
             for x, shape in zip(t["x"], (t.get("marker", {}).get("pattern") or {}).get("shape") or [""] * len(t["x"]))]
    assert any("evomerge" in x and shape == "/" for x, shape in drawn), drawn   # drawn, and hatched
    summary = frames(at, "winner")[0]
    assert "best evolve" in summary.columns and summary["best evolve"].notna().any()
    # the Evolve page says the same about its champion
    at = goto(at, "Evolve")
    facts = [c.value for c in at.caption if c.value.startswith("Gap closed")]
    assert facts and "● labelled target dev" in facts[0], [c.value for c in at.caption]


def test_the_sweep_selector_reads_done_without_a_reload(app_cache):
    """A browser keeps the label a keyed selectbox showed; the selector's widget must change when a
    sweep's status does, so a finished sweep reads 'done'."""
    store = runner(app_cache).store
    sweep = store.create("sweep", name="sweep live", params={"spec": {"name": "live"}}, status="running")
    at = goto(open_app(), "Sweeps")
    box = [s for s in at.selectbox if s.label == "Sweep"][0]
    assert "live · running" in box.format_func(sweep)
    store.update(sweep, status="done", finished=time.time(), progress=1.0)
    rerun(at)
    after = [s for s in at.selectbox if s.label == "Sweep"][0]
    assert after.value == sweep and "live · done" in after.format_func(sweep)
    assert after.key != box.key
