"""Controls drawn from declarations: a method's Param schema, and the sources/weights table.

A new merge or ensemble method with a declared schema gets its controls here without a page change.
"""
from __future__ import annotations

import math
from dataclasses import replace
from typing import Any, Dict, List, Optional, Sequence, Tuple

import pandas as pd
import streamlit as st

from engine.registry import Method, Param

from . import experiment as xp
from . import state


def _step(p: Param) -> float:
    span = float(p.high) - float(p.low)
    raw = span / 100
    return float(10 ** math.floor(math.log10(raw))) if raw > 0 else 0.01


def _slider_ok(p: Param) -> bool:
    """A slider only where its grid can hold the default (epsilon = 1e-6 in [0, 1] is typed)."""
    if p.low is None or p.high is None or not math.isfinite(p.high - p.low) or p.high - p.low > 100:
        return False
    step, span = _step(p), float(p.high) - float(p.low)
    on_grid = abs(p.default / step - round(p.default / step)) < 1e-6
    return on_grid and (p.default - p.low >= 0.05 * span or p.default == p.low)


def scalar_control(p: Param, label: str, key: str, where=None, default: Any = None) -> Any:
    """One widget for one value of a parameter, by its declared kind and range."""
    where = where or st
    value = p.default if default is None else default
    help_text = p.help or None
    if p.kind == "bool":
        return where.checkbox(label, value=bool(value), key=key, help=help_text)
    if p.kind == "choice":
        choices = list(p.choices)
        return where.selectbox(label, choices, index=choices.index(value) if value in choices else 0,
                               key=key, help=help_text)
    if p.kind == "int":
        lo = int(p.low) if p.low is not None else None
        hi = int(p.high) if p.high is not None else None
        if lo is not None and hi is not None and hi - lo <= 64:
            return int(where.slider(label, lo, hi, int(value), key=key, help=help_text))
        return int(where.number_input(label, min_value=lo, max_value=hi, value=int(value), step=1,
                                      key=key, help=help_text))
    if _slider_ok(p):
        step = _step(p)
        lo = float(p.low) + (step if p.low_open else 0.0)
        return float(where.slider(label, lo, float(p.high), max(lo, float(value)), step=step, key=key,
                                  help=help_text))
    return float(where.number_input(label, min_value=float(p.low) if p.low is not None else None,
                                    max_value=float(p.high) if p.high is not None else None,
                                    value=float(value), format="%g", key=key, help=help_text))


def param_controls(method: Method, sources: Sequence[str], key: str, columns: int = 3) -> Dict[str, Any]:
    """Widgets for every parameter of ``method``; per-model ones can take one value per source."""
    values: Dict[str, Any] = {}
    if not method.params:
        st.caption(f"'{method.name}' has no parameters.")
        return values
    plain = [p for p in method.params if not p.per_model]
    per_model = [p for p in method.params if p.per_model]
    cols = st.columns(columns)
    for i, p in enumerate(plain + per_model):
        with cols[i % columns]:
            base_key = f"{key}.{method.name}.{p.name}"
            slot = st.container()
            per_source = p.per_model and len(sources) > 1 and st.toggle(
                "one per source", key=base_key + ".per",
                help=f"off: one {p.name} for every source; on: one value per source model")
            with slot:
                if per_source:
                    values[p.name] = [scalar_control(p, f"{p.name} · {s}", f"{base_key}.{s}") for s in sources]
                else:
                    values[p.name] = scalar_control(p, p.name, base_key)
    return values


def checked_params(method: Method, values: Dict[str, Any]) -> Tuple[Optional[Dict[str, Any]], str]:
    """The values the engine accepts, or (None, its message)."""
    try:
        method.resolve(values)
    except ValueError as exc:
        return None, state.message(exc)
    return values, ""


def method_caption(method: Method) -> None:
    traits = method.traits
    tags = []
    if traits.family:
        tags.append(f"family: {traits.family}")
    if traits.needs_base:
        tags.append("needs the pretrained base")
    if traits.needs_data:
        tags.append("data-aware")
    if traits.random:
        tags.append("random (seeded)")
    if traits.mergekit:
        tags.append(f"mergekit: {traits.mergekit}")
    else:
        tags.append("no mergekit equivalent")
    if traits.min_sources > 1:
        tags.append(f"at least {traits.min_sources} sources")
    st.caption(method.summary + ("  \n" + " · ".join(tags) if tags else ""))


