"""Live job progress (fragments that poll the store) and the result card of a finished candidate."""
from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Dict, List, Optional

import streamlit as st

from engine import latency
from engine.progress import format_seconds
from engine.registry import method_title
from engine.store import ACTIVE

from . import figures, state
from .navigation import page_path
from .widgets import chart

POLL_S = 1.0
STATUS_ICON = {"queued": "⏳", "running": "▶️", "done": "✅", "failed": "❌", "cancelled": "⏹️",
               "interrupted": "⚠️"}


def progress_text(run: dict) -> str:
    pct = 100 * float(run.get("progress") or 0)
    eta = run.get("eta_s")
    eta_text = f" · ETA {format_seconds(eta)}" if run["status"] == "running" and eta is not None else ""
    elapsed = ""
    if run.get("started"):
        elapsed = f" · {format_seconds(time.time() - run['started'])} elapsed"
    msg = run.get("message") or run["status"]
    return f"{run.get('name') or run['kind']} — {pct:.0f}%{eta_text}{elapsed} · {msg}"


def progress_row(run: dict, cancel: bool = True, key: str = "", compact: bool = False) -> None:
    """One active run: a progress bar with ETA and a cancel button (below it when ``compact``)."""
    if compact:
        bar = button = st.container()
    else:
        bar, button = st.columns([6, 1], vertical_alignment="center")
    bar.progress(min(1.0, float(run.get("progress") or 0)), text=progress_text(run))
    if cancel and button.button("Cancel", key=f"cancel-{key}-{run['id']}", icon=":material/stop_circle:",
                                type="tertiary" if compact else "secondary"):
        if not state.runner().cancel(run["id"]):
            st.warning("this run is not active in this server process")


def watch(run_id: Optional[str], key: str) -> Optional[dict]:
    """Shows a run's live progress while it is active (polling the store, the page never blocks)
    and reruns the whole page once it ends, so the caller draws the result. Returns the run row."""
    if not run_id:
        return None
    try:
        run = state.store().get(run_id)
    except KeyError:
        return None
    if run["status"] not in ACTIVE:
        return run

    @st.fragment(run_every=POLL_S)
    def live() -> None:
        current = state.store().get(run_id)
        if current["status"] not in ACTIVE:
            st.rerun(scope="app")
        progress_row(current, key=key)

    live()
    return run


def curve(run_id: str, key: str, active: bool, title: str = "") -> None:
    """A run's logged curves (store series, e.g. AdaMerging's entropy per step): redrawn every
    second while the run is active, so the loss is watched as it falls."""
    import plotly.graph_objects as go

    def draw() -> None:
        frame = figures.series_frame(state.store().series(run_id))
        if frame.empty:
            st.caption("The curve appears after the first step.")
            return
        fig = go.Figure([go.Scatter(x=frame.index, y=frame[c], name=str(c), mode="lines") for c in frame])
        fig.update_layout(title=title, xaxis_title="step", height=300, margin=dict(t=40, b=30))
        chart(fig, f"{key}_curve_{run_id}")

    if active:
        st.fragment(run_every=POLL_S)(draw)()
    else:
        draw()


def active_jobs(where=None, key: str = "jobs", compact: bool = False) -> None:
    """Every active run of this cache folder, refreshed every second (idle: every 5 s)."""
    busy = bool(state.store().runs(status=ACTIVE, limit=1))

    @st.fragment(run_every=POLL_S if busy else 5.0)
    def live() -> None:
        runs = state.store().runs(status=ACTIVE, limit=20)
        if not runs:
            st.caption("No jobs running.")
            if busy:
                st.rerun(scope="app")
            return
        for run in runs:
            progress_row(run, key=key, compact=compact)

    with where or st.container():
        live()


def send_to_compare(run_id: str, key: str, where=None) -> None:
    """A button that pins the run (kept in the store across restarts) and opens Compare with it
    selected."""
    if (where or st).button("Send to Compare", icon=":material/leaderboard:", key=key,
                            help="pin this run: Compare opens with the pinned runs selected"):
        state.store().pin(run_id)
        st.switch_page(page_path("Compare"))


LABEL_CURVE_RUN = "lc_preselect"  # the fused run the Train page's label-curve expander opens with


def send_to_label_curve(run: dict, key: str, where=None) -> None:
    """For one finished merge (or periodic-merge) run: a button that opens the Train page with the
    run chosen in "What a merge is worth in target labels"."""
    from engine.train.labels import is_fused_run

    if is_fused_run(run) and (where or st).button(
            "What is it worth in target labels?", icon=":material/stacked_line_chart:", key=key,
            help="measure how many labelled target examples the base needs to match this fused model"):
        st.session_state[LABEL_CURVE_RUN] = run["id"]
        st.switch_page(page_path("Train"))


def status_line(run: dict) -> None:
    """A finished run's outcome: error text for failures, a warning for cancelled/interrupted."""
    if run["status"] == "failed":
        st.error(f"The run failed: {state.run_error(run)}")
    elif run["status"] in ("cancelled", "interrupted"):
        st.warning(f"The run was {run['status']}: {run.get('message', '')}")


