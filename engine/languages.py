"""MASSIVE locales, their URIEL vectors (lang2vec), and the similarity -> weights pipeline.

Weights for a target follow MergingUriel's order (``weigh_sources`` does steps 2-5):
  1. universe = the target plus the available sources (default: the other 51 locales), in locale order;
  2. cosine similarity of URIEL vectors; negative cosines clipped to 0 ("unrelated": Sinkhorn needs a
     nonnegative matrix; URIEL values are >= 0 so real data never has any); the diagonal set to 0;
  3. top-K per row: exactly K largest off-diagonal entries kept, rest 0. Ties (similarities equal
     to 12 decimals: URIEL's kNN-imputed vectors give exact ties, e.g. fr-FR, pl-PL and ru-RU all
     at 0.8648 from pt-PT) are broken explicitly: in the target's row by ``tie_break`` (a score
     per locale, higher first: e.g. predicted transfer from ``engine.transfer``) when given, then
     by locale name (alphabetical) — in every other row by locale name; a tie at the K boundary
     is named in the result's notes;
  4. Sinkhorn over the whole filtered matrix: ``sinkhorn_iters`` rounds of row then column
     normalisation (0 rounds = the filtered similarities themselves);
  5. the target's row, zero entries dropped, renormalised to sum 1, sorted descending.
The universe is the locales that have models, as in MergingUriel (its matrix covers the languages
with models), so "restrict to the available models" happens before top-K: K sources are always
chosen among the available ones, and with fewer than K available all of them are used.

lang2vec is imported once to build a small on-disk cache (``uriel_vectors.npz`` in ``cache/`` or
``$FUSION_CACHE_DIR``); later processes read only that file. Cosine treats missing URIEL values
('--') pairwise (each pair compared on the features both have) and gives a zero vector similarity 0
with every other locale and 1 with itself, so no matrix ever holds NaN.
"""
from __future__ import annotations

import difflib
import hashlib
import json
import os
import warnings
from dataclasses import dataclass, field, replace
from importlib import metadata
from pathlib import Path
from typing import Dict, Iterable, List, Optional, Sequence, Tuple, Union

import numpy as np
import pandas as pd

from .paths import CACHE_ENV, default_cache_dir  # noqa: F401  (their home is engine.paths)
from .similarity import (_check_int, _square, _top_indices, cosine_similarity, sinkhorn,  # noqa: F401
                         tie_notes, top_k_filter)
from .locales import FALLBACK_ISO, ISO, LOCALES, NAMES  # noqa: F401  (their home: engine.locales)
from .npz_cache import TableMemo
from .uriel_plus import URIEL_PLUS_SETS, distance_of, notes as uriel_plus_notes

FEATURE_SETS: Tuple[str, ...] = ("syntax_knn", "phonology_knn", "inventory_knn", "fam", "geo")
# URIEL+'s distances (engine.uriel_plus) as a second typology source; similarity = 1 − distance
ALL_FEATURE_SETS: Tuple[str, ...] = FEATURE_SETS + URIEL_PLUS_SETS
DEFAULT_FEATURES = "syntax_knn"
CACHE_FILE = "uriel_vectors.npz"
_FORMAT = 1


class UnknownLocaleError(ValueError):
    """A locale that is not one of the 52 MASSIVE locales; carries close matches to suggest."""

    def __init__(self, locale: object, suggestions: Sequence[str] = ()):
        self.locale = locale
        self.suggestions = tuple(suggestions)
        hint = f"; did you mean {', '.join(self.suggestions)}?" if self.suggestions else ""
        super().__init__(f"unknown locale {locale!r}{hint} (MASSIVE locales look like 'de-DE'; "
                         f"list them with `python -m engine locales`)")


class UnknownFeatureSetError(ValueError):
    """A feature-set name that is not offered."""


class NoSimilarityError(ValueError):
    """The target is similar to none of the sources under a feature set, so there are no weights."""


class UrielUnavailableError(ImportError):
    """lang2vec (or the pkg_resources it imports) is missing and no cache file exists yet."""


