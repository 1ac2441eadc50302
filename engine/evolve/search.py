"""What every evolution algorithm shares: the ``Search`` base class a registered algorithm
subclasses, and the calls the runner and the Ray workers make through the registry.

Adding an algorithm is one class in one file::

    @EVOLUTIONS.register("random", params=[...], summary="uniform samples of the recipe")
    class RandomSearch(GroupedSearch):          # or Search, for a genome of its own
        def propose(self, generation, rng): ...

The class is the registry entry's function: ``create(config, keys)`` makes the search, and the
class methods below answer what the run needs before a search exists (label, base, estimate,
cross-setting checks). The runner owns evaluation, the champion, curves and checkpoints; this
module holds ``build_and_score`` so the local loop (runner.py) and the Ray workers (remote.py)
score a candidate the same way without importing each other.
"""
from __future__ import annotations

import time
from typing import Any, Dict, List, Optional, Sequence, Tuple

import numpy as np

from ..merge import MergeError
from .algorithms import EVOLUTIONS, algorithm
from .config import EvolveConfig, EvolveError
from .estimate import Estimate
from .member import Member


class Search:
    """A search proposes candidates (plain JSON dicts plus an ``origin``) and selects among the
    scored ones (``Member``s); ``build`` turns a candidate into a merged state dict.

    Override at least ``initial``, ``propose``, ``build`` and ``recipe``; the defaults keep the
    best ``population`` members ever seen (a (μ+λ) selection), report no diversity, never stop on
    their own, and checkpoint the population.
    """

    # True where ``build`` never evaluates (no frankenmerge-like data pass): the runner may then
    # merge the next candidate on a second thread while this one is evaluated.
    builds_without_scoring = False

    def __init__(self, config: EvolveConfig, keys: Sequence[str] = ()):
        self.config = config
        self.names = list(config.sources or [])
        self.start_weights = [float(w) for w in (config.weights or [])]
        self.population: List[Member] = []

    # ---- what the run asks before a search exists --------------------------------------------
    @classmethod
    def create(cls, config: EvolveConfig, keys: Sequence[str]) -> "Search":
        return cls(config, keys)

    @classmethod
    def reads_base(cls, config: EvolveConfig) -> bool:
        """Whether this config's merges need the pretrained base (besides the ``needs_base`` trait)."""
        return False

    @classmethod
    def label(cls, config: EvolveConfig) -> str:
        """The run row's ``method`` (e.g. 'cmaes:ties')."""
        return config.algorithm

    @classmethod
    def estimate(cls, config: EvolveConfig) -> Estimate:
        """Candidates per generation, for the progress bar and the time budget."""
        return Estimate(config.population, config.population, 0, config.generations)

    @classmethod
    def check(cls, config: EvolveConfig) -> None:
        """EvolveError for settings that are wrong together (each alone is checked by its Param)."""

    # ---- the search --------------------------------------------------------------------------
    def initial(self, rng: np.random.Generator) -> List[Dict[str, Any]]:
        raise NotImplementedError

    def propose(self, generation: int, rng: np.random.Generator) -> List[Dict[str, Any]]:
        raise NotImplementedError

    def accept(self, generation: int, members: List[Member]) -> None:
        ranked = sorted(self.population + members, key=lambda m: -m.fitness)  # stable
        self.population = ranked[:self.config.population]

    def better(self, member: Member, champion: Optional[Member]) -> bool:
        """Whether ``member`` replaces the champion (default: a higher fitness)."""
        return champion is None or member.fitness > champion.fitness

    def diversity(self) -> float:
        return 0.0

    def stop_reason(self) -> Optional[str]:
        return None

    # ---- building / describing -------------------------------------------------------------
    def build(self, candidate: Dict[str, Any], sources, score, seed: int):
        raise NotImplementedError

    def recipe(self, candidate: Dict[str, Any]) -> Dict[str, Any]:
        raise NotImplementedError

    def export_method(self, candidate: Dict[str, Any]) -> str:
        return self.config.method

    def export_parts(self, recipe: Dict[str, Any]) -> Tuple[List[float], Dict[str, Any], Optional[str]]:
        """(weights, params, mergekit note) an export records for this champion's recipe."""
        return list(self.config.weights), {}, None

    def plain(self, candidate: Dict[str, Any]) -> Dict[str, Any]:
        """The candidate as JSON data (what a Member and the checkpoint store)."""
        return {k: v for k, v in candidate.items() if k != "origin"}

    def extra(self) -> Dict[str, Any]:
        """Facts the run's result adds (e.g. CMA-ES's σ)."""
        return {}

    def row_method(self) -> Optional[str]:
        """The merge method whose builds may merge only the embedding rows evaluation reads
        (engine/merge/rows.py; its ``row_local`` trait decides), None: builds merge whole. A search
        whose ``measure`` reads the whole state returns None."""
        return None

    def merge_methods(self) -> List[Tuple[str, Dict[str, Any]]]:
        """(method, fixed params) the builds merge the sources with: the runner compiles their
        fused kernels up front (engine/merge/fused_warm.py); [] for none known."""
        return []

    def measure(self, state, sources, fitness, metrics: Dict[str, float]) -> Dict[str, float]:
        """Metrics of a built candidate beyond its dev metrics that selection reads (a merged
        model's sparsity, its fitness on other targets); added to the candidate's metrics."""
        return {}

    # ---- checkpoint --------------------------------------------------------------------------
    def state(self) -> Dict[str, Any]:
        return {"population": [m.to_dict() for m in self.population]}

    def load(self, state: Dict[str, Any]) -> None:
        self.population = [Member.from_dict(m) for m in state["population"]]


