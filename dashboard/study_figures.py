"""What Optuna Dashboard shows for a study, drawn for an Optuna run from its stored trials:
optimisation history, parameter importances, slice, contour of the two most important coordinates,
and the Pareto front of a multi-objective run.

Optuna's own plotly figures (``optuna.visualization``) need a study object, so the stored trials
(engine.evolve.optuna_storage.study_record: plain JSON from the checkpoint or the journal) are put
into a throwaway in-memory study whose parameters carry the coordinates' readable names; nothing
of the run's live study is needed, and a finished run draws the same views as a running one.
"""
from __future__ import annotations

import warnings
from typing import Any, Dict, List, Mapping, Tuple

import plotly.graph_objects as go

from .figures import HEIGHT

IMPORTANCE_MIN_TRIALS = 8  # as the run's own importances (engine/evolve/optuna_search.py)
SLICE_PARAMS = 4           # the slice view's most important coordinates


def _optuna():
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    return optuna


def study_of(record: Mapping[str, Any]):
    """An in-memory Optuna study holding the record's trials (its parameters named by coordinate)."""
    optuna = _optuna()
    names = list(record["coordinates"])
    dist = optuna.distributions.FloatDistribution(0.0, 1.0)
    study = optuna.create_study(directions=[d for _, d in record["objectives"]])
    trials = []
    for t in record["trials"]:
        if t["state"] not in ("COMPLETE", "FAIL") or any(v is None for v in t["x"]):
            continue  # still running, or another worker's trial over another genome
        done = t["state"] == "COMPLETE" and t["values"]
        trials.append(optuna.trial.create_trial(
            params=dict(zip(names, map(float, t["x"]))), distributions={n: dist for n in names},
            values=list(t["values"]) if done else None,
            state=optuna.trial.TrialState.COMPLETE if done else optuna.trial.TrialState.FAIL))
    study.add_trials(trials)
    return study


def _ranked(study, target) -> List[str]:
    """Coordinates by Optuna's PED-ANOVA importance for the first objective, most important first."""
    optuna = _optuna()
    with warnings.catch_warnings():  # PED-ANOVA is marked experimental
        warnings.simplefilter("ignore")
        raw = optuna.importance.get_param_importances(
            study, evaluator=optuna.importance.PedAnovaImportanceEvaluator(), target=target)
    return list(raw)


def study_views(record: Mapping[str, Any]) -> Tuple[Dict[str, go.Figure], Dict[str, str]]:
    """({view title: figure}, {view title: why it is not drawn yet}) in Optuna Dashboard's order."""
    optuna = _optuna()
    vis = optuna.visualization
    study = study_of(record)
    objectives = [n for n, _ in record["objectives"]]
    multi = len(objectives) > 1
    target = (lambda t: t.values[0]) if multi else None
    first = objectives[0]
    kw = {"target": target, "target_name": first} if multi else {"target_name": first}
    done = [t for t in study.trials if t.state.name == "COMPLETE"]
    figures: Dict[str, go.Figure] = {}
    missing: Dict[str, str] = {}
    if not done:
        return figures, {"Optimisation history": "no scored trial yet"}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        figures["Optimisation history"] = vis.plot_optimization_history(study, **kw)
        if len(done) >= IMPORTANCE_MIN_TRIALS:
            ranked = _ranked(study, target)
            figures["Parameter importances"] = vis.plot_param_importances(
                study, evaluator=optuna.importance.PedAnovaImportanceEvaluator(), params=ranked[:12],
                **kw)
        else:
            ranked = list(record["coordinates"])
            missing["Parameter importances"] = (f"needs {IMPORTANCE_MIN_TRIALS} scored trials "
                                                f"({len(done)} so far)")
        figures["Slice"] = vis.plot_slice(study, params=ranked[:SLICE_PARAMS], **kw)
        if len(ranked) >= 2 and len(done) >= 2:
            figures["Contour"] = vis.plot_contour(study, params=ranked[:2], **kw)
        else:
            missing["Contour"] = "needs two coordinates and two scored trials"
        if multi and len(objectives) <= 3:
            figures["Pareto front"] = vis.plot_pareto_front(study, target_names=objectives)
        elif multi:
            missing["Pareto front"] = f"{len(objectives)} objectives: see the front's table"
    for title, fig in figures.items():  # Optuna's layouts kept; our titles and heights
        fig.update_layout(title=dict(text=title, x=0, xanchor="left"),
                          height=HEIGHT + (80 if title in ("Contour", "Slice") else 0))
    return figures, missing
