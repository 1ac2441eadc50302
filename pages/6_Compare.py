"""Compare: every candidate against the target's baselines, the zero-shot N×N matrix, exports."""
PAGE = {"title": "Compare", "icon": ":material/leaderboard:", "order": 8,
        "summary": "Every run against honest baselines; the N×N matrix; export."}
import pandas as pd
import streamlit as st

from dashboard import runs as runs_view
from dashboard import figures, state, sweeps, widgets
from engine import tasks
from engine.report import tables
from engine.mlflow_mirror import MlflowMirrorError, log_runs, mlflow_rows
from engine.store import ACTIVE

TARGET_DATA_HELP = ("Target data: ○ none (zero-shot), ◐ unlabelled target text, ● labelled target dev "
                    "(fitted or chosen on it: not zero-shot), ● labelled target train (a model trained on the "
                    "target's own labels: its own model in kind, no transfer gain); bars with target data are hatched.")

st.title("Compare")
st.caption("Every merge, ensemble, evolved champion and training run, scored on its target's held-out test "
           "split, against the best chosen source, the best zero-shot model and the target's own model.")

all_runs = [r for r in state.store().runs(limit=2000) if r["kind"] in tables.COMPARE_KINDS]
pinned = state.store().pinned()
frame = tables.one_per_key(tables.runs_frame(all_runs), keep=pinned)  # a page run = its sweep twin

tab_runs, tab_sweeps, tab_nxn = st.tabs(["Runs", "Sweeps", "Zero-shot matrix (N×N)"])
with tab_runs:
    if frame.empty:
        st.info("No runs yet: build a candidate on the Merge, Ensemble or Evolve page.")
    else:
        f = st.columns(5)
        def choices(col):
            return sorted(str(v) for v in frame[col].dropna().unique())
        targets = f[0].multiselect("Target", choices("target"), key="cmp_target")
        kinds = f[1].multiselect("Kind", choices("kind"), key="cmp_kind")
        methods = f[2].multiselect("Method", choices("method"), key="cmp_method")
        statuses = f[3].multiselect("Status", choices("status"),
                                    default=["done"] if "done" in choices("status") else [], key="cmp_status")
        sort_by = f[4].selectbox("Sort by", ["created", "test_accuracy", "gain_vs_best_source",
                                             "validation_accuracy", "target", "method"], key="cmp_sort")
        view = frame
        for col, chosen in (("target", targets), ("kind", kinds), ("method", methods), ("status", statuses)):
            if chosen:
                view = view[view[col].astype(str).isin(chosen)]
        # pinned runs always show, whatever the filters say (a cancelled search's champion included)
        view = pd.concat([view, frame[frame["id"].isin(pinned) & ~frame["id"].isin(view["id"])]])
        view = view.sort_values(sort_by, ascending=sort_by in ("target", "method"), na_position="last")
        view = view.reset_index(drop=True)
        default_rows = [i for i, rid in enumerate(view["id"]) if rid in pinned]
        table_key = "cmp_table_" + str(abs(hash((tuple(targets), tuple(kinds), tuple(methods),
                                                  tuple(statuses), sort_by, tuple(pinned)))))
        event = st.dataframe(
            view, key=table_key, on_select="rerun", selection_mode="multi-row", hide_index=True,
            selection_default={"selection": {"rows": default_rows}}, width="stretch",
            column_order=[c for c in tables.COLUMNS if c not in ("label", "cell_key")],
            column_config={**{c: st.column_config.NumberColumn(format="%.3f") for c in
                              ("test_accuracy", "validation_accuracy", "test_macro_f1", "gain_vs_best_source",
                               "best_source", "best_zero_shot", "target_model")},
                           "target_data": st.column_config.TextColumn(
                               "target data", help=TARGET_DATA_HELP),
                           "origin": st.column_config.TextColumn(
                               "from", help="page, sweep or sweep (CLI); runs of the same experiment "
                                            "(same content key) are one row")})
        rows = list(event.selection.rows) if event is not None else []
        chosen = view.iloc[rows] if rows else view.head(30)
        c = st.columns([4, 1, 1, 2], vertical_alignment="center")
        c[0].caption(f"{len(view)} runs shown, {len(rows)} selected, {len(pinned)} pinned (always shown)"
                     + ("" if rows else " — charts show the first 30; select rows to narrow them")
                     + ". " + TARGET_DATA_HELP)
        selected_ids = list(view.iloc[rows]["id"]) if rows else []
        if c[1].button("Pin selected", key="cmp_pin", disabled=not selected_ids, type="tertiary",
                       icon=":material/keep:", help="kept across restarts: Compare opens with them selected"):
            for rid in selected_ids:
                state.store().pin(rid)
            st.rerun()
        if c[2].button("Clear pins", key="cmp_unpin", disabled=not pinned, type="tertiary",
                       icon=":material/keep_off:"):
            for rid in pinned:
                state.store().pin(rid, False)
            st.rerun()
        if len(selected_ids) == 1:
            runs_view.send_to_label_curve(state.store().get(selected_ids[0]), "cmp_label_curve", c[3])
        with st.expander("Log selected runs to MLflow", icon=":material/upload:"):
            m = st.columns([3, 1, 2], vertical_alignment="bottom")
            uri = m[0].text_input("MLflow tracking store", "./mlruns", key="cmp_mlflow_uri",
                                  help="a local folder, file:/path or sqlite:///path.db; each run is logged once "
                                       "(params, metrics, curves, recipe.json, mergekit.yaml)")
            with_model = m[1].checkbox("model folder", key="cmp_mlflow_model",
                                       help="also the exported model folder, where the run has one (its full size)")
            if m[2].button("Log selected runs to MLflow", key="cmp_mlflow", disabled=not selected_ids,
                           icon=":material/upload:"):
                try:
                    st.session_state["cmp_mlflow_out"] = log_runs(state.store(), selected_ids, uri, with_model)
                except MlflowMirrorError as exc:
                    st.error(str(exc))
            if logged := st.session_state.get("cmp_mlflow_out"):
                st.caption(f"{len(logged['logged'])} run(s) logged to {logged['uri']} (experiment "
                           f"{logged['experiment']}), {len(logged['already'])} already there, "
                           f"{len(logged['skipped'])} skipped (still running).")
                st.dataframe(pd.DataFrame(mlflow_rows(logged)), hide_index=True, key="cmp_mlflow_table")
        plotted = chosen[chosen["test_accuracy"].notna()]  # any run with a test score, cancelled champions too
        base = tables.baselines_by_target(all_runs)
        figs = figures.compare_bars(plotted, base, title="test accuracy · ")
        per_row = 1 if len(figs) == 1 else 2
        for i in range(0, len(figs), per_row):
            cols = st.columns(per_row)
            for col, (target, fig) in zip(cols, figs[i:i + per_row]):
                widgets.chart(fig, f"cmp_fig_{target}", col)

        st.subheader("Merge vs ensemble")
        summary = tables.summary(view)
        if summary.empty:
            st.caption("Nothing finished in this view.")
        else:
            st.dataframe(summary, hide_index=True, width="stretch",
                         column_config={c: st.column_config.NumberColumn(format="%.3f") for c in summary.columns
                                        if summary[c].dtype.kind == "f"})

        st.subheader("Export")
        out = view.drop(columns=["label", "cell_key"])
        c = st.columns(3)
        c[0].download_button("CSV", out.to_csv(index=False), "runs.csv", "text/csv",
                             icon=":material/download:", key="cmp_csv")
        c[1].download_button("JSON", tables.to_json(out), "runs.json", "application/json",
                             icon=":material/download:", key="cmp_json")
        c[2].download_button("Markdown", tables.markdown(out[[
            "kind", "method", "target", "target_data", "test_accuracy", "validation_accuracy", "gain_vs_best_source",
            "best_source", "best_zero_shot", "target_model", "sources", "origin", "created"]]),
            "runs.md", "text/markdown", icon=":material/download:", key="cmp_md")

