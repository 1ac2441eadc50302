"""Plotly figures for the dashboard (and notebooks): plain data in, ``go.Figure`` out, no streamlit.

One colour per role everywhere: candidates blue, baselines grey/orange/green dashed lines, so a
chart on one page reads the same as on another.
"""
from __future__ import annotations

from typing import Dict, Iterable, List, Mapping, Optional, Sequence, Tuple

import pandas as pd
import plotly.graph_objects as go

CANDIDATE = "#3b5bdb"
SECONDARY = "#91a7ff"
BASELINE_STYLE = {  # key in the engine's baselines dict -> (label, colour, dash)
    "best_source": ("best source", "#868e96", "dash"),
    "best_zero_shot": ("best zero-shot", "#f08c00", "dot"),
    "target_model": ("target's own model", "#2f9e44", "dashdot"),
}
TARGET_DATA_PATTERNS = {"●": "/", "◐": "."}  # by the target-data mark: labelled dev, unlabelled text
KIND_COLOURS = {"merge": CANDIDATE, "ensemble": "#ae3ec9", "evolve": "#e8590c"}
HEIGHT = 340


def _layout(fig: go.Figure, title: str = "", height: int = HEIGHT, **extra) -> go.Figure:
    extra.setdefault("legend", dict(orientation="h", yanchor="top", y=-0.28, xanchor="left", x=0))
    fig.update_layout(title=dict(text=title, x=0, xanchor="left") if title else None, height=height,
                      margin=dict(l=10, r=10, t=40 if title else 10, b=10), **extra)
    return fig


def heatmap(matrix: pd.DataFrame, title: str = "", highlight: Optional[str] = None,
            zmin: Optional[float] = None, zmax: Optional[float] = None, fmt: str = ".2f",
            colorscale: str = "Blues", x_title: str = "", y_title: str = "") -> go.Figure:
    """A labelled heatmap; values written in the cells when it is small enough to read them."""
    z = matrix.to_numpy(dtype=float)
    rows, cols = [str(i) for i in matrix.index], [str(c) for c in matrix.columns]
    show_text = len(rows) * len(cols) <= 400
    fig = go.Figure(go.Heatmap(
        z=z, x=cols, y=rows, zmin=zmin, zmax=zmax, colorscale=colorscale,
        text=[[format(v, fmt) if v == v else "" for v in row] for row in z] if show_text else None,
        texttemplate="%{text}" if show_text else None,
        hovertemplate=f"{y_title or 'row'} %{{y}}<br>{x_title or 'column'} %{{x}}<br>%{{z:{fmt}}}<extra></extra>"))
    # every label shown (plotly thins category labels to every other one on its own)
    fig.update_yaxes(autorange="reversed", title=y_title or None, tickmode="array", tickvals=rows, ticktext=rows)
    fig.update_xaxes(side="bottom", title=x_title or None, tickmode="array", tickvals=cols, ticktext=cols)
    if highlight is not None:
        for axis, names in (("y", rows), ("x", cols)):
            if highlight in names:
                i = names.index(highlight)
                shape = dict(type="rect", line=dict(color="#e03131", width=2), fillcolor="rgba(0,0,0,0)")
                if axis == "y":
                    shape.update(xref="paper", x0=0, x1=1, yref="y", y0=i - 0.5, y1=i + 0.5)
                else:
                    shape.update(yref="paper", y0=0, y1=1, xref="x", x0=i - 0.5, x1=i + 0.5)
                fig.add_shape(**shape)
    side = max(320, min(720, 60 + 28 * len(rows)))
    return _layout(fig, title, height=side)


def similarity_heatmap(matrix: pd.DataFrame, target: Optional[str] = None, title: str = "") -> go.Figure:
    low = float(matrix.to_numpy().min()) if matrix.size else 0.0
    return heatmap(matrix, title or "URIEL cosine similarity", highlight=target, zmin=max(0.0, low - 0.05),
                   zmax=1, x_title="locale", y_title="locale")


