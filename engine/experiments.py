"""Candidates and baselines: the one orchestration layer the CLI, the pages, sweeps and evolution share.

A :class:`Candidate` is a recipe (merge or ensemble of some sources for a target). It is built,
evaluated on the target's validation and test splits, and compared with the target's baselines:
the best single source among the chosen ones, the best zero-shot model of the whole zoo, and the
target's own model (the upper bound). Leave-one-out: the target's own model is never a source.
"""
from __future__ import annotations

import hashlib
import json
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Dict, Iterable, List, Optional, Tuple

import numpy as np
import torch

from .data.base import SPLITS
from .latency import ensemble_latency, measure_model
from .progress import Phases, Progress, ProgressFn, Tracker
from .workplan import candidate_plan
from .workspace import Workspace

# a recipe's checks (and the error they raise) live in engine.preflight; re-exported for callers
from .preflight import DATA_MODES, CandidateError, check_unique_sources  # noqa: F401

# How source weights are chosen: URIEL similarity + Sinkhorn (MergingUriel), equal over the URIEL
# top-K, or predicted transfer (engine.transfer: sources and weights from the leave-target-out
# predictor fitted on the zoo's validation matrix).
WEIGHTINGS = ("uriel", "equal", "predicted")


@dataclass
class Candidate:
    kind: str                       # "merge" | "ensemble"
    method: str
    target: str
    sources: List[str]
    weights: List[float]
    params: Dict[str, object] = field(default_factory=dict)
    seed: int = 0
    data_mode: str = "sources"      # which language's data data-aware methods (Fisher, RegMean, fit) use
    data_examples: int = 64
    target_text: str = ""           # a UTF-8 file of target sentences, one per line, for the methods
                                    # that learn on unlabelled target text (else the train split)

    def label(self) -> str:
        return f"{self.kind}:{self.method} → {self.target} ({len(self.sources)} sources)"

    def to_dict(self) -> dict:
        return asdict(self)


def check_candidate(ws: Workspace, cand: Candidate) -> None:
    """Refuses a recipe that cannot run, with the first of :func:`engine.preflight.preflight`'s
    problems (the list the pages show), and coerces seed / data_examples to their declared types."""
    from .limits import check_setting
    from .preflight import preflight, raise_first

    raise_first(preflight(ws, cand))
    for name in ("seed", "data_examples"):  # declared ranges (engine/limits.py)
        setattr(cand, name, check_setting(name, getattr(cand, name), "", CandidateError))


def suggest_sources(ws: Workspace, target: str, top_k: int = 5, features: str = "syntax_knn",
                    sinkhorn_iters: int = 20, weighting: str = "uriel") -> Dict[str, float]:
    """Top-K sources for the target among the zoo's other models (leave-one-out) and their weights
    under ``weighting`` (see WEIGHTINGS): 'predicted' also chooses the K by predicted transfer."""
    from .languages import target_weights

    check_weighting(weighting)
    available = [l for l in ws.zoo.locales if l != target]
    if weighting == "predicted":
        from .transfer import predicted_weights

        return predicted_weights(ws, target, available, top_k)
    uriel = target_weights(target, sources=available, features=features, top_k=top_k,
                           sinkhorn_iters=sinkhorn_iters)
    return {s: 1.0 / len(uriel) for s in uriel} if weighting == "equal" else uriel


def check_weighting(weighting: str) -> None:
    if weighting not in WEIGHTINGS:
        raise CandidateError(f"unknown weighting {weighting!r}; use one of {', '.join(WEIGHTINGS)}")


def source_weights(ws: Workspace, target: str, sources: Optional[Iterable[str]] = None, top_k: int = 5,
                   features: str = "syntax_knn", sinkhorn_iters: int = 20,
                   weighting: str = "uriel") -> Tuple[List[str], List[float]]:
    """Sources and their weights under ``weighting``. Named sources are weighted among themselves
    only (URIEL: Sinkhorn over the target and exactly those sources, top-K = their number), so none
    gets weight 0 for not being in the zoo-wide top-K; with none named, ``suggest_sources``."""
    from .languages import target_weights

    check_weighting(weighting)
    if not sources:
        uriel = suggest_sources(ws, target, top_k=top_k, features=features, sinkhorn_iters=sinkhorn_iters,
                                weighting=weighting)
        return list(uriel), [float(w) for w in uriel.values()]
    sources = list(sources)
    check_unique_sources(sources)
    for s in sources:
        ws.zoo.path(s)  # a clear ZooError for a source the zoo lacks
    if target in sources:
        raise CandidateError(f"the target {target} is among the sources: its own model may only "
                             f"be a baseline (leave-one-out)")
    if weighting == "equal":
        return sources, [1.0 / len(sources)] * len(sources)
    if weighting == "predicted":
        from .transfer import predicted_weights

        uriel = predicted_weights(ws, target, sources)
    else:
        uriel = target_weights(target, sources=sources, features=features, top_k=len(sources),
                               sinkhorn_iters=sinkhorn_iters)
    return sources, [float(uriel.get(s, 0.0)) for s in sources]