def search_class(config: EvolveConfig):
    try:
        return algorithm(config.algorithm).fn
    except KeyError as exc:
        raise EvolveError(str(exc).strip("'\"")) from None


def needs_base(config: EvolveConfig) -> bool:
    """Whether the run loads the pretrained base: the algorithm's trait, or its config's method."""
    method = algorithm(config.algorithm)
    return bool(method.traits.needs_base or method.fn.reads_base(config))


def make_search(config: EvolveConfig, keys: List[str]) -> Search:
    return search_class(config).create(config, keys)


def run_label(config: EvolveConfig) -> str:
    return search_class(config).label(config)


def build_candidate(search, sources, fitness, cand: Dict[str, Any], seed: int,
                    scores_inside: bool = True):
    """Merges one candidate in memory: (state or None, outcome) with outcome {"merge_s"} or
    {"error", "merge_s"}; merging time excludes frankenmerge's own dev evaluations
    (``scores_inside=False``: the build evaluates nothing, e.g. on a prefetch thread while the
    main thread evaluates, so nothing is subtracted)."""
    started, eval_before = time.perf_counter(), fitness.seconds
    try:
        state = search.build(cand, sources, fitness.score, seed)
    except MergeError as exc:
        state, outcome = None, {"error": f"merge failed: {exc}"}
    else:
        outcome = {}
    outcome["merge_s"] = time.perf_counter() - started
    if scores_inside:
        outcome["merge_s"] -= fitness.seconds - eval_before
    return state, outcome


def score_candidate(search, sources, fitness, state, outcome: Dict[str, Any]):
    """Adds the dev metrics of a built candidate, and the search's own measures (``Search.measure``),
    to its outcome (a failed merge has none)."""
    if state is not None:
        metrics = fitness.metrics(state)
        outcome["metrics"] = {**metrics, **search.measure(state, sources, fitness, metrics)}
    return state, outcome


def build_and_score(search, sources, fitness, cand: Dict[str, Any], seed: int):
    """Merges one candidate in memory and measures it on the dev sample: (state or None, outcome),
    the outcome plain data — {"metrics", "merge_s"} or {"error", "merge_s"}, merging time without
    frankenmerge's own dev evaluations. The local loop and the Ray workers both score this way."""
    return score_candidate(search, sources, fitness, *build_candidate(search, sources, fitness, cand, seed))


__all__ = ["EVOLUTIONS", "Search", "build_and_score", "build_candidate", "score_candidate",
           "make_search", "needs_base", "run_label",
           "search_class"]