def weights_heatmap(matrix: pd.DataFrame, target: Optional[str] = None, title: str = "") -> go.Figure:
    """The similarity matrix after top-K and Sinkhorn: the matrix the weights are read from."""
    return heatmap(matrix, title or "After top-K and Sinkhorn", highlight=target, zmin=0.0,
                   colorscale="Purples", x_title="source", y_title="locale")


def neighbours_bar(neighbours: Sequence[Tuple[str, float]], weights: Mapping[str, float],
                   names: Optional[Mapping[str, str]] = None, title: str = "") -> go.Figure:
    """The target's top-K neighbours by similarity; those that end with no weight are grey."""
    names = names or {}
    locs = [loc for loc, _ in neighbours]
    fig = go.Figure(go.Bar(
        x=locs, y=[s for _, s in neighbours],
        marker_color=[CANDIDATE if weights.get(loc, 0) > 0 else "#ced4da" for loc in locs],
        customdata=[names.get(loc, loc) for loc in locs],
        hovertemplate="%{x} (%{customdata})<br>similarity %{y:.3f}<extra></extra>"))
    fig.update_yaxes(title="cosine similarity", range=[0, 1])
    return _layout(fig, title or "Nearest sources")


def weights_bars(raw: Mapping[str, float], balanced: Mapping[str, float], iterations: int,
                 title: str = "", order: Sequence[str] = ()) -> go.Figure:
    """Weights from the raw similarities (Sinkhorn 0) beside the Sinkhorn-balanced ones; sources in
    ``order`` first (the page's one order), then any others by weight."""
    locs = [l for l in order if l in balanced or l in raw]
    locs += [l for l in dict.fromkeys([*balanced, *raw]) if l not in locs]
    fig = go.Figure([
        go.Bar(name="before Sinkhorn (top-K similarities)", x=locs, y=[raw.get(l, 0.0) for l in locs],
               marker_color=SECONDARY, hovertemplate="%{x}: %{y:.3f}<extra>raw</extra>"),
        go.Bar(name=f"Sinkhorn ({iterations} iterations)", x=locs, y=[balanced.get(l, 0.0) for l in locs],
               marker_color=CANDIDATE, hovertemplate="%{x}: %{y:.3f}<extra>Sinkhorn</extra>"),
    ])
    fig.update_layout(barmode="group")
    fig.update_yaxes(title="weight", rangemode="tozero")
    return _layout(fig, title or "Source weights")


def _baseline_lines(fig: go.Figure, baselines: Mapping[str, Mapping[str, object]],
                    vertical: bool = False) -> None:
    """One dashed line per distinct baseline value, named in the legend (labels drawn on the plot
    collide with bar labels); baselines that coincide share a line and a legend entry. ``vertical``
    for horizontal bars."""
    lines: Dict[float, List[str]] = {}
    style: Dict[float, Tuple[str, str]] = {}
    for key, (label, colour, dash) in BASELINE_STYLE.items():
        b = baselines.get(key)
        if not b or b.get("accuracy") is None:
            continue
        y = round(float(b["accuracy"]), 6)
        lines.setdefault(y, []).append(f"{label} ({b.get('model', '')})")
        style.setdefault(y, (colour, dash))
    for y, labels in sorted(lines.items(), reverse=True):
        colour, dash = style[y]
        line = dict(color=colour, dash=dash, width=2)
        (fig.add_vline(x=y, line=line) if vertical else fig.add_hline(y=y, line=line))
        fig.add_trace(go.Scatter(x=[None], y=[None], mode="lines", line=line, showlegend=True,
                                 name=f"{' = '.join(labels)}: {y:.3f}", hoverinfo="skip"))


