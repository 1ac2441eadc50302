"""Turning a genome into a merged state dict, in memory, with the registered merge methods.

EvoMerge's three stages (seed 004's "linear|SLERP → DARE|TIES → frankenmerge|DFS"), composed so
that each stage does what it is defined for:

1. interpolation: the K sources merged in parameter space with the genome's per-model weights,
   ``linear`` (Σ w_i θ_i) or ``slerp`` (sequential pairs) → θ₁.
2. task vectors: the same K sources as task vectors δ_i = θ_i − θ_base relative to the pretrained
   base, sparsified and combined with the same weights and the genome's density / λ / rescale /
   normalize: ``dare_linear`` (random drop + rescale, then task arithmetic) or ``ties`` (trim,
   elect sign, disjoint mean) → θ₂. (Applied to θ₁ alone, as the seed's sketch reads, TIES would
   have no signs to elect; run on the sources it resolves their conflicts as designed.)
3. selection: θ₁ and θ₂ are the two candidates the selection stage chooses between, weighted
   (1 − mix, mix): ``frankenmerge`` takes each transformer layer whole from θ₁, θ₂ or their
   weighted average, greedily by dev fitness (1 + 2·layers extra evaluations, each try run from the
   layer it changes: fitness.PrefixReuse), embeddings and head
   averaged; ``inverse_variance`` weights each entry by how little each candidate deviates from
   their weighted mean. The result is the individual's model.

CMA-ES merges each layer group's keys separately with that group's weights and parameters; the
sub-dicts are views of the loaded sources, so memory stays one output model plus kernel scratch.
"""
from __future__ import annotations

from typing import Dict, List, Optional, Sequence, Tuple

import torch

from ..merge import MERGES, MergeCache, MergeContext, merge_state_dicts
from ..merge.selection import layer_groups
from ..merge.trim_store import workspace_store
from .config import EvolveError
from .genome import Genome
from .resident import ResidentMerge, assemble, merge_group

StateDict = Dict[str, torch.Tensor]


class Sources:
    """The run's source state dicts (and the base when needed), loaded once, on the device.

    ``cache`` (on by default) is the MergeCache every merge over these sources shares: their task
    vectors, sorted magnitudes (TIES) and random draws (DARE) are computed once per run instead of
    once per candidate; it costs up to ~3× the sources' memory (engine/merge/cache.py). Off:
    ``cache=False`` (same results, slower). ``resident`` (on by default): grouped searches merge
    only the layer groups a candidate changes (resident.py). ``rows``: {key: row ids} of tensors
    whose other rows no evaluation reads (resident.restricted_rows; set by the runner): row-local
    merges then merge only those rows. The cache keeps TIES' sorted magnitudes and tie orders on
    disk too (``trim_store``: <cache_dir>/trim/, ``Settings.trim_store_gb``), so the next search
    over the same sources reads them instead of sorting again."""

    def __init__(self, ws, names: Sequence[str], need_base: bool, cache: bool = True,
                 resident: bool = True):
        self.names = list(names)
        self.device = ws.evaluator.device
        self.cache: Optional[MergeCache] = MergeCache(workspace_store(ws)) if cache else None
        self.resident: Optional[ResidentMerge] = ResidentMerge() if resident else None
        self.rows: Dict[str, torch.Tensor] = {}
        self.states = [self._on_device(ws.zoo.state_dict(n)) for n in self.names]
        self.base: Optional[StateDict] = None
        if need_base:
            if ws.zoo.base is None:
                raise EvolveError("this search merges task vectors (TIES/DARE) but the zoo has no "
                                  "pretrained base model; add 'base' to the manifest or pass --base")
            self.base = self._on_device(ws.zoo.base_state_dict())

    def _on_device(self, state: StateDict) -> StateDict:
        return {k: v.to(self.device) for k, v in state.items()}

    @property
    def keys(self) -> List[str]:
        return list(self.states[0])


def build_evomerge(genome: Genome, sources: Sources, score=None, seed: int = 0) -> StateDict:
    """The genome's three-stage merge (see the module docstring); ``score`` is frankenmerge's
    dev scorer. The result carries stage 3's MergeReport with stages 1–2's notes added."""
    interpolation, task_vector, selection = genome.methods
    common = {"names": sources.names, "device": sources.device, "seed": seed,
              "cache": sources.cache}
    first = merge_state_dicts(interpolation, sources.states, genome.weights, **common)
    second = merge_state_dicts(task_vector, sources.states, genome.weights, base=sources.base,
                               params=genome.params[task_vector], **common)
    context = MergeContext(score=score) if MERGES.get(selection).traits.needs_data else None
    out = merge_state_dicts(selection, [first, second], [1.0 - genome.mix, genome.mix],
                            params=genome.params[selection], names=["interpolation", "task vectors"],
                            context=context, device=sources.device, seed=seed)
    out.report.notes[:0] = [f"stage 1 {interpolation}", f"stage 2 {task_vector}: "
                            + "; ".join(second.report.notes)]
    return out


def layer_partition(keys: Sequence[str], layers_per_group: int) -> List[Tuple[str, List[str]]]:
    """Keys in groups: the embeddings, runs of ``layers_per_group`` transformer layers, and the
    rest (pooler, classification head); 0 puts every key in one group."""
    keys = list(keys)
    if layers_per_group <= 0:
        return [("all", keys)]
    layers = layer_groups(keys)
    in_layers = {k for ks in layers.values() for k in ks}
    embeddings = [k for k in keys if k not in in_layers and "embed" in k]
    head = [k for k in keys if k not in in_layers and k not in set(embeddings)]
    groups: List[Tuple[str, List[str]]] = [("embeddings", embeddings)] if embeddings else []
    ordered = list(layers.items())
    for start in range(0, len(ordered), layers_per_group):
        chunk = ordered[start:start + layers_per_group]
        first, last = chunk[0][0][1], chunk[-1][0][1]
        name = f"layer {first}" if first == last else f"layers {first}-{last}"
        groups.append((name, [k for _, ks in chunk for k in ks]))
    if head:
        groups.append(("head", head))
    return groups


def build_grouped(method: str, groups: Sequence[Tuple[str, List[str]]],
                  settings: Sequence[Tuple[List[float], dict]], sources: Sources,
                  seed: int = 0) -> StateDict:
    """Each group's keys merged with that group's (weights, params); with ``sources.resident``
    (engine/evolve/resident.py) only the groups whose settings changed are merged (the others are
    the previous candidate's tensors); the result is the same."""
    if sources.resident is not None:
        return sources.resident.build(method, groups, settings, sources, seed)
    return assemble([merge_group(method, keys, weights, params, sources, seed)
                     for (name, keys), (weights, params) in zip(groups, settings)])
