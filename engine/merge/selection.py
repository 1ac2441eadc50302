"""Selection-style merges from the EvoMerge seed: layer selection (frankenmerge) and
inverse-variance weighting ("DFS")."""
from __future__ import annotations

from typing import Dict, List, Optional, Tuple

import torch
from torch import Tensor

from ..progress import Tracker
from ..registry import Param
from . import MERGES
from .common import MergeError, Prepared, chunk_size, linear_average, weighted_sum
from .context import require_context
from .common import LAYER_PATTERN  # noqa: I001  (shared with run.py's per-region timings)



def layer_groups(keys) -> Dict[Tuple[str, int], List[str]]:
    """Keys grouped by transformer layer, in (stack, index) order; non-layer keys left out."""
    groups: Dict[Tuple[str, int], List[str]] = {}
    for key in keys:
        m = LAYER_PATTERN.match(key)
        if m:
            groups.setdefault((m.group(1), int(m.group(2))), []).append(key)
    return dict(sorted(groups.items()))


def prepare_frankenmerge(sources, weights, base, context, params, *, names, device, seed,
                         progress):
    """Greedy, one pass over layers in order: each layer in turn tries every source's copy of
    that layer (and, with include_linear, the merged layer) while the other layers stay at the
    current choice (earlier layers: already chosen; later layers: the weighted linear merge), and
    keeps the best validation score (ties: merged layer, then lower source index)."""
    from .run import merge_state_dicts  # the linear starting point uses the same loop

    context = require_context(context, "frankenmerge", "score")
    groups = layer_groups(sources[0].keys())
    if not groups:
        raise MergeError("frankenmerge found no transformer layers (keys like "
                         "'encoder.layer.0.…') in the source models")
    candidates = [i for i, w in enumerate(weights) if w > 0]
    tracker = Tracker(progress, 1 + len(groups) * len(candidates), "frankenmerge: linear start")
    current = dict(merge_state_dicts("linear", sources, weights, names=names, device=device))
    best_score = float(context.score(current))
    tracker.advance(1)
    prepared = Prepared(default_label="linear (outside the layers)")
    prepared.notes.append(f"frankenmerge: linear merge scores {best_score:.4f}")
    include_linear = params["include_linear"]
    for (stack, index), keys in groups.items():
        layer = f"{stack}.{index}"
        choice: Optional[int] = None
        linear_score = best_score
        if not include_linear:
            best_score = float("-inf")
        chosen = {k: current[k] for k in keys}
        for i in candidates:
            candidate = dict(current)
            for k in keys:
                candidate[k] = sources[i][k].to(current[k].dtype)
            score = float(context.score(candidate))
            tracker.advance(1, f"frankenmerge: {layer} from {names[i]}: {score:.4f}")
            if score > best_score:
                best_score, choice = score, i
                chosen = {k: candidate[k] for k in keys}
        current.update(chosen)
        if choice is None:
            prepared.notes.append(f"{layer}: merged layer kept ({linear_score:.4f})")
            for k in keys:
                prepared.labels[k] = f"linear ({layer} kept merged)"
        else:
            prepared.notes.append(f"{layer}: from {names[choice]} ({best_score:.4f})")
            for k in keys:
                prepared.extras[k] = {"choice": choice}
                prepared.labels[k] = f"{layer} from {names[choice]}"
    prepared.notes.append(f"frankenmerge: final validation score {best_score:.4f}")
    return prepared


@MERGES.register("frankenmerge", params=[
    Param("include_linear", "bool", True,
          help="a layer may also stay the weighted linear merge (never scores below the linear "
               "merge on validation); off: every layer comes from one source")],
    family="selection", needs_base=False, needs_data=True, mergekit=None, min_sources=1,
    random=False, context=["score"], data_use="target_dev", prepare=prepare_frankenmerge)