def accuracy_bars(bars: Sequence[Tuple[str, float]], baselines: Mapping[str, Mapping[str, object]],
                  title: str = "", colours: Optional[Sequence[str]] = None,
                  metric: str = "test accuracy", horizontal: bool = False) -> go.Figure:
    """Candidates as bars, the target's baselines as reference lines. ``horizontal``: one row per
    candidate, best at the top (long labels stay readable when there are many)."""
    colours = list(colours or [CANDIDATE] * len(bars))
    if horizontal:
        order = sorted(range(len(bars)), key=lambda i: bars[i][1])
        bars, colours = [bars[i] for i in order], [colours[i] for i in order]
        fig = go.Figure(go.Bar(
            y=[b[0].replace("<br>", " · ") for b in bars], x=[b[1] for b in bars], orientation="h",
            marker_color=colours, text=[f"{b[1]:.3f}" for b in bars], textposition="outside",
            cliponaxis=False, showlegend=False, hovertemplate="%{y}<br>" + metric + " %{x:.3f}<extra></extra>"))
        _baseline_lines(fig, baselines, vertical=True)
        fig.update_xaxes(title=metric, range=[0, 1.08])
        plot_px = 90 + 24 * len(bars)  # the legend goes just under the axis title, in plot fractions
        return _layout(fig, title, height=plot_px + 50,
                       legend=dict(orientation="h", yanchor="top", y=-60 / plot_px, xanchor="left", x=0))
    fig = go.Figure(go.Bar(
        x=[b[0] for b in bars], y=[b[1] for b in bars], marker_color=colours,
        text=[f"{b[1]:.3f}" for b in bars], textposition="outside", cliponaxis=False, showlegend=False,
        hovertemplate="%{x}<br>" + metric + " %{y:.3f}<extra></extra>"))
    _baseline_lines(fig, baselines)
    fig.update_yaxes(title=metric, range=[0, 1.08])
    tilted = len(bars) > 4
    two_lines = any("<br>" in b[0] for b in bars)  # labels of two lines need room under the axis
    fig.update_xaxes(tickangle=-30 if tilted else 0)
    legend_y = -0.42 if tilted else (-0.24 if two_lines else -0.12)
    fig = _layout(fig, title, legend=dict(orientation="h", yanchor="top", y=legend_y, xanchor="left", x=0),
                  height=HEIGHT + 40)
    fig.update_layout(margin=dict(b=90 if tilted or two_lines else 50))
    return fig


def split_bars(metrics: Mapping[str, Mapping[str, float]], keys: Sequence[str] = ("accuracy", "macro_f1"),
               title: str = "") -> go.Figure:
    """Validation beside test for a few metrics: a large gap means the recipe was tuned to validation."""
    colours = {"validation": SECONDARY, "test": CANDIDATE}
    fig = go.Figure([go.Bar(name=split, x=list(keys), y=[metrics[split].get(k) for k in keys],
                            marker_color=colours.get(split), text=[f"{metrics[split].get(k, 0):.3f}" for k in keys],
                            textposition="outside", cliponaxis=False)
                     for split in ("validation", "test") if split in metrics])
    fig.update_layout(barmode="group")
    fig.update_yaxes(range=[0, 1.08])
    return _layout(fig, title or "Validation vs test")


def model_weights_bars(sources: Sequence[str], prior: Sequence[float], learned: Mapping[str, float],
                       title: str = "") -> go.Figure:
    """The weights a learned fusion ended with beside the prior it started from."""
    total = sum(prior) or 1.0
    fig = go.Figure([
        go.Bar(name="prior (given)", x=list(sources), y=[w / total for w in prior], marker_color=SECONDARY),
        go.Bar(name="learned", x=list(sources), y=[learned.get(s, 0.0) for s in sources], marker_color=CANDIDATE),
    ])
    fig.update_layout(barmode="group")
    fig.update_yaxes(title="weight", rangemode="tozero")
    return _layout(fig, title or "Per-model weights")


