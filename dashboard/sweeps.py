"""Sweep views: the spec form, the results of one sweep (tables, figures, paired tests) and its
one-click report. Used by the Sweeps page (launch, watch, resume) and the Compare page (results).

Thin over :mod:`engine.sweep.spec`, :mod:`engine.report` and :mod:`engine.report.figures`.
"""
from __future__ import annotations

import io
import zipfile
from pathlib import Path
from typing import Any, Dict, List, Optional

import pandas as pd
import streamlit as st

from engine.report import figures as report_figures
from engine.ensemble import ENSEMBLES
from engine.experiments import WEIGHTINGS
from engine.languages import ALL_FEATURE_SETS
from engine.merge import MERGES
from engine.registry import method_title
from engine.store import ACTIVE
from engine.report import (BASELINE_TITLES, ReportError, baseline_table, findings, headline_table,
                           load_results, paired_tests, win_rate_table)

from . import state
from .experiment import WEIGHTING_TEXT, language
from .widgets import chart

# The issue-7 headline set: the default of a new sweep
DEFAULT_METHODS = ["merge:linear", "merge:ties", "merge:dare_ties", "merge:fisher", "merge:regmean",
                   "ensemble:soft", "ensemble:weighted_logits"]
DATA_AWARE_EXAMPLES = 64


def method_choices() -> List[str]:
    return [f"merge:{n}" for n in MERGES.names()] + [f"ensemble:{n}" for n in ENSEMBLES.names()]


def spec_form(ws, key: str = "sweep") -> Dict[str, Any]:
    """Widgets for a sweep spec; returns it as a plain mapping (validated by the engine on submit)."""
    targets_all = ws.target_locales()
    c = st.columns([3, 1])
    name = c[0].text_input("Name", "demo-headline", key=f"{key}_name")
    seed = c[1].number_input("Seed", 0, 2 ** 31 - 1, 0, key=f"{key}_seed")
    every = st.toggle("All targets", True, key=f"{key}_all",
                      help=f"every locale with test data ({len(targets_all)})")
    targets: Any = "all" if every else st.multiselect("Targets", targets_all, default=targets_all[:3],
                                                      key=f"{key}_targets", format_func=language)
    methods = st.multiselect("Methods", method_choices(), default=DEFAULT_METHODS, key=f"{key}_methods",
                             format_func=lambda c: f"{c.split(':')[0]}: {method_title(c.split(':', 1)[1])}",
                             help="each runs once per target (with its default parameters; use the YAML "
                                  "spec for grids)")
    c = st.columns(3)
    sources = c[0].multiselect("Sources (top-K)", list(range(1, 11)), default=[5], key=f"{key}_k")
    features = c[1].multiselect("URIEL features", list(ALL_FEATURE_SETS), default=["syntax_knn"],
                                key=f"{key}_features")
    weighting = c[2].multiselect("Weighting", list(WEIGHTINGS), default=["uriel"], key=f"{key}_weighting",
                                 format_func=lambda w: WEIGHTING_TEXT.get(w, w))
    equal = st.checkbox("Add the equal-weight merge of the same sources as a baseline cell", True,
                        key=f"{key}_equal")
    spec_methods = []
    for m in methods:
        kind, method = m.split(":", 1)
        item: Dict[str, Any] = {kind: method}
        if kind == "merge" and MERGES.get(method).traits.needs_data:
            item["grid"] = {"examples": [DATA_AWARE_EXAMPLES]}
        spec_methods.append(item)
    return {"name": name, "targets": targets, "sources": sources, "features": features,
            "weighting": weighting, "methods": spec_methods, "seed": int(seed),
            "equal_merge_baseline": bool(equal)}


def parse_yaml(text: str) -> Dict[str, Any]:
    import yaml

    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise ValueError(f"the spec is not valid YAML: {exc}") from None
    if not isinstance(data, dict):
        raise ValueError("the spec must be a YAML mapping (name:, targets:, methods:, ...)")
    return data


