"""Entry point: `streamlit run app.py`. The navigation, a sidebar with the workspace and running
jobs, and the overview page (what is loaded, what runs, recent results, where to start)."""
from __future__ import annotations

import time

import streamlit as st

from dashboard import runs as runs_view
from dashboard import state
from dashboard.widgets import params_text
from engine.store import ACTIVE

st.set_page_config(page_title="Cross-lingual fusion", page_icon=":material/merge_type:", layout="wide")

STEPS = [
    ("pages/1_Setup.py", "Setup", ":material/settings:", "Choose the model zoo, the dataset and the device."),
    ("pages/2_Similarity.py", "Similarity", ":material/hub:",
     "Pick a target language; URIEL similarity → top-K → Sinkhorn → source weights."),
    ("pages/3_Merge.py", "Merge", ":material/merge:", "Merge the sources in parameter space (linear, TIES, DARE, Fisher, …)."),
    ("pages/4_Ensemble.py", "Ensemble", ":material/groups:", "Combine the sources' outputs: voting rules or learned fusion."),
    ("pages/5_Evolve.py", "Evolve", ":material/genetics:", "Search merge recipes evolutionarily; watch fitness live."),
    ("pages/7_Sweeps.py", "Sweeps", ":material/table_view:",
     "Run every target × method at once, resumable; win rates, paired tests, a one-click report."),
    ("pages/8_Train.py", "Train", ":material/model_training:",
     "Fine-tune a locale from the pretrained base; the new model joins the zoo."),
    ("pages/6_Compare.py", "Compare", ":material/leaderboard:", "Every run against honest baselines; the N×N matrix; export."),
]


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
    for i, (path, title, icon, text) in enumerate(STEPS):
        with cols[i % 3].container(border=True):
            st.page_link(path, label=f"{i + 1}. {title}", icon=icon)
            st.caption(text)


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
pages += [st.Page(path, title=title, icon=icon) for path, title, icon, _ in STEPS]
page = st.navigation(pages)
sidebar()
page.run()