def frankenmerge(tensors: List[Tensor], weights: Tensor, base: Optional[Tensor] = None, *,
                 key: str = "", generator=None, include_linear: bool = True,
                 choice: Optional[int] = None) -> Tensor:
    """Layer selection: each transformer layer taken whole from the source that scores best.

    Chosen greedily by ``context.score`` on validation data (see ``prepare_frankenmerge``); with
    include_linear a layer may also stay the weighted linear merge.
    Tensors outside the layers (embeddings, the classification head) get the weighted linear
    merge. Costs 1 + layers × sources validation runs.
    """
    if choice is None:
        return linear_average(tensors, weights)
    return tensors[choice].clone()



@MERGES.register("inverse_variance", params=[
    Param("granularity", "choice", "element", choices=("element", "tensor"),
          help="variance per entry, or one variance per model and tensor"),
    Param("epsilon", "float", 0.01, 0.0, 10.0, low_open=True,
          help="added to each model's variance, relative to the weighted mean variance; large "
               "values approach the linear merge")],
    family="selection", needs_base=False, needs_data=False, mergekit=None, min_sources=1,
    random=False)
def inverse_variance(tensors: List[Tensor], weights: Tensor, base: Optional[Tensor] = None, *,
                     key: str = "", generator=None, granularity: str = "element",
                     epsilon: float = 0.01) -> Tensor:
    """Inverse-variance weighting ("DFS"): models that deviate less from consensus count more.

    θ = Σ c_i θ_i / Σ c_i with c_i = w_i / (v_i + ε·v̄), v_i = (θ_i − θ̄)² the model's squared
    deviation from the weighted mean θ̄ (per entry, or its mean over the tensor), v̄ = Σ w_i v_i.

    The seed's literal formula gives every model the same importance 1/var at a parameter, which
    cancels to the plain mean; weighting each model by the inverse of its own variance around
    the consensus is the standard inverse-variance estimator and makes the stable (agreeing)
    models count more. Where all weighted models agree exactly, the weighted mean is returned;
    computed relative to the smallest variance, so tiny variances cannot overflow.
    Applies to every tensor, the classification head included; the base is not used.
    """
    w = weights.tolist()
    if granularity == "tensor":
        return _inverse_variance(tensors, w, epsilon, per_tensor=True)
    # per entry, everything is elementwise: slice by slice, so the scratch stays in cache
    flats = [t.reshape(-1) for t in tensors]
    out = torch.empty_like(flats[0])
    step = chunk_size()
    for start in range(0, out.numel(), step):
        stop = min(out.numel(), start + step)
        _inverse_variance([f[start:stop] for f in flats], w, epsilon, per_tensor=False,
                          out=out[start:stop])
    return out.view(tensors[0].shape)


def _inverse_variance(tensors: List[Tensor], w: List[float], epsilon: float, per_tensor: bool,
                      out: Optional[Tensor] = None) -> Tensor:
    mean = weighted_sum(tensors, w)
    deviations = []
    for t in tensors:
        v = (t - mean).square_()
        deviations.append(v.mean() if per_tensor else v)
    spread = torch.zeros_like(deviations[0])
    for v, wi in zip(deviations, w):
        spread = spread + wi * v
    floor = epsilon * spread
    variances = [v + floor for v in deviations]
    # c_i scaled by the smallest variance so that nothing overflows: c_i = w_i · v_min / v_i,
    # and where v_min = 0 (a model sits exactly on the consensus) c_i = w_i for those models.
    # v_min ≤ v_i, so v_min / v_i is NaN (0/0) exactly where v_i = 0: nan_to_num gives the 1
    # there, with float arithmetic only (boolean masks and where cost several times more).
    smallest = None
    for v, wi in zip(variances, w):
        if wi > 0:
            smallest = v if smallest is None else torch.minimum(smallest, v)
    numerator = torch.zeros_like(mean)
    denominator = torch.zeros_like(mean)
    for t, v, wi in zip(tensors, variances, w):
        if wi == 0:
            continue
        c = torch.div(smallest, v).nan_to_num_(nan=1.0).mul_(wi)
        numerator.add_(c * t)
        denominator.add_(c if c.dim() else c.expand_as(denominator))
    return torch.div(numerator, denominator, out=out)
