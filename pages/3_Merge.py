"""Merge: sources + weights + a method from the registry → a background job → the result card."""
PAGE = {"title": "Merge", "icon": ":material/merge:", "order": 3,
        "summary": "Merge the sources in parameter space (linear, TIES, DARE, Fisher, …)."}
from pathlib import Path

import streamlit as st

from dashboard import runs as runs_view
from dashboard import experiment as xp
from dashboard import state, widgets
from dashboard.target_text import target_text_picker
from engine.experiments import DATA_MODES, Candidate
from engine.candidate_runs import submit_candidate
from engine.merge import MERGES
from engine.preflight import Problem, preflight
from engine.store import ACTIVE

st.title("Merge")
st.caption("Merge the source models in parameter space into one model for the target, then score it on "
           "the target's validation and test data against the baselines.")
ws = state.require_workspace()

settings, target, sources, weights = widgets.recipe_columns(ws, "merge")
with settings:
    names = MERGES.names()
    method_name = widgets.method_picker(MERGES, names, "Method", "merge_method", default="ties")
    method = MERGES.get(method_name)
    widgets.method_caption(method)
    values = widgets.param_controls(method, sources, key="merge")
    data_mode, examples, seed, target_text = "sources", 64, 0, ""
    extra = st.columns(3)
    if "batches" in method.traits.context:
        data_mode = extra[0].selectbox("Statistics from", DATA_MODES, index=DATA_MODES.index("sources"),
                                       key="merge_data_mode",
                                       help="target: the target's validation data; sources: each source's own "
                                            "training data; both: the two together")
        examples = int(extra[1].number_input("Examples per locale drawn", 1, 100000, 64, key="merge_examples"))
    elif "texts" in method.traits.context:
        target_text = target_text_picker(ws, "merge")
    elif method.traits.needs_data:
        st.caption("Scored on the target's validation split while it chooses.")
    if method.traits.random:
        seed = int(extra[2].number_input("Seed", 0, 2 ** 31 - 1, 0, key="merge_seed"))
    export = st.toggle("Export the merged model (HF folder + recipe + mergekit.yaml)", value=True,
                       key="merge_export")

    cand = Candidate("merge", method.name, target, sources, weights, params=values, seed=seed,
                     data_mode=data_mode, data_examples=examples, target_text=target_text or "")
    export_to, replace = "", False
    if export:  # a chosen folder: never the zoo's, replaced only when the user ticks it
        export_to = st.text_input("Export folder (empty: a new folder per run in the cache)",
                                  key="merge_export_dir").strip()
        folder = Path(export_to).expanduser() if export_to else None
        if (folder is not None and folder.is_dir() and any(folder.iterdir())
                and not any(p.about == "export" for p in preflight(ws, cand, folder, overwrite=True))):
            replace = st.checkbox(f"Replace everything in {folder.resolve()}", key="merge_export_replace")
    problems = preflight(ws, cand, export_path=export_to or None, overwrite=replace)  # the engine decides
    if target_text is None:
        problems.append(Problem("choose the target text file the method learns on", "data"))
    for p in problems:
        st.warning(p.text)
    if st.button("Run merge", type="primary", icon=":material/play_arrow:", disabled=bool(problems),
                 key="merge_run_button"):
        with state.engine_errors():
            st.session_state["merge_run"] = submit_candidate(
                state.runner(), ws, cand, export_dir=state.export_dir() if export else None,
                export_path=export_to or None, overwrite=replace,
                weighting=state.run_weighting(state.experiment(ws, derive=False)))
        st.rerun()

st.divider()
st.subheader("Result")
mine = state.store().runs(kind="merge", target=target, limit=30)  # another target's run is not this one's
if not mine:
    others = len(state.store().runs(kind="merge", limit=1000))
    st.caption(f"No merge for {xp.language(target)} yet."
               + (f" {others} merge(s) for other targets are listed on the Compare page." if others else ""))
    st.stop()
ids = [r["id"] for r in mine]
chosen = st.session_state.get("merge_run")
if chosen not in ids:
    chosen = ids[0]
labels = {r["id"]: runs_view.run_label(r) for r in mine}
run_id = st.selectbox(f"Run (merges for {target})", ids, index=ids.index(chosen), format_func=labels.get,
                      key=f"merge_show_{chosen}")
run = runs_view.watch(run_id, key="merge")
if run is not None and run["method"] in MERGES and MERGES.get(run["method"]).traits.family == "learned":
    runs_view.curve(run_id, "merge", run["status"] in ACTIVE,
                    "Mean prediction entropy on the target's unlabelled text (nats)")
if run is None or run["status"] in ACTIVE:
    st.stop()
st.caption(f"{run['method']} → {run['target']} from " + ", ".join(
    f"{s} ({w:.2f})" for s, w in zip(run["sources"], run["weights"])))
runs_view.result_card(run, extra_bars=runs_view.source_bars(ws, run))
if run["status"] == "done":
    runs_view.send_to_compare(run["id"], "merge_compare")
    tab_export, tab_report = st.tabs(["Export", "Merge report"])
    with tab_export:
        if (run.get("result") or {}).get("export_error"):
            st.warning(run["result"]["export_error"])
        runs_view.export_panel(run)
    with tab_report:
        runs_view.merge_report(run)
