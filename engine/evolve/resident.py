"""Incremental merging for per-layer-group searches (CMA-ES, the Optuna samplers): merge only what
a candidate changes, straight into the model that evaluates it.

A grouped candidate sets, per layer group, the source weights and the merge method's parameters.
Groups are merged independently (build.build_grouped), so a group whose settings equal those of
the group the working model already holds gives the same tensors: it is neither merged nor
copied again. Only changed groups are merged, and only their tensors are copied into the
evaluator's resident model, in place. The unchanged groups' tensors are the very objects of the
previous candidate's state, so the dev pass also starts at the first changed layer
(fitness.PrefixReuse). The result is bit-identical to a full merge and load
(tests/test_evolve_resident.py).

What it keeps: the last merged output of every group (one model's worth, which a full merge
builds per candidate anyway). Anything else loaded into the working model (the champion's test
pass, a source's reference) is noticed and the next candidate copies every group again.
"""
from __future__ import annotations

import json
from typing import Dict, List, Optional, Sequence, Tuple

import torch

StateDict = Dict[str, torch.Tensor]


def settings_key(method: str, weights: Sequence[float], params: dict, seed: int) -> str:
    """What a group's merged tensors depend on besides the (fixed) sources: exact, as JSON."""
    return json.dumps([method, [float(w) for w in weights], params, int(seed)], sort_keys=True,
                      default=str)


class ResidentMerge:
    """The groups the evaluator's working model holds, and their merged tensors."""

    def __init__(self, evaluator):
        self.evaluator = evaluator
        self.held: List[Optional[str]] = []
        self.outputs: List[StateDict] = []
        self.state: Optional[StateDict] = None   # the state dict the model was last given
        self.merged_groups = 0                   # counts, for the bench and the tests
        self.reused_groups = 0
        self.copied_tensors = 0

    def build(self, method: str, groups: Sequence[Tuple[str, List[str]]],
              settings: Sequence[Tuple[List[float], dict]], sources, seed: int = 0) -> StateDict:
        """The candidate's merged state dict, already loaded into ``evaluator``'s working model
        (``working_model(state)`` then returns it without loading)."""
        from .build import merge_group

        if len(self.held) != len(groups):
            self.held, self.outputs = [None] * len(groups), [{} for _ in groups]
        in_model = self.state is not None and self.evaluator.holds(self.state)
        self.state = None  # until the model holds the new state (a failed merge leaves it unsure)
        state: StateDict = {}
        changed: StateDict = {}
        for g, ((name, keys), (weights, params)) in enumerate(zip(groups, settings)):
            key = settings_key(method, weights, params, seed)
            if self.held[g] == key:
                self.reused_groups += 1
                if not in_model:
                    changed.update(self.outputs[g])
            else:
                self.held[g] = None
                self.outputs[g] = merge_group(method, keys, weights, params, sources, seed)
                self.held[g] = key
                self.merged_groups += 1
                changed.update(self.outputs[g])
            state.update(self.outputs[g])
        self.evaluator.load_changed(state, changed)
        self.copied_tensors += len(changed)
        self.state = state
        return state