# ---- target, sources and weights: views of the one current experiment ----------------------------
def seed(key: str, value: Any) -> None:
    """Puts the canonical value into a widget's state before the widget is drawn (its own state is
    gone after the page was left, or stale after another page changed the experiment)."""
    if st.session_state.get(key) != value:
        st.session_state[key] = value


def target_picker(ws, key: str, where=None, label: str = "Target language") -> str:
    """The current experiment's target, changeable here; every page and the sidebar show the same."""
    targets = ws.target_locales()
    if not targets:
        st.error("the dataset has no locale with a test split: nothing to evaluate a candidate on")
        st.stop()
    exp = state.experiment(ws, derive=False)
    widget_key = f"{key}_target"
    seed(widget_key, exp.target)
    (where or st).selectbox(label, targets, key=widget_key, format_func=xp.language,
                            on_change=lambda: state.change_target(st.session_state[widget_key]),
                            help="the language the candidate is built for; its own model is only a baseline. "
                                 "Shared by every page (and kept in the page address)")
    return state.experiment(ws, derive=False).target


def ticked_weights(ws, target: str, shown: Dict[str, float], sources: List[str], raw: List[float],
                   features: str = "syntax_knn", sinkhorn_iters: int = 20,
                   weighting: str = "uriel") -> Tuple[List[float], str]:
    """The weights of the ticked sources, and a note. When the ticks differ from the proposed
    sources but no weight was edited, the ticked sources get weights among themselves under the
    weighting (one ticked outside the proposal would otherwise keep the 0 it is shown with)."""
    from engine.experiments import source_weights

    edited = any(abs(w - round(float(shown.get(s, 0.0)), 4)) > 1e-9 for s, w in zip(sources, raw))
    if not sources or edited or set(sources) == {s for s, w in shown.items() if w > 0}:
        zero = [s for s, w in zip(sources, raw) if w <= 0]
        return raw, (f"{', '.join(zero)} ticked with weight 0: no part in the result" if zero else "")
    if weighting == "equal":
        return [1.0] * len(sources), f"equal weights over the {len(sources)} ticked sources"
    if weighting == "predicted":
        if not state.predicted_ready(ws):
            return [1.0] * len(sources), "equal weights over the ticked sources (predicted transfer is not ready)"
        try:
            _, weights = source_weights(ws, target, sources, weighting="predicted")
            return weights, f"predicted-transfer weights over the {len(sources)} ticked sources"
        except Exception as exc:
            return [1.0] * len(sources), f"equal weights over the ticked sources ({state.message(exc)})"
    try:
        _, weights = source_weights(ws, target, sources, features=features, sinkhorn_iters=sinkhorn_iters)
        return weights, f"URIEL weights over the {len(sources)} ticked sources ({features}, Sinkhorn {sinkhorn_iters})"
    except Exception as exc:  # a locale URIEL does not know, similarity 0: equal weights, said so
        return [1.0] * len(sources), f"equal weights over the ticked sources ({state.message(exc)})"


def _same_weights(a, b) -> bool:
    """The same sources with the same weights, in any order (the table lists tied weights by name)."""
    da, db = dict(a), dict(b)
    return da.keys() == db.keys() and all(abs(da[s] - db[s]) < 1e-9 for s in da)


def sources_editor(ws, key: str) -> Tuple[List[str], List[float]]:
    """An editable table of the zoo's models (target left out): use?, weight. Edits go into the
    current experiment, so every page sees them and they survive leaving the page."""
    exp = state.experiment(ws)
    target = exp.target
    table_key = f"{key}_sources_{target}_{state.experiment_version()}"
    base_key = f"{key}_sources_base"
    base = st.session_state.get(base_key)
    if table_key not in st.session_state or not base or base[0] != table_key:
        base = (table_key, exp.weights)   # the table's rows, fixed while it is being edited
        st.session_state[base_key] = base
    weights = dict(base[1])
    others = [l for l in ws.zoo.locales if l != target]
    others = sorted(others, key=lambda l: (l not in weights, -float(weights.get(l, 0.0)), l))  # chosen first
    frame = pd.DataFrame({"source": others, "use": [l in weights for l in others],
                          "weight": [round(float(weights.get(l, 0.0)), 4) for l in others]})
    st.caption(f"Sources and weights {exp.origin_text(len(others))}. Weights are normalised to sum 1. The target's "
               "own model is never a source (leave-one-out).")
    for note in state.experiment_notes():
        st.caption(f"ℹ️ {note}")
    edited = st.data_editor(
        frame, key=table_key, hide_index=True, disabled=["source"],
        width="stretch", height=min(500, 3 + 35 * (len(others) + 1)),
        column_config={"source": st.column_config.TextColumn("source", help="; ".join(
                           xp.language(l) for l in others)),
                       "use": st.column_config.CheckboxColumn("use", width="small"),
                       "weight": st.column_config.NumberColumn("weight", min_value=0.0, format="%.4f")})
    chosen = edited[edited["use"]]
    sources = [str(s) for s in chosen["source"]]
    raw, note = ticked_weights(ws, target, weights, sources, [float(w) for w in chosen["weight"].fillna(0.0)],
                               features=exp.features, sinkhorn_iters=exp.sinkhorn_iters, weighting=exp.weighting)
    picked = tuple(zip(sources, raw))
    rounded = lambda pairs: tuple((s, round(float(w), 4)) for s, w in pairs)  # noqa: E731
    if not _same_weights(rounded(picked), rounded(exp.weights)):
        state.set_experiment(replace(exp, weights=picked, origin=xp.EDITED), bump=False)
    total = sum(raw)
    if sources and total > 0:
        st.caption((f"{note}; " if note else "") + "normalised: "
                   + ", ".join(f"{s} {w / total:.3f}" for s, w in zip(sources, raw)))
    elif note:
        st.caption(note)
    return sources, raw


