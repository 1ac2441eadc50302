"""CMA-ES over per-layer-group merge recipes, as mergekit-evolve and Sakana's evolutionary merge do.

The genome is a point x in [0, 1]^d: for every layer group (embeddings, runs of ``layer_groups``
transformer layers, the head) one weight per source model and the tuned parameters of the chosen
merge method — by default its per-model float parameters (TIES / DARE density, breadcrumbs γ,
DELLA ε), one per source; a parameter named in ``tune`` that is not per-model gets one value per
group. A coordinate maps linearly onto the parameter's declared range (an open low end stays
strictly above it); weights are normalised per group (all zero: equal weights). Everything else
is fixed at ``method_params`` or the registry default. Any registered method without a data pass
can be tuned. Generation 0 evaluates the start point (the starting weights, default parameters);
CMA-ES then maximises fitness from there with step size ``sigma0`` and ``population`` samples per
generation. Its normal draws come from a seeded generator of ours, so a run is repeatable and a
checkpoint is just the (x, fitness) history, replayed on resume.
"""
from __future__ import annotations

import math
import warnings
from typing import Any, Dict, List, Optional, Sequence, Tuple

import numpy as np

from ..merge import MERGES
from .build import Sources, build_grouped, layer_partition
from .config import EvolveConfig, EvolveError
from .genome import mean_pairwise_distance
from .member import Member


def _cma():
    with warnings.catch_warnings():  # cma warns that matplotlib (for its plots) is missing
        warnings.simplefilter("ignore")
        import cma
    return cma


