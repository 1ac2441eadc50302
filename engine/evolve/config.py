"""The settings of one evolutionary run, checked up front so a bad value fails before any work.

Defaults follow seed 004 (population 8, 50 generations, 2 elites mutated 3× each, the bottom 6
merged in two groups of 3, patience 5 at a 0.001 improvement). Two deliberate departures, both
documented where they act: mutation σ / rate act on the *recipe* (per-model weights and method
parameters, σ relative to each parameter's declared range), not on model weights; and the default
fitness leaves latency and memory at weight 0, because merges of one architecture run at the same
speed and size, so those terms would only add timing noise (and make a seed's run unrepeatable).
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields
import math
from typing import Any, Dict, List, Optional

from ..jobs import EXECUTORS
from ..limits import check_param, check_setting
from .algorithms import EVOLUTIONS

FITNESS_TERMS = ("accuracy", "loss", "latency", "memory")
DEFAULT_FITNESS = {"accuracy": 0.5, "loss": 0.5, "latency": 0.0, "memory": 0.0}
DEV_SUBSETS = ("random", "informative")   # how a dev_size subset is chosen (engine/evolve/fitness.py)
SEED_FITNESS = {"accuracy": 0.3, "loss": 0.4, "latency": 0.2, "memory": 0.1}  # seed 004's weights


# Settings every run has, checked against their declared ranges in engine/limits.py; an
# algorithm's own settings are the Params it registers with (engine/evolve/algorithms.py).
NUMERIC = ("generations", "population", "top_k", "seed", "dev_size", "patience", "min_delta",
           "ray_cpus")


def default_elites(population: int) -> int:
    """Seed 004's share: the best quarter survives (2 of 8), at least 1 and never the whole
    population (population 2 keeps 1)."""
    return max(1, min(population - 1, int(population / 4 + 0.5)))


class EvolveError(ValueError):
    """An evolutionary run that cannot start or resume as asked (bad setting, no checkpoint, ...)."""


@dataclass
class EvolveConfig:
    """One run. ``sources=None`` takes the target's URIEL top-k (leave-one-out) and their weights."""

    target: str
    algorithm: str = "evomerge"            # a registered algorithm: EVOLUTIONS.names()
    sources: Optional[List[str]] = None    # None: URIEL top_k neighbours of the target
    weights: Optional[List[float]] = None  # starting per-model weights (None: URIEL, else equal)
    top_k: int = 3                         # seed 004 merges 3 models
    generations: int = 50
    population: int = 8
    seed: int = 0
    fitness_weights: Dict[str, float] = field(default_factory=lambda: dict(DEFAULT_FITNESS))
    dev_split: str = "validation"          # the target's split the search optimises on
    dev_size: int = 0                      # 0: the whole split; n: a seeded sample of n examples
    dev_subset: str = "random"             # with dev_size: "random" sample, or the "informative" examples
                                           # the sources disagree on (MERGE³-style, engine/evolve/fitness.py)
    merge_cache: bool = True               # keep task vectors / sorted magnitudes / draws between
                                           # merges (faster; up to ~3x the sources' memory)
    patience: int = 5                      # generations without a champion gain > min_delta; 0: off
    min_delta: float = 0.001
    # The built-in algorithms' settings keep fields of their own (checkpoints store them so);
    # declared, ranged and documented as Params where each algorithm registers.
    # EvoMerge
    elites: Optional[int] = None           # None: default_elites(population) (2 for seed 004's 8)
    mutants_per_elite: int = 3
    group_size: int = 3                    # losers merged in groups of this size
    mutation_sigma: float = 0.05           # Gaussian σ as a fraction of each parameter's range
    mutation_rate: float = 0.25            # chance that each gene mutates (at least one always does)
    diversity_threshold: float = 0.02      # below it, `reseed` random hybrids join the next generation
    reseed: int = 2
    # CMA-ES
    method: str = "ties"                   # the registered merge method CMA-ES tunes
    layer_groups: int = 2                  # transformer layers per group; 0: one group (global)
    sigma0: float = 0.2                    # initial step size in the [0, 1] gene space
    tune: Optional[List[str]] = None       # method params tuned per group (None: per-model floats)
    method_params: Dict[str, Any] = field(default_factory=dict)  # fixed values for the others
    # Where a generation's candidates are merged and scored: "local" (this process, one after
    # another) or "ray" (one Ray task each, in parallel; engine/evolve/remote.py). Same results.
    executor: str = "local"
    address: Optional[str] = None          # Ray cluster address; None: a local instance
    ray_cpus: int = 2                      # CPUs of that local instance
    options: Dict[str, Any] = field(default_factory=dict)  # settings of an algorithm without a
                                                           # field above (missing: its default)

    def __post_init__(self) -> None:
        if self.elites is None and isinstance(self.population, int) and self.population >= 2:
            self.elites = default_elites(self.population)

    def check(self) -> "EvolveConfig":
        """Raises EvolveError naming the first bad setting; returns self."""
        def need(ok: bool, message: str) -> None:
            if not ok:
                raise EvolveError(message)

        need(self.algorithm in EVOLUTIONS,
             f"unknown algorithm '{self.algorithm}'; use {' or '.join(EVOLUTIONS.names())}")
        need(bool(self.target), "choose a target locale")
        for name in NUMERIC:  # the declared ranges (engine/limits.py), one message for every entry point
            setattr(self, name, check_setting(name, getattr(self, name), "evolve: ", EvolveError))
        if self.elites is None:
            self.elites = default_elites(self.population)
        need(self.dev_split in ("train", "validation"),
             f"dev_split must be 'validation' or 'train' (the test split stays untouched), "
             f"got '{self.dev_split}'")
        need(self.dev_subset in DEV_SUBSETS,
             f"dev_subset must be {' or '.join(DEV_SUBSETS)}, got '{self.dev_subset}'")
        algorithm = EVOLUTIONS.get(self.algorithm)
        known = {p.name for p in algorithm.params}
        need(not set(self.options) - known,
             f"{self.algorithm} has no setting(s) {sorted(set(self.options) - known)}; it takes "
             f"{sorted(known) or 'none'}")
        algorithm.fn.check(self)  # settings wrong together, named before each alone is ranged
        for p in algorithm.params:  # the algorithm's own settings, ranged by their Params
            self.set(p.name, check_param(p, self.setting(p.name), "evolve: ", EvolveError))
        need(self.executor in EXECUTORS, f"unknown executor '{self.executor}'; use {' or '.join(EXECUTORS)}")
        self.fitness_weights = check_fitness_weights(self.fitness_weights)
        if self.sources is not None:
            need(len(self.sources) >= 1, "choose at least one source model")
            need(len(set(self.sources)) == len(self.sources), "a source is listed twice")
            need(self.target not in self.sources,
                 f"the target {self.target} is among the sources: its own model may only be a "
                 f"baseline (leave-one-out)")
            if self.weights is not None:
                need(len(self.weights) == len(self.sources),
                     f"{len(self.weights)} weights for {len(self.sources)} sources")
                need(all(isinstance(w, (int, float)) and math.isfinite(w) and w >= 0
                         for w in self.weights) and sum(self.weights) > 0,
                     f"weights must be finite, non-negative and not all zero, got {self.weights}")
        return self

    def setting(self, name: str) -> Any:
        """An algorithm setting: its field, else ``options``, else the algorithm's Param default."""
        if name in FIELDS:
            return getattr(self, name)
        if name in self.options:
            return self.options[name]
        return EVOLUTIONS.get(self.algorithm).param(name).default

    def set(self, name: str, value: Any) -> "EvolveConfig":
        """Sets an algorithm setting where ``setting`` reads it; returns self."""
        if name in FIELDS:
            setattr(self, name, value)
        else:
            self.options = {**self.options, name: value}
        return self

    @classmethod
    def with_settings(cls, **values: Any) -> "EvolveConfig":
        """A config from flat values (a page's controls, a CLI's flags): the fields set, an
        algorithm's settings without a field of their own put in ``options``."""
        config = cls(**{k: v for k, v in values.items() if k in FIELDS})
        for name, value in values.items():
            if name not in FIELDS:
                config.set(name, value)
        return config

    def to_dict(self) -> Dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: Dict[str, Any]) -> "EvolveConfig":
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise EvolveError(f"unknown evolution setting(s) {unknown}")
        return cls(**data)