def resolve_locale(value: object) -> str:
    """The canonical MASSIVE locale for ``value`` ('de_de' -> 'de-DE'), or UnknownLocaleError."""
    if isinstance(value, str):
        text = value.strip().replace("_", "-")
        for loc in LOCALES:
            if loc.lower() == text.lower():
                return loc
        lang = text.split("-")[0].lower()
        hits = [loc for loc in LOCALES if loc.split("-")[0] == lang]
        if len(text) >= 3:
            hits += [loc for loc in LOCALES if text.lower() in NAMES[loc].lower()]
        lowered = {loc.lower(): loc for loc in LOCALES}
        hits += [lowered[m] for m in difflib.get_close_matches(text.lower(), lowered, n=3, cutoff=0.5)]
        raise UnknownLocaleError(value, list(dict.fromkeys(hits))[:5])
    raise UnknownLocaleError(value)


def locale_table() -> List[Dict[str, str]]:
    """One row per MASSIVE locale: locale, ISO 639-3 code, English name."""
    return [{"locale": loc, "iso": ISO[loc], "name": NAMES[loc]} for loc in LOCALES]


def parse_features(features: Union[str, Sequence[str]] = DEFAULT_FEATURES) -> Tuple[str, ...]:
    """Feature-set names from 'a+b' (or a list); lang2vec concatenates them in that order."""
    parts = features.split("+") if isinstance(features, str) else list(features)
    parts = [p.strip() if isinstance(p, str) else p for p in parts]
    valid = f"valid: {', '.join(ALL_FEATURE_SETS)}, or several joined with '+'"
    if not parts or any(not p for p in parts):
        raise UnknownFeatureSetError(f"empty feature set in {features!r}; {valid}")
    for part in parts:
        if part == "learned":
            raise UnknownFeatureSetError("lang2vec's 'learned' set needs unpickling and is not "
                                         f"offered; {valid}")
        if part not in ALL_FEATURE_SETS:
            raise UnknownFeatureSetError(f"unknown feature set {part!r}; {valid}")
    if len(set(parts)) != len(parts):
        raise UnknownFeatureSetError(f"feature set repeated in {features!r}; {valid}")
    return tuple(parts)


# ---------------------------------------------------------------- URIEL vectors and their cache

# (cache file, sets) -> (the typology tables it was computed from, the matrix)
_similarities: Dict[Tuple[str, str], Tuple[tuple, np.ndarray]] = {}


def _installed_version() -> str:
    try:
        return metadata.version("lang2vec")
    except metadata.PackageNotFoundError:
        return "absent"


def _cache_key() -> str:
    """Everything that changes the tables: format, lang2vec's version, locale codes, sets."""
    spec = [_FORMAT, _installed_version(), sorted(ISO.items()), sorted(FALLBACK_ISO.items()), FEATURE_SETS]
    return hashlib.sha256(json.dumps(spec).encode()).hexdigest()[:16]


def _import_lang2vec():
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # pkg_resources announces its own deprecation
        try:
            import pkg_resources  # noqa: F401  (lang2vec needs it at import time)
        except ImportError as exc:
            raise UrielUnavailableError(
                "lang2vec needs pkg_resources, which setuptools 82 removed: "
                "pip install 'setuptools<82' (requirements.txt pins it)") from exc
        try:
            import lang2vec.lang2vec as l2v
        except ImportError as exc:
            raise UrielUnavailableError(f"lang2vec is not importable ({exc}): "
                                        "pip install lang2vec==1.1.2") from exc
    return l2v