# ---- baselines -----------------------------------------------------------------------------------
def source_scores(ws: Workspace, target: str, models: Optional[Iterable[str]] = None, split: str = "test",
                  progress: Optional[ProgressFn] = None) -> Dict[str, float]:
    """Accuracy of each zoo model on the target's split: cached logits (build-demo warms them all),
    else a forward pass, once, announced as such."""
    from .workplan import missing_zero_shot, zero_shot_message

    models = list(models or ws.zoo.locales)
    missing = {m for m, _ in missing_zero_shot(ws, [target], split, models)}
    message = zero_shot_message(ws, target, len(missing), split) if missing else "cached zero-shot scores"
    tracker = Tracker(progress, max(1, len(missing)), message)
    out = {}
    for m in models:
        out[m] = ws.evaluator.evaluate_source(m, target, split)["accuracy"]
        if m in missing:
            tracker.advance(1, f"{message} ({m} done)")
    return out


def baselines(ws: Workspace, target: str, sources: Iterable[str], split: str = "test",
              progress: Optional[ProgressFn] = None) -> Dict[str, Dict[str, object]]:
    return baselines_from_scores(source_scores(ws, target, split=split, progress=progress), target, sources)


def baselines_from_scores(scores: Dict[str, float], target: str,
                          sources: Iterable[str]) -> Dict[str, Dict[str, object]]:
    """Best chosen source, best zero-shot model (any but the target's own) and the target's own
    model, from every zoo model's score on the target."""
    sources = [s for s in sources if s in scores]
    out: Dict[str, Dict[str, object]] = {}
    if sources:
        best = max(sources, key=lambda s: scores[s])
        out["best_source"] = {"model": best, "accuracy": scores[best]}
    zero_shot = {m: a for m, a in scores.items() if m != target}
    if zero_shot:
        best = max(zero_shot, key=zero_shot.get)
        out["best_zero_shot"] = {"model": best, "accuracy": zero_shot[best]}
    if target in scores:
        out["target_model"] = {"model": target, "accuracy": scores[target]}
    return out


# ---- building candidates -------------------------------------------------------------------------
def data_batches(ws: Workspace, locales: List[str], split: str, n: int, batch_size: int = 16):
    """Tokenised labelled batches from the given locales' split (for Fisher, RegMean, fitting)."""
    tok = ws.evaluator.tokenizer
    texts, labels = [], []
    for loc in locales:
        part = ws.dataset.get(loc, split)
        texts += part.texts[:n]
        labels += part.labels[:n]
    batches = []
    for lo in range(0, len(texts), batch_size):
        enc = tok(texts[lo:lo + batch_size], padding=True, truncation=True, max_length=ws.evaluator.max_length,
                  return_tensors="pt")
        enc["labels"] = torch.tensor(labels[lo:lo + batch_size])
        batches.append(dict(enc))
    return batches


def unlabelled_texts(ws: Workspace, locale: str, text_file: str = "") -> List[str]:
    """A language's text with its labels withheld (only ``.texts`` is read): the user's text file
    when one is given, else its train split, or its validation split when it has no train split.
    Never the test split."""
    if text_file:
        from .data.target_text import read_target_text

        return list(read_target_text(text_file).lines)
    split = "train" if ws.dataset.has(locale, "train") else "validation"
    return list(ws.dataset.get(locale, split).texts)


def text_batches(ws: Workspace, texts: List[str], batch_size: int):
    """Tokenised batches of texts, no labels: ``{"input_ids", "attention_mask"}``, one at a time."""
    tok = ws.evaluator.tokenizer
    for lo in range(0, len(texts), batch_size):
        yield dict(tok(texts[lo:lo + batch_size], padding=True, truncation=True,
                       max_length=ws.evaluator.max_length, return_tensors="pt"))


def merge_context(ws: Workspace, cand: Candidate):
    """What data-aware merges need: a model builder, per-source batches, a validation scorer, and
    the target's unlabelled text (adamerging)."""
    from .merge.context import MergeContext

    def batches(i: int):
        source, n = cand.sources[i], cand.data_examples
        if cand.data_mode == "target":
            return data_batches(ws, [cand.target], "validation", n)
        own = data_batches(ws, [source], "train", n)
        return own if cand.data_mode == "sources" else own + data_batches(ws, [cand.target], "validation", n)

    def score(state):
        scored = ws.evaluator.state_logits(state, cand.target, "validation", cache=False)
        return ws.evaluator.score(scored, cand.target, "validation")["accuracy"]

    def texts(batch_size: int):
        return text_batches(ws, unlabelled_texts(ws, cand.target, cand.target_text), batch_size)

    return MergeContext(build_model=ws.zoo.build_model, batches=batches, score=score, texts=texts)


