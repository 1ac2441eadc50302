"""How many candidates a run will evaluate, counted the way the searches propose them.

EvoMerge's generation 0 is the 8 stage combinations plus random hybrids up to the population;
each later generation is elites × mutants_per_elite mutants, one merged child per full group of
``group_size`` among the population − elites losers, and ``reseed`` random hybrids in generations
where diversity fell below the threshold (not known in advance: counted as a range). CMA-ES
evaluates its starting point, then ``population`` samples per generation. A plateau can stop a
run earlier, so these are the most it will do. Each algorithm counts its own (``Search.estimate``).
"""
from __future__ import annotations

from dataclasses import dataclass

from .algorithms import algorithm
from .config import EvolveConfig


@dataclass(frozen=True)
class Estimate:
    first: int          # candidates in generation 0
    later: int          # candidates in each later generation (without re-seeding)
    reseed: int         # extra candidates in a generation that re-seeds
    generations: int    # generations after generation 0

    @property
    def total(self) -> int:
        return self.first + self.later * self.generations

    @property
    def most(self) -> int:
        return self.total + self.reseed * self.generations

    def text(self, forward_passes_each: int = 1) -> str:
        extra = f" (up to {self.most} when diversity drops and {self.reseed} re-seeded join a generation)" \
            if self.reseed and self.generations else ""
        gens = (f"{self.first} in generation 0" + (f", {self.later} in each of the "
                f"{self.generations} later ones" if self.generations else ""))
        return f"At most {self.total} candidates: {gens}{extra}."


def candidates_per_generation(config: EvolveConfig) -> Estimate:
    """Counted by the config's algorithm (its search class's ``estimate``)."""
    return algorithm(config.algorithm).fn.estimate(config)
