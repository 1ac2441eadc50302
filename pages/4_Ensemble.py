"""Ensemble: combine the sources' outputs. Once their logits are cached, re-scoring is instant."""
PAGE = {"title": "Ensemble", "icon": ":material/groups:", "order": 4,
        "summary": "Combine the sources' outputs: voting rules or learned fusion."}
import streamlit as st

from dashboard import runs as runs_view
from dashboard import figures, state, widgets
from dashboard.target_text import target_text_picker
from engine.data.target_text import reads_target_text
from engine import tasks
from engine.ensemble import ENSEMBLES
from engine.experiments import Candidate, evaluate_candidate, source_scores
from engine.candidate_runs import submit_candidate
from engine.light_jobs import find_fit_preview, recipe_text, submit_fit_preview
from engine.preflight import Problem, preflight
from engine.runinfo import target_data_use
from engine.store import ACTIVE

st.title("Ensemble")
st.caption("Combine the source models in output space: every source classifies the target's text and "
           "their predictions are fused, by a voting rule or by a fusion fitted on validation data.")
ws = state.require_workspace()

settings, target, sources, weights = widgets.recipe_columns(ws, "ens")
with settings:
    names = ENSEMBLES.names()
    rules = [n for n in names if not ENSEMBLES.get(n).traits.needs_fit]
    learned = [n for n in names if ENSEMBLES.get(n).traits.needs_fit]
    family = st.segmented_control("Kind", ["voting", "learned fusion"], default="voting", key="ens_family") or "voting"
    options = rules if family == "voting" else learned
    default = next((d for d in ("weighted_logits", "learned_weights") if d in options), options[0])
    method = ENSEMBLES.get(widgets.method_picker(ENSEMBLES, options, "Method", f"ens_method_{family}", default=default))
    widgets.method_caption(method)
    if not method.traits.uses_weights and not method.traits.needs_fit:
        st.caption("This rule ignores the weights.")
    values = widgets.param_controls(method, sources, key="ens")
    data_mode, seed, target_text = "target", 0, ""
    if reads_target_text("ensemble", method.traits):
        target_text = target_text_picker(ws, "ens", split="validation")
    elif method.traits.needs_fit:
        c1, c2 = st.columns(2)
        has_val = ws.dataset.has(target, "validation")
        data_mode = c1.selectbox("Fit on validation data of", ["target", "sources"], index=0 if has_val else 1,
                                 key="ens_fit_on", help="the sources' when the target has no labelled data")
        seed = int(c2.number_input("Seed", 0, 2 ** 31 - 1, 0, key="ens_seed"))

cand = Candidate("ensemble", method.name, target, sources, weights, params=values, seed=seed, data_mode=data_mode,
                 target_text=target_text or "")
problems = preflight(ws, cand)  # the engine decides; the page shows
if target_text is None:
    problems.append(Problem("choose the target text file the fit learns on", "data"))
if problems:
    for p in problems:
        st.warning(p.text)
    st.stop()

st.divider()
pairs = tasks.ensemble_pairs(ws, target, sources, fit_on=data_mode if method.traits.needs_fit else "")
missing = tasks.missing_logits(ws, pairs)
if missing:
    active = [r for r in state.store().runs(kind="logits", status=ACTIVE, limit=5)]
    st.info(f"{len(missing)} of {len(pairs)} model outputs are not cached yet. They are computed once "
            "(one forward pass per model and split); after that every change here re-scores instantly.  \n"
            + tasks.describe_pairs(pairs, missing, target))
    if active:
        runs_view.watch(active[0]["id"], key="ens-logits")
    elif st.button("Compute the sources' outputs", type="primary", icon=":material/play_arrow:", key="ens_logits"):
        with state.engine_errors():
            tasks.submit_logits(state.runner(), ws, missing, target)
        st.rerun()
    st.stop()

memo = st.session_state.setdefault("ens_memo", {})
memo_key = recipe_text(cand)
if memo_key not in memo and method.traits.needs_fit:
    # fitting takes seconds to minutes: a light-lane job, its progress shown here, the page never blocks
    fit = find_fit_preview(state.store(), cand)
    if fit is None:
        with state.engine_errors():
            fit = state.store().get(submit_fit_preview(state.runner(), ws, cand))
    row = runs_view.watch(fit["id"], key="ens-fit")
    if row is None or row["status"] in ACTIVE:
        st.stop()
    if row["status"] != "done":
        runs_view.status_line(row)
        if st.button("Fit again", icon=":material/refresh:", key="ens_refit"):
            with state.engine_errors():
                submit_fit_preview(state.runner(), ws, cand)
            st.rerun()
        st.stop()
    memo.clear()  # one entry: the current recipe
    memo[memo_key] = {"metrics": row["metrics"], **{k: row["result"].get(k) for k in
                                                   ("baselines", "seconds", "learned_weights", "scores")}}
elif memo_key not in memo:  # a voting rule on cached logits: instant
    with state.engine_errors(), st.spinner("Scoring…"):
        out = evaluate_candidate(ws, cand)
        scores = source_scores(ws, target, sources)
    memo.clear()  # one entry: the current recipe
    memo[memo_key] = {"metrics": out["metrics"], "baselines": out["baselines"], "seconds": out["seconds"],
                      "learned_weights": out.get("learned_weights"), "scores": scores}
live = memo[memo_key]
run = {"id": "live", "kind": "ensemble", "method": method.name, "target": target, "status": "done",
       "sources": sources, "weights": weights, "params": {**cand.params, "seed": seed, "data_mode": data_mode},
       "metrics": live["metrics"], "result": {"baselines": live["baselines"], "seconds": live["seconds"],
                                              "target_data": target_data_use(cand)}}
st.subheader(f"{method.title} → {target}")
runs_view.result_card(run, extra_bars=[(f"source {s}", a) for s, a in live["scores"].items()])
if live.get("learned_weights"):
    widgets.chart(figures.model_weights_bars(sources, weights, live["learned_weights"],
                                             title="Learned per-model weights vs the prior"), "ens_learned")

# A saved run's message belongs to its recipe: saved runs are kept per recipe, so the next recipe's
# result never shows the previous one's "Saved as run …".
saved_runs = st.session_state.setdefault("ens_saved", {})
if st.button("Save as a run", icon=":material/save:", key="ens_save"):
    with state.engine_errors():
        saved_runs[memo_key] = submit_candidate(state.runner(), ws, cand, export_dir=state.export_dir(),
                                                weighting=state.run_weighting(state.experiment(ws, derive=False)))
        st.session_state["ens_run"] = saved_runs[memo_key]  # the latest saved run
    st.rerun()
saved = saved_runs.get(memo_key)
if saved:
    row = runs_view.watch(saved, key="ens")
    if row and row["status"] == "done":
        st.success(f"Saved as run {row['id']} (test accuracy {row['metrics']['test']['accuracy']:.3f}); "
                   "it is listed on the Compare page.")
        runs_view.send_to_compare(row["id"], "ens_compare")
    elif row:
        runs_view.status_line(row)