def baselines_of(run: dict) -> Dict[str, dict]:
    return (run.get("result") or {}).get("baselines") or {}


def belongs_to(run: dict) -> str:
    """'TIES for de-DE (German) from nl-NL 0.37, en-US 0.34': which experiment a result is of."""
    from .experiment import language, sources_text

    sources = list(zip(run.get("sources") or [], run.get("weights") or []))
    return (f"**{method_title(run.get('method') or run['kind'])}** for **{language(run.get('target'))}** from "
            + sources_text(sources))


def result_card(run: dict, extra_bars: Optional[List[tuple]] = None) -> None:
    """A candidate's test accuracy against the target's baselines, validation vs test, timings."""
    st.markdown(belongs_to(run))
    status_line(run)
    if run["status"] != "done":
        return
    metrics = run.get("metrics") or {}
    test, val = metrics.get("test", {}), metrics.get("validation", {})
    base = baselines_of(run)
    best_source = (base.get("best_source") or {}).get("accuracy")
    cols = st.columns(5)
    acc = test.get("accuracy")
    cols[0].metric("Test accuracy", f"{acc:.3f}" if acc is not None else "–",
                   delta=f"{acc - best_source:+.3f} vs best source" if acc is not None and best_source is not None else None)
    cols[1].metric("Validation accuracy", f"{val['accuracy']:.3f}" if "accuracy" in val else "–")
    cols[2].metric("Test macro-F1", f"{test['macro_f1']:.3f}" if "macro_f1" in test else "–")
    cols[3].metric("Latency / example", f"{test['latency_ms']:.2f} ms" if "latency_ms" in test else "–",
                   help=latency.describe(test) or "timed during the scoring pass (older run)")
    if latency.describe(test):
        cols[3].caption(latency.describe(test))
    secs = (run.get("result") or {}).get("seconds")
    cols[4].metric("Build + evaluation", f"{secs:.1f} s" if secs is not None else "–")
    left, right = st.columns([3, 2])
    bars = [(f"{run['kind']}: {run.get('method')}", acc if acc is not None else 0.0)]
    bars += list(extra_bars or [])
    colours = [figures.CANDIDATE] + [figures.SECONDARY] * (len(bars) - 1)
    chart(figures.accuracy_bars(bars, base, title=f"{run.get('target')}: test accuracy vs baselines",
                                colours=colours), f"acc-{run['id']}", left)
    if test and val:
        chart(figures.split_bars(metrics), f"split-{run['id']}", right)
    card_facts(run)
    with st.expander("All metrics"):
        st.dataframe(metrics_table(metrics), width="stretch")


GAP = "gap closed (best source → own model)"
GAP_HELP = ("(test accuracy − best source) / (target's own model − best source): 0 = no better than "
            "the best chosen source, 1 = as good as the target's own model. The sweep report uses the same "
            "formula with the equal-weight merge as the baseline.")


def card_facts(run: dict) -> None:
    """What a reader needs to trust the number: how much of the gap it closes, which target data it
    saw before the test, and its settings as a readable table."""
    from engine.runinfo import gap_closed_vs, run_target_data, target_data_text

    from engine.report.tables import param_rows

    acc = ((run.get("metrics") or {}).get("test") or {}).get("accuracy")
    gap = gap_closed_vs(acc, baselines_of(run))
    use = run_target_data(run)
    left, right = st.columns([2, 3])
    left.metric(GAP.capitalize(), f"{100 * gap:.0f} %" if gap is not None else "–",
                help=GAP_HELP + ("" if gap is not None else " Undefined here: the own model is not better "
                                 "than the best source, or a baseline is missing."))
    left.metric("Target data used", target_data_text(use),
                help="what the recipe saw of the target language before the test: none (zero-shot), "
                     "unlabelled target text, or labelled target dev data")
    if use["target"] == "labelled target dev":
        left.caption("Fitted or chosen on the target's labelled dev data: not a zero-shot result.")
    elif use["target"] == "labelled target train":
        left.caption("Trained on the target's own labelled train data: the target's own model in kind, no transfer.")
    table = param_rows(run)
    if not table.empty:
        right.markdown("**Settings**")
        right.dataframe(table, hide_index=True, width="stretch")


def champion_facts(run: dict, accuracy: Optional[float], base: Dict[str, dict]) -> None:
    """An evolution's champion, like a result card: gap closed and the target data it was chosen on."""
    from engine.runinfo import gap_closed_vs, run_target_data, target_data_text

    gap = gap_closed_vs(accuracy, base)
    st.caption(f"{GAP.capitalize()}: " + (f"{100 * gap:.0f} %" if gap is not None else "–")
               + f" · target data used: {target_data_text(run_target_data(run))} (the fitness is measured "
                 "on it: not a zero-shot result)", help=GAP_HELP)


