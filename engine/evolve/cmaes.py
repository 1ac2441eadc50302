"""CMA-ES over per-layer-group merge recipes, as mergekit-evolve and Sakana's evolutionary merge do.

The genome is grouped.py's point x in [0, 1]^d (per layer group: the source weights and the tuned
parameters of the chosen merge method). Generation 0 evaluates the start point (the starting
weights, default parameters); CMA-ES then maximises fitness from there with step size ``sigma0``
and ``population`` samples per generation. Its normal draws come from a seeded generator of ours,
so a run is repeatable and a checkpoint is just the (x, fitness) history, replayed on resume.
"""
from __future__ import annotations

import math
import warnings
from typing import Any, Dict, List, Optional, Sequence

import numpy as np

from ..registry import Param
from .algorithms import EVOLUTIONS
from .config import EvolveConfig, EvolveError
from .grouped import GROUPED_PARAMS, GroupedSearch
from .member import Member


def _cma():
    with warnings.catch_warnings():  # cma warns that matplotlib (for its plots) is missing
        warnings.simplefilter("ignore")
        import cma
    return cma


SIGMA0 = Param("sigma0", "float", 0.2, 0.0, 1.0, low_open=True,
               help="initial step size in the [0, 1] gene space")


@EVOLUTIONS.register("cmaes", title="CMA-ES", summary="CMA-ES over per-layer-group weights and "
                     "parameters of one merge method (the cma package)", random=True,
                     params=[*GROUPED_PARAMS, SIGMA0])
class CmaSearch(GroupedSearch):
    algorithm = "cmaes"

    def __init__(self, config: EvolveConfig, names: Sequence[str], weights: Sequence[float],
                 keys: Sequence[str]):
        super().__init__(config, names, weights, keys)
        self.history: List[Dict[str, Any]] = []
        self._es = None
        self._pending: Optional[List[np.ndarray]] = None

    def _new_es(self):
        cma = _cma()
        rng = np.random.default_rng([self.config.seed, 7])
        opts = {"bounds": [0.0, 1.0], "popsize": self.config.population, "seed": math.nan,
                "randn": lambda lam, n: rng.standard_normal((lam, n)), "verbose": -9,
                "verb_log": 0, "verb_disp": 0, "maxiter": 10 ** 9}
        return cma.CMAEvolutionStrategy(list(self.x0), self.config.sigma0, opts)

    # ---- the search --------------------------------------------------------------------------
    def initial(self, rng) -> List[Dict[str, Any]]:
        return [{"x": self.x0, "origin": "start"}]

    def propose(self, generation: int, rng) -> List[Dict[str, Any]]:
        if self._es is None:
            self._es = self._new_es()
        self._pending = [np.asarray(x) for x in self._es.ask()]
        return [{"x": x, "origin": "cma"} for x in self._pending]

    def accept(self, generation: int, members: List[Member]) -> None:
        self.population = sorted(members, key=lambda m: -m.fitness)
        if generation == 0:
            return
        fitness = [m.fitness for m in members]
        self._es.tell(self._pending, [-f for f in fitness])  # CMA-ES minimises
        self.history.append({"x": [list(map(float, x)) for x in self._pending], "f": fitness})
        self._pending = None

    def stop_reason(self) -> Optional[str]:
        """CMA-ES's own termination (e.g. tolfun on a flat landscape), if any."""
        if self._es is None:
            return None
        reasons = {k: v for k, v in self._es.stop().items() if k != "maxiter"}
        return "cma-es: " + ", ".join(sorted(reasons)) if reasons else None

    def extra(self) -> Dict[str, Any]:
        es = self._es
        return {"sigma": float(es.sigma) if es is not None else self.config.sigma0,
                **super().extra()}

    # ---- checkpoint: the (x, f) history, replayed -------------------------------------------
    def state(self) -> Dict[str, Any]:
        return {"population": [m.to_dict() for m in self.population], "history": self.history}

    def load(self, state: Dict[str, Any]) -> None:
        self.population = [Member.from_dict(m) for m in state["population"]]
        self.history = []
        self._es = self._new_es()
        for step in state["history"]:
            asked = np.asarray(self._es.ask())
            stored = np.asarray(step["x"])
            if asked.shape != stored.shape or not np.allclose(asked, stored, rtol=0, atol=1e-12):
                raise EvolveError("the CMA-ES checkpoint does not replay (different cma version "
                                  "or settings?); start a new run")
            self._es.tell([np.asarray(x) for x in step["x"]], [-f for f in step["f"]])
            self.history.append(step)
