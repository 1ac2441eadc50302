"""Transfer prediction (LangRank, Lin et al. ACL 2019): which source model will do well on a target.

URIEL similarity alone ranks sources poorly (for pt-PT, syntax_knn puts fr-FR above es-ES although
the zoo's own matrix says es→pt transfers far better), so a small model learns the zoo's zero-shot
N×N matrix from LangRank's dataset-independent features — the cosine similarity of each URIEL
feature set (syntactic, phonological, inventory, genetic, geographic, featural = the first three
concatenated), read from ``engine.languages``' cached vectors, so lang2vec is never imported here —
plus script match, the source's training-data size and the source's mean zero-shot accuracy on the
other training targets (how good a donor it is in general).

The model is ridge regression on standardised features, solved in closed form with numpy:
scikit-learn and LightGBM (LangRank's LambdaRank) are not installed, and a zoo gives only N·(N-1)
pairs (12 for the tiny zoo, 132 for a 12-model zoo), too few for boosted trees to beat a linear
model. It is always fitted on the **validation** matrix and **leave-target-out**: to predict for a
target, its column (and its model's row: the target is treated as having no model) is dropped
before fitting, so a target with no model at all is predicted the same way.
"""
from __future__ import annotations

import hashlib
import math
from dataclasses import dataclass
from typing import Dict, Iterable, List, Optional, Sequence, Tuple

import numpy as np
import pandas as pd

FIT_SPLIT = "validation"
# Each feature set as LangRank names its URIEL distance (lang2vec's distance types), with the
# engine's feature-set string behind it.
URIEL_SETS: Dict[str, str] = {
    "syntactic": "syntax_knn", "phonological": "phonology_knn", "inventory": "inventory_knn",
    "genetic": "fam", "geographic": "geo", "featural": "syntax_knn+phonology_knn+inventory_knn",
}
# The same six distances from URIEL+ (engine.uriel_plus: 1 − its angular distance on URIEL's raw
# values), plus URIEL+'s coverage confidence of the pair's featural distance.
URIEL_PLUS_SETS: Dict[str, str] = {f"urielplus_{d}": f"urielplus_{d}" for d in URIEL_SETS}
OTHER_FEATURES = ("script_match", "log_source_train", "source_quality")
# typology source -> the predictor's features (``lang2vec`` is the default and the README's numbers)
TYPOLOGIES: Dict[str, Tuple[str, ...]] = {
    "lang2vec": tuple(URIEL_SETS) + OTHER_FEATURES,
    "urielplus": tuple(URIEL_PLUS_SETS) + ("urielplus_coverage",) + OTHER_FEATURES,
    "both": tuple(URIEL_SETS) + tuple(URIEL_PLUS_SETS) + ("urielplus_coverage",) + OTHER_FEATURES,
}
FEATURES = TYPOLOGIES["lang2vec"]
RIDGE_ALPHA = 1.0
WEIGHT_FLOOR = 0.01  # every chosen source keeps at least this margin over chance (never weight 0)

# Writing system of each MASSIVE locale (script match is one of the features).
SCRIPTS: Dict[str, str] = {
    **{loc: "Latn" for loc in (
        "af-ZA az-AZ ca-ES cy-GB da-DK de-DE en-US es-ES fi-FI fr-FR hu-HU id-ID is-IS it-IT jv-ID "
        "lv-LV ms-MY nb-NO nl-NL pl-PL pt-PT ro-RO sl-SL sq-AL sv-SE sw-KE tl-PH tr-TR vi-VN").split()},
    "am-ET": "Ethi", "ar-SA": "Arab", "fa-IR": "Arab", "ur-PK": "Arab", "bn-BD": "Beng",
    "el-GR": "Grek", "he-IL": "Hebr", "hi-IN": "Deva", "hy-AM": "Armn", "ja-JP": "Jpan",
    "ka-GE": "Geor", "km-KH": "Khmr", "kn-IN": "Knda", "ko-KR": "Kore", "ml-IN": "Mlym",
    "mn-MN": "Cyrl", "ru-RU": "Cyrl", "my-MM": "Mymr", "ta-IN": "Taml", "te-IN": "Telu",
    "th-TH": "Thai", "zh-CN": "Hans", "zh-TW": "Hant",
}


