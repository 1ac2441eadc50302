"""The per-layer-group genome that CMA-ES, the Optuna samplers (and any vector search) share.

The genome is a point x in [0, 1]^d: for every layer group (embeddings, runs of ``layer_groups``
transformer layers, the head) one weight per source model and the tuned parameters of the chosen
merge method — by default its per-model float parameters (TIES / DARE density, breadcrumbs γ,
DELLA ε), one per source; a parameter named in ``tune`` that is not per-model gets one value per
group. A coordinate maps linearly onto the parameter's declared range (an open low end stays
strictly above it); weights are normalised per group (all zero: equal weights). Everything else
is fixed at ``method_params`` or the registry default. Any registered method without a data pass
can be tuned. A candidate is ``{"x": [...]}``; ``x0`` is the start point (the starting weights,
default parameters).
"""
from __future__ import annotations

from typing import Any, Dict, List, Optional, Sequence, Tuple

import numpy as np

from ..merge import MERGES
from ..registry import Param
from .build import Sources, build_grouped, layer_partition
from .config import EvolveConfig, EvolveError
from .genome import mean_pairwise_distance
from .search import Search

GROUPED_PARAMS = (
    Param("method", "choice", "ties",
          choices=tuple(m.name for m in MERGES if not m.traits.needs_data),
          help="the registered merge method whose weights and parameters are searched"),
    Param("layer_groups", "int", 2, 0, 1000,
          help="transformer layers per group (0: one global group)"),
)


class GroupedSearch(Search):
    """Decoding, building and describing per-layer-group recipes; subclasses only search x."""

    builds_without_scoring = True  # check(): only methods without a data pass

    def __init__(self, config: EvolveConfig, names: Sequence[str], weights: Sequence[float],
                 keys: Sequence[str]):
        super().__init__(config, keys)
        self.names = list(names)
        self.check(config)
        self.method = MERGES.get(config.method)
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

    # ---- what the run asks before a search exists --------------------------------------------
    @classmethod
    def create(cls, config: EvolveConfig, keys: Sequence[str]) -> "GroupedSearch":
        return cls(config, config.sources, config.weights, keys)

    @classmethod
    def check(cls, config: EvolveConfig) -> None:
        if config.method not in MERGES:
            raise EvolveError(f"unknown merge method '{config.method}' for {config.algorithm}; "
                              f"known: {', '.join(MERGES.names())}")
        if MERGES.get(config.method).traits.needs_data:
            raise EvolveError(f"{config.algorithm} cannot tune '{config.method}': it needs a data "
                              f"pass per merge; choose a method without one (e.g. ties, dare_ties, "
                              f"linear)")

    @classmethod
    def reads_base(cls, config: EvolveConfig) -> bool:
        return config.method in MERGES and bool(MERGES.get(config.method).traits.needs_base)

    @classmethod
    def label(cls, config: EvolveConfig) -> str:
        return f"{config.algorithm}:{config.method}"

    @classmethod
    def estimate(cls, config: EvolveConfig):
        from .estimate import Estimate

        return Estimate(1, config.population, 0, config.generations)  # the start point, then samples

    # ---- the genome --------------------------------------------------------------------------
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
                raise EvolveError(f"{self.config.algorithm} can tune only bounded numeric "
                                  f"parameters; '{name}' of '{self.method.name}' is {p.kind}")
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

    def coordinate_names(self) -> List[str]:
        """What each coordinate of x sets: 'layer 0 · de-DE weight', 'head · density[en-US]'."""
        out = []
        for group, _ in self.groups:
            out += [f"{group} · {n} weight" for n in self.names]
            for p in self.tuned:
                out += ([f"{group} · {p.name}[{n}]" for n in self.names] if p.per_model
                        else [f"{group} · {p.name}"])
        return out

    @staticmethod
    def _value(p, v: float):
        span = p.high - p.low
        value = p.low + min(1.0, max(0.0, v)) * span
        if p.kind == "int":
            value = int(round(value))
            return value + 1 if p.low_open and value <= p.low else value
        return p.low + 1e-3 * span if p.low_open and value <= p.low else value

    def diversity(self) -> float:
        return mean_pairwise_distance([np.asarray(m.candidate["x"]) for m in self.population])

    # ---- building / describing -------------------------------------------------------------
    def build(self, candidate: Dict[str, Any], sources: Sources, score, seed: int):
        return build_grouped(self.method.name, self.groups, self.decode(candidate["x"]), sources,
                             seed=seed)

    def recipe(self, candidate: Dict[str, Any]) -> Dict[str, Any]:
        groups = [{"group": name, "tensors": len(keys), "weights": dict(zip(self.names, w)),
                   "params": params}
                  for (name, keys), (w, params) in zip(self.groups, self.decode(candidate["x"]))]
        return {"algorithm": self.config.algorithm, "method": self.method.name,
                "layer_groups": self.config.layer_groups,
                "tuned": [p.name for p in self.tuned], "groups": groups}

    def export_method(self, candidate: Dict[str, Any]) -> str:
        return self.method.name

    def row_method(self) -> Optional[str]:
        return self.method.name

    def merge_methods(self) -> List[Tuple[str, Dict[str, Any]]]:
        return [(self.method.name, dict(self.fixed))]

    def export_parts(self, recipe: Dict[str, Any]):
        groups = recipe.get("groups") or []
        if len(groups) == 1:  # one group: an ordinary merge of that method
            return list(groups[0]["weights"].values()), groups[0]["params"], None
        # export_merge describes one global recipe; a grouped one must not claim a mergekit twin
        return (list(self.config.weights), {},
                "per-layer-group weights and parameters: no single mergekit config written "
                "(mergekit-evolve expresses them as slices)")

    def plain(self, candidate: Dict[str, Any]) -> Dict[str, Any]:
        return {"x": [float(v) for v in candidate["x"]]}

    def extra(self) -> Dict[str, Any]:
        return {"dimensions": self.dim, "groups": [name for name, _ in self.groups]}