def _compute_tables() -> Dict[str, np.ndarray]:
    """Vectors of all 52 locales for every offered set, straight from lang2vec ('--' -> NaN):
    ``<set>.values`` (locale rows), ``<set>.names`` (columns), ``<set>.iso`` (code used per locale).

    Columns that are zero or missing for every locale are dropped: they change no cosine."""
    l2v = _import_lang2vec()
    codes = sorted(set(ISO.values()) | set(FALLBACK_ISO.values()))
    tables = {}
    for fs in FEATURE_SETS:
        raw = l2v.get_features(codes, fs, header=True)
        by_code = {c: np.array([np.nan if v == "--" else float(v) for v in raw[c]], np.float32)
                   for c in codes}
        used = []
        for loc in LOCALES:
            code = ISO[loc]
            if not np.nan_to_num(by_code[code]).any() and code in FALLBACK_ISO:
                code = FALLBACK_ISO[code]
            used.append(code)
        values = np.vstack([by_code[c] for c in used])
        keep = (np.nan_to_num(values) != 0).any(axis=0)
        tables[f"{fs}.values"] = values[:, keep]
        tables[f"{fs}.names"] = np.array([str(n) for n in raw["CODE"]])[keep]
        tables[f"{fs}.iso"] = np.array(used)
    return tables


def _required() -> List[str]:
    return [f"{fs}.{part}" for fs in FEATURE_SETS for part in ("values", "names", "iso")]


_memo = TableMemo(CACHE_FILE, _cache_key, _compute_tables, "URIEL", _required)


def _read(path: Path) -> Optional[Dict[str, np.ndarray]]:
    return _memo.read(path)


def _cache_path(cache_dir: Union[str, os.PathLike, None]) -> Path:
    return _memo.path(cache_dir)


def build_cache(cache_dir: Union[str, os.PathLike, None] = None, force: bool = False) -> Path:
    """Makes sure the vector cache exists (building it is the one step that imports lang2vec,
    ~5 s); ``force`` rebuilds it. Returns the file's path."""
    _memo.tables(cache_dir, force)
    return _cache_path(cache_dir)


def clear_memory_cache() -> None:
    """Forgets the in-process copies; the next call reads the disk cache again."""
    _memo.clear()
    _similarities.clear()


def _locales_arg(locales: Optional[Iterable[str]]) -> List[str]:
    if locales is None:
        return list(LOCALES)
    if isinstance(locales, str):
        locales = [locales]
    return list(dict.fromkeys(resolve_locale(loc) for loc in locales))


def feature_vectors(features: Union[str, Sequence[str]] = DEFAULT_FEATURES,
                    locales: Optional[Iterable[str]] = None, cache_dir=None) -> pd.DataFrame:
    """URIEL vectors (locale rows, feature columns; NaN = missing), sets concatenated in order."""
    sets = parse_features(features)
    if set(sets) & set(URIEL_PLUS_SETS):
        raise UnknownFeatureSetError(f"{features!r}: URIEL+ sets are distances, not vectors; use "
                                     "similarity_matrix")
    tables = _memo.tables(cache_dir)
    values = np.hstack([tables[f"{fs}.values"] for fs in sets]).astype(np.float64)
    names = [str(n) for fs in sets for n in tables[f"{fs}.names"]]
    return pd.DataFrame(values, index=list(LOCALES), columns=names).loc[_locales_arg(locales)]


def vector_sources(features: Union[str, Sequence[str]] = DEFAULT_FEATURES,
                   cache_dir=None) -> Dict[Tuple[str, str], str]:
    """(locale, set) -> the fallback ISO code whose vector stands in for the locale's own."""
    sets = [fs for fs in parse_features(features) if fs in FEATURE_SETS]
    tables = _memo.tables(cache_dir) if sets else {}
    return {(loc, fs): str(code) for fs in sets
            for loc, code in zip(LOCALES, tables[f"{fs}.iso"]) if code != ISO[loc]}


# ------------------------------------------------------------------------- similarity and weights

