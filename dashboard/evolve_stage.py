"""The Evolve page's AdaMerging stage: refine a finished evolution's champion on unlabelled target
text as its own merge run (engine/evolve/ada_stage.py; the CLI's ``evolve-ada``). Its settings are
the ``adamerging`` merge's own Params, at the stage's defaults."""
from __future__ import annotations

from typing import Any, Dict, List

import streamlit as st

from engine.evolve.ada_stage import STAGE_DEFAULTS, submit_stage
from engine.merge import MERGES
from engine.store import ACTIVE

from . import runs as runs_view
from . import state, widgets
from .target_text import target_text_picker

TITLE = "Refine the champion with AdaMerging (unlabelled target text)"


def stage_runs(evolution_id: str, target: str) -> List[Dict[str, Any]]:
    """The stage runs of one evolution, newest first (found in the store: they outlive the session)."""
    return [r for r in state.store().runs(kind="merge", target=target, limit=200)
            if (r.get("params") or {}).get("stage_of") == evolution_id]


def outcome_text(run: Dict[str, Any]) -> str:
    """A finished stage run in one line: which model it kept, and why (dev fitness)."""
    result = run.get("result") or {}
    champion, refined = result.get("champion") or {}, result.get("refined") or {}
    if not champion or not refined:
        return f"Stage run {run['id']}: {run['status']}."
    kept = result.get("kept", "champion")
    test = (result.get(kept) or {}).get("test") or {}
    return (f"Stage run {run['id']} ({run['status']}): kept the **{kept}** — dev fitness "
            f"{refined['fitness']:.4f} refined vs {champion['fitness']:.4f} champion"
            + (f"; test accuracy {test['accuracy']:.3f}" if "accuracy" in test else "")
            + f"; learned on {result.get('text', 'unlabelled target text')}.")


def stage_panel(ws, row: Dict[str, Any]) -> None:
    """For a finished or stopped evolution with a champion: the stage's settings, its button, and
    the latest stage run's progress or outcome (with a link to Compare)."""
    with st.expander(TITLE, icon=":material/auto_fix_high:"):
        st.caption("AdaMerging starts from the champion's per-source (per layer group) weights and lowers "
                   "the merged model's prediction entropy on unlabelled target text; the refined model is "
                   "kept only if its dev fitness beats the champion's. A merge run of its own.")
        params: Dict[str, Any] = {}
        stage_params = [p for p in MERGES.get("adamerging").params if p.name in STAGE_DEFAULTS]
        columns = st.columns(len(stage_params))
        for column, p in zip(columns, stage_params):
            params[p.name] = widgets.scalar_control(p, p.name.replace("_", " ").capitalize(), f"evo_ada_{p.name}",
                                                    column, default=STAGE_DEFAULTS[p.name])
        text = target_text_picker(ws, "evo_ada")
        if st.button("Refine the champion", icon=":material/auto_fix_high:", key="evo_ada_run",
                     disabled=text is None):
            with state.engine_errors():
                st.session_state["evo_ada_stage"] = submit_stage(state.runner(), ws, row, params, text or "")
            st.rerun()
        stages = stage_runs(row["id"], row["target"])
        if not stages:
            return
        latest = runs_view.watch(stages[0]["id"], key="evo-ada")
        if latest["status"] == "done":
            st.markdown(outcome_text(latest))
            runs_view.send_to_compare(latest["id"], "evo_ada_compare")
        elif latest["status"] not in ACTIVE:
            runs_view.status_line(latest)