def build_merge(ws: Workspace, cand: Candidate, progress: Optional[ProgressFn] = None,
                phases: Optional[Phases] = None):
    """Loads the sources (and base when the method needs it) and merges them in memory; the
    progress of both phases is weighted by their work (engine/workplan.py). TIES reuses the
    workspace's trim store (tie orders sorted by an earlier merge or search of these sources)."""
    from .merge import MERGES, merge_state_dicts
    from .merge.trim_store import workspace_store

    method = MERGES.get(cand.method)
    if phases is None:
        plan = candidate_plan(ws, cand, (), with_baselines=False)
        phases = Phases(progress, {k: plan[k] for k in ("load", "merge")})
    tracker = Tracker(phases.child("load"), len(cand.sources) + 1, "loading sources")
    states = []
    for s in cand.sources:
        states.append(ws.zoo.state_dict(s))
        tracker.advance(1, f"loaded {s}")
    base = ws.zoo.base_state_dict() if method.traits.needs_base else None
    tracker.advance(1)
    phases.finish("load", "sources loaded")
    context = merge_context(ws, cand) if method.traits.needs_data else None
    state = merge_state_dicts(cand.method, states, cand.weights, base=base, params=cand.params,
                              names=list(cand.sources), context=context, device=ws.evaluator.device,
                              seed=cand.seed, progress=phases.child("merge", "merging: "),
                              store=workspace_store(ws))
    phases.finish("merge", "merged")
    return state


def ensemble_logits(ws: Workspace, cand: Candidate, split: str) -> Tuple[np.ndarray, float]:
    """Per-source logits on the target's split [K, N, C] and their summed forward time."""
    scored = [ws.evaluator.source_logits(s, cand.target, split) for s in cand.sources]
    return np.stack([s.logits for s in scored]), float(sum(s.seconds for s in scored))


def fit_data(ws: Workspace, cand: Candidate, traits) -> Tuple[np.ndarray, Optional[np.ndarray]]:
    """A fusion's fitting data: the sources' logits [K, N, C] on validation texts, and their labels,
    or None for a fusion that reads no labels (``uses_labels=False``: it fits on the target's
    validation texts with the labels withheld, never read). A labelled fusion fits on the target's
    labelled dev (data_mode 'target') or on the sources' own validation splits."""
    unlabelled = not traits.uses_labels
    if unlabelled and cand.target_text:
        return text_file_logits(ws, cand), None
    fit_locs = [cand.target] if unlabelled or cand.data_mode == "target" else list(cand.sources)
    fit_logits, fit_labels = [], []
    for loc in fit_locs:
        lg, _ = ensemble_logits(ws, Candidate(cand.kind, cand.method, loc, cand.sources, cand.weights), "validation")
        fit_logits.append(lg)
        if not unlabelled:
            fit_labels.append(ws.evaluator.encoded(loc, "validation").labels)
    return np.concatenate(fit_logits, axis=1), (None if unlabelled else np.concatenate(fit_labels))


def text_file_logits(ws: Workspace, cand: Candidate) -> np.ndarray:
    """Each source's logits [K, N, C] on the lines of the candidate's target text file (one
    forward pass per source; not cached: the file is the user's, read fresh each time)."""
    from .evaluate import Encoded

    lines = unlabelled_texts(ws, cand.target, cand.target_text)
    ids = ws.evaluator.tokenizer(lines, truncation=True, max_length=ws.evaluator.max_length)["input_ids"]
    order = np.argsort([len(x) for x in ids], kind="stable")
    enc = Encoded([torch.tensor(ids[i]) for i in order], order, np.zeros(len(lines), dtype=np.int64), "")
    return np.stack([ws.evaluator.forward(ws.evaluator.source_model(s), enc).logits for s in cand.sources])