def similarity_matrix(locales: Optional[Iterable[str]] = None,
                      features: Union[str, Sequence[str]] = DEFAULT_FEATURES,
                      cache_dir=None) -> pd.DataFrame:
    """Cosine similarity of URIEL vectors (locale index and columns), all 52 locales by default.

    lang2vec sets joined with '+' are concatenated first (as lang2vec does); a URIEL+ set adds its
    1 − distance; several parts are averaged (a pair one part cannot compare counts 0 there)."""
    sets = parse_features(features)
    chosen = _locales_arg(locales)
    from . import uriel_plus

    vector_sets = [fs for fs in sets if fs in FEATURE_SETS]
    plus_sets = [fs for fs in sets if fs in URIEL_PLUS_SETS]
    # the tables this matrix comes from: a rebuilt or re-read cache makes a new matrix
    used = ((_memo.tables(cache_dir),) if vector_sets else ()) + \
        ((uriel_plus.tables(cache_dir),) if plus_sets else ())
    key = (str(_cache_path(cache_dir).resolve()), "+".join(sets))
    known = _similarities.get(key)
    if known is None or any(a is not b for a, b in zip(known[0], used)):
        parts = [cosine_similarity(feature_vectors(vector_sets, cache_dir=cache_dir).to_numpy())] \
            if vector_sets else []
        parts += [uriel_plus.similarity_matrix(distance_of(fs), cache_dir).to_numpy() for fs in plus_sets]
        known = _similarities[key] = (used, np.mean(parts, axis=0))
    full = pd.DataFrame(known[1], index=list(LOCALES), columns=list(LOCALES))
    return full.loc[chosen, chosen].copy()


@dataclass(frozen=True)
class SimilarityResult:
    """Everything a view needs: the heatmap (``matrix``), the neighbours bar chart, the weights."""

    target: str
    features: str
    top_k: int
    sinkhorn_iters: int
    matrix: pd.DataFrame          # cosine similarity over target + sources
    balanced: pd.DataFrame        # after clipping, top-K and Sinkhorn
    neighbours: Tuple[Tuple[str, float], ...]  # the target's kept top-K: (locale, similarity)
    weights: Dict[str, float]     # source -> weight, sums to 1, descending
    notes: Tuple[str, ...] = ()
    # the same row before Sinkhorn (top-K similarities, normalised): what Sinkhorn changed
    unbalanced_weights: Dict[str, float] = field(default_factory=dict)

    def table(self) -> pd.DataFrame:
        """Neighbours in similarity order with name, similarity, the weight before Sinkhorn and the
        final ``weight`` (0 for those left out). Column names never depend on the settings, so
        Sinkhorn 0 (where both weights coincide) still gives two distinct columns."""
        return pd.DataFrame([{"locale": loc, "name": NAMES.get(loc, loc), "similarity": sim,
                              "weight before Sinkhorn": self.unbalanced_weights.get(loc, 0.0),
                              "weight": self.weights.get(loc, 0.0)} for loc, sim in self.neighbours],
                            columns=["locale", "name", "similarity", "weight before Sinkhorn", "weight"])


def weigh_sources(similarity: pd.DataFrame, target: str, top_k: int = 5, sinkhorn_iters: int = 20,
                  features: str = "custom",
                  tie_break: Optional[Dict[str, float]] = None) -> SimilarityResult:
    """Steps 2-5 of the module pipeline on any similarity DataFrame whose index includes target;
    ``tie_break`` (locale -> score, higher first) orders tied neighbours before locale name does."""
    k = _check_int("top_k", top_k, 1)
    iters = _check_int("sinkhorn_iters", sinkhorn_iters, 0)
    names = [str(n) for n in similarity.index]
    if list(similarity.columns) != list(similarity.index):
        raise ValueError("the similarity matrix needs the same locales as index and columns")
    if target not in names:
        raise UnknownLocaleError(target, difflib.get_close_matches(target, names, n=3))
    if len(names) < 2:
        raise ValueError(f"no source locales to weight for target {target}")
    notes = []
    if k > len(names) - 1:
        notes.append(f"only {len(names) - 1} sources available: using all of them (top_k={k})")
        k = len(names) - 1
    values = np.clip(_square(similarity.to_numpy(), "weigh_sources"), 0.0, None)
    np.fill_diagonal(values, 0.0)
    t = names.index(target)
    secondary = np.zeros_like(values)
    if tie_break:
        secondary[t] = [float(tie_break.get(n, -1e300)) for n in names]  # unscored: last
    filtered = top_k_filter(values, k, secondary)
    balanced = sinkhorn(filtered, iters)
    kept = _top_indices(values[t], t, k, secondary[t])
    notes.extend(tie_notes(values[t], t, kept, names, k, "predicted transfer, then locale name"
                           if tie_break else "locale name, alphabetically"))
    row = balanced[t]
    if row.sum() <= 0:
        raise NoSimilarityError(
            f"{target} has similarity 0 with every source under '{features}' (no shared "
            "feature, e.g. no relative in the family tree): no weights; choose another feature "
            "set or concatenate one, e.g. 'syntax_knn+fam'")
    ranked = sorted((j for j in kept if row[j] > 0), key=lambda j: -row[j])  # ties: neighbour order
    weights = {names[j]: float(row[j] / row.sum()) for j in ranked}
    before = filtered[t]
    unbalanced = {names[j]: float(before[j] / before.sum()) for j in ranked} if before.sum() > 0 else {}
    dropped = [names[j] for j in kept if row[j] <= 0]
    if dropped:
        notes.append(f"{', '.join(dropped)} in the top-{k} but with similarity 0: no weight")
    return SimilarityResult(
        target=target, features=features, top_k=k, sinkhorn_iters=iters,
        matrix=similarity.copy(), balanced=pd.DataFrame(balanced, index=names, columns=names),
        neighbours=tuple((names[j], float(similarity.iat[t, j])) for j in kept),
        weights=weights, notes=tuple(notes), unbalanced_weights=unbalanced)


