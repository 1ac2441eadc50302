"""URIEL+ (Khan et al., COLING 2025) beside lang2vec: its distances and confidence scores for the
MASSIVE locales, offered as the feature sets ``urielplus_<distance>``.

What is read: urielplus 1.3.2 ships URIEL's database as four ``.npz`` files in
``urielplus/database/original_uriel/``: numeric ``data`` (languages × features × sources, float32,
-1 = missing) and unicode ``feats``, ``langs``, ``sources``. Nothing in them needs pickle. The library
opens them with ``np.load(..., allow_pickle=True)`` and its ``URIELPlus()`` first copies them into its
own package folder, so it is never instantiated here: the files are read with ``allow_pickle=False``
from where the package installed them, and nothing is written there.

What is computed: URIEL+'s own formulas at its defaults. The distance is ``new_distance``: union
aggregation over sources (max of the known values; geographic: their mean), each pair compared on the
features both languages have, angular distance 2·arccos(cos)/π rounded to 4 decimals. The confidence
is ``confidence_score``: agreement between sources and coverage (1 − share missing); a pair's score is
the mean of its two languages'. They are vectorised here because the library's Python loops take
2.6 s per pair for the genetic distance (about 20 min for 52 locales) and 6 s per language for
featural confidence. tests/test_uriel_plus.py checks both against the library on the real files.

Not used: ``integrate_databases()`` (Grambank, SAPhon, BDPROTO...: minutes and GBs) and imputation.
So these are URIEL's raw, not kNN-imputed, values under URIEL+'s distance. Morphological and script
distances are empty without integration and are not offered. A pair with no shared feature (e.g.
phonological for pt-PT: WALS has no P_ feature for por) has no distance: similarity 0, and a note.
"""
from __future__ import annotations

import hashlib
import importlib.util
import json
from importlib import metadata
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np
import pandas as pd

from .locales import FALLBACK_ISO, ISO, LOCALES
from .npz_cache import TableMemo

# distance -> (database file, feature-name prefix or "" for all of that file's features)
_LAYOUT: Dict[str, Tuple[str, str]] = {
    "syntactic": ("features.npz", "S_"), "phonological": ("features.npz", "P_"),
    "inventory": ("features.npz", "INV_"), "featural": ("features.npz", ""),
    "genetic": ("family_features.npz", ""), "geographic": ("geocoord_features.npz", ""),
}
DISTANCES: Tuple[str, ...] = tuple(_LAYOUT)
PREFIX = "urielplus_"
URIEL_PLUS_SETS: Tuple[str, ...] = tuple(PREFIX + d for d in DISTANCES)
CACHE_FILE = "urielplus_distances.npz"
VERSION = "1.3.2"  # the release whose file layout this module reads (requirements.txt pins it)
_FORMAT = 2


class UrielPlusUnavailableError(ImportError):
    """urielplus is not installed and no cache file exists yet."""


class UrielPlusDataError(ValueError):
    """A URIEL+ database file that is not the numeric layout this module reads."""


def distance_of(feature_set: str) -> str:
    """'urielplus_syntactic' -> 'syntactic'."""
    return feature_set[len(PREFIX):]


def database_dir() -> Path:
    """Where urielplus keeps URIEL's original files (found without importing the package)."""
    spec = importlib.util.find_spec("urielplus")
    if spec is None or not spec.origin:
        raise UrielPlusUnavailableError(f"URIEL+ feature sets need urielplus: pip install urielplus=={VERSION} "
                                        "(requirements.txt pins it)")
    return Path(spec.origin).parent / "database" / "original_uriel"


def load_database(name: str, root: Optional[Path] = None) -> Dict[str, np.ndarray]:
    """One of URIEL+'s .npz files, never unpickled: numeric ``data``, unicode names, or an error."""
    path = (root or database_dir()) / name
    try:
        with np.load(path, allow_pickle=False) as npz:
            arrays = {k: npz[k] for k in ("feats", "langs", "sources", "data")}
    except (OSError, KeyError) as exc:
        raise UrielPlusDataError(f"{path}: not a URIEL+ database file ({exc}); reinstall "
                                 f"urielplus=={VERSION}") from exc
    except ValueError as exc:  # numpy refuses object arrays without allow_pickle
        raise UrielPlusDataError(f"{path}: holds an object array, which only unpickling could read; "
                                 f"refused (reinstall urielplus=={VERSION})") from exc
    data = arrays["data"]
    if data.dtype.kind != "f" or data.ndim != 3 or any(arrays[k].dtype.kind != "U" for k in ("feats", "langs", "sources")):
        raise UrielPlusDataError(f"{path}: expected float data (languages × features × sources) and text "
                                 f"names, got data {data.dtype} {data.shape}")
    return arrays


