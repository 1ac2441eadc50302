"""Entry point: `streamlit run app.py`. The navigation, a sidebar with the workspace and running
jobs, and the overview page (what is loaded, what runs, recent results, where to start)."""
from __future__ import annotations

import time

import streamlit as st

from dashboard import runs as runs_view
from dashboard import state
from dashboard.navigation import discover
from dashboard.widgets import params_text
from engine.store import ACTIVE

st.set_page_config(page_title="Cross-lingual fusion", page_icon=":material/merge_type:", layout="wide")

# The pages declare themselves (title, icon, order, summary) in pages/*.py: see dashboard/navigation.py.
STEPS = discover()


def overview() -> None:
    st.title("Cross-lingual model fusion")
    st.caption("One fine-tuned classifier per language → a good model for a language with little data of its own.")
    ws = state.workspace()
    left, right = st.columns([3, 2], gap="large")
    with left:
        st.subheader("What is loaded")
        if ws is None:
            st.error(state.workspace_error())
            if not state.settings().zoo and not state.demo_built():
                runs_view.demo_builder()
        else:
            d = ws.zoo.describe()
            c = st.columns(4)
            c[0].metric("Models", len(d["locales"]))
            c[1].metric("Labels", len(d["labels"]))
            c[2].metric("Parameters / model", params_text(d["parameters"]))
            c[3].metric("Target locales", len(ws.target_locales()))
            st.markdown(f"**Zoo** `{d['name']}` at `{d['root']}` · **base** "
                        f"{'`' + d['base'] + '`' if d['base'] else 'none'} · **data** {ws.dataset.name} · "
                        f"**device** `{ws.evaluator.device}`")
            st.caption("Locales: " + ", ".join(d["locales"]))
            for note in ws.notes:
                st.info(note)
    with right:
        st.subheader("Jobs")
        runs_view.active_jobs(key="overview")
    st.subheader("Recent runs")
    recent = [r for r in state.store().runs(limit=12) if r["status"] not in ACTIVE]
    if recent:
        st.dataframe([{"when": time.strftime("%m-%d %H:%M", time.localtime(r["created"])),
                       "kind": r["kind"], "method": r.get("method"), "target": r.get("target"),
                       "status": r["status"],
                       "test accuracy": ((r.get("metrics") or {}).get("test") or {}).get("accuracy"),
                       "message": r.get("message")} for r in recent],
                     width="stretch", hide_index=True,
                     column_config={"test accuracy": st.column_config.NumberColumn(format="%.3f")})
    else:
        st.caption("No runs yet.")
    st.subheader("Where to start")
    cols = st.columns(3)
    for i, step in enumerate(STEPS):
        with cols[i % 3].container(border=True):
            st.page_link(step.path, label=f"{i + 1}. {step.title}", icon=step.icon)
            st.caption(step.summary)


def experiment_panel(ws) -> None:
    """The current experiment, on every page: its target (changeable here), sources and settings."""
    from dashboard import experiment as xp
    from dashboard import widgets
    from engine import tasks

    st.markdown("**Current experiment**")
    if not ws.target_locales():
        st.caption("no target: the dataset has no test split")
        return
    widgets.target_picker(ws, "sidebar", label="Target")
    exp = state.experiment(ws, derive=tasks.uriel_ready())
    k = exp.k_used(len(ws.zoo.locales) - 1)
    st.caption(f"Sources: {xp.sources_text(exp.weights) if exp.weights else 'chosen on the Similarity page'}  \n"
               f"URIEL {exp.features} · top-{k} · Sinkhorn {exp.sinkhorn_iters} · weights "
               f"{exp.origin_text().split(' (')[0]}")


def sidebar() -> None:
    with st.sidebar:
        ws = state.workspace()
        if ws is not None:
            st.caption(f"**{ws.zoo.name}** · {len(ws.zoo.locales)} models · {ws.dataset.name} · "
                       f"{ws.evaluator.device}")
            experiment_panel(ws)
        else:
            st.caption("No workspace open")
        st.divider()
        runs_view.active_jobs(key="sidebar", compact=True)


pages = [st.Page(overview, title="Overview", icon=":material/home:", default=True)]
pages += [st.Page(step.path, title=step.title, icon=step.icon) for step in STEPS]
page = st.navigation(pages)
sidebar()
page.run()