# ---- results -------------------------------------------------------------------------------------
@st.cache_data(show_spinner="reading the sweep's cells…", max_entries=16)
def _results(cache_dir: str, run_id: str, stamp: tuple):
    """load_results, cached per sweep until a cell is added or its status changes (``stamp``)."""
    return load_results(state.store(), run_id)


def results(run: dict):
    """The sweep's results, or None (with a caption) when nothing has finished yet."""
    stamp = (run["status"], run.get("progress"), run.get("finished"))
    try:
        return _results(str(state.cache_dir()), run["id"], stamp)
    except ReportError as exc:
        st.caption(state.message(exc))
        return None


def _numbers(frame: pd.DataFrame) -> Dict[str, Any]:
    return {c: st.column_config.NumberColumn(format="%.3f") for c in frame.columns if frame[c].dtype.kind == "f"}


def results_panel(run: dict, key: str) -> None:
    """Everything about one sweep's finished cells: answers, tables, figures, paired tests, report."""
    res = results(run)
    if res is None:
        return
    found = findings(res)
    st.markdown(f"**Which strategy is best?** {found['best_text']}")
    st.markdown(f"**Does merging beat ensembling?** {found['merge_vs_ensemble_text']}")
    st.markdown(f"**At what inference cost?** {found['cost_text']}")
    st.markdown(f"**Recommendation.** {found['recommendation_text']}")

    head = headline_table(res)
    tab_head, tab_heat, tab_wins, tab_params, tab_cost, tab_tests = st.tabs(
        ["Headline", "Method × target", "Win rates", "Parameters", "Cost", "Paired tests"])
    with tab_head:
        st.dataframe(head, hide_index=True, width="stretch", column_config=_numbers(head))
        base = baseline_table(res)
        st.caption("Baselines, mean test accuracy over the sweep's targets: " + ", ".join(
            f"{BASELINE_TITLES.get(b, b)} " + (f"{a:.3f}" if a == a else "not run")
            for b, a in zip(base["baseline"], base["mean_accuracy"]))
            + ". ● = fitted or chosen on labelled target dev data, ◐ = used unlabelled target text "
              "(not zero-shot).")
    with tab_heat:
        figs = report_figures.figures(res)
        chart(figs["accuracy_heatmap"], f"{key}_heat")
    with tab_wins:
        wins = win_rate_table(res)
        chart(figs["win_rates"], f"{key}_wins")
        st.dataframe(wins, hide_index=True, width="stretch", column_config=_numbers(wins))
    with tab_params:
        methods = sorted(res.frame["method"].unique())
        chosen = st.selectbox("Method", ["(all)"] + methods, key=f"{key}_pc_method",
                              help="one method lines its grid parameters up; all shows method and target axes")
        chart(report_figures.parameter_coordinates(res.frame, None if chosen == "(all)" else chosen),
              f"{key}_pc_{chosen}")
    with tab_cost:
        cost = st.segmented_control("Cost", ["latency_ms", "forward_passes"], default="latency_ms",
                                    key=f"{key}_cost") or "latency_ms"
        chart(report_figures.cost_scatter(head, cost), f"{key}_cost_{cost}")
    with tab_tests:
        variants = list(head["variant"])
        if len(variants) < 2:
            st.caption("Paired tests need two variants.")
        else:
            c = st.columns(2)
            a = c[0].selectbox("Variant A", variants, 0, key=f"{key}_va")
            b = c[1].selectbox("Variant B", variants, 1, key=f"{key}_vb")
            if a == b:
                st.caption("Pick two different variants.")
            else:
                tests = paired_tests(res, a, b)
                st.dataframe(tests, hide_index=True, width="stretch", column_config=_numbers(tests))
                st.caption("McNemar on the same test examples: b = A right where B is wrong, c = the reverse; "
                           "a winner is named only where p < 0.05.")
    report_panel(run, key)


def report_dir(run_id: str) -> Path:
    return state.cache_dir() / "reports" / run_id


