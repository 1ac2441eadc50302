"""AdaMerging as an evolution's final stage: the champion's coefficients refined on unlabelled text.

The champion's per-source weights (EvoMerge's genome) or per-source, per-layer-group weights
(CMA-ES and the other grouped searches) become AdaMerging's starting coefficients λ_{k,g}, one per
source and transformer layer (``granularity``); Adam then lowers the merged model's mean
prediction entropy on the target's unlabelled text (its train split with the labels withheld, or
the user's text file), exactly as the ``adamerging`` merge does from URIEL weights.

The simplest faithful form, said plainly: the refined model is AdaMerging's own form, task
arithmetic θ_base + Σ_k λ_{k,g} τ_k with the classification head averaged with the champion's head
weights. What the champion's method did beyond its weights (TIES trimming and sign election, DARE
drops, a frankenmerge's layer choices) is not carried over. So the stage keeps the refined model
only when its dev fitness beats the champion's — judged on the same labelled dev split the
evolution searched on — and reports both on the test split. The stage's run therefore records
labelled target dev (the fitness, as every evolution) *and* the unlabelled target text it learned on.
"""
from __future__ import annotations

from typing import Any, Dict, List, Optional, Sequence

import torch

from ..progress import ProgressFn, Tracker
from .build import layer_partition

STAGE_DEFAULTS = {"granularity": "layer", "steps": 50, "learning_rate": 0.01, "batch_size": 16,
                  "examples": 256}


def text_description(target_text: str = "") -> str:
    """What the stage learns on, as its run records it."""
    from ..data.target_text import read_target_text

    return (read_target_text(target_text).describe() if target_text
            else "the target's train split, labels withheld")


def champion_prior(recipe: Dict[str, Any], names: Sequence[str], keys: Sequence[str]) -> Dict[str, List[float]]:
    """Per tensor key, the champion's per-source weights for it, normalised to sum to one (as
    every merge normalises them): one set for every key (EvoMerge), or its layer group's."""
    def normalised(weights: Dict[str, float]) -> List[float]:
        values = [max(0.0, float(weights.get(n, 0.0))) for n in names]
        total = sum(values)
        return [v / total for v in values] if total > 0 else [1.0 / len(names)] * len(names)

    if "groups" in recipe:
        by_name = {g["group"]: normalised(g["weights"]) for g in recipe["groups"]}
        out = {}
        for group, group_keys in layer_partition(keys, int(recipe.get("layer_groups", 0))):
            if group not in by_name:
                raise ValueError(f"the champion's recipe has no weights for layer group '{group}'")
            out.update({k: by_name[group] for k in group_keys})
        return out
    if "weights" in recipe:
        weights = normalised(recipe["weights"])
        return {k: weights for k in keys}
    raise ValueError("the champion's recipe has no per-source weights to refine")


def refine(ws, sources, base, prior: Dict[str, List[float]], names: Sequence[str], target: str,
           params: Optional[Dict[str, Any]] = None, target_text: str = "", seed: int = 0,
           progress: Optional[ProgressFn] = None):
    """AdaMerging from ``prior``: returns (refined state dict, λ [K, G], group names, entropy
    before, entropy after, entropy curve, examples). ``sources``: the K state dicts."""
    from ..experiments import Candidate, merge_context
    from ..merge.adamerging import (MergedView, coefficient_groups, frozen_model, full_entropy,
                                    learn_coefficients, split_keys, unlabelled_batches)

    p = {**STAGE_DEFAULTS, **(params or {})}
    device = ws.evaluator.device
    context = merge_context(ws, Candidate("merge", "adamerging", target, list(names),
                                          [1.0] * len(names), target_text=target_text))
    model = frozen_model(context, sources[0], device, names[0])
    heads, base_keys, learned = split_keys(model, sources[0], base)
    group_names, groups = coefficient_groups(learned, p["granularity"])
    steps = int(p["steps"])
    tracker = Tracker(progress, steps + 2, "AdaMerging stage: reading the target's texts")
    batches = unlabelled_batches(context, int(p["batch_size"]), int(p["examples"]), device)
    head_weights = prior[heads[0]] if heads else prior[learned[0]]
    view = MergedView(sources, head_weights, base, base_keys, groups, device, list(sources[0]))
    init = torch.zeros(len(names), len(group_names))
    counts = torch.zeros(len(group_names))
    for key in learned:  # a group starts from the mean of its tensors' champion weights
        init[:, groups[key]] += torch.tensor(prior[key])
        counts[groups[key]] += 1
    init = (init / counts.clamp_min(1)).to(device)
    trainable = init > 0  # a source the champion left out stays out, as in adamerging
    tracker.advance(1, "AdaMerging stage: task vectors ready")
    start = full_entropy(model, view, init, batches)
    lam, curve = learn_coefficients(model, view, init, trainable, batches, steps,
                                    float(p["learning_rate"]), seed, tracker)
    end = full_entropy(model, view, lam, batches)
    tracker.advance(1, f"AdaMerging stage: entropy {start:.4f} → {end:.4f}")
    with torch.no_grad():
        state = {k: v.detach().clone() for k, v in view.params(lam).items()}
    examples = sum(int(b["input_ids"].shape[0]) for b in batches)
    return state, lam.cpu(), group_names, start, end, curve, examples