def evaluate_candidate(ws: Workspace, cand: Candidate, progress: Optional[ProgressFn] = None,
                       splits: Tuple[str, ...] = ("validation", "test"), with_baselines: bool = True) -> dict:
    """Builds the candidate, scores it on the target's splits, and compares it with baselines.

    Returns metrics per split, the predicted class ids per split (for paired tests), baselines,
    timings, and (popped by callers) the merged ``state`` or the ``fitted`` fusion.
    """
    check_candidate(ws, cand)
    started = time.perf_counter()
    splits = tuple(s for s in splits if ws.dataset.has(cand.target, s))
    metrics: Dict[str, Dict[str, float]] = {}
    predictions: Dict[str, List[int]] = {}
    extra: Dict[str, object] = {}
    if progress is not None:  # the plan reads fingerprints and tokenises: seconds on a cold start
        progress(Progress(0.0, 1.0, "preparing: reading the models and the data", 0.0))
    phases = Phases(progress, candidate_plan(ws, cand, splits, with_baselines), started)
    if cand.kind == "merge":
        state = build_merge(ws, cand, phases=phases)
        report = state.report
        build_s = time.perf_counter() - started
        for split in splits:
            scored = ws.evaluator.state_logits(state, cand.target, split,
                                               progress=phases.child(f"score {split}", f"scoring {split}: "))
            phases.finish(f"score {split}", f"scored {split}")
            metrics[split] = ws.evaluator.score(scored, cand.target, split)
            predictions[split] = scored.logits.argmax(axis=1).tolist()
        phases.child("latency")
        latency = measure_model(ws.evaluator, ws.evaluator.working_model(state), cand.target, splits[-1])
        phases.finish("latency", "latency measured")
        for split in splits:  # one model, one latency: measured warm, not read off the scoring pass
            metrics[split].pop("latency_from_cache", None)
            metrics[split].update(latency)
        extra["merge_report"] = {k: v for k, v in report.to_dict().items() if k != "treatment"}
        extra["state"] = state
    else:
        from .ensemble import ENSEMBLES, combine, fit
        from .metrics import classification_metrics

        method = ENSEMBLES.get(cand.method)
        fitted = None
        if method.traits.needs_fit:
            fit_logits, fit_labels = fit_data(ws, cand, method.traits)
            fitted = fit(cand.method, fit_logits, fit_labels,
                         weights=cand.weights, params=cand.params, seed=cand.seed)
            extra["learned_weights"] = dict(zip(cand.sources, map(float, fitted.model_weights)))
        build_s = time.perf_counter() - started
        todo = [(m, s) for s in splits for m in cand.sources
                if not ws.evaluator.has_source_logits(m, cand.target, s)]
        tracker = Tracker(phases.child("members", "members: "), max(1, len(todo)), "members' logits")
        for m, s in todo:
            ws.evaluator.source_logits(m, cand.target, s)
            tracker.advance(1, f"{m} on {cand.target} {s}")
        phases.finish("members", "members scored")
        phases.child("latency")  # the members' latencies: measured once per machine
        for split in splits:
            logits, _ = ensemble_logits(ws, cand, split)
            t0 = time.perf_counter()
            probs = combine(cand.method, logits, weights=cand.weights, params=cand.params, fitted=fitted)
            fuse_s = time.perf_counter() - t0
            labels = ws.evaluator.encoded(cand.target, split).labels
            m = classification_metrics(probs, labels)
            m.update(ensemble_latency(ws.evaluator, cand.sources, cand.target, splits[-1], fuse_s, len(labels)))
            m["fuse_ms"] = 1000 * fuse_s
            metrics[split] = m
            predictions[split] = probs.argmax(axis=1).tolist()
        phases.finish("latency", "latency measured")
        extra["fitted"] = fitted
    base = {}
    if with_baselines:
        base = baselines(ws, cand.target, cand.sources, "test", phases.child("baselines", "baselines: "))
        phases.finish("baselines", "baselines ready")
    test_acc = metrics.get("test", {}).get("accuracy")
    return {"metrics": metrics, "predictions": predictions, "baselines": base, "build_seconds": build_s,
            "seconds": time.perf_counter() - started, "test_accuracy": test_acc, **extra}


def inputs_fingerprint(ws: Workspace, cand: Candidate) -> str:
    """Content of everything a candidate's numbers depend on (models, base, tokenizer, data, max
    length, half precision on CUDA): two runs with the same recipe and fingerprint are the same experiment."""
    from .zoo import fingerprint_dir

    ds = ws.dataset
    data = {f"{loc}/{split}": ds.fingerprint(loc, split) for loc in [cand.target, *cand.sources]
            for split in SPLITS if ds.has(loc, split)}
    base = ws.zoo.base
    parts = {"models": {s: ws.zoo.fingerprint(s) for s in cand.sources},
             "base": (fingerprint_dir(Path(base)) if Path(base).is_dir() else str(base)) if base else None,
             "tokenizer": ws.zoo.tokenizer_fingerprint(), "data": data,
             "max_length": ws.evaluator.max_length}
    half = getattr(ws.evaluator, "half", None)
    if half is not None:  # CUDA half precision gives other numbers; float32 keeps the keys runs had
        parts["precision"] = str(half)
    return hashlib.sha256(json.dumps(parts, sort_keys=True).encode()).hexdigest()[:24]


def provenance(ws: Workspace, cand: Candidate) -> Dict[str, object]:
    """What a stored run was computed on, so results from another zoo or data are told apart."""
    return {"zoo": ws.zoo.name, "zoo_root": str(Path(ws.zoo.root).resolve()), "data": ws.settings.data,
            "device": str(ws.evaluator.device), "inputs": inputs_fingerprint(ws, cand)}