def language_vectors(db: Dict[str, np.ndarray], codes: Sequence[str], distance: str) -> np.ndarray:
    """URIEL+'s ``get_vector``: per language, each feature of the distance's kind aggregated over
    sources (one source: its value; geographic: mean of the known; otherwise the union, i.e. max of
    the known values). Missing -> NaN; a code URIEL+ lacks -> an all-NaN row."""
    prefix = _LAYOUT[distance][1]
    feats = np.array([str(f).startswith(prefix) for f in db["feats"]])
    index = {str(c): i for i, c in enumerate(db["langs"])}
    out = np.full((len(codes), int(feats.sum())), np.nan)
    for row, code in enumerate(codes):
        if code not in index:
            continue
        values = db["data"][index[code]][feats].astype(np.float64)        # features × sources
        known = (values != -1.0) & np.isfinite(values)
        if values.shape[1] == 1:
            agg = values[:, 0]
        elif distance == "geographic":
            agg = np.where(known, values, 0).sum(1) / np.maximum(known.sum(1), 1)
        else:
            agg = np.where(known, values, -np.inf).max(1)
        out[row] = np.where(known.any(1), agg, np.nan)
    return out


def angular_distances(vectors: np.ndarray) -> np.ndarray:
    """URIEL+'s ``new_distance`` between every pair of rows over the features both have; NaN where
    they share none. A zero vector stands in as a constant one, as URIEL+ does."""
    n = len(vectors)
    known = ~np.isnan(vectors)
    out = np.full((n, n), np.nan)
    for i in range(n):
        for j in range(i, n):
            shared = known[i] & known[j]
            if not shared.any():
                continue
            u, v = vectors[i, shared], vectors[j, shared]
            u = u if np.linalg.norm(u) > 0 else np.ones_like(u)
            v = v if np.linalg.norm(v) > 0 else np.ones_like(v)
            cos = np.clip(u @ v / (np.linalg.norm(u) * np.linalg.norm(v)), -1.0, 1.0)
            out[i, j] = out[j, i] = round(float(2 * np.arccos(cos) / np.pi), 4)
    return out


def language_confidence(db: Dict[str, np.ndarray], codes: Sequence[str], distance: str) -> np.ndarray:
    """Per language (rows) its (agreement, coverage), the two halves of URIEL+'s
    ``confidence_score``: mean over the distance's features of the share of known source values
    equal to their most common value (1 when none is known), and 1 − the mean share missing."""
    prefix = _LAYOUT[distance][1]
    feats = np.array([str(f).startswith(prefix) for f in db["feats"]])
    index = {str(c): i for i, c in enumerate(db["langs"])}
    out = np.full((len(codes), 2), np.nan)
    for row, code in enumerate(codes):
        if code not in index:
            continue
        values = db["data"][index[code]][feats].astype(np.float64)
        known = (values != -1.0) & np.isfinite(values)
        agreement = np.ones(len(values))
        for f in np.flatnonzero(known.sum(1) > 1):  # one known value always agrees with itself
            _, counts = np.unique(values[f][known[f]], return_counts=True)
            agreement[f] = counts.max() / known[f].sum()
        missing = 1.0 - known.sum(1) / values.shape[1]
        out[row] = (agreement.mean(), 1.0 - missing.mean()) if len(values) else (0.0, 0.0)
    return out


# ---------------------------------------------------------------- the cache over the 52 locales

def _installed_version() -> str:
    try:
        return metadata.version("urielplus")
    except metadata.PackageNotFoundError:
        return "absent"


def _locales_and_codes() -> Tuple[Tuple[str, ...], List[str]]:
    return LOCALES, [ISO[loc] for loc in LOCALES]


def _with_fallbacks(db: Dict[str, np.ndarray], codes: Sequence[str], distance: str) -> List[str]:
    """The code whose vector each locale uses: its own, or lang2vec's fallback (nob -> nor: URIEL's
    family tree has no entry for Bokmål) where its own is empty, as ``engine.languages`` does."""
    vectors = language_vectors(db, codes, distance)
    empty = ~np.nan_to_num(vectors).any(axis=1)
    return [FALLBACK_ISO[c] if e and c in FALLBACK_ISO else c for c, e in zip(codes, empty)]


def _cache_key() -> str:
    """Everything that changes the tables: format, urielplus's version, locale codes, distances."""
    locales, codes = _locales_and_codes()
    spec = [_FORMAT, _installed_version(), list(zip(locales, codes)), sorted(FALLBACK_ISO.items()), DISTANCES]
    return hashlib.sha256(json.dumps(spec).encode()).hexdigest()[:16]


def _compute() -> Dict[str, np.ndarray]:
    _, codes = _locales_and_codes()
    if _installed_version() != VERSION:
        raise UrielPlusUnavailableError(f"URIEL+ feature sets read urielplus {VERSION}'s files; "
                                        f"installed: {_installed_version()}. pip install urielplus=={VERSION}")
    root = database_dir()
    databases = {name: load_database(name, root) for name in {f for f, _ in _LAYOUT.values()}}
    tables = {}
    for distance, (name, _) in _LAYOUT.items():
        used = _with_fallbacks(databases[name], codes, distance)
        tables[f"{distance}.distance"] = angular_distances(language_vectors(databases[name], used, distance))
        tables[f"{distance}.confidence"] = language_confidence(databases[name], used, distance)
        tables[f"{distance}.code"] = np.array(used)
    return tables


