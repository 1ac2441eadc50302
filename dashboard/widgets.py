"""Controls drawn from declarations: a method's Param schema, and the sources/weights table.

A new merge or ensemble method with a declared schema gets its controls here without a page change.
"""
from __future__ import annotations

import math
from typing import Any, Dict, List, Optional, Sequence, Tuple

import pandas as pd
import streamlit as st

from engine.registry import Method, Param

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
    meta = method.meta
    tags = []
    if meta.get("family"):
        tags.append(f"family: {meta['family']}")
    if meta.get("needs_base"):
        tags.append("needs the pretrained base")
    if meta.get("needs_data"):
        tags.append("data-aware")
    if meta.get("random"):
        tags.append("random (seeded)")
    if meta.get("mergekit"):
        tags.append(f"mergekit: {meta['mergekit']}")
    elif "mergekit" in meta:
        tags.append("no mergekit equivalent")
    if meta.get("min_sources", 1) > 1:
        tags.append(f"at least {meta['min_sources']} sources")
    st.caption(method.summary + ("  \n" + " · ".join(tags) if tags else ""))


# ---- target, sources and weights ------------------------------------------------------------------
def target_picker(ws, key: str) -> str:
    """The target locale, defaulting to the one Similarity handed over."""
    targets = ws.target_locales()
    if not targets:
        st.error("the dataset has no locale with a test split: nothing to evaluate a candidate on")
        st.stop()
    selection = st.session_state.get(state.SELECTION_KEY) or {}
    if f"{key}_target" not in st.session_state and selection.get("target") in targets:
        st.session_state[f"{key}_target"] = selection["target"]
    return st.selectbox("Target language", targets, key=f"{key}_target",
                        help="the language the candidate is built for; its own model is only a baseline")


def _uriel_settings(target: str) -> Dict[str, Any]:
    """The feature set and Sinkhorn iterations Similarity handed over for this target, else defaults."""
    selection = st.session_state.get(state.SELECTION_KEY) or {}
    if selection.get("target") == target:
        return {"features": selection.get("features", "syntax_knn"),
                "sinkhorn_iters": int(selection.get("sinkhorn_iters", 20))}
    return {"features": "syntax_knn", "sinkhorn_iters": 20}


def default_weights(ws, target: str) -> Tuple[Dict[str, float], str]:
    """Similarity's hand-over when it is for this target, else URIEL top-5 with Sinkhorn."""
    selection = st.session_state.get(state.SELECTION_KEY) or {}
    if selection.get("target") == target and selection.get("weights"):
        return dict(selection["weights"]), "from the Similarity page"
    from engine.experiments import suggest_sources

    try:
        return suggest_sources(ws, target), "URIEL syntax_knn, top-5, Sinkhorn 20 (defaults)"
    except Exception as exc:  # a locale URIEL does not know: fall back to equal weights
        others = [l for l in ws.zoo.locales if l != target]
        return {l: 1.0 / len(others) for l in others}, f"equal weights ({state.message(exc)})"


def ticked_weights(ws, target: str, shown: Dict[str, float], sources: List[str], raw: List[float],
                   features: str = "syntax_knn", sinkhorn_iters: int = 20) -> Tuple[List[float], str]:
    """The weights of the ticked sources, and a note. When the ticks differ from the proposed
    sources but no weight was edited, the ticked sources get URIEL weights among themselves (one
    ticked outside the proposal would otherwise keep the 0 it is shown with)."""
    from engine.experiments import source_weights

    edited = any(abs(w - round(float(shown.get(s, 0.0)), 4)) > 1e-9 for s, w in zip(sources, raw))
    if not sources or edited or set(sources) == {s for s, w in shown.items() if w > 0}:
        zero = [s for s, w in zip(sources, raw) if w <= 0]
        return raw, (f"{', '.join(zero)} ticked with weight 0: no part in the result" if zero else "")
    try:
        _, weights = source_weights(ws, target, sources, features=features, sinkhorn_iters=sinkhorn_iters)
        return weights, f"URIEL weights over the {len(sources)} ticked sources ({features}, Sinkhorn {sinkhorn_iters})"
    except Exception as exc:  # a locale URIEL does not know, similarity 0: equal weights, said so
        return [1.0] * len(sources), f"equal weights over the ticked sources ({state.message(exc)})"


def sources_editor(ws, target: str, key: str) -> Tuple[List[str], List[float]]:
    """An editable table of the zoo's models (target left out): use?, weight. Returns the chosen."""
    weights, origin = default_weights(ws, target)
    others = [l for l in ws.zoo.locales if l != target]
    others = sorted(others, key=lambda l: (l not in weights, -float(weights.get(l, 0.0)), l))  # chosen first
    frame = pd.DataFrame({"source": others, "use": [l in weights for l in others],
                          "weight": [float(weights.get(l, 0.0)) for l in others]})  # shown %.4f, kept exact
    version = st.session_state.get("selection_version", 0)
    st.caption(f"Sources and weights {origin}. Weights are normalised to sum 1. The target's own "
               "model is never a source (leave-one-out).")
    edited = st.data_editor(
        frame, key=f"{key}_sources_{target}_{version}", hide_index=True, disabled=["source"],
        width="stretch", height=min(500, 3 + 35 * (len(others) + 1)),
        column_config={"use": st.column_config.CheckboxColumn("use", width="small"),
                       "weight": st.column_config.NumberColumn("weight", min_value=0.0, format="%.4f")})
    chosen = edited[edited["use"]]
    sources = [str(s) for s in chosen["source"]]
    raw, note = ticked_weights(ws, target, weights, sources, [float(w) for w in chosen["weight"].fillna(0.0)],
                               **_uriel_settings(target))
    total = sum(raw)
    if sources and total > 0:
        st.caption((f"{note}; " if note else "") + "normalised: "
                   + ", ".join(f"{s} {w / total:.3f}" for s, w in zip(sources, raw)))
    elif note:
        st.caption(note)
    return sources, raw


def recipe_columns(ws, key: str):
    """The left column of a recipe (target, sources, weights) and the right one for the method's
    settings: (settings column, target, sources, weights)."""
    recipe, settings = st.columns([2, 3], gap="large")
    with recipe:
        target = target_picker(ws, key)
        sources, weights = sources_editor(ws, target, key)
    return settings, target, sources, weights


CHART_CONFIG = {"displaylogo": False, "modeBarButtonsToRemove": ["select2d", "lasso2d", "autoScale2d"]}


def chart(fig, key: str, where=None) -> None:
    """A plotly figure, full width, with a slim toolbar (PNG download stays)."""
    (where or st).plotly_chart(fig, key=key, config=CHART_CONFIG, width="stretch")