class TransferError(ValueError):
    """Too little of the zero-shot matrix to fit a predictor, or a target it cannot score."""


def uriel_similarity(source: str, target: str, features: str, cache_dir=None) -> float:
    """Cosine similarity of two locales' URIEL vectors under one feature-set string."""
    from .languages import similarity_matrix

    return float(similarity_matrix(None, features, cache_dir).at[source, target])


def check_typology(typology: str) -> Tuple[str, ...]:
    if typology not in TYPOLOGIES:
        raise TransferError(f"unknown typology {typology!r}; use one of {', '.join(TYPOLOGIES)}")
    return TYPOLOGIES[typology]


def typology_sets(typology: str) -> Dict[str, str]:
    """Ranker name -> feature-set string of the typology's distances."""
    check_typology(typology)
    return {**(URIEL_SETS if typology != "urielplus" else {}),
            **(URIEL_PLUS_SETS if typology != "lang2vec" else {})}


def pair_features(sources: Sequence[str], target: str, matrix: pd.DataFrame,
                  train_sizes: Dict[str, int], cache_dir=None, typology: str = "lang2vec") -> pd.DataFrame:
    """One row per source: the typology's features of (source → target). ``source_quality`` is the
    source's mean accuracy over ``matrix``'s columns other than its own and ``target``'s (never read)."""
    from .languages import similarity_matrix

    features = check_typology(typology)
    sims = {name: similarity_matrix(None, fs, cache_dir) for name, fs in typology_sets(typology).items()}
    coverage = None
    if "urielplus_coverage" in features:
        from .uriel_plus import pair_confidence

        coverage = pair_confidence(target, list(sources), ["featural"], cache_dir)["coverage"]
    rows = []
    for s in sources:
        row = {name: float(sim.at[s, target]) for name, sim in sims.items()}
        if coverage is not None:
            row["urielplus_coverage"] = float(coverage[s])
        row["script_match"] = float(SCRIPTS.get(s) is not None and SCRIPTS.get(s) == SCRIPTS.get(target))
        row["log_source_train"] = math.log1p(train_sizes.get(s, 0))
        others = [c for c in matrix.columns if c not in (s, target)]
        quality = matrix.loc[s, others].astype(float).mean() if s in matrix.index and others else np.nan
        row["source_quality"] = float(quality) if np.isfinite(quality) else 0.0
        rows.append(row)
    return pd.DataFrame(rows, index=list(sources), columns=list(features))


@dataclass
class Ridge:
    """Closed-form ridge regression on standardised features (constant features dropped)."""

    mean: np.ndarray
    scale: np.ndarray
    coef: np.ndarray
    intercept: float

    @classmethod
    def fit(cls, x: np.ndarray, y: np.ndarray, alpha: float = RIDGE_ALPHA) -> "Ridge":
        mean, scale = x.mean(axis=0), x.std(axis=0)
        scale = np.where(scale > 1e-12, scale, np.inf)  # a constant column contributes nothing
        z = (x - mean) / scale
        coef = np.linalg.solve(z.T @ z + alpha * np.eye(z.shape[1]), z.T @ (y - y.mean()))
        return cls(mean, scale, coef, float(y.mean()))

    def predict(self, x: np.ndarray) -> np.ndarray:
        return ((x - self.mean) / self.scale) @ self.coef + self.intercept


@dataclass
class TransferPredictor:
    """Zero-shot accuracy of each (source → target) pair, from a matrix that never held the target."""

    target: str
    model: Ridge
    matrix: pd.DataFrame          # the training matrix: target's row and column removed
    train_sizes: Dict[str, int]
    cache_dir: object = None
    typology: str = "lang2vec"

    def predict(self, sources: Iterable[str]) -> Dict[str, float]:
        sources = [s for s in sources if s != self.target]
        x = pair_features(sources, self.target, self.matrix, self.train_sizes, self.cache_dir, self.typology)
        return dict(zip(sources, map(float, self.model.predict(x.to_numpy()))))

    def coefficients(self) -> Dict[str, float]:
        """Per-feature effect on accuracy per standard deviation (0 for constant features)."""
        return dict(zip(TYPOLOGIES[self.typology], map(float, self.model.coef)))