FIELDS = frozenset(f.name for f in fields(EvolveConfig)) - {"options"}


def check_fitness_weights(weights: Dict[str, float]) -> Dict[str, float]:
    """All four terms present (missing ones 0), non-negative, not all zero."""
    unknown = sorted(set(weights) - set(FITNESS_TERMS))
    if unknown:
        raise EvolveError(f"unknown fitness term(s) {unknown}; use {', '.join(FITNESS_TERMS)}")
    out = {}
    for term in FITNESS_TERMS:
        out[term] = float(check_setting("fitness_weight", weights.get(term, 0.0),
                                        f"evolve: '{term}' ", EvolveError))
    if sum(out.values()) <= 0:
        raise EvolveError("at least one fitness weight must be positive")
    return out


def parse_fitness_weights(text: str) -> Dict[str, float]:
    """'accuracy=0.3,loss=0.4,latency=0.2,memory=0.1' (or 'seed' for seed 004's weights)."""
    if text.strip() == "seed":
        return dict(SEED_FITNESS)
    out: Dict[str, float] = {}
    for part in filter(None, (p.strip() for p in text.split(","))):
        name, sep, value = part.partition("=")
        if not sep:
            raise EvolveError(f"fitness weight '{part}' must look like name=value")
        try:
            out[name.strip()] = float(value)
        except ValueError:
            raise EvolveError(f"fitness weight '{part}': '{value}' is not a number") from None
    return check_fitness_weights(out)
