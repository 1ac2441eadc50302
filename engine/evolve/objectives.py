"""What a multi-objective (NSGA-II) search optimises, chosen by one setting, ``objectives``:

- ``accuracy+nll``: dev accuracy up, dev NLL down (the default).
- ``accuracy+sparsity``: dev accuracy up, and the merged model's sparsity up: the fraction of its
  entries whose delta from the pretrained base is exactly zero (what TIES' trim and DARE's drop
  leave untouched; a sparse delta stores and ships small). One comparison per entry per merge.
- ``targets``: one merged model for several targets at once: the composite fitness on the run's
  target and on each of ``targets`` (other locales' dev splits, same fitness weights and dev
  size), each an objective.

The champion is the front's best on the first objective (the run's own target first), so its
fitness curve reads as every other algorithm's; with ``targets`` the run also records the front
point with the best mean over the targets (``balanced``).
"""
from __future__ import annotations

from typing import Dict, List, Optional, Tuple

import torch

from .config import EvolveConfig, EvolveError

OBJECTIVE_SETS = ("accuracy+nll", "accuracy+sparsity", "targets")


def extra_targets(config: EvolveConfig) -> List[str]:
    """The ``targets`` setting as a list ('fr-FR, es-ES' or 'fr-FR es-ES')."""
    text = str(config.setting("targets") or "")
    return [t for t in text.replace(",", " ").split() if t]


def check_objectives(config: EvolveConfig) -> None:
    """EvolveError for an objective choice that cannot run as set (each named)."""
    kind, targets = config.setting("objectives"), extra_targets(config)
    where = f"{config.algorithm}: "
    if kind not in OBJECTIVE_SETS:
        return  # the Param's own check names the choices
    if kind != "targets":
        if targets:
            raise EvolveError(f"{where}targets {targets} are read only with objectives 'targets'; "
                              f"set objectives to 'targets' or leave targets empty")
        return
    if not targets:
        raise EvolveError(f"{where}objectives 'targets' needs at least one other target locale in "
                          f"'targets' (e.g. targets='fr-FR,es-ES')")
    if len(set(targets)) != len(targets) or config.target in targets:
        raise EvolveError(f"{where}targets {targets} list a locale twice or repeat the run's target "
                          f"{config.target}; list each other target once")
    clash = sorted(set(targets) & set(config.sources or []))
    if clash:
        raise EvolveError(f"{where}target(s) {clash} are also sources; a target's own model may only "
                          f"be a baseline (leave-one-out): choose sources without them")


def dev_passes(config: EvolveConfig) -> int:
    """Dev passes per candidate: one, plus one per other target with objectives 'targets' (what
    the time estimate counts)."""
    from .algorithms import algorithm

    if any(p.name == "objectives" for p in algorithm(config.algorithm).params) \
            and config.setting("objectives") == "targets":
        return 1 + len(extra_targets(config))
    return 1


def objective_specs(config: EvolveConfig) -> List[Tuple[str, str]]:
    """(metric name, direction) per objective, in the study's order."""
    kind = config.setting("objectives")
    if kind == "accuracy+sparsity":
        return [("accuracy", "maximize"), ("sparsity", "maximize")]
    if kind == "targets":
        return [(f"fitness[{t}]", "maximize") for t in [config.target, *extra_targets(config)]]
    return [("accuracy", "maximize"), ("nll", "minimize")]


def delta_sparsity(state: Dict[str, torch.Tensor], base: Dict[str, torch.Tensor]) -> float:
    """The share of the merged model's floating-point entries equal to the base's (a zero delta),
    over the tensors the base has (a classifier head the base lacks is left out)."""
    zero = total = 0
    for key, value in state.items():
        ref = base.get(key)
        if ref is None or ref.shape != value.shape or not value.is_floating_point():
            continue
        zero += int(torch.count_nonzero(value == ref))
        total += value.numel()
    return zero / total if total else 0.0


class ObjectiveMeter:
    """The metrics a merged candidate needs beyond the run's own dev fitness: its sparsity, or
    its fitness on the other targets (their dev passes counted as the run's evaluation work)."""

    def __init__(self, config: EvolveConfig):
        self.config = config
        self.kind = config.setting("objectives")
        self.others: Optional[Dict[str, object]] = None

    def _fitnesses(self, fitness):
        from .fitness import Fitness

        if self.others is None:
            c, known = self.config, fitness.ws.dataset.locales
            unknown = [t for t in extra_targets(c) if t not in known]
            if unknown:
                raise EvolveError(f"targets {unknown} are not locales of the dataset; it has "
                                  f"{', '.join(known)}")
            self.others = {t: Fitness(fitness.ws, t, c.fitness_weights, c.dev_split, c.dev_size,
                                      c.seed) for t in extra_targets(c)}
        return self.others

    def measure(self, state, sources, fitness, metrics: Dict[str, float]) -> Dict[str, float]:
        if self.kind == "accuracy+sparsity":
            if sources.base is None:
                raise EvolveError("sparsity is measured against the pretrained base, and this zoo "
                                  "has none; add 'base' to the manifest or pass --base")
            return {"sparsity": delta_sparsity(state, sources.base)}
        if self.kind != "targets":
            return {}
        out = {f"fitness[{self.config.target}]": fitness.combine(metrics)}
        for target, other in self._fitnesses(fitness).items():
            other.reference = fitness.reference
            seconds, passes = other.seconds, other.evaluations
            m = other.metrics(state)
            fitness.seconds += other.seconds - seconds
            fitness.evaluations += other.evaluations - passes
            out.update({f"fitness[{target}]": other.combine(m), f"accuracy[{target}]": m["accuracy"],
                        f"nll[{target}]": m["nll"]})
        return out
