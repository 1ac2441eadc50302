"""Plotly figures for a sweep (builders only: the Compare page shows them, ``write_report`` saves them).

Each builder takes one of :mod:`engine.report.results`' tables, so a page can filter a table first and
draw the same figure from it.
"""
from __future__ import annotations

from typing import Dict, Optional

import numpy as np
import pandas as pd
import plotly.graph_objects as go

from ..runinfo import TARGET_DATA_MARKS
from .results import BASELINE_TITLES, SweepResults, accuracy_table, headline_table, win_rate_table

FAMILY_COLOURS = {"merge": "#1f77b4", "ensemble": "#ff7f0e"}
# zero-shot hollow, unlabelled target text half, labelled target dev solid (as the ○ ◐ ● marks)
TARGET_DATA_SYMBOLS = {"none": "circle-open", "unlabelled target text": "diamond", "labelled target dev": "circle"}


def accuracy_heatmap(table: pd.DataFrame, title: str = "Test accuracy: variant × target") -> go.Figure:
    """From :func:`~engine.report.results.accuracy_table`: one cell per (variant, target), value printed."""
    z = table.to_numpy(dtype=float)
    text = [[("" if np.isnan(v) else f"{v:.3f}") for v in row] for row in z]
    fig = go.Figure(go.Heatmap(z=z, x=list(table.columns), y=list(table.index), text=text,
                               texttemplate="%{text}", colorscale="Viridis", colorbar={"title": "accuracy"},
                               hovertemplate="%{y}<br>target %{x}<br>accuracy %{z:.3f}<extra></extra>"))
    fig.update_layout(title=title, xaxis_title="target", yaxis={"autorange": "reversed"},
                      height=max(320, 170 + 34 * len(table.index)), margin={"l": 260})
    return fig


def win_rate_bars(wins: pd.DataFrame, title: str = "Win rate over targets, per baseline") -> go.Figure:
    """From :func:`~engine.report.results.win_rate_table`: grouped bars, one group per variant."""
    fig = go.Figure()
    variants = list(dict.fromkeys(wins["variant"]))
    for base, part in wins.groupby("baseline", sort=False):
        part = part.set_index("variant").reindex(variants)
        fig.add_bar(name=f"vs {BASELINE_TITLES.get(base, base)}", x=variants, y=part["rate"],
                    customdata=np.stack([part["wins"], part["ties"], part["n"]], axis=1),
                    hovertemplate="%{x}<br>win rate %{y:.0%}<br>wins %{customdata[0]}, ties %{customdata[1]} "
                                  "of %{customdata[2]}<extra></extra>")
    fig.update_layout(title=title, barmode="group", yaxis={"title": "share of targets won", "range": [0, 1],
                                                           "tickformat": ".0%"}, xaxis_tickangle=-30)
    return fig


def parameter_coordinates(frame: pd.DataFrame, method: Optional[str] = None,
                          title: str = "Parameters vs test accuracy") -> go.Figure:
    """From ``SweepResults.frame``: one line per cell through its varying parameters to its accuracy.

    ``method`` keeps one method's cells (its grid parameters then line up); categorical axes
    (target, method, features) are shown with their names.
    """
    f = frame if method is None else frame[frame["method"] == method]
    if f.empty:
        raise ValueError(f"no cells for method {method!r}")
    candidates = [c for c in ("target", "method", "target_data", "k", "features", "weighting") if c in f] + \
        [c for c in f.columns if c.startswith("p.")]
    dims = []
    for col in candidates:
        values = f[col]
        if values.isna().all() or values.nunique(dropna=True) < 2 and col not in ("target", "method"):
            continue
        if pd.api.types.is_numeric_dtype(values):
            label = col.removeprefix("p.") + (" (−1: n/a)" if values.isna().any() else "")
            dims.append({"label": label, "values": values.fillna(-1).astype(float)})
        else:
            text = values.astype(object).fillna("n/a").astype(str)  # a method without this parameter: n/a
            names = sorted(text.unique())
            codes = text.map({n: i for i, n in enumerate(names)})
            dims.append({"label": col, "values": codes, "tickvals": list(range(len(names))), "ticktext": names})
    dims.append({"label": "accuracy", "values": f["accuracy"], "range": [0, 1]})
    fig = go.Figure(go.Parcoords(line={"color": f["accuracy"], "colorscale": "Viridis", "showscale": True,
                                       "cmin": 0, "cmax": 1}, dimensions=dims))
    # axis titles are centred on the outer axes: explicit side margins keep "target" whole (a
    # page theme's slim margins would clip it to "get")
    fig.update_layout(title=title + (f" ({method})" if method else ""),
                      margin={"l": 90, "r": 90, "t": 110, "b": 40})
    return fig


def cost_scatter(head: pd.DataFrame, cost: str = "latency_ms",
                 title: str = "Accuracy vs inference cost") -> go.Figure:
    """From :func:`~engine.report.results.headline_table`: mean accuracy vs cost (``latency_ms`` per example or
    ``forward_passes``), merges and ensembles in two colours."""
    if cost not in ("latency_ms", "forward_passes"):
        raise ValueError("cost must be 'latency_ms' or 'forward_passes'")
    fig = go.Figure()
    data = head["target_data"] if "target_data" in head else pd.Series("none", index=head.index)
    for (family, use), part in head.assign(target_data=data).groupby(["family", "target_data"]):
        name = family if use == "none" else f"{family} · {TARGET_DATA_MARKS.get(use, '?')} {use}"
        fig.add_scatter(x=part[cost], y=part["mean_accuracy"], mode="markers+text", name=name,
                        text=part["variant"], textposition="top center",
                        marker={"size": 8 + 3 * part["forward_passes"], "color": FAMILY_COLOURS.get(family),
                                "symbol": TARGET_DATA_SYMBOLS.get(use, "x")},
                        customdata=part["forward_passes"],
                        hovertemplate="%{text}<br>accuracy %{y:.3f}<br>" + cost + " %{x:.3g}<br>"
                                      "forward passes %{customdata:.0f}<extra></extra>")
    fig.update_layout(title=title, xaxis_title={"latency_ms": "latency per example (ms)",
                                                 "forward_passes": "forward passes per input"}[cost],
                      yaxis_title="mean test accuracy")
    return fig


def figures(res: SweepResults) -> Dict[str, go.Figure]:
    """All four figures of a sweep, by file stem."""
    return {"accuracy_heatmap": accuracy_heatmap(accuracy_table(res)),
            "win_rates": win_rate_bars(win_rate_table(res)),
            "parameters": parameter_coordinates(res.frame),
            "accuracy_vs_cost": cost_scatter(headline_table(res))}