def fit_leave_target_out(matrix: pd.DataFrame, target: str, train_sizes: Dict[str, int],
                         cache_dir=None, alpha: float = RIDGE_ALPHA,
                         typology: str = "lang2vec") -> TransferPredictor:
    """A predictor for ``target`` fitted on ``matrix`` (models × locales) without the target's
    column or row: nothing it learns comes from the target."""
    train = matrix.drop(index=[target], columns=[target], errors="ignore")
    xs, ys = [], []
    for t in train.columns:
        sources = [s for s in train.index if s != t and np.isfinite(train.at[s, t])]
        if sources:
            xs.append(pair_features(sources, t, train, train_sizes, cache_dir, typology).to_numpy())
            ys.append(train.loc[sources, t].to_numpy(dtype=float))
    if not xs or sum(len(y) for y in ys) < 3:
        raise TransferError(f"too few zero-shot pairs without {target} to fit a transfer predictor "
                            f"({sum(len(y) for y in ys)}; need 3, i.e. a zoo of at least 3 models)")
    return TransferPredictor(target, Ridge.fit(np.vstack(xs), np.concatenate(ys), alpha), train,
                             train_sizes, cache_dir, typology)


# ---- workspace glue -------------------------------------------------------------------------------
_fitted: Dict[tuple, TransferPredictor] = {}


def train_sizes(ws) -> Dict[str, int]:
    return {loc: len(ws.dataset.get(loc, "train")) for loc in ws.zoo.locales if ws.dataset.has(loc, "train")}


def zero_shot_matrix(ws, split: str = FIT_SPLIT, progress=None) -> pd.DataFrame:
    """Every zoo model on every locale's split (cached logits after the first time)."""
    return ws.evaluator.nxn(split, progress=progress).astype(float)


def predictor_for(ws, target: str, progress=None, typology: str = "lang2vec") -> TransferPredictor:
    """The leave-target-out predictor for ``target``, fitted on the zoo's validation matrix."""
    matrix = zero_shot_matrix(ws, FIT_SPLIT, progress)
    digest = hashlib.sha256(matrix.to_json().encode()).hexdigest()
    key = (digest, target, typology)
    if key not in _fitted:
        _fitted[key] = fit_leave_target_out(matrix, target, train_sizes(ws), typology=typology)
    return _fitted[key]


def predicted_transfer(ws, target: str, sources: Optional[Iterable[str]] = None,
                       typology: str = "lang2vec") -> Dict[str, float]:
    """Predicted zero-shot accuracy on ``target`` of each source (default: every other zoo model)."""
    pool = [s for s in (sources if sources is not None else ws.zoo.locales) if s != target]
    return predictor_for(ws, target, typology=typology).predict(pool)


def predicted_weights(ws, target: str, sources: Optional[Iterable[str]] = None,
                      top_k: Optional[int] = None, typology: str = "lang2vec") -> Dict[str, float]:
    """Source -> weight from predicted transfer, descending, summing to 1.

    The ``top_k`` best predicted of ``sources`` (default: every other zoo model; top_k None: all
    of them; ties: locale name). Weight ∝ predicted accuracy above chance (1 / number of labels), at least
    WEIGHT_FLOOR, so a source predicted at chance level weighs almost nothing but is not dropped."""
    predicted = predicted_transfer(ws, target, sources, typology)
    ranked = sorted(predicted, key=lambda s: (-round(predicted[s], 12), s))
    if top_k is not None:
        ranked = ranked[:top_k]
    if not ranked:
        raise TransferError(f"no source model other than {target} to weight")
    chance = 1.0 / max(len(ws.zoo.labels), 1)
    margin = {s: max(predicted[s] - chance, WEIGHT_FLOOR) for s in ranked}
    total = sum(margin.values())
    return {s: margin[s] / total for s in ranked}