def report_panel(run: dict, key: str) -> None:
    """One click writes report.md, results.csv/json and the figures as a light-lane job (its
    progress shown here); then they download."""
    from engine.light_jobs import submit_report

    from . import runs as runs_view

    folder = report_dir(run["id"])
    c = st.columns([2, 5])
    job_key = f"{key}_report_job_{run['id']}"
    if c[0].button("Write report" if not (folder / "report.md").exists() else "Rewrite report",
                   icon=":material/description:", key=f"{key}_report",
                   help="Markdown + CSV + JSON + the figures as offline HTML, in " + str(folder)):
        with state.engine_errors():
            st.session_state[job_key] = submit_report(state.runner(), state.store(), run["id"], folder)
    job = runs_view.watch(st.session_state.get(job_key), key=f"{key}_report")
    if job is not None and job["status"] in ACTIVE:
        return
    if job is not None and job["status"] != "done":
        runs_view.status_line(job)
    if not (folder / "report.md").exists():
        return
    c[1].caption(f"Report in `{folder}`")
    d = st.columns(4)
    d[0].download_button("report.md", (folder / "report.md").read_bytes(), "report.md", "text/markdown",
                         key=f"{key}_dl_md", icon=":material/download:")
    d[1].download_button("results.csv", (folder / "results.csv").read_bytes(), "results.csv", "text/csv",
                         key=f"{key}_dl_csv", icon=":material/download:")
    d[2].download_button("results.json", (folder / "results.json").read_bytes(), "results.json",
                         "application/json", key=f"{key}_dl_json", icon=":material/download:")
    d[3].download_button("Everything (.zip)", zip_folder(folder), f"report-{run['id']}.zip", "application/zip",
                         key=f"{key}_dl_zip", icon=":material/folder_zip:")
    with st.expander("report.md"):
        st.markdown((folder / "report.md").read_text(encoding="utf-8"))


def zip_folder(folder: Path) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as z:
        for f in sorted(folder.iterdir()):
            if f.is_file():
                z.write(f, f.name)
    return buf.getvalue()


def sweep_label(run: dict) -> str:
    spec = (run.get("params") or {}).get("spec") or {}
    total = (run.get("result") or {}).get("cells_total")
    cells = f" · {total} cells" if total else ""
    return f"{spec.get('name', run['id'])} · {run['status']}{cells} · {run['id']}"


def pick_sweep(runs: List[dict], key: str, preferred: Optional[str] = None) -> Optional[dict]:
    """The sweep selector. Its labels carry each sweep's status, and a browser keeps showing the label
    a keyed widget had when it was chosen; so the widget's key follows the statuses (a finished
    sweep gets a fresh widget reading 'done') and the choice is remembered apart."""
    if not runs:
        return None
    ids = [r["id"] for r in runs]
    remembered = st.session_state.get(f"{key}_chosen")
    if preferred in ids and preferred != st.session_state.get(f"{key}_preferred"):
        remembered = preferred  # a newly started sweep is shown first
    st.session_state[f"{key}_preferred"] = preferred
    index = ids.index(remembered) if remembered in ids else 0
    by_id = {r["id"]: r for r in runs}
    statuses = "".join(r["status"][0] for r in runs)
    chosen = st.selectbox("Sweep", ids, index=index, format_func=lambda i: sweep_label(by_id[i]),
                          key=f"{key}_{statuses}")
    st.session_state[f"{key}_chosen"] = chosen
    return by_id[chosen]


def refresh_when_done(run: Optional[dict]) -> None:
    """While the chosen sweep runs, poll it and rerun the page when it ends (its label and results
    then read 'done' without a reload)."""
    if not run or run["status"] not in ACTIVE:
        return

    @st.fragment(run_every=1.0)
    def poll() -> None:
        if state.store().get(run["id"])["status"] not in ACTIVE:
            st.rerun(scope="app")
        st.caption(f"Sweep {run['id']} is {run['status']}; results so far.")

    poll()


def stored_cells(cells) -> int:
    """How many of a spec's cells are already stored as done (they will be reused)."""
    from engine.sweep import find_cells

    return len(find_cells(state.store(), [c.key for c in cells]))