with tab_sweeps:
    finished = [r for r in state.store().runs(kind="sweep", limit=100) if r["status"] != "queued"]
    if not finished:
        st.info("No sweep yet: start one on the Sweeps page (or `python -m engine sweep spec.yaml`).")
    else:
        picked = sweeps.pick_sweep(finished, "cmp_sweep_pick")
        sweeps.refresh_when_done(picked)
        sweeps.results_panel(picked, "cmp_sweep")

with tab_nxn:
    ws = state.require_workspace()
    st.caption("Every source model (rows) on every locale's test split (columns); the diagonal is each "
               "model in its own language. Computed once as a job; the logits it caches also make "
               "baselines and ensembles instant.")
    signature = tasks.zoo_signature(ws)
    matches = [r for r in state.store().runs(kind="nxn", limit=50)
               if all(r["params"].get(k) == v for k, v in signature.items())]
    active = [r for r in matches if r["status"] in ACTIVE]
    finished = [r for r in matches if r["status"] == "done"]
    if active:
        runs_view.watch(active[0]["id"], key="nxn")
    elif st.button("Compute the N×N matrix" if not finished else "Recompute", key="nxn_run",
                   type="primary" if not finished else "secondary", icon=":material/grid_on:"):
        with state.engine_errors():
            tasks.submit_nxn(state.runner(), ws)
        st.rerun()
    if finished:
        result = finished[0]["result"]
        matrix = pd.DataFrame(result["matrix"]).T
        widgets.chart(figures.nxn_heatmap(matrix, result.get("metric", "accuracy")), "nxn_fig")
        st.download_button("Matrix as CSV", matrix.to_csv(), "zero_shot.csv", "text/csv", key="nxn_csv",
                           icon=":material/download:")
    elif not active:
        failed = [r for r in matches if r["status"] == "failed"]
        if failed:
            runs_view.status_line(failed[0])
