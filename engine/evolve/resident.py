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

With ``sources.rows`` (set by the runner: the input embedding's rows that evaluation reads, see
``restricted_rows``) a row-local method (registry trait ``row_local``) merges only those rows of
the embedding (engine/merge/rows.py); the candidate is then a ``RowMerged`` whose ``complete()``
is the full merge (the champion, an export).
"""
from __future__ import annotations

import json
import weakref
from typing import Dict, List, Optional, Sequence, Tuple

import torch

from ..merge import MERGES, MergeError, merge_state_dicts
from ..merge.rows import RowMerged, merge_state_rows, row_ids

StateDict = Dict[str, torch.Tensor]


def merge_group(method: str, keys: Sequence[str], weights: List[float], params: dict,
                sources, seed: int = 0, whole: bool = False) -> StateDict:
    """One layer group's keys of ``sources`` (build.Sources) merged with that group's weights and
    parameters; only the rows ``sources.rows`` names of those tensors unless ``whole``."""
    subs = [{k: s[k] for k in keys} for s in sources.states]
    base = {k: sources.base[k] for k in keys if k in sources.base} \
        if sources.base is not None else None
    rows = {k: r for k, r in (getattr(sources, "rows", None) or {}).items() if k in subs[0]}
    if rows and not whole:
        held = weakref.ref(sources)  # no cycle sources -> resident outputs -> sources

        def complete() -> StateDict:
            if held() is None:
                raise MergeError("the search's sources are gone: this partial merge cannot be completed")
            return merge_group(method, keys, weights, params, held(), seed, whole=True)
        return merge_state_rows(method, subs, weights, base, params, rows, names=sources.names,
                                device=sources.device, seed=seed, cache=sources.cache,
                                complete=complete)
    return dict(merge_state_dicts(method, subs, weights, base=base, params=params,
                                  names=sources.names, device=sources.device, seed=seed,
                                  cache=sources.cache))


def assemble(outputs: Sequence[StateDict]) -> StateDict:
    """The groups' outputs as one state dict; a ``RowMerged`` where some hold only some rows,
    completed group by group (the others' tensors are reused)."""
    state: StateDict = {}
    for out in outputs:
        state.update(out)
    partial = [out for out in outputs if getattr(out, "rows", None)]
    if not partial:
        return state
    outputs = list(outputs)

    def complete() -> StateDict:
        full: StateDict = {}
        for out in outputs:
            full.update(out.complete() if getattr(out, "rows", None) else out)
        return full
    return RowMerged(state, rows={k: r for out in partial for k, r in out.rows.items()},
                     complete=complete)


def input_embedding_key(model) -> Optional[str]:
    """The state-dict key of the model's input embedding matrix, which a forward pass reads only
    at its input ids; None where that is not so: the output embeddings are the same matrix (tied:
    every row is read), or the model has no input embedding."""
    get = getattr(model, "get_input_embeddings", None)
    emb = get() if get is not None else None
    weight = getattr(emb, "weight", None)
    if weight is None:
        return None
    out = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    if out is not None and getattr(out, "weight", None) is not None and \
            out.weight.data_ptr() == weight.data_ptr():
        return None
    return next((k for k, v in model.state_dict().items() if v.data_ptr() == weight.data_ptr()),
                None)


def restricted_rows(ws, method: Optional[str], fitness) -> Dict[str, torch.Tensor]:
    """{embedding key: the rows evaluation reads} for a search whose builds may merge only those
    rows: the token ids of the dev sample and of the target's test split (the champion's test
    pass) and the padding id; {} where the method or the model does not allow it."""
    ev = ws.evaluator
    if method is None or method not in MERGES or not MERGES.get(method).traits.row_local \
            or ev._model is None:
        return {}
    key = input_embedding_key(ev._model)
    if key is None:
        return {}
    test = ev.encoded(fitness.target, "test")
    pad = ev.tokenizer.pad_token_id or 0
    return {key: row_ids(list(fitness.dev.input_ids) + list(test.input_ids) + [torch.tensor([pad])])}


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
        for g, ((name, keys), (weights, params)) in enumerate(zip(groups, settings)):
            key = settings_key(method, weights, params, seed) + ("|rows" if sources.rows else "")
            if self.held[g] == key:
                self.reused_groups += 1
            else:
                self.held[g] = None  # a failed merge leaves the group unheld
                self.outputs[g] = merge_group(method, keys, weights, params, sources, seed)
                self.held[g] = key
                self.merged_groups += 1
        return assemble(self.outputs)