def series_frame(points: Iterable[Mapping[str, object]]) -> pd.DataFrame:
    """Store series rows ({name, step, value}) -> one column per name, indexed by step."""
    rows = [{"name": p["name"], "step": p["step"], "value": p["value"]} for p in points
            if isinstance(p.get("value"), (int, float))]
    if not rows:
        return pd.DataFrame()
    return pd.DataFrame(rows).pivot_table(index="step", columns="name", values="value", aggfunc="last")


def fitness_curves(frame: pd.DataFrame, title: str = "") -> go.Figure:
    """Population fitness per generation (best, mean, worst; best-ever champion) above, gene
    diversity (0..1) below: two stacked panels sharing the generation axis, each with its own
    plain ticks (one dual axis put ticks such as 0.079 and 0.317 beside each other). The
    champion is a wide pale band under the others, so where it equals the best both show."""
    from plotly.subplots import make_subplots

    has_div = "diversity" in frame
    fig = make_subplots(rows=2 if has_div else 1, cols=1, shared_xaxes=True, vertical_spacing=0.08,
                        row_heights=[0.72, 0.28] if has_div else None)
    styles = {"champion": dict(color=CANDIDATE, width=9), "best": dict(color="#1098ad", width=2),
              "mean": dict(color=SECONDARY, width=2), "worst": dict(color="#868e96", width=1, dash="dot")}
    for name, line in styles.items():
        if name in frame:
            fig.add_trace(go.Scatter(x=frame.index, y=frame[name], line=line,
                                     name=name if name != "champion" else "champion (best ever)",
                                     opacity=0.35 if name == "champion" else 1.0,
                                     mode="lines+markers" if name == "best" else "lines"), row=1, col=1)
    fig.update_yaxes(title="fitness (dev)", tickformat=".3~f", nticks=6, row=1, col=1)
    if has_div:
        fig.add_trace(go.Scatter(x=frame.index, y=frame["diversity"], name="diversity", mode="lines",
                                 line=dict(color="#f08c00", dash="dash")), row=2, col=1)
        top = max(0.1, float(frame["diversity"].max()) * 1.15) if frame["diversity"].notna().any() else 1.0
        fig.update_yaxes(title="diversity", range=[0, min(1.0, top)], tickformat=".2f", nticks=3,
                         row=2, col=1)
    fig.update_xaxes(dtick=1 if len(frame.index) <= 25 else None)
    fig.update_xaxes(title="generation", row=2 if has_div else 1, col=1)
    return _layout(fig, title or "Fitness per generation")


def champion_accuracy(frame: pd.DataFrame, baselines: Mapping[str, Mapping[str, object]],
                      title: str = "") -> go.Figure:
    """The champion's dev and test accuracy (logged when it changes, held until the next change)
    against the baselines: a growing dev/test gap is the search fitting the dev split."""
    fig = go.Figure()
    for name, label, colour in (("champion_dev_accuracy", "champion dev accuracy", SECONDARY),
                                ("champion_test_accuracy", "champion test accuracy", CANDIDATE)):
        if name in frame:
            fig.add_trace(go.Scatter(x=frame.index, y=frame[name].ffill(), name=label, mode="lines+markers",
                                     line=dict(color=colour, width=3, shape="hv")))
    _baseline_lines(fig, baselines)
    fig.update_yaxes(title="accuracy", range=[0, 1.05])
    fig.update_xaxes(title="generation", dtick=1 if len(frame.index) <= 25 else None)
    return _layout(fig, title or "Champion accuracy")


def usage_bars(counts: Mapping[str, float], title: str = "") -> go.Figure:
    """How often each option was used, most used on top (horizontal: long names stay readable)."""
    items = sorted(counts.items(), key=lambda kv: kv[1])
    fig = go.Figure(go.Bar(y=[k for k, _ in items], x=[v for _, v in items], orientation="h",
                           marker_color=CANDIDATE, text=[str(v) for _, v in items], textposition="outside",
                           cliponaxis=False))
    fig.update_xaxes(title="count", rangemode="tozero")
    return _layout(fig, title or "Combination usage", height=max(260, 60 + 30 * len(items)))


