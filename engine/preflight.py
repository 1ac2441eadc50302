"""Everything a candidate run would refuse, said before it starts: one list the pages show and the
engine's own run path (``check_candidate``) raises from, so a page and the engine cannot disagree.

Each problem is one line naming the value and what to do. The method's needs come from its
registered :class:`~engine.registry.Traits` (sources range, base, data), its parameters from its
``Param`` schema; nothing here is typed per method.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Iterable, List, Optional, Type

import numpy as np

from .data.base import DataError
from .zoo import ZooError

if TYPE_CHECKING:
    from .workspace import Workspace

KINDS = ("merge", "ensemble")
DATA_MODES = ("target", "sources", "both")  # which language's data data-aware methods and fits read


class CandidateError(ValueError):
    """A recipe that cannot be run as given (unknown source, target among sources, ...)."""


def check_unique_sources(sources: Iterable[str]) -> None:
    """A source named twice would silently get double weight (or, with URIEL weights, be merged
    with itself): refuse it."""
    seen, twice = set(), []
    for s in sources:
        if s in seen and s not in twice:
            twice.append(s)
        seen.add(s)
    if twice:
        raise CandidateError(f"source {', '.join(twice)} is listed more than once: name each source "
                             f"once (to weight one more, give explicit weights)")


@dataclass(frozen=True)
class Problem:
    """One reason a run cannot start as given. ``about`` names the field a page can point at
    (kind, method, sources, weights, base, params, data, settings, export); ``error`` is the
    exception type the engine raises for it (the same type as before the checks were gathered)."""

    text: str
    about: str
    error: Type[ValueError] = ValueError

    def __str__(self) -> str:
        return self.text


def registry_of(kind: str):
    if kind == "merge":
        from .merge import MERGES as registry
    else:
        from .ensemble import ENSEMBLES as registry
    return registry


def preflight(ws: "Workspace", cand, export_path: Optional[Path] = None,
              overwrite: bool = False) -> List[Problem]:
    """Every problem that stops ``cand`` on ``ws`` (empty: it may run). With ``export_path``, the
    export folder is checked too (a page's choice; a run with a bad one still runs and is kept).
    ``cand`` is an :class:`engine.experiments.Candidate`."""
    def problem(text: str, about: str, error: Type[ValueError] = CandidateError) -> None:
        found.append(Problem(text, about, error))

    found: List[Problem] = []
    if cand.kind not in KINDS:
        problem(f"unknown candidate kind '{cand.kind}'; use one of {', '.join(KINDS)}", "kind")
        return found
    registry = registry_of(cand.kind)
    method = registry.get(cand.method) if cand.method in registry else None
    if method is None:
        problem(f"unknown {cand.kind} method '{cand.method}'; known: {', '.join(registry.names())}", "method")
    _sources(ws, cand, problem)
    _weights(cand, problem)
    if method is not None:
        _method_needs(ws, cand, method, problem)
    _settings(cand, problem)
    _data(ws, cand, method, problem)
    if export_path:
        _export(ws, export_path, overwrite, problem)
    return found


def _sources(ws, cand, problem) -> None:
    if not cand.sources:
        problem("choose at least one source model", "sources")
        return
    try:
        check_unique_sources(cand.sources)
    except CandidateError as exc:
        problem(str(exc), "sources")
    for s in dict.fromkeys(cand.sources):
        if s not in ws.zoo.models:
            problem(f"the zoo has no model for '{s}'; it has: {', '.join(ws.zoo.locales)}", "sources", ZooError)
    if cand.target in cand.sources:
        problem(f"the target {cand.target} is among the sources: its own model may only be a baseline "
                f"(leave-one-out)", "sources")


def _weights(cand, problem) -> None:
    if len(cand.weights) != len(cand.sources):
        problem(f"{len(cand.weights)} weights for {len(cand.sources)} sources", "weights")
        return
    try:
        w = np.asarray(cand.weights, dtype=float)
    except (TypeError, ValueError):
        problem(f"weights must be numbers, got {list(cand.weights)!r}", "weights")
        return
    if cand.sources and (not np.isfinite(w).all() or (w < 0).any() or w.sum() <= 0):
        problem("weights must be finite, non-negative and not all zero", "weights")


def _method_needs(ws, cand, method, problem) -> None:
    """The method's declared traits and parameter schema."""
    traits, n = method.traits, len(cand.sources)
    if cand.sources:
        if traits.max_sources is not None and traits.max_sources == traits.min_sources and n != traits.min_sources:
            problem(f"'{method.name}' combines exactly {traits.min_sources} models; {n} are chosen", "sources")
        elif n < traits.min_sources:
            problem(f"'{method.name}' needs at least {traits.min_sources} sources; {n} chosen", "sources")
        elif traits.max_sources is not None and n > traits.max_sources:
            problem(f"'{method.name}' takes at most {traits.max_sources} sources; {n} chosen", "sources")
    if traits.needs_base:
        base = ws.zoo.base
        if base is None:
            problem(f"'{method.name}' works on task vectors and needs the pretrained base model; this zoo "
                    f"has none (add 'base' on the Setup page, or 'base' in the zoo manifest)", "base")
        elif not Path(base).exists():
            problem(f"'{method.name}' needs the pretrained base model, but the zoo's base {base} does not "
                    f"exist: fix 'base' on the Setup page or in the zoo manifest", "base")
    try:
        resolved = method.resolve(dict(cand.params or {}))
    except ValueError as exc:
        problem(str(exc), "params")
        return
    for p in method.params:
        value = resolved[p.name]
        if p.per_model and isinstance(value, list) and len(value) != n:
            problem(f"{method.name}: parameter '{p.name}' has {len(value)} values but there are {n} "
                    f"source models: give one per source, or a single value", "params")


def _settings(cand, problem) -> None:
    from .limits import check_setting

    if cand.data_mode not in DATA_MODES:
        problem(f"data_mode must be one of {DATA_MODES}, got {cand.data_mode!r}", "settings")
    for name in ("seed", "data_examples"):  # declared ranges (engine/limits.py)
        try:
            check_setting(name, getattr(cand, name), "", CandidateError)
        except CandidateError as exc:
            problem(str(exc), "settings")


def _data(ws, cand, method, problem) -> None:
    """The target's test split, and the splits the method reads before the test (its traits)."""
    def need(locale: str, split: str, why: str, error: Type[ValueError] = DataError) -> None:
        if ws.dataset.has(locale, split):
            return
        try:  # the dataset's own reason names the cause (no such locale, an empty file, ...)
            ws.dataset.get(locale, split)
            reason = f"dataset '{ws.dataset.name}' has no '{split}' split for {locale}"
        except DataError as exc:
            reason = str(exc).split("; choose")[0]
        problem(f"{reason} (the '{split}' split {why}); choose another target or data setting, "
                f"or add that data", "data", error)

    need(cand.target, "test", "is what the candidate is scored on")
    _text_file(cand, method, problem)
    if method is None or (cand.kind == "merge" and not method.traits.needs_data):
        return
    traits = method.traits
    if cand.kind == "merge":
        if "score" in traits.context:
            need(cand.target, "validation", f"'{method.name}' chooses by")
        if "batches" in traits.context:
            if cand.data_mode in ("target", "both"):
                need(cand.target, "validation", f"'{method.name}' reads (statistics from the target)")
            if cand.data_mode in ("sources", "both"):
                for s in dict.fromkeys(cand.sources):
                    if s in ws.zoo.models:
                        need(s, "train", f"'{method.name}' reads (statistics from each source)")
    elif traits.needs_fit:
        if not traits.uses_labels and getattr(cand, "target_text", ""):
            return  # fitted on the user's text file (checked above)
        if not traits.uses_labels:  # fitted on the target's validation texts, labels withheld
            need(cand.target, "validation", f"'{method.name}' is fitted on (its unlabelled texts)")
        elif cand.data_mode == "target":
            need(cand.target, "validation", f"'{method.name}' is fitted on (fit on the target)")
        else:
            for s in dict.fromkeys(cand.sources):
                if s in ws.zoo.models:
                    need(s, "validation", f"'{method.name}' is fitted on (fit on the sources)")


def _text_file(cand, method, problem) -> None:
    """A user's target text file: only for a method that learns on unlabelled target text, and
    readable as UTF-8 sentences (the file's own error otherwise)."""
    from .data.target_text import TargetTextError, read_target_text, reads_target_text

    path = getattr(cand, "target_text", "")
    if not path or method is None:
        return
    if not reads_target_text(cand.kind, method.traits):
        problem(f"'{method.name}' does not learn from unlabelled target text, so the text file {path} "
                f"would not be read: drop it, or choose AdaMerging or entropy-minimised ensemble "
                f"weights", "data")
        return
    try:
        read_target_text(path)
    except TargetTextError as exc:
        problem(str(exc), "data", DataError)


def _export(ws, export_path: Path, overwrite: bool, problem) -> None:
    from .export_guard import ExportError, check_export_dir, workspace_folders

    try:  # the folders no export may touch: the zoo's models, base and data, the cache's store
        check_export_dir(export_path, workspace_folders(ws), overwrite=overwrite)
    except ExportError as exc:
        problem(str(exc), "export", ExportError)


def raise_first(problems: List[Problem]) -> None:
    """The engine's refusal: the first problem, as its exception type (the rest follow it)."""
    if problems:
        first = problems[0]
        rest = "; ".join(p.text for p in problems[1:])
        more = f" (and {len(problems) - 1} more: {rest})" if rest else ""
        raise first.error(first.text + more)
