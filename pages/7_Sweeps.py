"""Sweeps: every target × method (× grid × K × features × weighting) as one resumable job, with the
report that answers "does merging beat ensembling here, and which strategy is best"."""
PAGE = {"title": "Sweeps", "icon": ":material/table_view:", "order": 6,
        "summary": "Run every target × method at once, resumable; win rates, paired tests, a one-click report."}
from pathlib import Path

import streamlit as st

from dashboard import runs as runs_view
from dashboard import state, sweeps
from engine.jobs import EXECUTORS
from engine.store import ACTIVE, STOPPED
from engine.sweep import resume_sweep, submit_sweep
from engine.sweep.spec import expand_cells, load_spec

EXAMPLE = Path(__file__).resolve().parent.parent / "examples" / "demo_sweep.yaml"

st.title("Sweeps")
st.caption("A sweep runs each cell (a merge or ensemble for one target) as its own stored run; cells "
           "already computed — by any sweep — are reused, and a stopped sweep resumes where it was. "
           "Baselines per target come from the zero-shot N×N scores. The same job runs headless with "
           "`python -m engine sweep spec.yaml`.")
ws = state.require_workspace()
history = state.store().runs(kind="sweep", limit=100)

with st.expander("New sweep", expanded=not history, icon=":material/add:"):
    mode = st.segmented_control("Spec", ["form", "YAML"], default="form", key="sw_mode") or "form"
    if mode == "form":
        spec_data = sweeps.spec_form(ws, "sw")
    else:
        if "sw_yaml" not in st.session_state:
            st.session_state["sw_yaml"] = EXAMPLE.read_text() if EXAMPLE.exists() else ""
        uploaded = st.file_uploader("Load a spec file", type=["yaml", "yml", "json"], key="sw_upload")
        if uploaded is not None:
            st.session_state["sw_yaml"] = uploaded.getvalue().decode("utf-8", "replace")
        text = st.text_area("Sweep spec (YAML)", key="sw_yaml", height=320)
        spec_data = text
    spec = None
    try:  # a bad spec is shown where it is written; the rest of the page stays
        spec = load_spec(sweeps.parse_yaml(spec_data) if isinstance(spec_data, str) else spec_data)
        cells = expand_cells(ws, spec)
        stored = sweeps.stored_cells(cells)
        targets = len({c.candidate.target for c in cells})
        st.caption(f"{len(cells)} cells over {targets} target(s); {stored} already stored (reused, not "
                   f"recomputed); {len(cells) - stored} to compute.")
    except Exception as exc:
        spec = None
        st.error(state.message(exc))
    c = st.columns([2, 2, 3])
    executor = c[0].segmented_control("Run on", list(EXECUTORS), default=EXECUTORS[0], key="sw_exec",
                                      help="local: cells one after another in a background thread (default); "
                                           "ray: cells as Ray tasks — a local instance, or a cluster address") or "local"
    address, cpus = None, 2
    if executor == "ray":
        address = c[1].text_input("Ray address (empty: start a local instance)", "", key="sw_address") or None
        cpus = int(c[2].number_input("CPUs of the local instance", 1, 256, 2, key="sw_cpus"))
    if st.button("Start sweep", type="primary", icon=":material/play_arrow:", key="sw_start", disabled=spec is None):
        with state.engine_errors():
            st.session_state["sw_run"] = submit_sweep(state.runner(), ws, spec, executor, address, cpus)
        st.rerun()

if not history:
    st.info("No sweep yet.")
    st.stop()
history = state.store().runs(kind="sweep", limit=100)
run = sweeps.pick_sweep(history, "sw_pick", st.session_state.get("sw_run"))
was_active = run["status"] in ACTIVE


@st.fragment(run_every=runs_view.POLL_S if was_active else None)
def live() -> None:
    row = state.store().get(run["id"])
    if was_active and row["status"] not in ACTIVE:
        st.rerun(scope="app")
    if row["status"] in ACTIVE:
        runs_view.progress_row(row, key="sweep")
    else:
        runs_view.status_line(row)


live()
if run["status"] in STOPPED:
    if st.button("Resume", icon=":material/resume:", key="sw_resume",
                 help="a new sweep run over the same spec: finished cells are linked, only the rest runs"):
        with state.engine_errors():
            st.session_state["sw_run"] = resume_sweep(state.runner(), ws, run["id"])
        st.rerun()
if was_active:
    st.caption("Results so far (cells finished until now); refresh the page for newer ones.")
sweeps.results_panel(run, "sw")