def weighting_radio(ws, key: str, where=None) -> str:
    """How the sources' weights are derived (engine.experiments.WEIGHTINGS, the CLI's --weighting),
    one choice for every page. Predicted transfer needs every zoo model's validation scores: when
    they are not cached, they are computed as a job, shown here, and the weights follow."""
    from engine.experiments import WEIGHTINGS

    exp = state.experiment(ws, derive=False)
    widget_key = f"{key}_weighting"
    seed(widget_key, exp.weighting)
    (where or st).radio("Weighting", list(WEIGHTINGS), key=widget_key, horizontal=True,
                format_func=lambda w: xp.WEIGHTING_TEXT.get(w, w),
                on_change=lambda: state.change_weighting(st.session_state[widget_key]),
                help="how the sources and their weights are chosen (as the CLI's --weighting): URIEL "
                     "similarity + Sinkhorn, equal weights over URIEL's top-K, or transfer predicted from "
                     "the zoo's zero-shot validation scores. Shared by every page")
    current = state.experiment(ws).weighting  # derives the weights under a newly chosen weighting
    if current == "predicted" and not state.predicted_ready(ws):
        from engine.store import ACTIVE

        from . import runs as runs_view
        from engine import tasks

        active = [r for r in state.store().runs(kind="nxn", status=ACTIVE, limit=5)
                  if (r.get("params") or {}).get("split") == "validation"]
        with where or st.container():
            st.info("Predicted transfer is fitted on every zoo model's zero-shot validation scores; "
                    "computing them once (a job), then the weights follow.")
            with state.engine_errors():
                run_id = active[0]["id"] if active else tasks.submit_nxn(state.runner(), ws, "validation")
            runs_view.watch(run_id, key=f"{key}_predicted")
    return current


def recipe_columns(ws, key: str):
    """The left column of a recipe (target, weighting, sources, weights) and the right one for the
    method's settings: (settings column, target, sources, weights)."""
    recipe, settings = st.columns([2, 3], gap="large")
    with recipe:
        target = target_picker(ws, key)
        weighting_radio(ws, key)
        sources, weights = sources_editor(ws, key)
    return settings, target, sources, weights


def method_picker(registry, names: Sequence[str], label: str, key: str, default: str = "", where=None, **kw) -> str:
    """A method selectbox that shows display titles ('Breadcrumbs-TIES') and returns the id."""
    names = list(names)
    index = names.index(default) if default in names else 0
    return (where or st).selectbox(label, names, index=index, key=key,
                                   format_func=lambda n: registry.get(n).title, **kw)


def params_text(n: int) -> str:
    """A parameter count the one way every page writes it: '12.3 M', '278 M', '1.2 B'."""
    for unit, size in (("B", 1e9), ("M", 1e6), ("k", 1e3)):
        if n >= size:
            value = n / size
            return f"{value:.1f} {unit}" if value < 100 else f"{value:.0f} {unit}"
    return str(int(n))


CHART_CONFIG = {"displaylogo": False, "modeBarButtonsToRemove": ["select2d", "lasso2d", "autoScale2d"]}


def chart(fig, key: str, where=None) -> None:
    """A plotly figure, full width, with a slim toolbar (PNG download stays)."""
    (where or st).plotly_chart(fig, key=key, config=CHART_CONFIG, width="stretch")
