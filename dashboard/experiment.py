"""The *current experiment* every page works on: target, sources and weights, URIEL feature set,
top-K and Sinkhorn iterations. Pure logic (no streamlit): parsing and writing the query parameters
that keep it across reloads, checking it against the open zoo, and deriving the URIEL weights.
``dashboard.state`` keeps the one canonical copy in the session.

Query parameters (all optional; anything unknown is dropped with a note, never an error page):
``target=de-DE&sources=nl-NL:0.5,en-US:0.3&features=syntax_knn&k=5&sinkhorn=20&weighting=uriel``.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, replace
from typing import Dict, List, Mapping, Optional, Sequence, Tuple

from engine.experiments import WEIGHTINGS
from engine.languages import DEFAULT_FEATURES, NAMES, parse_features

DEFAULT_TOP_K = 5
DEFAULT_SINKHORN = 20
MAX_SINKHORN = 100
QUERY_KEYS = ("target", "sources", "features", "k", "sinkhorn", "weighting")
# how each weighting (engine.experiments.WEIGHTINGS, the CLI's --weighting) is named on the pages
WEIGHTING_TEXT = {"uriel": "URIEL + Sinkhorn", "equal": "equal (URIEL top-K)", "predicted": "predicted transfer"}

# how the weights came about (shown beside the sources table)
URIEL = "uriel"            # derived from target, features, K and Sinkhorn
SIMILARITY = "similarity"  # handed over by "Use these sources" (possibly a restricted pool)
EDITED = "edited"          # ticked / typed in a sources table
QUERY = "query"            # read from the page address
ORIGIN_TEXT = {URIEL: "from URIEL ({features}, top-{k}, Sinkhorn {iters})",
               "equal": "equal over URIEL's top-{k} ({features})",
               "predicted": "from predicted transfer (top-{k})",
               SIMILARITY: "from the Similarity page", EDITED: "as edited", QUERY: "from the page address"}


@dataclass(frozen=True)
class Experiment:
    """What the next merge / ensemble / evolution is for. ``weights`` keeps the sources in order."""

    target: str
    weights: Tuple[Tuple[str, float], ...] = ()
    features: str = DEFAULT_FEATURES
    top_k: int = DEFAULT_TOP_K
    sinkhorn_iters: int = DEFAULT_SINKHORN
    origin: str = URIEL
    weighting: str = "uriel"  # one of engine.experiments.WEIGHTINGS: how derived weights are chosen

    @property
    def sources(self) -> List[str]:
        return [s for s, _ in self.weights]

    @property
    def weight_map(self) -> Dict[str, float]:
        return dict(self.weights)

    def origin_text(self, available: int = 0) -> str:
        """How the weights came about; ``available``: the number of possible sources (K is at most that)."""
        origin = self.weighting if self.origin == URIEL and self.weighting != "uriel" else self.origin
        return ORIGIN_TEXT.get(origin, origin).format(
            features=self.features, k=self.k_used(available), iters=self.sinkhorn_iters)

    def k_used(self, available: int = 0) -> int:
        """Top-K as applied: never more than the sources there are."""
        return min(self.top_k, available) if available > 0 else self.top_k


def language(locale: Optional[str]) -> str:
    """'de-DE (German)': how a target is named in every picker and caption."""
    if not locale:
        return "–"
    name = NAMES.get(locale)
    return f"{locale} ({name})" if name else str(locale)


def sources_text(weights: Sequence[Tuple[str, float]] | Mapping[str, float], digits: int = 2) -> str:
    """'nl-NL 0.37, en-US 0.34' (weights normalised to sum 1)."""
    pairs = list(weights.items()) if isinstance(weights, Mapping) else list(weights)
    total = sum(w for _, w in pairs) or 1.0
    return ", ".join(f"{s} {w / total:.{digits}f}" for s, w in pairs) or "no sources"


def describe(exp: Experiment) -> str:
    """One line: 'de-DE (German) ← nl-NL 0.37, en-US 0.34, es-ES 0.29'."""
    return f"{language(exp.target)} ← {sources_text(exp.weights)}"


# ---- query parameters ---------------------------------------------------------------------------
def _number(text: str) -> str:
    return f"{float(text):.6g}"


def to_query(exp: Experiment) -> Dict[str, str]:
    """The experiment as short, readable query parameters."""
    return {"target": exp.target,
            "sources": ",".join(f"{s}:{_number(w)}" for s, w in exp.weights),
            "features": exp.features, "k": str(exp.top_k), "sinkhorn": str(exp.sinkhorn_iters),
            "weighting": exp.weighting}


def from_query(params: Mapping[str, object]) -> Tuple[dict, List[str]]:
    """The fields the parameters give (keys of :class:`Experiment`) and a note per value dropped."""
    def text(key: str) -> str:
        value = params.get(key)
        if isinstance(value, (list, tuple)):
            value = value[-1] if value else ""
        return str(value).strip() if value is not None else ""

    fields: dict = {}
    notes: List[str] = []
    if text("target"):
        fields["target"] = text("target")
    if text("features"):
        try:
            fields["features"] = "+".join(parse_features(text("features")))
        except ValueError as exc:
            notes.append(f"address: {exc}")
    for key, name, low, high in (("k", "top_k", 1, 10_000), ("sinkhorn", "sinkhorn_iters", 0, MAX_SINKHORN)):
        if text(key):
            try:
                value = int(text(key))
                if not low <= value <= high:
                    raise ValueError
                fields[name] = value
            except ValueError:
                notes.append(f"address: {key}={text(key)!r} is not a whole number in [{low}, {high}]; ignored")
    if text("weighting"):
        if text("weighting") in WEIGHTINGS:
            fields["weighting"] = text("weighting")
        else:
            notes.append(f"address: weighting={text('weighting')!r} is not one of {', '.join(WEIGHTINGS)}; ignored")
    if text("sources"):
        weights = []
        for item in text("sources").split(","):
            loc, _, raw = item.strip().partition(":")
            try:
                w = float(raw) if raw else 1.0
                if not math.isfinite(w) or w < 0:
                    raise ValueError
            except ValueError:
                notes.append(f"address: source {item.strip()!r} needs 'locale:weight' with a weight ≥ 0; ignored")
                continue
            if loc.strip():
                weights.append((loc.strip(), w))
        if weights:
            fields["weights"] = tuple(weights)
            fields["origin"] = QUERY
    return fields, notes


# ---- checking against the zoo -------------------------------------------------------------------
def validate(exp: Experiment, targets: Sequence[str], locales: Sequence[str]) -> Tuple[Experiment, List[str]]:
    """The experiment made valid for a zoo (``targets``: locales with test data, ``locales``: the
    zoo's models), and a note for each thing changed. An unknown target becomes the first target
    (and its weights must be derived again: they come back empty)."""
    notes: List[str] = []
    if not targets:
        return exp, ["the dataset has no locale with a test split"]
    if exp.target not in targets:
        if exp.target:
            notes.append(f"target {exp.target!r} is not a target of this zoo ({', '.join(targets)}); "
                         f"using {targets[0]}")
        return replace(exp, target=targets[0], weights=(), origin=URIEL), notes
    kept = tuple((s, w) for s, w in exp.weights if s in locales and s != exp.target)
    dropped = [s for s, _ in exp.weights if s not in locales or s == exp.target]
    if dropped:
        notes.append(f"source(s) {', '.join(dropped)} dropped: not a model of this zoo, or the target itself")
    if exp.top_k < 1 or not 0 <= exp.sinkhorn_iters <= MAX_SINKHORN:
        notes.append("top-K and Sinkhorn reset to their defaults (out of range)")
        exp = replace(exp, top_k=DEFAULT_TOP_K, sinkhorn_iters=DEFAULT_SINKHORN)
    if exp.weights and not kept:  # nothing usable left: derive them again
        return replace(exp, weights=(), origin=URIEL), notes
    return replace(exp, weights=kept), notes


def uriel_weights(exp: Experiment, locales: Sequence[str],
                  pool: Optional[Sequence[str]] = None) -> Tuple[Tuple[Tuple[str, float], ...], str]:
    """The URIEL weights for the experiment's target and settings over the zoo's other models (or
    ``pool``), and '' — or equal weights and why, when URIEL cannot weigh this target."""
    from engine.languages import target_weights

    others = [l for l in (pool if pool is not None else locales) if l != exp.target]
    try:
        weights = target_weights(exp.target, sources=others, features=exp.features, top_k=exp.top_k,
                                 sinkhorn_iters=exp.sinkhorn_iters)
        return tuple(weights.items()), ""
    except Exception as exc:  # a locale URIEL does not know, no similarity: equal weights
        reason = str(exc.args[0]) if isinstance(exc, KeyError) and exc.args else str(exc)
        return tuple((l, 1.0 / len(others)) for l in others) if others else (), f"equal weights ({reason})"


def with_target(exp: Experiment, target: str) -> Experiment:
    """A new target: its sources and weights must be derived again (URIEL), settings kept."""
    return replace(exp, target=target, weights=(), origin=URIEL) if target != exp.target else exp


def with_weighting(exp: Experiment, weighting: str) -> Experiment:
    """Another weighting (as the CLI's --weighting): the weights are derived again under it."""
    if weighting == exp.weighting:
        return exp
    return replace(exp, weighting=weighting, weights=(), origin=URIEL)


def with_settings(exp: Experiment, features: str, top_k: int, sinkhorn_iters: int) -> Experiment:
    """New URIEL settings: the weights are derived again from them (hand edits are replaced)."""
    if (features, top_k, sinkhorn_iters) == (exp.features, exp.top_k, exp.sinkhorn_iters):
        return exp
    return replace(exp, features=features, top_k=int(top_k), sinkhorn_iters=int(sinkhorn_iters), weights=(),
                   origin=URIEL)