# ---- evaluation -----------------------------------------------------------------------------------
def ndcg_at(scores: Sequence[float], truth: Sequence[float], k: int = 3) -> float:
    """NDCG@k of ranking by ``scores`` with gain = the true accuracy (ties in scores: list order)."""
    truth = np.asarray(truth, dtype=float)
    order = np.argsort(-np.asarray(scores, dtype=float), kind="stable")[:k]
    discount = 1.0 / np.log2(np.arange(2, 2 + len(order)))
    ideal = float(np.sort(truth)[::-1][:k] @ discount)
    return float(truth[order] @ discount / ideal) if ideal > 0 else float("nan")


def spearman(scores: Sequence[float], truth: Sequence[float]) -> float:
    from scipy.stats import spearmanr

    if len(set(scores)) < 2 or len(set(truth)) < 2:
        return float("nan")
    return float(spearmanr(scores, truth).statistic)


def evaluate_rankers(fit_matrix: pd.DataFrame, truth_matrix: pd.DataFrame, sizes: Dict[str, int],
                     k: int = 3, cache_dir=None, typology: str = "lang2vec") -> dict:
    """Spearman and NDCG@k of each of the typology's similarities and of the leave-target-out
    predictor (fitted on ``fit_matrix``) against ``truth_matrix``, per held-out target and means."""
    sets = typology_sets(typology)
    rankers = list(sets) + ["source_quality", "predictor"]  # source_quality: an ablation
    per_target = []
    for t in truth_matrix.columns:
        sources = [s for s in truth_matrix.index if s != t and np.isfinite(truth_matrix.at[s, t])]
        if len(sources) < 2 or t not in fit_matrix.columns:
            continue
        truth = truth_matrix.loc[sources, t].to_numpy(dtype=float)
        feats = pair_features(sources, t, fit_matrix.drop(columns=[t]), sizes, cache_dir, typology)
        scores = {name: feats[name].to_numpy() for name in (*sets, "source_quality")}
        pred = fit_leave_target_out(fit_matrix, t, sizes, cache_dir, typology=typology).predict(sources)
        scores["predictor"] = np.array([pred[s] for s in sources])
        per_target.append({"target": t, "sources": len(sources),
                           **{f"{r}.spearman": spearman(scores[r], truth) for r in rankers},
                           **{f"{r}.ndcg": ndcg_at(scores[r], truth, k) for r in rankers}})
    if not per_target:
        raise TransferError("no target with at least 2 scored sources: the zoo needs 3 models")
    table = []
    for r in rankers:
        sp = [row[f"{r}.spearman"] for row in per_target]
        nd = [row[f"{r}.ndcg"] for row in per_target]
        described = {"source_quality": "mean zero-shot accuracy on the other targets",
                     "predictor": "ridge on " + ", ".join(TYPOLOGIES[typology])}
        table.append({"ranker": r, "features": sets.get(r) or described[r],
                      "spearman": float(np.nanmean(sp)) if np.isfinite(sp).any() else float("nan"),
                      f"ndcg@{k}": float(np.nanmean(nd)) if np.isfinite(nd).any() else float("nan")})
    return {"table": table, "per_target": per_target, "targets": len(per_target), "k": k, "typology": typology}


def transfer_report(ws, split: str = "test", k: int = 3, progress=None, typology: str = "lang2vec") -> dict:
    """``evaluate_rankers`` on the workspace: predictor fitted on validation, truth on ``split``."""
    fit_matrix = zero_shot_matrix(ws, FIT_SPLIT, progress)
    truth = fit_matrix if split == FIT_SPLIT else zero_shot_matrix(ws, split, progress)
    out = evaluate_rankers(fit_matrix, truth, train_sizes(ws), k, typology=typology)
    out.update(zoo=ws.zoo.name, fit_split=FIT_SPLIT, truth_split=split, models=len(ws.zoo.locales))
    return out

