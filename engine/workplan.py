"""What a candidate's job will cost, phase by phase, and the one-time zero-shot scoring its
baselines need.

Baselines compare a candidate with the best zero-shot model, so the first run for a target scores
every other zoo model on the target's test split (on the demo, 11 models × ~118 sentences: 225 s
under load, four times the merge itself). ``warm_zero_shot`` scores the whole N×N matrix once —
``python -m engine build-demo`` runs it into the app's logits cache — and afterwards baselines
read cached logits. For a zoo warmed by nobody, the job says what it is doing
(:func:`zero_shot_message`) and its bar gives that phase its real share.
"""
from __future__ import annotations

import time
from typing import Dict, Iterable, List, Optional, Tuple

from .progress import ProgressFn, Tracker

_SIZES: Dict[str, Tuple[float, float]] = {}


def model_size(ws) -> Tuple[float, float]:
    """(all, compute) parameters of the zoo's models in millions; compute leaves out embeddings,
    which a forward pass only looks up."""
    key = str(ws.zoo.path(ws.zoo.locales[0]))
    if key not in _SIZES:
        from .zoo import read_shapes

        total = compute = 0
        for name, shape in read_shapes(ws.zoo.path(ws.zoo.locales[0])).items():
            n = 1
            for s in shape:
                n *= s
            total += n
            compute += 0 if "embed" in name else n
        _SIZES[key] = (total / 1e6, compute / 1e6)
    return _SIZES[key]


def missing_zero_shot(ws, targets: Iterable[str], split: str = "test",
                      models: Optional[Iterable[str]] = None) -> List[Tuple[str, str]]:
    """(model, target) pairs whose logits on the target's split are not cached yet."""
    models = list(models or ws.zoo.locales)
    return [(m, t) for t in targets if ws.dataset.has(t, split) for m in models
            if not ws.evaluator.has_source_logits(m, t, split)]


def zero_shot_message(ws, target: str, count: int, split: str = "test") -> str:
    """The one-time job in plain words."""
    models = "model" if count == 1 else f"{count} models"
    other = " other" if count < len(ws.zoo.locales) else ""
    return (f"scoring the {models}{other} on {target}'s {split} set once, for the best-zero-shot "
            f"baseline; cached")


def zero_shot_units(ws, pairs: List[Tuple[str, str]], split: str = "test") -> Dict[str, float]:
    """Work of scoring those pairs: forward examples × compute size, and model loads."""
    total_m, compute_m = model_size(ws)
    examples = sum(len(ws.dataset.get(t, split).texts) for _, t in pairs)
    return {"forward": examples * compute_m, "load": len({m for m, _ in pairs}) * total_m}


def source_scores_plan(ws, target: str, split: str = "test") -> Dict[str, tuple]:
    pairs = missing_zero_shot(ws, [target], split)
    units = zero_shot_units(ws, pairs, split)
    from .progress import RATES

    loads = units["load"] * RATES["load"] / RATES["forward"]  # in forward units: one phase
    return {"baselines": ("forward", units["forward"] + loads)}


def candidate_plan(ws, cand, splits, with_baselines: bool) -> Dict[str, tuple]:
    """Phases of evaluate_candidate with their work: loading and merging the sources (merges), the
    scoring passes (ensembles: only the members' logits not cached yet), the latency measurement,
    and the baselines' zero-shot scoring still to do."""
    from .latency import REPEATS, SAMPLE, has_source_latency
    from .progress import RATES

    total_m, compute_m = model_size(ws)
    n = {s: len(ws.dataset.get(cand.target, s).texts) for s in splits}
    plan: Dict[str, tuple] = {}
    if cand.kind == "merge":
        plan["load"] = ("load", len(cand.sources) * total_m)
        plan["merge"] = (f"merge:{cand.method}", len(cand.sources) * total_m)
        for s in splits:
            plan[f"score {s}"] = ("forward", n[s] * compute_m)
        plan["latency"] = ("forward", (REPEATS + 1) * SAMPLE * compute_m)
    else:
        pairs = [(m, s) for s in splits for m in cand.sources
                 if not ws.evaluator.has_source_logits(m, cand.target, s)]
        plan["members"] = ("forward", sum(n[s] for _, s in pairs) * compute_m)
        unmeasured = [m for m in cand.sources if not has_source_latency(ws.evaluator, m, cand.target, splits[-1])]
        plan["latency"] = ("forward", (REPEATS + 1) * SAMPLE * compute_m * len(unmeasured)
                           + len(unmeasured) * total_m * RATES["load"] / RATES["forward"])
    if with_baselines:
        plan.update(source_scores_plan(ws, cand.target))
    return plan


def warm_zero_shot(ws, targets: Optional[Iterable[str]] = None, split: str = "test",
                   progress: Optional[ProgressFn] = None) -> Dict[str, object]:
    """Scores every zoo model on every target's split into the logits cache (the N×N matrix the
    baselines read); pairs already cached are skipped. Returns counts and seconds."""
    targets = [t for t in (targets or ws.dataset.locales) if ws.dataset.has(t, split)]
    pairs = missing_zero_shot(ws, targets, split)
    started = time.perf_counter()
    units = zero_shot_units(ws, pairs, split)
    tracker = Tracker(progress, max(1.0, units["forward"]),
                      f"zero-shot matrix: {len(pairs)} of {len(ws.zoo.locales) * len(targets)} "
                      f"model × test-set scores to compute")
    _, compute_m = model_size(ws)
    for model, target in sorted(pairs):  # model-major: each model is loaded once
        ws.evaluator.source_logits(model, target, split)
        tracker.advance(len(ws.dataset.get(target, split).texts) * compute_m,
                        f"zero-shot matrix: {model} on {target}")
    return {"computed": len(pairs), "pairs": len(ws.zoo.locales) * len(targets),
            "seconds": time.perf_counter() - started}


__all__ = ["candidate_plan", "missing_zero_shot", "model_size", "warm_zero_shot",
           "zero_shot_message"]
