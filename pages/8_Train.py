"""Train: fine-tune a locale's classifier from the zoo's pretrained base; watch loss and validation
accuracy live; cancel and resume; the result joins the zoo."""
PAGE = {"title": "Train", "icon": ":material/model_training:", "order": 7,
        "summary": "Fine-tune a locale from the pretrained base; the new model joins the zoo."}
import streamlit as st

from dashboard import runs as runs_view
from dashboard import figures, state, train_figures, widgets
from engine.store import ACTIVE
from engine.merge import MERGES
from engine.train.labels import LabelCurveConfig, is_fused_run, submit_label_curve
from engine.train.finetune import REGISTER_MODES, FinetuneConfig, resumable, resume_finetune, submit_finetune
from engine.train.periodic import PeriodicConfig, periodic_resumable, resume_periodic, submit_periodic

st.title("Train")
st.caption("Fine-tune one locale's classifier from the zoo's pretrained base on its train split. Early "
           "stopping watches the validation (dev) split only; the test split is scored once at the end. "
           "The model is saved as a new folder in the zoo and added to it, ready as a source or as the "
           "locale's own-model baseline.")
ws = state.require_workspace()
history = state.store().runs(kind="train", limit=50)
trainable = [l for l in ws.dataset.locales if ws.dataset.has(l, "train")]

with st.expander("Fine-tune a locale", expanded=not history, icon=":material/add:"):
    if not trainable:
        st.warning(f"The dataset '{ws.dataset.name}' has no train split for any locale: nothing to train on.")
    else:
        c = st.columns([2, 3, 2])
        locale = c[0].selectbox("Locale (train split)", trainable, key="train_locale")
        name = c[1].text_input("New model folder (empty: ft_<locale>_<time>)", "", key="train_name",
                               help=f"created in {ws.zoo.root}; an existing folder is never replaced")
        register = c[2].selectbox(
            "Add to the zoo", REGISTER_MODES, key="train_register",
            format_func={"auto": "yes, unless it has a model for the locale", "replace": "yes, as the locale's model",
                         "no": "no, only save the folder"}.get)
        c = st.columns(4)
        steps = c[0].number_input("Steps (0: use epochs)", 0, 1_000_000, 80, key="train_steps")
        epochs = c[1].number_input("Epochs (when steps is 0)", 0.0, 1000.0, 0.0, step=0.5, key="train_epochs")
        batch = c[2].number_input("Batch size", 1, 4096, 32, key="train_batch")
        lr = c[3].number_input("Learning rate", 1e-7, 1.0, 4e-4, format="%g", key="train_lr")
        c = st.columns(5)
        warmup = c[0].number_input("Warm-up steps (-1: 10%)", -1, 1_000_000, -1, key="train_warmup")
        seed = c[1].number_input("Seed", 0, 2 ** 31 - 1, 0, key="train_seed")
        eval_every = c[2].number_input("Validate every (0: 10×)", 0, 1_000_000, 0, key="train_eval_every")
        patience = c[3].number_input("Early-stopping patience (0: off)", 0, 1000, 0, key="train_patience",
                                     help="stop after this many validations without gain, keeping the best weights")
        freeze = c[4].toggle("Freeze embeddings", False, key="train_freeze")
        if st.button("Start training", type="primary", icon=":material/play_arrow:", key="train_start"):
            config = FinetuneConfig(locale=locale, name=name.strip(), lr=float(lr), steps=int(steps),
                                    epochs=float(epochs), batch_size=int(batch), warmup=int(warmup),
                                    freeze_embeddings=bool(freeze), seed=int(seed), eval_every=int(eval_every),
                                    patience=int(patience), register=register)
            with state.engine_errors():
                st.session_state["train_run"] = submit_finetune(state.runner(), ws, config)
            st.rerun()