class CmaSearch:
    algorithm = "cmaes"

    def __init__(self, config: EvolveConfig, names: Sequence[str], weights: Sequence[float],
                 keys: Sequence[str]):
        self.config = config
        self.names = list(names)
        self.method = MERGES.get(config.method) if config.method in MERGES else None
        if self.method is None:
            raise EvolveError(f"unknown merge method '{config.method}' for CMA-ES; known: "
                              f"{', '.join(MERGES.names())}")
        if self.method.traits.needs_data:
            raise EvolveError(f"CMA-ES cannot tune '{config.method}': it needs a data pass per "
                              f"merge; choose a method without one (e.g. ties, dare_ties, linear)")
        self.needs_base = self.method.traits.needs_base
        k = len(self.names)
        if k < self.method.traits.min_sources:
            raise EvolveError(f"'{config.method}' needs at least {self.method.traits.min_sources} "
                              f"sources, got {k}")
        self.tuned = self._tuned_params(config.tune)
        fixed = {n: v for n, v in config.method_params.items() if n not in self.tuned}
        try:
            self.fixed = self.method.resolve(fixed)
        except ValueError as exc:
            raise EvolveError(str(exc)) from None
        self.groups = layer_partition(keys, config.layer_groups)
        self.per_group = k + sum(k if p.per_model else 1 for p in self.tuned)
        self.dim = self.per_group * len(self.groups)
        self.x0 = self._start(weights)
        self.population: List[Member] = []
        self.history: List[Dict[str, Any]] = []
        self._es = None
        self._pending: Optional[List[np.ndarray]] = None

    def _tuned_params(self, names: Optional[List[str]]):
        if names is None:
            return [p for p in self.method.params if p.per_model and p.kind == "float"]
        out = []
        for name in names:
            try:
                p = self.method.param(name)
            except KeyError as exc:
                raise EvolveError(str(exc).strip("'\"")) from None
            if p.kind not in ("float", "int") or p.low is None or p.high is None:
                raise EvolveError(f"CMA-ES can tune only bounded numeric parameters; "
                                  f"'{name}' of '{self.method.name}' is {p.kind}")
            out.append(p)
        return out

    def _start(self, weights: Sequence[float]) -> np.ndarray:
        k = len(self.names)
        w = np.asarray(weights, dtype=float)
        group = list(np.clip(w / w.sum() * k / 2, 0.05, 0.95))  # equal weights -> 0.5 each
        try:
            defaults = self.method.resolve(dict(self.config.method_params))
        except ValueError as exc:
            raise EvolveError(str(exc)) from None
        for p in self.tuned:
            value = defaults[p.name]
            values = value if isinstance(value, list) else [value] * (k if p.per_model else 1)
            group += [float(np.clip((v - p.low) / (p.high - p.low), 0.01, 0.99)) for v in values]
        return np.asarray(group * len(self.groups))

    def _new_es(self):
        cma = _cma()
        rng = np.random.default_rng([self.config.seed, 7])
        opts = {"bounds": [0.0, 1.0], "popsize": self.config.population, "seed": math.nan,
                "randn": lambda lam, n: rng.standard_normal((lam, n)), "verbose": -9,
                "verb_log": 0, "verb_disp": 0, "maxiter": 10 ** 9}
        return cma.CMAEvolutionStrategy(list(self.x0), self.config.sigma0, opts)

    # ---- decoding ----------------------------------------------------------------------------
    def decode(self, x: Sequence[float]) -> List[Tuple[List[float], Dict[str, Any]]]:
        """Per group: (weights summing to one, the method's full parameter dict)."""
        k, out = len(self.names), []
        x = [float(v) for v in x]
        for g in range(len(self.groups)):
            chunk = x[g * self.per_group:(g + 1) * self.per_group]
            w = [max(0.0, v) for v in chunk[:k]]
            total = sum(w)
            weights = [v / total for v in w] if total > 1e-9 else [1.0 / k] * k
            params, pos = dict(self.fixed), k
            for p in self.tuned:
                n = k if p.per_model else 1
                values = [self._value(p, v) for v in chunk[pos:pos + n]]
                params[p.name] = values if p.per_model else values[0]
                pos += n
            out.append((weights, params))
        return out

    @staticmethod
    def _value(p, v: float):
        span = p.high - p.low
        value = p.low + min(1.0, max(0.0, v)) * span
        if p.kind == "int":
            value = int(round(value))
            return value + 1 if p.low_open and value <= p.low else value
        return p.low + 1e-3 * span if p.low_open and value <= p.low else value

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

    def diversity(self) -> float:
        return mean_pairwise_distance([np.asarray(m.candidate["x"]) for m in self.population])

    def stop_reason(self) -> Optional[str]:
        """CMA-ES's own termination (e.g. tolfun on a flat landscape), if any."""
        if self._es is None:
            return None
        reasons = {k: v for k, v in self._es.stop().items() if k != "maxiter"}
        return "cma-es: " + ", ".join(sorted(reasons)) if reasons else None

    # ---- building / describing -------------------------------------------------------------
    def build(self, candidate: Dict[str, Any], sources: Sources, score, seed: int):
        return build_grouped(self.method.name, self.groups, self.decode(candidate["x"]), sources,
                             seed=seed)

    def recipe(self, candidate: Dict[str, Any]) -> Dict[str, Any]:
        groups = [{"group": name, "tensors": len(keys), "weights": dict(zip(self.names, w)),
                   "params": params}
                  for (name, keys), (w, params) in zip(self.groups, self.decode(candidate["x"]))]
        return {"algorithm": self.algorithm, "method": self.method.name,
                "layer_groups": self.config.layer_groups,
                "tuned": [p.name for p in self.tuned], "groups": groups}

    def export_method(self, candidate: Dict[str, Any]) -> str:
        return self.method.name

    def plain(self, candidate: Dict[str, Any]) -> Dict[str, Any]:
        return {"x": [float(v) for v in candidate["x"]]}

    def extra(self) -> Dict[str, Any]:
        es = self._es
        return {"sigma": float(es.sigma) if es is not None else self.config.sigma0,
                "dimensions": self.dim, "groups": [name for name, _ in self.groups]}

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