def recipe_frames(recipe: Mapping[str, object]) -> Dict[str, pd.DataFrame]:
    """An evolved recipe as source × layer-group tables: 'weight' and every per-model parameter.

    CMA-ES recipes have one entry per layer group; an EvoMerge recipe is global (one column), its
    per-model parameters taken from each stage (named 'method.param')."""
    groups = recipe.get("groups") if isinstance(recipe, Mapping) else None
    if groups:
        names = [str(g["group"]) for g in groups]
        sources = list(groups[0]["weights"])
        frames = {"weight": pd.DataFrame({n: [g["weights"][s] for s in sources] for n, g in zip(names, groups)},
                                         index=sources)}
        for key, value in groups[0].get("params", {}).items():
            if isinstance(value, list) and len(value) == len(sources):
                frames[key] = pd.DataFrame({n: g["params"][key] for n, g in zip(names, groups)}, index=sources)
        return frames
    weights = dict(recipe.get("weights") or {})
    if not weights:
        return {}
    sources = list(weights)
    frames = {"weight": pd.DataFrame({"all layers": [weights[s] for s in sources]}, index=sources)}
    for stage in recipe.get("stages") or []:
        for key, value in (stage.get("params") or {}).items():
            if isinstance(value, list) and len(value) == len(sources):
                frames[f"{stage['method']}.{key}"] = pd.DataFrame({"all layers": value}, index=sources)
    return frames


def layer_weights_heatmap(weights: pd.DataFrame, title: str = "") -> go.Figure:
    """Rows = sources, columns = layer groups: one number of the champion's recipe per cell."""
    fig = heatmap(weights, title or "Champion per-layer weights", zmin=0, colorscale="Viridis",
                  x_title="layer group", y_title="source", fmt=".3f")
    fig.update_layout(height=max(220, 90 + 40 * len(weights.index)))
    return fig


def nxn_heatmap(matrix: pd.DataFrame, metric: str = "accuracy", title: str = "") -> go.Figure:
    """Zero-shot matrix: model (rows) evaluated on each locale (columns); the diagonal is in-language."""
    fig = heatmap(matrix, title or f"Zero-shot {metric}: model (row) on locale (column)", zmin=0, zmax=1,
                  colorscale="YlGnBu", x_title="evaluated on", y_title="model")
    for i, row in enumerate(matrix.index):
        if row in list(matrix.columns):
            j = list(matrix.columns).index(row)
            fig.add_shape(type="rect", x0=j - 0.5, x1=j + 0.5, y0=i - 0.5, y1=i + 0.5,
                          line=dict(color="#e03131", width=1.5))
    return fig


def compare_bars(runs: pd.DataFrame, baselines: Mapping[str, Mapping[str, Mapping[str, object]]],
                 value: str = "test_accuracy", label: str = "label", title: str = "") -> List[Tuple[str, go.Figure]]:
    """One bar chart per target: the selected runs (coloured by kind), that target's baselines as lines."""
    figs = []
    for target, part in runs.groupby("target", sort=True):
        part = part[part[value].notna()]
        bars = [(f"{k}<br>{l}", float(v)) for k, l, v in zip(part["kind"], part[label], part[value])]
        many = len(bars) > 8  # then one row per run: rotated labels would collide
        fig = accuracy_bars(bars, baselines.get(target, {}), title=f"{title}{target}",
                            colours=[KIND_COLOURS.get(k, CANDIDATE) for k in part["kind"]], horizontal=many)
        if "target_data" in part:  # runs that saw target data before the test are hatched
            shapes = [TARGET_DATA_PATTERNS.get(str(t).split(" ", 1)[0], "") for t in part["target_data"]]
            if many:  # accuracy_bars sorted the rows by value
                shapes = [shapes[i] for i in sorted(range(len(bars)), key=lambda i: bars[i][1])]
            fig.data[0].marker.pattern = dict(shape=shapes, solidity=0.35)
        figs.append((str(target), fig))
    return figs