with st.expander("Train sources together, merging every N steps (for a target)", icon=":material/merge:"):
    st.caption("K source locales train from the base at once; every N steps their weights are merged and the merge "
               "goes back into each. The target is scored on its dev split after every merge, against the post-hoc "
               "merge of the same sources trained apart for the same steps; the final merge is scored once on test.")
    targets = [l for l in ws.target_locales() if ws.dataset.has(l, "validation")]
    c = st.columns([2, 4, 2])
    p_target = c[0].selectbox("Target", targets, key="pm_target")
    p_sources = c[1].multiselect("Sources (empty: URIEL top-k)", [l for l in trainable if l != p_target],
                                 key=f"pm_sources_{p_target}")
    p_weighting = c[2].segmented_control("Weights", ["uriel", "equal"], default="uriel", key="pm_weighting") or "uriel"
    c = st.columns(5)
    names = [m.name for m in MERGES if not m.traits.needs_data]
    p_method = c[0].selectbox("Merge method", names, index=names.index("linear"), key="pm_method")
    p_steps = c[1].number_input("Steps per source", 1, 1_000_000, 60, key="pm_steps")
    p_every = c[2].number_input("Merge every N steps", 1, 1_000_000, 20, key="pm_every")
    p_blend = c[3].number_input("Blend (1: replace)", 0.01, 1.0, 1.0, key="pm_blend")
    p_top_k = c[4].number_input("Top-k (URIEL)", 1, 20, 3, key="pm_top_k")
    c = st.columns(6)
    p_adaptive = c[0].toggle("Adaptive interval", False, key="pm_adaptive",
                             help="double the interval after a merge that did not raise the target's dev accuracy")
    p_plateau = c[1].number_input("Plateau trigger (0: off)", 0, 100, 0, key="pm_plateau",
                                  help="merge when a would-be merge's dev accuracy has not improved for this many checks")
    p_conv = c[2].number_input("Convergence threshold", 0.0, 1.0, 0.0, format="%g", key="pm_convergence")
    p_batch = c[3].number_input("Batch size", 1, 4096, 32, key="pm_batch")
    p_lr = c[4].number_input("Learning rate", 1e-7, 1.0, 4e-4, format="%g", key="pm_lr")
    p_seed = c[5].number_input("Seed", 0, 2 ** 31 - 1, 0, key="pm_seed")
    p_baseline = st.toggle("Also train the sources apart (post-hoc merge baseline; 2× the training)", True,
                           key="pm_baseline")
    if st.button("Start training with merges", type="primary", icon=":material/play_arrow:", key="pm_start",
                 disabled=not targets):
        config = PeriodicConfig(target=p_target, sources=list(p_sources), top_k=int(p_top_k), weighting=p_weighting,
                                method=p_method, steps=int(p_steps), merge_every=int(p_every), adaptive=bool(p_adaptive),
                                plateau=int(p_plateau), convergence=float(p_conv), blend=float(p_blend), lr=float(p_lr),
                                batch_size=int(p_batch), seed=int(p_seed), baseline=bool(p_baseline))
        with state.engine_errors():
            st.session_state["train_run"] = submit_periodic(state.runner(), ws, config)
        st.rerun()

from_compare = st.session_state.pop(runs_view.LABEL_CURVE_RUN, None)  # "What is it worth…" on Compare
with st.expander("What a merge is worth in target labels", icon=":material/stacked_line_chart:",
                 expanded=from_compare is not None):
    st.caption("Fine-tune the base and a fused model on n = 0, 8, 16, … labelled target examples (nested draws of "
               "the target's train split) and score both on its test split: the horizontal distance between the "
               "curves is the number of target labels the merge saves.")
    fused_runs = [r for r in state.store().runs(status=["done"], limit=200) if is_fused_run(r)]
    if from_compare is not None and from_compare not in {r["id"] for r in fused_runs}:
        fused_runs.insert(0, state.store().get(from_compare))  # older than the 200 listed
    if from_compare is not None:
        st.session_state["lc_fused"] = from_compare  # preselected in the picker below
    if not fused_runs:
        st.caption("No finished merge (or periodic-merge training) run yet to start from.")
    else:
        c = st.columns([4, 3, 1, 1])
        fused_id = c[0].selectbox("Fused model (a finished run)", [r["id"] for r in fused_runs], key="lc_fused",
                                  format_func={r["id"]: runs_view.run_label(r) for r in fused_runs}.get)
        ns_text = c[1].text_input("n (labels)", "0, 8, 16, 32, 64, 128", key="lc_ns")
        lc_steps = c[2].number_input("Steps", 1, 100_000, 30, key="lc_steps")
        lc_batch = c[3].number_input("Batch", 1, 4096, 16, key="lc_batch")
        fused_row = next(r for r in fused_runs if r["id"] == fused_id)
        if st.button(f"Measure for {fused_row.get('target')}", icon=":material/play_arrow:", key="lc_start"):
            with state.engine_errors():
                ns = [int(x) for x in ns_text.replace(",", " ").split()]
                config = LabelCurveConfig(target=fused_row["target"], fused=fused_id, ns=ns, steps=int(lc_steps),
                                          batch_size=int(lc_batch))
                st.session_state["train_run"] = submit_label_curve(state.runner(), ws, config)
            st.rerun()

