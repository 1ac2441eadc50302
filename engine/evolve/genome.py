"""The EvoMerge genome: which merge technique each of the three stages uses, the per-model weights,
and the parameters of every stage method — with mutation, blending and distance defined once, from
the registry's parameter schemas (no special case per method).

Combination bits follow seed 004: bit 0 interpolation (0 linear, 1 SLERP), bit 1 task arithmetic
(0 DARE, 1 TIES), bit 2 selection (0 frankenmerge, 1 inverse variance); the label writes bit 0
first ("100" = SLERP + DARE + frankenmerge).
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Dict, List, Optional, Sequence, Tuple

import numpy as np

from ..merge import MERGES
from ..registry import Param

INTERPOLATION = ("linear", "slerp")
TASK_VECTOR = ("dare_linear", "ties")
SELECTION = ("frankenmerge", "inverse_variance")
STAGES = (("interpolation", INTERPOLATION), ("task_vector", TASK_VECTOR), ("selection", SELECTION))
STAGE_METHODS = INTERPOLATION + TASK_VECTOR + SELECTION
COMBOS = tuple(range(8))

WEIGHT = Param("weight", "float", 1.0, 0.0, 1.0, per_model=True,
               help="a source model's share in stages 1 and 2 (the weights sum to one)")
MIX = Param("mix", "float", 0.5, 0.0, 1.0,
            help="stage 3: share of the task-vector merge (stage 2) against the interpolation "
                 "(stage 1)")


def combo_methods(combo: int) -> Tuple[str, str, str]:
    """(interpolation, task-vector, selection) method names of a combination 0..7."""
    if combo not in COMBOS:
        raise ValueError(f"a combination is a number 0..7, got {combo!r}")
    return tuple(options[(combo >> bit) & 1] for bit, (_, options) in enumerate(STAGES))


def combo_label(combo: int) -> str:
    """Seed 004's binary label, bit 0 first: '110' = SLERP + TIES + frankenmerge."""
    return "".join(str((combo >> bit) & 1) for bit in range(3))


def combo_name(combo: int) -> str:
    return " + ".join(combo_methods(combo))


@dataclass(frozen=True)
class Gene:
    """One mutable number or switch: a weight, the stage-3 mix, or one method parameter (one
    entry of a per-model parameter)."""

    method: str               # "" for the weights and the mix
    name: str
    index: Optional[int]      # position in a per-model list
    param: Param


@dataclass
class Genome:
    combo: int
    weights: List[float]
    mix: float
    params: Dict[str, Dict[str, Any]]   # every stage method -> its parameters (per-model as lists)

    @property
    def methods(self) -> Tuple[str, str, str]:
        return combo_methods(self.combo)

    def to_dict(self) -> Dict[str, Any]:
        """A deep copy as plain data (per-model lists copied too)."""
        return {"combo": self.combo, "weights": list(self.weights), "mix": self.mix,
                "params": _copy_params(self.params)}

    @classmethod
    def from_dict(cls, data: Dict[str, Any]) -> "Genome":
        return cls(int(data["combo"]), [float(w) for w in data["weights"]], float(data["mix"]),
                   _copy_params(data["params"]))

    def copy(self) -> "Genome":
        return Genome.from_dict(self.to_dict())

    def recipe(self, names: Sequence[str]) -> Dict[str, Any]:
        """What the UI shows and an export records: the three stages with their parameters."""
        stages = [{"stage": stage, "method": method, "params": self.params[method]}
                  for (stage, _), method in zip(STAGES, self.methods)]
        stages[2]["params"] = {**stages[2]["params"], "mix": self.mix}
        return {"combo": combo_label(self.combo), "name": combo_name(self.combo),
                "weights": dict(zip(names, self.weights)), "stages": stages}


def _copy_params(params: Dict[str, Dict[str, Any]]) -> Dict[str, Dict[str, Any]]:
    return {m: {k: list(v) if isinstance(v, list) else v for k, v in p.items()}
            for m, p in params.items()}


def _scalar(p: Param) -> Param:
    return Param(p.name, p.kind, p.default, p.low, p.high, p.choices, False, p.low_open, p.help)


def default_params(k: int) -> Dict[str, Dict[str, Any]]:
    """Registry defaults of every stage method, per-model parameters as lists of k values."""
    out = {}
    for name in STAGE_METHODS:
        method = MERGES.get(name)
        resolved = method.resolve({})
        for p in method.params:
            if p.per_model and not isinstance(resolved[p.name], list):
                resolved[p.name] = [resolved[p.name]] * k
        out[name] = resolved
    return out


def default_genome(combo: int, weights: Sequence[float]) -> Genome:
    total = float(sum(weights))
    return Genome(combo, [float(w) / total for w in weights], MIX.default,
                  default_params(len(weights)))


def random_genome(k: int, rng: np.random.Generator) -> Genome:
    """A random hybrid for re-seeding: random combination, Dirichlet(1) weights, default params."""
    combo = int(rng.integers(8))
    return default_genome(combo, [float(w) for w in rng.dirichlet(np.ones(k))])


def genes(genome: Genome, active_only: bool = True) -> List[Gene]:
    """The weights, the mix and the stage methods' parameters (only the combination's three
    methods when ``active_only``: the others do not change the merged model)."""
    out = [Gene("", "weight", i, _scalar(WEIGHT)) for i in range(len(genome.weights))]
    out.append(Gene("", "mix", None, MIX))
    for name in (genome.methods if active_only else STAGE_METHODS):
        for p in MERGES.get(name).params:
            if p.speed:  # how fast, not what: no gene (the default stays)
                continue
            value = genome.params[name][p.name]
            if isinstance(value, list):
                out += [Gene(name, p.name, i, _scalar(p)) for i in range(len(value))]
            else:
                out.append(Gene(name, p.name, None, p))
    return out