def refine_champion(ws, evo, params: Optional[Dict[str, Any]] = None, target_text: str = "",
                    progress: Optional[ProgressFn] = None) -> Dict[str, Any]:
    """The stage on a finished (or stopped) evolution ``evo`` (engine.evolve.runner.Evolution):
    refines its champion, scores the refined model with the evolution's own fitness (dev) and on
    the test split, and keeps whichever has the higher dev fitness. Plain data for a run row,
    plus ``state`` (the kept model)."""
    if evo.champion is None:
        raise ValueError("the evolution has no champion yet: nothing to refine")
    recipe = evo.champion_recipe()
    names = list(evo.sources.names)
    base = evo.sources.base if evo.sources.base is not None else ws.zoo.base_state_dict()
    if base is None:
        raise ValueError("the AdaMerging stage works on task vectors and needs the zoo's pretrained base")
    prior = champion_prior(recipe, names, evo.sources.keys)

    state, lam, group_names, start, end, curve, examples = refine(
        ws, evo.sources.states, base, prior, names, evo.config.target, params, target_text,
        evo.config.seed, progress)
    fitness, dev = evo.fitness(state)
    test = evo.fitness.test(state)
    champion_test = evo.champion_test or evo.fitness.test(evo.champion_model())
    refined_wins = fitness > evo.champion.fitness
    text = text_description(target_text)
    return {
        "stage": "adamerging", "kept": "refined" if refined_wins else "champion",
        "champion": {"fitness": evo.champion.fitness, "dev": evo.champion.metrics, "test": champion_test,
                     "recipe": recipe},
        "refined": {"fitness": fitness, "dev": dev, "test": test,
                    "coefficients": {g: dict(zip(names, map(float, lam[:, i])))
                                     for i, g in enumerate(group_names)}},
        "entropy": {"start": start, "end": end, "curve": curve, "examples": examples},
        "params": {**STAGE_DEFAULTS, **(params or {})}, "text": text,
        "target_data": {"target": "labelled target dev", "source_data": False, "text": text},
        "state": state if refined_wins else evo.champion_model()}


def stage_fields(row: Dict[str, Any], params: Dict[str, Any], target_text: str = "") -> Dict[str, Any]:
    """The stage's run row: a merge run (method adamerging) that names the evolution it refines
    and records both kinds of target data it used."""
    text = text_description(target_text)
    return dict(name=f"{row.get('method') or 'evolution'} champion + AdaMerging → {row['target']}",
                target=row["target"], method="adamerging", sources=row.get("sources") or [],
                weights=row.get("weights") or [],
                params={**STAGE_DEFAULTS, **params, "stage_of": row["id"], "target_data": "labelled target dev",
                        "source_data": False, "target_text": text})


def stage_job(ws, row: Dict[str, Any], params: Dict[str, Any], target_text: str = "", keep=None):
    """A job: reopens the evolution ``row`` from its checkpoint and runs the stage on its champion.
    ``keep`` (a dict) receives the kept model's state dict (the CLI exports it)."""
    from .job import _checkpoint_of
    from .runner import Evolution, read_checkpoint

    def job(ctx):
        checkpoint = read_checkpoint(_checkpoint_of(ws, row))
        if not checkpoint.get("champion"):
            raise ValueError(f"run {row['id']} has no champion yet: nothing to refine")
        evo = Evolution(ws, state=checkpoint)
        out = refine_champion(ws, evo, params, target_text, ctx.progress)
        state = out.pop("state")
        if keep is not None:
            keep["state"] = state
        kept = out[out["kept"]]
        out.update(stage_of=row["id"], origin="evolve stage", forward_passes=1, baselines=evo.baselines)
        message = (f"kept the {out['kept']}: test accuracy {kept['test']['accuracy']:.3f} (champion "
                   f"{out['champion']['test']['accuracy']:.3f}, refined {out['refined']['test']['accuracy']:.3f})")
        return {"metrics": {evo.config.dev_split: kept["dev"], "test": kept["test"]}, "result": out,
                "message": message}
    return job


def submit_stage(runner, ws, row: Dict[str, Any], params: Dict[str, Any], target_text: str = "") -> str:
    """Queues the stage on the compute lane as its own run (what a page would call)."""
    return runner.submit("merge", stage_job(ws, row, params, target_text), lane="compute",
                         **stage_fields(row, params, target_text))