_memo = TableMemo(CACHE_FILE, _cache_key, _compute, "URIEL+")


def _cache_path(cache_dir) -> Path:
    return _memo.path(cache_dir)


def _read(path: Path) -> Optional[Dict[str, np.ndarray]]:
    return _memo.read(path)


def tables(cache_dir=None, force: bool = False) -> Dict[str, np.ndarray]:
    """The cached arrays (``<distance>.distance``, ``.confidence``, ``.code``), built if missing."""
    return _memo.tables(cache_dir, force)


def build_cache(cache_dir=None, force: bool = False) -> Path:
    """Makes sure the URIEL+ distance cache exists (about 15 s from the package's files)."""
    tables(cache_dir, force)
    return _cache_path(cache_dir)


def cache_ready(cache_dir=None) -> bool:
    return _read(_cache_path(cache_dir)) is not None


def distance_matrix(distance: str, cache_dir=None) -> pd.DataFrame:
    """URIEL+ distance between all 52 locales (NaN: no shared feature)."""
    locales, _ = _locales_and_codes()
    values = tables(cache_dir)[f"{_checked(distance)}.distance"]
    return pd.DataFrame(values, index=list(locales), columns=list(locales))


def similarity_matrix(distance: str, cache_dir=None) -> pd.DataFrame:
    """1 − URIEL+ distance; 0 where there is no distance, 1 on the diagonal (as lang2vec's cosine)."""
    sim = 1.0 - distance_matrix(distance, cache_dir)
    values = np.nan_to_num(np.round(sim.to_numpy(), 4), nan=0.0)  # URIEL+'s 4 decimals, no float noise
    np.fill_diagonal(values, 1.0)
    return pd.DataFrame(values, index=sim.index, columns=sim.columns)


def confidence(distance: str, cache_dir=None) -> pd.DataFrame:
    """Per locale: URIEL+'s agreement and coverage for this distance's features."""
    locales, _ = _locales_and_codes()
    values = tables(cache_dir)[f"{_checked(distance)}.confidence"]
    return pd.DataFrame(values, index=list(locales), columns=["agreement", "coverage"])


def pair_confidence(target: str, sources: Sequence[str], distances: Sequence[str],
                    cache_dir=None) -> pd.DataFrame:
    """Per source: the (target, source) pair's agreement and coverage, averaged over ``distances``
    (URIEL+'s confidence_score of a pair is the mean of its two languages')."""
    frames = [confidence(d, cache_dir) for d in distances]
    rows = {s: {c: float(np.mean([(f.at[target, c] + f.at[s, c]) / 2 for f in frames]))
                for c in ("agreement", "coverage")} for s in sources}
    return pd.DataFrame.from_dict(rows, orient="index", columns=["agreement", "coverage"])


def unshared(target: str, sources: Sequence[str], distance: str, cache_dir=None) -> List[str]:
    """Sources with no feature of this distance in common with the target (similarity 0)."""
    row = distance_matrix(distance, cache_dir).loc[target]
    return [s for s in sources if s != target and not np.isfinite(row[s])]


def notes(target: str, pool: Sequence[str], sets: Sequence[str], cache_dir=None) -> List[str]:
    """For each URIEL+ set among ``sets``: fallback codes used, and the sources it cannot compare
    with the target."""
    locales, _ = _locales_and_codes()
    out = []
    for fs in (fs for fs in sets if fs in URIEL_PLUS_SETS):
        used = dict(zip(locales, tables(cache_dir)[f"{distance_of(fs)}.code"]))
        out += [f"{loc}: URIEL+ has no {distance_of(fs)} vector for {ISO[loc]}; {used[loc]}'s is used"
                for loc in [target, *pool] if str(used[loc]) != ISO[loc]]
        missing = unshared(target, pool, distance_of(fs), cache_dir)
        if missing:
            shown = ", ".join(missing[:6]) + (f" and {len(missing) - 6} more" if len(missing) > 6 else "")
            out.append(f"URIEL+ has no {distance_of(fs)} feature shared by {target} and {shown}: "
                       "similarity 0 there (URIEL's raw data, not imputed)")
    return out


def _checked(distance: str) -> str:
    if distance not in _LAYOUT:
        raise ValueError(f"unknown URIEL+ distance {distance!r}; valid: {', '.join(DISTANCES)}")
    return distance


def clear_memory_cache() -> None:
    """Forgets the in-process copies; the next call reads the disk cache again."""
    _memo.clear()


__all__ = ["DISTANCES", "URIEL_PLUS_SETS", "build_cache", "tables", "cache_ready", "confidence", "distance_matrix",
           "pair_confidence", "similarity_matrix", "unshared", "load_database", "language_vectors",
           "angular_distances", "language_confidence", "UrielPlusUnavailableError", "UrielPlusDataError"]
