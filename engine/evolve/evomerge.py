"""EvoMerge (seed 004): the 8 stage combinations, elites mutated, losers merged, diversity kept.

Generation 0 evaluates the 8 combinations with the registry's default parameters and the
starting weights (plus random hybrids when the population is larger than 8), and keeps the best
``population``. Each later generation, from the population ranked by fitness:

- the top ``elites`` (2) survive unchanged (not re-evaluated: evaluation is deterministic);
- each elite is mutated ``mutants_per_elite`` (3) times (:func:`genome.mutate`);
- the rest — the bottom population − elites (6) — are merged in rank order in groups of
  ``group_size`` (3): ranks 3–5 and 6–8 give one child each, with a random combination (uniform
  over the 8) and genes blended with random Dirichlet(1) coefficients (:func:`genome.blend`);
- when the population's diversity (mean pairwise gene distance) is below the threshold,
  ``reseed`` (2) random hybrids join the offspring;
- the next population = the elites + the best population − elites of the offspring.
With the defaults that is 8 evaluations per generation, 6 + 2 offspring competing for 6 places.
"""
from __future__ import annotations

from collections import Counter
from typing import Any, Dict, List, Sequence, Tuple

import numpy as np

from ..limits import check_param
from ..registry import Param
from .algorithms import EVOLUTIONS
from .build import Sources, build_evomerge
from .config import EvolveConfig, EvolveError
from .estimate import Estimate
from .genome import (COMBOS, Genome, blend, combo_label, default_genome, diversity, mutate,
                     random_genome)
from .member import Member
from .search import Search

ELITES = Param("elites", "int", None, 1, 999,
               help="best members kept and mutated (empty: a quarter of the population, at least 1)")
PARAMS = (
    ELITES,
    Param("mutants_per_elite", "int", 3, 1, 100, help="mutants of each elite per generation"),
    Param("group_size", "int", 3, 2, 100, help="losers merged in groups of this size"),
    Param("mutation_sigma", "float", 0.05, 0.0, 1.0, low_open=True,
          help="Gaussian σ as a fraction of each parameter's range"),
    Param("mutation_rate", "float", 0.25, 0.0, 1.0,
          help="chance that each gene mutates (at least one always does)"),
    Param("diversity_threshold", "float", 0.02, 0.0, 1.0,
          help="below it, re-seeded random hybrids join the next generation"),
    Param("reseed", "int", 2, 0, 100, help="random hybrids added when diversity is low"),
)


@EVOLUTIONS.register("evomerge", params=PARAMS, title="EvoMerge", needs_base=True, random=True,
                     summary="seed 004's search: 8 stage combinations, elites mutated, losers merged")