def target_similarity(target: str, sources: Optional[Iterable[str]] = None,
                      features: Union[str, Sequence[str]] = DEFAULT_FEATURES, top_k: int = 5,
                      sinkhorn_iters: int = 20, cache_dir=None,
                      tie_break: Optional[Dict[str, float]] = None) -> SimilarityResult:
    """URIEL weights for ``target`` over ``sources`` (default: every other locale), with the
    matrices and neighbours behind them. The target is never its own source (leave-one-out).
    Top-K ties: ``tie_break`` scores (higher first), then locale name; see the module doc."""
    target = resolve_locale(target)
    sets = parse_features(features)
    _check_int("top_k", top_k, 1)
    _check_int("sinkhorn_iters", sinkhorn_iters, 0)
    from .limits import check_setting

    check_setting("top_k", top_k)           # declared ranges (engine/limits.py)
    check_setting("sinkhorn_iters", sinkhorn_iters)
    notes = []
    pool = [loc for loc in LOCALES if loc != target] if sources is None else _locales_arg(sources)
    if target in pool:
        pool.remove(target)
        notes.append(f"{target} left out of its own sources (leave-one-out)")
    if not pool:
        raise ValueError(f"no source locales to weight for target {target}: give at least one "
                         "source other than the target")
    universe = [loc for loc in LOCALES if loc == target or loc in pool]
    sim = similarity_matrix(universe, sets, cache_dir)
    result = weigh_sources(sim, target, top_k, sinkhorn_iters, "+".join(sets), tie_break)
    chosen = {loc for loc, _ in result.neighbours} | {target}
    for (loc, fs), code in vector_sources(sets, cache_dir).items():
        if loc in chosen:
            notes.append(f"{loc}: URIEL has no '{fs}' vector for {ISO[loc]}; {code}'s is used")
    notes.extend(uriel_plus_notes(target, pool, sets, cache_dir))
    twins = [loc for loc, _ in result.neighbours if ISO[loc] == ISO[target]]
    if twins:
        notes.append(f"{', '.join(twins)}: same ISO code as {target} ({ISO[target]}), identical "
                     "URIEL vectors")
    return replace(result, notes=tuple(notes) + result.notes)


def target_weights(target: str, sources: Optional[Iterable[str]] = None,
                   features: Union[str, Sequence[str]] = DEFAULT_FEATURES, top_k: int = 5,
                   sinkhorn_iters: int = 20, cache_dir=None,
                   tie_break: Optional[Dict[str, float]] = None) -> Dict[str, float]:
    """source locale -> weight (sums to 1, descending); see ``target_similarity``."""
    return target_similarity(target, sources, features, top_k, sinkhorn_iters, cache_dir,
                             tie_break).weights