def merge_report(run: dict) -> None:
    """Which treatment each group of tensors got (how many, where in the model, what it means)."""
    import pandas as pd

    from engine.merge.run import treatment_meaning

    report = (run.get("result") or {}).get("merge_report") or {}
    groups = report.get("groups") or [{"treatment": t, "tensors": n, "where": "", "meaning": treatment_meaning(t)}
                                      for t, n in (report.get("counts") or {}).items()]
    if groups:
        total = sum(g["tensors"] for g in groups)
        st.caption(f"{total} tensors merged with {report.get('method', run.get('method'))}"
                   + (f" in {report['seconds']:.2f} s" if report.get("seconds") is not None else "")
                   + "; each row is one treatment:")
        st.dataframe(pd.DataFrame(groups, columns=["treatment", "tensors", "where", "meaning"]),
                     hide_index=True, width="stretch",
                     column_config={"meaning": st.column_config.TextColumn(width="large")})
    for note in report.get("notes") or (run.get("result") or {}).get("merge_notes") or []:
        st.caption(f"ℹ️ {note}")
    if not report:
        st.caption("No report recorded.")


def metrics_table(metrics: Dict[str, Dict[str, float]]):
    import pandas as pd

    return pd.DataFrame(metrics).rename_axis("metric")


def export_panel(run: dict) -> None:
    """Where the merged model was written, its recipe and mergekit config, as downloads."""
    result = run.get("result") or {}
    folder = result.get("export")
    if not folder:
        st.caption("This run was not exported.")
        return
    path = Path(folder)
    st.markdown(f"**Exported Hugging Face folder:** `{path}`")
    st.caption("Loads with `AutoModelForSequenceClassification.from_pretrained(path)`.")
    recipe, yaml = path / "recipe.json", path / "mergekit.yaml"
    cols = st.columns(2)
    if recipe.is_file():
        text = recipe.read_text(encoding="utf-8")
        cols[0].download_button("recipe.json", text, file_name=f"{run['id']}-recipe.json",
                                mime="application/json", icon=":material/download:", key=f"dl-recipe-{run['id']}")
        with st.expander("recipe.json"):
            st.json(json.loads(text), expanded=1)
    if yaml.is_file():
        text = yaml.read_text(encoding="utf-8")
        cols[1].download_button("mergekit.yaml", text, file_name=f"{run['id']}-mergekit.yaml",
                                mime="text/yaml", icon=":material/download:", key=f"dl-yaml-{run['id']}")
        with st.expander("mergekit.yaml"):
            st.code(text, language="yaml")
    elif recipe.is_file():
        note = json.loads(recipe.read_text(encoding="utf-8")).get("mergekit_note")
        if note:
            st.caption(f"No mergekit.yaml: {note}.")


def run_label(run: dict) -> str:
    acc = ((run.get("metrics") or {}).get("test") or {}).get("accuracy")
    score = f" · test {acc:.3f}" if acc is not None else ""
    when = time.strftime("%H:%M:%S", time.localtime(run["created"]))
    name = method_title(run["method"]) if run.get("method") else run["kind"]
    return f"{STATUS_ICON.get(run['status'], '')} {when} {name} → {run.get('target')}{score}"


def demo_builder() -> None:
    """The demo zoo is built offline, as a background job, from packages already installed."""
    from engine.data.demo import DEFAULT_LOCALES
    from engine.demo.build import SIZES, estimate_minutes
    from engine.workspace import default_demo_dir

    from engine import tasks

    active = state.store().runs(kind="demo", status=ACTIVE, limit=1)
    with st.container(border=True):
        st.markdown("**Build the demo zoo**: a multilingual base encoder (multilingual-e5-small, trimmed) "
                    "and one intent classifier per locale, fine-tuned here, offline, into "
                    f"`{default_demo_dir()}`.")
        if active:
            watch(active[0]["id"], key="demo")
            return
        size = st.segmented_control("Size", ["tiny", "default"], default="default", key="demo_size") or "default"
        n = len(SIZES[size].locales or DEFAULT_LOCALES)
        st.caption(f"{size}: {n} locales, about {estimate_minutes(size, n)} min on 2 CPU cores. "
                   "The page stays usable while it builds; an interrupted build resumes.")
        if st.button("Build the demo zoo", type="primary", icon=":material/construction:", key="demo_build"):
            with state.engine_errors():
                st.session_state["demo_run"] = tasks.submit_demo_build(state.runner(), default_demo_dir(), size)
            st.rerun()
    if st.session_state.get("demo_run"):
        status_line(state.store().get(st.session_state["demo_run"]))


def source_bars(ws, run: dict) -> List[tuple]:
    """Each chosen source's own test accuracy on the run's target, when cached (no forward pass)."""
    from engine.experiments import source_scores

    from engine import tasks

    try:
        if not run.get("sources") or not all(tasks.has_logits(ws, s, run["target"], "test") for s in run["sources"]):
            return []
        return [(f"source {s}", a) for s, a in source_scores(ws, run["target"], run["sources"]).items()]
    except Exception:  # a run from another zoo: no source bars, the card still shows
        return []