if not history:
    st.info("No training run yet.")
    st.stop()
history = state.store().runs(kind="train", limit=50)
ids = [r["id"] for r in history]
chosen = st.session_state.get("train_run")
chosen = chosen if chosen in ids else ids[0]
labels = {r["id"]: runs_view.run_label(r) for r in history}
run_id = st.selectbox("Run", ids, index=ids.index(chosen), format_func=labels.get, key=f"train_show_{chosen}")
was_active = state.store().get(run_id)["status"] in ACTIVE


@st.fragment(run_every=runs_view.POLL_S if was_active else None)
def live_panel() -> None:
    """Progress, ETA, cancel and the curves, redrawn from the store every second while it runs."""
    row = state.store().get(run_id)
    if was_active and row["status"] not in ACTIVE:
        st.rerun(scope="app")
    if row["status"] in ACTIVE:
        runs_view.progress_row(row, key="train")
    else:
        runs_view.status_line(row)
    frame = figures.series_frame(state.store().series(run_id))
    curve = (row.get("result") or {}).get("curve")
    if not curve and row.get("method") == "label-curve" and {"base_test_accuracy", "fused_test_accuracy"} <= set(frame):
        done = frame[["base_test_accuracy", "fused_test_accuracy"]].dropna()  # the points measured so far
        curve = [{"n": int(n), "base": b, "fused": f} for n, (b, f) in done.iterrows()]
    if curve:
        widgets.chart(train_figures.label_curve(curve), "train_labels")
        saved = (row.get("result") or {}).get("labels_saved")
        if row["status"] == "done":
            st.caption("The base needs " + (f"{saved} target labels" if saved is not None else
                                            f"more than {row['result'].get('max_n')} target labels")
                       + " to match the fused model with none.")
        return
    if frame.empty or row.get("method") == "label-curve":
        st.caption("Curves appear after the first step (a label curve: after its first n).")
        return
    left, right = st.columns(2)
    widgets.chart(train_figures.loss_curves(frame), "train_loss", left)
    if any(c in frame for c in ("validation_accuracy", "merged_dev_accuracy")):
        widgets.chart(train_figures.accuracy_curves(frame), "train_accuracy", right)
    else:
        right.caption("No validation split for this locale: no accuracy curve.")


live_panel()

row = state.store().get(run_id)
result = row.get("result") or {}
if row["status"] == "done" and row.get("method") != "label-curve":
    test = (row["metrics"].get("test") or {}).get("accuracy")
    val = (row["metrics"].get("validation") or {}).get("accuracy")
    m = st.columns(4)
    m[0].metric("Test accuracy", f"{test:.3f}" if test is not None else "–")
    m[1].metric("Validation accuracy", f"{val:.3f}" if val is not None else "–")
    record = result.get("record") or {}
    m[2].metric("Steps", f"{record.get('steps_done', result.get('steps_done', '–'))}")
    m[3].metric("Seconds", f"{result.get('seconds', 0):.1f}")
    if row.get("method") == "periodic-merge":
        posthoc = (result.get("posthoc") or {}).get("accuracy")
        st.success(f"{len(result.get('merges') or [])} merges; merged weights in {result.get('merged')}. "
                   + (f"Post-hoc merge of the sources trained apart: test accuracy {posthoc:.3f}." if posthoc is not None
                      else "") + (f" Stopped: {result['stopped']}." if result.get("stopped") else ""))
    else:
        st.success(f"Saved {result.get('output')}: {result.get('note', '')}")
    if result.get("registered_as") and st.session_state.get("train_reopened") != run_id:
        st.session_state["train_reopened"] = run_id
        state._open.clear()  # the zoo has a new model: reopen the workspace so every page sees it
    runs_view.send_to_compare(run_id, "train_compare")
can_resume = resumable(row) or periodic_resumable(row)
if can_resume and not state.store().runs(kind="train", parent=run_id, limit=1):
    if st.button("Resume from the last checkpoint", icon=":material/resume:", key="train_resume"):
        resume = resume_periodic if row.get("method") == "periodic-merge" else resume_finetune
        with state.engine_errors():
            st.session_state["train_run"] = resume(state.runner(), ws, run_id)
        st.rerun()