class EvoMergeSearch(Search):
    algorithm = "evomerge"
    needs_base = True

    def __init__(self, config: EvolveConfig, names: Sequence[str], weights: Sequence[float]):
        super().__init__(config)
        self.names = list(names)
        self.start_weights = [float(w) for w in weights]
        self.combo_counts: Counter = Counter()
        self.reseeded = 0

    @classmethod
    def create(cls, config: EvolveConfig, keys: Sequence[str]) -> "EvoMergeSearch":
        return cls(config, config.sources, config.weights)

    @classmethod
    def check(cls, config: EvolveConfig) -> None:
        elites = check_param(ELITES, config.elites, "evolve: ", EvolveError)
        if elites >= config.population:
            raise EvolveError(f"elites must be in 1..population-1, got {elites} (population "
                              f"{config.population}); lower --elites or raise --population")

    @classmethod
    def estimate(cls, config: EvolveConfig) -> Estimate:
        first = len(COMBOS) + max(0, config.population - len(COMBOS))
        losers = config.population - config.elites
        later = config.elites * config.mutants_per_elite + max(0, losers) // config.group_size
        return Estimate(first, later, config.reseed, config.generations)

    # ---- proposing ---------------------------------------------------------------------------
    def initial(self, rng: np.random.Generator) -> List[Dict[str, Any]]:
        """The 8 combinations (seed 004's generation 0), plus random hybrids up to the population."""
        cands = [{"genome": default_genome(c, self.start_weights), "origin": "init"} for c in COMBOS]
        for _ in range(max(0, self.config.population - len(COMBOS))):
            cands.append({"genome": random_genome(len(self.names), rng), "origin": "reseed"})
        return cands

    def propose(self, generation: int, rng: np.random.Generator) -> List[Dict[str, Any]]:
        cfg = self.config
        ranked = self.population
        cands = []
        for elite in ranked[:cfg.elites]:
            for _ in range(cfg.mutants_per_elite):
                cands.append({"genome": mutate(self.genome(elite.candidate), rng,
                                               cfg.mutation_sigma, cfg.mutation_rate),
                              "origin": "mutant"})
        losers = ranked[cfg.elites:]
        for start in range(0, len(losers) - cfg.group_size + 1, cfg.group_size):
            group = losers[start:start + cfg.group_size]
            coefficients = rng.dirichlet(np.ones(len(group)))
            combo = int(rng.integers(len(COMBOS)))
            parents = [self.genome(m.candidate) for m in group]
            cands.append({"genome": blend(parents, coefficients, combo, rng), "origin": "merged"})
        self.reseeded = 0
        if cfg.reseed and self.diversity() < cfg.diversity_threshold:
            self.reseeded = cfg.reseed
            cands += [{"genome": random_genome(len(self.names), rng), "origin": "reseed"}
                      for _ in range(cfg.reseed)]
        return cands

    # ---- selection ---------------------------------------------------------------------------
    def accept(self, generation: int, members: List[Member]) -> None:
        for m in members:
            self.combo_counts[combo_label(self.genome(m.candidate).combo)] += 1
        ranked = sorted(members, key=lambda m: -m.fitness)  # stable: ties keep proposal order
        if generation == 0:
            self.population = ranked[:self.config.population]
            return
        elites = self.population[:self.config.elites]
        survivors = elites + ranked[:self.config.population - len(elites)]
        self.population = sorted(survivors, key=lambda m: -m.fitness)

    def diversity(self) -> float:
        return diversity([self.genome(m.candidate) for m in self.population])

    def stop_reason(self):
        """EvoMerge stops only on the shared plateau rule (or the generation budget)."""
        return None

    # ---- building / describing -------------------------------------------------------------
    def genome(self, candidate: Dict[str, Any]) -> Genome:
        g = candidate["genome"]
        return g if isinstance(g, Genome) else Genome.from_dict(g)

    def build(self, candidate: Dict[str, Any], sources: Sources, score, seed: int):
        return build_evomerge(self.genome(candidate), sources, score=score, seed=seed)

    def recipe(self, candidate: Dict[str, Any]) -> Dict[str, Any]:
        return {"algorithm": self.algorithm, **self.genome(candidate).recipe(self.names)}

    def export_method(self, candidate: Dict[str, Any]) -> str:
        return self.genome(candidate).methods[2]

    def merge_methods(self) -> List[Tuple[str, Dict[str, Any]]]:
        return [("ties", {})]  # stage 2's TIES; its DARE draws mergekit's masks (not fused)

    def export_parts(self, recipe: Dict[str, Any]):
        """Stage 3 names the method; 'mix' is our own gene."""
        params = {k: v for k, v in recipe["stages"][2]["params"].items() if k != "mix"}
        return list(recipe["weights"].values()), params, None

    def plain(self, candidate: Dict[str, Any]) -> Dict[str, Any]:
        """The candidate as JSON data (what a Member and the checkpoint store)."""
        return {"genome": self.genome(candidate).to_dict()}

    def extra(self) -> Dict[str, Any]:
        """Per-generation facts for the result: combination usage and re-seeding."""
        return {"combo_counts": {combo_label(c): self.combo_counts.get(combo_label(c), 0)
                                 for c in COMBOS},
                "reseeded": self.reseeded}

    # ---- checkpoint --------------------------------------------------------------------------
    def state(self) -> Dict[str, Any]:
        return {"population": [m.to_dict() for m in self.population],
                "combo_counts": dict(self.combo_counts), "reseeded": self.reseeded}

    def load(self, state: Dict[str, Any]) -> None:
        self.population = [Member.from_dict(m) for m in state["population"]]
        self.combo_counts = Counter(state["combo_counts"])
        self.reseeded = int(state.get("reseeded", 0))
