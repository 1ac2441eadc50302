"""Plotly figures of training runs (no streamlit): loss and validation-accuracy curves."""
from __future__ import annotations

from typing import Mapping, Optional

import pandas as pd
import plotly.graph_objects as go

from .figures import CANDIDATE, SECONDARY, _baseline_lines, _layout

SOURCE_COLOURS = ("#1098ad", "#ae3ec9", "#f08c00", "#2f9e44", "#e8590c", "#868e96", "#5c7cfa", "#d6336c")


def loss_curves(frame: pd.DataFrame, title: str = "") -> go.Figure:
    """Training loss per step: one line per ``loss`` or ``loss/<locale>`` column (raw, faint, and
    a 10-step running mean)."""
    fig = go.Figure()
    columns = [c for c in frame.columns if c == "loss" or str(c).startswith("loss/")]
    for i, col in enumerate(columns):
        colour = CANDIDATE if col == "loss" else SOURCE_COLOURS[i % len(SOURCE_COLOURS)]
        series = frame[col].dropna()
        name = "loss" if col == "loss" else str(col).split("/", 1)[1]
        fig.add_trace(go.Scatter(x=series.index, y=series, name=f"{name} (per step)", mode="lines",
                                 line=dict(color=colour, width=1), opacity=0.35, showlegend=False))
        fig.add_trace(go.Scatter(x=series.index, y=series.rolling(10, min_periods=1).mean(), name=name,
                                 mode="lines", line=dict(color=colour, width=3)))
    fig.update_yaxes(title="training loss", rangemode="tozero")
    fig.update_xaxes(title="step")
    return _layout(fig, title or "Training loss")


def accuracy_curves(frame: pd.DataFrame, baselines: Optional[Mapping[str, Mapping[str, object]]] = None,
                    title: str = "") -> go.Figure:
    """Validation (dev) accuracy at each evaluation; a periodic-merge run adds the merged model
    after every merge and the post-hoc merge baseline."""
    fig = go.Figure()
    styles = {"validation_accuracy": ("validation accuracy", CANDIDATE, "solid"),
              "merged_dev_accuracy": ("merged model, target dev", CANDIDATE, "solid"),
              "posthoc_dev_accuracy": ("post-hoc merge (trained apart), target dev", SECONDARY, "dash"),
              "candidate_dev_accuracy": ("would-be merge (plateau check), target dev", "#868e96", "dot")}
    for name, (label, colour, dash) in styles.items():
        if name in frame:
            series = frame[name].dropna()
            fig.add_trace(go.Scatter(x=series.index, y=series, name=label, mode="lines+markers",
                                     line=dict(color=colour, width=3, dash=dash)))
    if baselines:
        _baseline_lines(fig, baselines)
    fig.update_yaxes(title="accuracy", range=[0, 1.05])
    fig.update_xaxes(title="step")
    return _layout(fig, title or "Validation accuracy")


def label_curve(curve, title: str = "") -> go.Figure:
    """Target test accuracy against the number n of labelled target examples fine-tuned on, for the
    base and the fused model (n = 0 drawn at the axis' left end)."""
    fig = go.Figure()
    xs = [max(r["n"], 1) for r in curve]
    for key, label, colour in (("fused", "fused model + n labels", CANDIDATE), ("base", "base + n labels", "#868e96")):
        fig.add_trace(go.Scatter(x=xs, y=[r[key] for r in curve], name=label, mode="lines+markers",
                                 line=dict(color=colour, width=3)))
    fig.update_xaxes(title="labelled target examples n (log; 0 drawn at 1)", type="log")
    fig.update_yaxes(title="target test accuracy", range=[0, 1.05])
    return _layout(fig, title or "What a merge is worth in target labels")
