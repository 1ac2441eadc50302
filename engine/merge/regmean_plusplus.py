"""RegMean++ (FusionBench's ``regmean_plusplus``): RegMean whose Gram matrices at each layer come
from the inputs the already-merged lower layers produce, not from each source's own activations.
"""
from __future__ import annotations

import re
from typing import Dict, List, Optional, Tuple

import torch
from torch import Tensor

from ..progress import Tracker
from . import MERGES
from .common import MergeError, Prepared, linear_average, weighted_sum
from .context import require_context
from .data_aware import EXAMPLES, INPUT_KEYS, _batches, _model, linear_grams, regmean

LAYER = re.compile(r"^(.*?\.layers?)\.(\d+)\.")  # 'roberta.encoder.layer.3.…', 'model.layers.3.…'


def forward_order(model: torch.nn.Module, batch: Dict[str, Tensor]) -> List[str]:
    """Parameter names in the order a forward pass on ``batch`` first uses their modules
    (definition order is not forward order: transformers 5 defines the head before the
    encoder); parameters no pass reaches come last."""
    seen: List[str] = []
    owners = [(name, module) for name, module in model.named_modules()
              if any(True for _ in module.parameters(recurse=False))]
    handles = [module.register_forward_pre_hook(lambda *_, name=name: seen.append(name))
               for name, module in owners]
    device = next(model.parameters()).device
    try:
        with torch.no_grad():
            model(**{k: batch[k].to(device) for k in INPUT_KEYS if k in batch})
    finally:
        for h in handles:
            h.remove()
    rank = {name: i for i, name in reversed(list(enumerate(seen)))}
    order = sorted(owners, key=lambda o: rank.get(o[0], len(rank)))
    return [f"{name}.{p}" if name else p for name, module in order
            for p, _ in module.named_parameters(recurse=False)]


def forward_blocks(model: torch.nn.Module,
                   batch: Dict[str, Tensor]) -> List[Tuple[Optional[str], List[str]]]:
    """The model's parameter names in forward order, grouped: everything before the first
    numbered layer (embeddings), one group per layer (with the layer's module name), everything
    after the last (pooler, classification head)."""
    names = forward_order(model, batch)
    labels = [f"{m.group(1)}.{m.group(2)}" if m else None for m in map(LAYER.match, names)]
    numbered = [i for i, label in enumerate(labels) if label]
    if not numbered:
        raise MergeError("regmean_plusplus: the model has no numbered layers ('….layer.N.'); "
                         "use regmean")
    first, last = numbered[0], numbered[-1]
    blocks: List[Tuple[Optional[str], List[str]]] = [(None, names[:first])]
    for name, label in zip(names[first:last + 1], labels[first:last + 1]):
        if blocks[-1][0] != label:
            blocks.append((label, []))
        blocks[-1][1].append(name)
    blocks.append((None, names[last + 1:]))
    return [(label, keys) for label, keys in blocks if keys]


def prepare_regmean_plusplus(sources, weights, base, context, params, *, names, device, seed,
                             progress):
    """Merges block by block in forward order: source i's Grams for block b are read from a model
    holding the merged blocks < b and source i's own blocks ≥ b, run on source i's data, so the
    inputs of block b are what the merged lower layers make of that data."""
    context = require_context(context, "regmean_plusplus", "build_model", "batches")
    n, alpha = params["examples"], params["alpha"]
    active = [i for i, w in enumerate(weights) if w > 0]
    probe = _model(context, sources[active[0]], None, names[active[0]])
    first = next(iter(_batches(context, active[0], 1, names[active[0]])), None)
    if first is None:
        raise MergeError(f"regmean_plusplus: no data for model '{names[active[0]]}'")
    blocks = forward_blocks(probe, first)
    linears = {f"{m}.weight" for m, module in probe.named_modules()
               if isinstance(module, torch.nn.Linear)}
    del probe
    with_linears = [b for b in blocks if linears.intersection(b[1])]
    tracker = Tracker(progress, n * len(active) * len(with_linears), "RegMean++ Gram matrices")
    weight_tensor = torch.tensor(weights, dtype=torch.float32)
    merged: Dict[str, Tensor] = {}
    prepared = Prepared(default_label="linear (not an nn.Linear weight)")
    for layer, keys in blocks:
        keys = [k for k in keys if k in sources[0]]
        wanted = [k for k in keys if k in linears]
        grams: List[Optional[Dict[str, Tensor]]] = [None] * len(sources)
        for i in active if wanted else []:
            hybrid = {k: merged[k].to(sources[i][k].dtype) if k in merged else sources[i][k]
                      for k in sources[i].keys()}
            model = _model(context, hybrid, device, names[i])
            stop = dict(model.named_modules()).get(layer) if layer else None
            grams[i] = linear_grams(
                model, _batches(context, i, n, names[i]), names[i],
                lambda b, i=i: tracker.advance(b, f"Gram of {names[i]} at {layer or 'the ends'}"),
                only={k[: -len(".weight")] for k in wanted}, stop_after=stop)
            del model, hybrid
        for k in keys:
            tensors = [state[k].float() for state in sources]
            if k in wanted:
                merged[k] = regmean(tensors, weight_tensor, None, key=k, alpha=alpha,
                                    grams=[None if g is None else g.get(k) for g in grams])
                prepared.labels[k] = "regmean++"
            else:
                merged[k] = weighted_sum(tensors, weights)
            prepared.extras[k] = {"merged": merged[k]}
    prepared.notes.append(f"regmean_plusplus: {len(prepared.labels)} linear layers merged in "
                          f"{len(blocks)} blocks on merged-model inputs, up to {n} examples per source")
    return prepared


@MERGES.register("regmean_plusplus", params=[EXAMPLES, MERGES.get("regmean").param("alpha")],
                 family="data_aware", title="RegMean++", needs_base=False, needs_data=True,
                 min_sources=1, context=["build_model", "batches"], uses_labels=False,
                 data_use="target_text", prepare=prepare_regmean_plusplus)
def regmean_plusplus(tensors: List[Tensor], weights: Tensor, base: Optional[Tensor] = None, *,
                     key: str = "", generator=None, examples: int = 256, alpha: float = 0.9,
                     merged: Optional[Tensor] = None) -> Tensor:
    """RegMean++: per nn.Linear weight the RegMean solution (see ``regmean``: weights, α, ridge,
    padding left out) with Gram matrices G_i = X̃_iᵀX̃_i / rows, where X̃_i are that layer's inputs
    when source i's data runs through the merged lower layers and source i's own layer. The
    first layer's inputs come from the merged (weighted-average) embeddings, so it equals
    RegMean's wherever the sources share their embeddings.

    FusionBench's version (CLIP) merges the embeddings and the layers and keeps the pretrained
    model's final LayerNorm and has no classification head; ours continues past the last layer:
    the head's nn.Linear layers are RegMean-merged on the merged encoder's outputs, the rest
    averaged. The whole-model pass runs in the prepare hook; this kernel hands out its result.
    """
    if merged is None:  # not a parameter of the model (a buffer): the weighted average
        return linear_average(tensors, weights)
    return merged.to(tensors[0].device)


