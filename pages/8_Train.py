"""Train: fine-tune a locale's classifier from the zoo's pretrained base; watch loss and validation
accuracy live; cancel and resume; the result joins the zoo."""
import streamlit as st

from dashboard import runs as runs_view
from dashboard import state, widgets
from engine import figures
from engine.store import ACTIVE
from engine.train import figures as train_figures
from engine.train.finetune import REGISTER_MODES, FinetuneConfig, resumable, resume_finetune, submit_finetune

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
    if frame.empty:
        st.caption("Curves appear after the first step.")
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
if row["status"] == "done":
    test = (row["metrics"].get("test") or {}).get("accuracy")
    val = (row["metrics"].get("validation") or {}).get("accuracy")
    m = st.columns(4)
    m[0].metric("Test accuracy", f"{test:.3f}" if test is not None else "–")
    m[1].metric("Validation accuracy", f"{val:.3f}" if val is not None else "–")
    record = result.get("record") or {}
    m[2].metric("Steps", f"{record.get('steps_done', '–')}")
    m[3].metric("Seconds", f"{result.get('seconds', 0):.1f}")
    st.success(f"Saved {result.get('output')}: {result.get('note', '')}")
    if result.get("registered_as") and st.session_state.get("train_reopened") != run_id:
        st.session_state["train_reopened"] = run_id
        state._open.clear()  # the zoo has a new model: reopen the workspace so every page sees it
    runs_view.send_to_compare(run_id, "train_compare")
if resumable(row) and not state.store().runs(kind="train", parent=run_id, limit=1):
    if st.button("Resume from the last checkpoint", icon=":material/resume:", key="train_resume"):
        with state.engine_errors():
            st.session_state["train_run"] = resume_finetune(state.runner(), ws, run_id)
        st.rerun()
