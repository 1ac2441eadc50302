"""Incremental merging for per-layer-group searches (CMA-ES, the Optuna samplers): merge only what
a candidate changes, straight into the model that evaluates it.

A grouped candidate sets, per layer group, the source weights and the merge method's parameters.
Groups are merged independently (build.build_grouped), so a group whose settings equal those of
the last merged group gives the same tensors: it is not merged again, and its tensors are the
very objects of the previous candidate's state. The evaluator's working model copies in only
tensors that are not the objects it loaded last (Evaluator.working_model), so only changed groups
are merged and copied, in place, and the dev pass starts at the first changed layer
(fitness.PrefixReuse). The result is bit-identical to a full merge and load
(tests/test_evolve_resident.py).

What it keeps: the last merged output of every group (one model's worth, which a full merge
builds per candidate anyway).
"""
from __future__ import annotations

import json
from typing import Dict, List, Optional, Sequence, Tuple

import torch

from ..merge import merge_state_dicts

StateDict = Dict[str, torch.Tensor]


def merge_group(method: str, keys: Sequence[str], weights: List[float], params: dict,
                sources, seed: int = 0) -> StateDict:
    """One layer group's keys of ``sources`` (build.Sources) merged with that group's weights and
    parameters."""
    subs = [{k: s[k] for k in keys} for s in sources.states]
    base = {k: sources.base[k] for k in keys if k in sources.base} \
        if sources.base is not None else None
    return dict(merge_state_dicts(method, subs, weights, base=base, params=params,
                                  names=sources.names, device=sources.device, seed=seed,
                                  cache=sources.cache))


def settings_key(method: str, weights: Sequence[float], params: dict, seed: int) -> str:
    """What a group's merged tensors depend on besides the (fixed) sources: exact, as JSON."""
    return json.dumps([method, [float(w) for w in weights], params, int(seed)], sort_keys=True,
                      default=str)


class ResidentMerge:
    """The groups the evaluator's working model holds, and their merged tensors."""

    def __init__(self):
        self.held: List[Optional[str]] = []
        self.outputs: List[StateDict] = []
        self.merged_groups = 0                   # counts, for the bench and the tests
        self.reused_groups = 0

    def build(self, method: str, groups: Sequence[Tuple[str, List[str]]],
              settings: Sequence[Tuple[List[float], dict]], sources, seed: int = 0) -> StateDict:
        """The candidate's merged state dict: the held tensors of unchanged groups (the same
        objects, so the evaluator copies only the rest into its model), fresh ones elsewhere."""
        if len(self.held) != len(groups):
            self.held, self.outputs = [None] * len(groups), [{} for _ in groups]
        state: StateDict = {}
        for g, ((name, keys), (weights, params)) in enumerate(zip(groups, settings)):
            key = settings_key(method, weights, params, seed)
            if self.held[g] == key:
                self.reused_groups += 1
            else:
                self.held[g] = None  # a failed merge leaves the group unheld
                self.outputs[g] = merge_group(method, keys, weights, params, sources, seed)
                self.held[g] = key
                self.merged_groups += 1
            state.update(self.outputs[g])
        return state