def get_gene(genome: Genome, gene: Gene) -> Any:
    if gene.method == "":
        return genome.weights[gene.index] if gene.name == "weight" else genome.mix
    value = genome.params[gene.method][gene.name]
    return value[gene.index] if gene.index is not None else value


def set_gene(genome: Genome, gene: Gene, value: Any) -> None:
    if gene.method == "":
        if gene.name == "weight":
            genome.weights[gene.index] = value
        else:
            genome.mix = value
        return
    if gene.index is not None:
        genome.params[gene.method][gene.name][gene.index] = value
    else:
        genome.params[gene.method][gene.name] = value


def _span(p: Param) -> Tuple[float, float, float]:
    low = -math.inf if p.low is None else float(p.low)
    high = math.inf if p.high is None else float(p.high)
    span = high - low if math.isfinite(high - low) else max(1.0, abs(float(p.default or 0)))
    return low, high, span


def mutate_value(p: Param, value: Any, sigma: float, rng: np.random.Generator) -> Any:
    """A Gaussian step of σ × range for numbers, clipped into the declared range (an open low end
    stays strictly above it); a flip for switches; another option for choices."""
    if p.kind == "bool":
        return not value
    if p.kind == "choice":
        others = [c for c in p.choices if c != value]
        return others[int(rng.integers(len(others)))] if others else value
    low, high, span = _span(p)
    new = min(max(float(value) + float(rng.normal(0.0, sigma * span)), low), high)
    if p.kind == "int":
        new = int(round(new))
        if p.low_open and new <= low:
            new = int(math.floor(low)) + 1
        return new
    if p.low_open and new <= low:
        new = low + 1e-3 * span
    return new


def _normalise(weights: List[float], fallback: List[float]) -> List[float]:
    total = sum(weights)
    return [w / total for w in weights] if total > 0 else list(fallback)


def check_genome(genome: Genome) -> None:
    """Every value inside its declared range (raises ValueError naming the parameter)."""
    for gene in genes(genome, active_only=False):
        gene.param.check(get_gene(genome, gene), f"evolve genome {gene.method or 'weights'}: ")


def mutate(parent: Genome, rng: np.random.Generator, sigma: float, rate: float) -> Genome:
    """Each active gene mutates with probability ``rate``; at least one always does (a step that
    clips back onto the old value at a bound is redrawn), so a mutant is practically never a copy
    of its parent. Weights are renormalised to sum to one."""
    child = parent.copy()
    active = genes(child)
    chosen = rng.random(len(active)) < rate
    if not chosen.any():
        chosen[int(rng.integers(len(active)))] = True
    for gene, hit in zip(active, chosen):
        if hit:
            old = get_gene(child, gene)
            for _ in range(8):  # a step clipped back onto the old value (at a bound) is redrawn
                new = mutate_value(gene.param, old, sigma, rng)
                if new != old:
                    break
            set_gene(child, gene, new)
    child.weights = _normalise(child.weights, parent.weights)
    return child


def blend(parents: Sequence[Genome], coefficients: Sequence[float], combo: int,
          rng: np.random.Generator) -> Genome:
    """Merges parent genomes (loser merging): numbers are the convex combination with
    ``coefficients`` (a linear merge of linear merges is exactly a linear merge with the combined
    weights), switches and choices come from a parent drawn with those probabilities; ``combo``
    is the child's combination."""
    a = np.asarray(coefficients, dtype=float)
    a = a / a.sum()
    child = parents[0].copy()
    child.combo = int(combo)
    for gene in genes(child, active_only=False):
        values = [get_gene(p, gene) for p in parents]
        if gene.param.kind in ("bool", "choice"):
            value = values[int(rng.choice(len(parents), p=a))]
        else:
            value = float(sum(c * float(v) for c, v in zip(a, values)))
            if gene.param.kind == "int":
                value = int(round(value))
        set_gene(child, gene, value)
    child.weights = _normalise(child.weights, parents[0].weights)
    return child


def gene_vector(genome: Genome) -> np.ndarray:
    """Every gene scaled to [0, 1] (numbers by their range, switches 0/1, choices by position)
    plus the three combination bits: the space diversity is measured in."""
    values = [float((genome.combo >> bit) & 1) for bit in range(3)]
    for gene in genes(genome, active_only=False):
        p, v = gene.param, get_gene(genome, gene)
        if p.kind == "bool":
            values.append(float(v))
        elif p.kind == "choice":
            values.append(p.choices.index(v) / max(1, len(p.choices) - 1))
        else:
            low, _, span = _span(p)
            values.append(min(1.0, max(0.0, (float(v) - (low if math.isfinite(low) else 0.0)) / span)))
    return np.asarray(values)


def mean_pairwise_distance(vectors: Sequence[np.ndarray]) -> float:
    """Mean over pairs of the mean absolute difference: 0 = all identical, 1 = maximally apart."""
    if len(vectors) < 2:
        return 0.0
    x = np.stack(vectors)
    total, pairs = 0.0, 0
    for i in range(len(x)):
        total += float(np.abs(x[i + 1:] - x[i]).mean(axis=1).sum())
        pairs += len(x) - i - 1
    return total / pairs


def diversity(genomes: Sequence[Genome]) -> float:
    return mean_pairwise_distance([gene_vector(g) for g in genomes])

