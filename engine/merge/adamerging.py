"""AdaMerging (Yang et al., ICLR 2024): task-arithmetic coefficients learned on unlabelled target text.

θ = θ_base + Σ_k λ_k τ_k (task-wise) or, per group g of tensors, θ_g = θ_base,g + Σ_k λ_{k,g} τ_{k,g}
(layer-wise: one group per transformer layer, the embeddings one more; tensor-wise: one per
parameter tensor, as the paper's code does). λ starts at ``prior_scale`` × the given (URIEL)
weights and takes Adam steps down the mean Shannon entropy of the merged model's predictions on
the target's texts; no label is ever read (the context hands over input ids only). This is the
cross-lingual case exactly: a target language with text but no labels.

Classification head: the paper keeps one head per task; our sources share one label set, so the
head (every tensor outside the model's encoder, ``base_model_prefix``) is the weighted average of
the sources' heads, held fixed while λ is learned and in the final merge alike — also where the
base holds a head (the demo zoo's does), which task arithmetic would scale instead. As in the
paper's code, every λ is kept in [0, 1]; sources with weight 0 stay at 0. Memory: the K task
vectors in float32 on the device, plus one model (about K + 3 model copies in all).
"""
from __future__ import annotations

from typing import Dict, List, Optional, Sequence, Tuple

import torch
from torch import Tensor

from ..progress import Cancelled, Tracker
from ..registry import Param
from . import MERGES
from . import common
from .common import MergeError, Prepared, weighted_sum
from .context import require_context
from .data_aware import INPUT_KEYS, _model
from .selection import LAYER_PATTERN

GRANULARITIES = ("task", "layer", "tensor")


def coefficient_groups(keys: Sequence[str], granularity: str) -> Tuple[List[str], Dict[str, int]]:
    """Group names and key -> group index: one group ('task'), one per transformer layer plus one
    for everything outside the layers ('layer'), or one per tensor ('tensor')."""
    if granularity not in GRANULARITIES:
        raise MergeError(f"adamerging: granularity must be one of {GRANULARITIES}, got {granularity!r}")
    names: List[str] = []
    index: Dict[str, int] = {}
    position: Dict[str, int] = {}
    for key in keys:
        if granularity == "task":
            group = "all tensors"
        elif granularity == "tensor":
            group = key
        else:
            m = LAYER_PATTERN.match(key)
            group = f"layer {int(m.group(2))}" if m else "outside the layers"
        if group not in position:
            position[group] = len(names)
            names.append(group)
        index[key] = position[group]
    return names, index


def mean_entropy(logits: Tensor) -> Tensor:
    """Mean over examples of H(softmax(logits)) in nats (the quantity AdaMerging minimises)."""
    log_p = torch.log_softmax(logits.float(), dim=-1)
    return -(log_p.exp() * log_p).sum(-1).mean()


def unlabelled_batches(context, batch_size: int, limit: int, device) -> List[Dict[str, Tensor]]:
    """Up to ``limit`` unlabelled examples in batches, on the device. A batch carrying labels is
    refused: the merge must be able to run where none exist."""
    out, seen = [], 0
    for batch in context.texts(batch_size):
        if "labels" in batch:
            raise MergeError("adamerging learns from unlabelled text: the context's texts() must "
                             "not carry labels")
        if "input_ids" not in batch:
            raise MergeError("adamerging: the context's text batches lack 'input_ids'")
        take = min(batch["input_ids"].shape[0], limit - seen)
        if take <= 0:
            break
        out.append({k: batch[k][:take].to(device) for k in INPUT_KEYS if k in batch})
        seen += take
    if not out:
        raise MergeError("adamerging: no target text to learn from (the context's texts() was empty)")
    return out


class MergedView:
    """The merged parameters as a function of λ [K, G], over stacked task vectors, for
    ``torch.func.functional_call``; keys without a task vector (the head) are fixed."""

    def __init__(self, sources, weights: List[float], base, base_keys: Dict[str, str],
                 groups: Dict[str, int], device, keep: Sequence[str]):
        self.groups = groups
        self.base: Dict[str, Tensor] = {}
        self.stacked: Dict[str, Tensor] = {}
        self.fixed: Dict[str, Tensor] = {}
        w = torch.tensor(weights, dtype=torch.float32)
        for key in keep:
            originals = [s[key] for s in sources]
            if not originals[0].is_floating_point():
                self.fixed[key] = originals[0].to(device)
            elif key in base_keys:
                b = base[base_keys[key]].to(device=device, dtype=torch.float32)
                self.base[key] = b
                self.stacked[key] = torch.stack([t.to(device=device, dtype=torch.float32) - b
                                                 for t in originals])
            else:
                self.fixed[key] = weighted_sum([t.to(device=device, dtype=torch.float32)
                                                for t in originals], w.tolist())

    def params(self, lam: Tensor) -> Dict[str, Tensor]:
        out = dict(self.fixed)
        for key, tv in self.stacked.items():
            coeff = lam[:, self.groups[key]]
            out[key] = self.base[key] + torch.tensordot(coeff, tv, dims=1)
        return out


def learn_coefficients(model, view: MergedView, init: Tensor, trainable: Tensor, batches,
                       steps: int, learning_rate: float, seed: int, tracker: Optional[Tracker] = None
                       ) -> Tuple[Tensor, List[float]]:
    """Adam on raw coefficients (clamped to [0, 1] in use) for ``steps`` steps, one batch a step
    in a seeded shuffled order. Returns λ [K, G] and the entropy at each step (before its update).
    A Cancelled raised by the progress callback stops it at the step it reached."""
    from torch.func import functional_call

    raw = init.clone().requires_grad_(True)
    adam = torch.optim.Adam([raw], lr=learning_rate)
    gen = torch.Generator().manual_seed(int(seed))
    order: List[int] = []
    curve: List[float] = []
    mask = trainable.to(raw.device, raw.dtype)
    for step in range(1, steps + 1):
        if not order:
            order = torch.randperm(len(batches), generator=gen).tolist()
        batch = batches[order.pop()]
        lam = raw.clamp(0.0, 1.0)
        loss = mean_entropy(functional_call(model, view.params(lam), args=(), kwargs=batch).logits)
        adam.zero_grad()
        loss.backward()
        raw.grad.mul_(mask)  # zero-weight sources stay out
        adam.step()
        curve.append(float(loss.detach()))
        if tracker is not None:
            message = f"AdaMerging step {step}/{steps}: entropy {curve[-1]:.4f}"
            try:
                tracker.advance(1, message, point=("entropy", step, curve[-1]))
            except Cancelled as exc:
                raise Cancelled(f"{str(exc) or 'cancelled'} at AdaMerging step {step}/{steps} "
                                f"(entropy {curve[-1]:.4f})") from None
    return raw.detach().clamp(0.0, 1.0), curve


def full_entropy(model, view: MergedView, lam: Tensor, batches) -> float:
    """Mean entropy over every fit example (example-weighted across batches)."""
    from torch.func import functional_call

    total, count = 0.0, 0
    with torch.no_grad():
        params = view.params(lam)
        for batch in batches:
            n = batch["input_ids"].shape[0]
            total += float(mean_entropy(functional_call(model, params, args=(), kwargs=batch).logits)) * n
            count += n
    return total / max(count, 1)


def frozen_model(context, state, device, name):
    """The model the coefficients are learned through, its own parameters frozen."""
    model = _model(context, state, device, name)
    for p in model.parameters():
        p.requires_grad_(False)
    return model


def split_keys(model, state, base) -> Tuple[List[str], Dict[str, str], List[str]]:
    """(head keys: outside the encoder, averaged and held fixed; source key -> base key for the
    rest; the floating keys whose λ is learned)."""
    from .run import match_base

    keys = list(state.keys())
    prefix = f"{getattr(model, 'base_model_prefix', '')}."
    heads = [k for k in keys if prefix != "." and not k.startswith(prefix)
             and any(other.startswith(prefix) for other in keys)]
    base_keys = {k: b for k, b in match_base(base, keys).items() if k not in heads}
    return heads, base_keys, [k for k in keys if k in base_keys and state[k].is_floating_point()]


def prepare_adamerging(sources, weights, base, context, params, *, names, device, seed, progress,
                       groups_of=None):
    """Learns λ on the context's unlabelled target text and hands each tensor its λ column.

    ``groups_of(keys) -> (group names, key -> index)`` overrides the granularity's grouping (a
    test collapses the layer groups into one)."""
    context = require_context(context, "adamerging", "build_model", "texts")
    if base is None:
        raise MergeError("adamerging works on task vectors and needs the pretrained base model")
    keys = list(sources[0].keys())
    compute = device if device is not None else torch.device("cpu")
    model = frozen_model(context, sources[0], compute, names[0])
    heads, base_keys, learned_keys = split_keys(model, sources[0], base)
    group_names, groups = (groups_of or (lambda ks: coefficient_groups(ks, params["granularity"])))(learned_keys)
    steps = int(params["steps"])
    tracker = Tracker(progress, steps + 2, "AdaMerging: reading the target's texts")
    batches = unlabelled_batches(context, int(params["batch_size"]), int(params["examples"]), compute)
    view = MergedView(sources, list(weights), base, base_keys, groups, compute, keys)
    tracker.advance(1, "AdaMerging: task vectors ready")
    w = torch.tensor(weights, dtype=torch.float32, device=compute)
    init = (params["prior_scale"] * w)[:, None].repeat(1, len(group_names))
    trainable = (w > 0)[:, None].expand_as(init)
    start = full_entropy(model, view, init.clamp(0.0, 1.0), batches)
    lam, curve = learn_coefficients(model, view, init, trainable, batches, steps,
                                    float(params["learning_rate"]), seed, tracker)
    end = full_entropy(model, view, lam, batches)
    tracker.advance(1, f"AdaMerging: entropy {start:.4f} → {end:.4f}")
    del model, view
    lam = lam.cpu()
    prepared = Prepared()
    for key in learned_keys:
        prepared.extras[key] = {"coefficients": lam[:, groups[key]].tolist()}
    for key in heads:  # λ = the weights: Σ w_k θ_k whatever the base holds
        prepared.extras[key] = {"coefficients": list(weights)}
        prepared.labels[key] = "linear (classification head)"
    examples = sum(int(b["input_ids"].shape[0]) for b in batches)
    mean = ", ".join(f"{n} {float(v):.3f}" for n, v in zip(names, lam.mean(1)))
    prepared.notes.append(
        f"adamerging ({params['granularity']}-wise, {len(group_names)} coefficient group(s) per "
        f"source): mean entropy on {examples} unlabelled target texts {start:.4f} → {end:.4f} "
        f"after {steps} Adam steps; mean λ: {mean}")
    prepared.notes.append("adamerging entropy curve: " + " ".join(f"{h:.4f}" for h in curve))
    return prepared


@MERGES.register(
    "adamerging", title="AdaMerging", family="learned", needs_base=True, needs_data=True,
    mergekit=None, min_sources=1, random=False, context=["build_model", "texts"], uses_labels=False,
    data_use="target_text", prepare=prepare_adamerging,
    summary="Task-arithmetic coefficients (per source, or per source and layer) learned by "
            "minimising prediction entropy on unlabelled target text (AdaMerging); no labels.",
    params=[
        Param("granularity", "choice", "layer", choices=GRANULARITIES,
              help="one λ per source (task), per source and transformer layer (layer), or per source "
                   "and tensor (tensor, the paper's 'layer-wise')"),
        Param("steps", "int", 100, 0, 100_000,
              help="Adam steps, one batch of target text each (0: λ stays at its prior)"),
        Param("learning_rate", "float", 0.01, 0.0, 10.0, help="Adam step size on λ"),
        Param("batch_size", "int", 16, 1, 4096, help="target texts per step"),
        Param("examples", "int", 256, 1, 1_000_000,
              help="unlabelled target texts used (the target's train split, labels withheld)"),
        Param("prior_scale", "float", 1.0, 0.0, 1.0,
              help="λ starts at prior_scale × the normalised weights (1: the weighted linear merge "
                   "of the task vectors; the paper's 0.3 per task is 0.3·K with equal weights)")])
def adamerging(tensors: List[Tensor], weights: Tensor, base: Tensor, *, key: str = "", generator=None,
               granularity: str = "layer", steps: int = 100, learning_rate: float = 0.01,
               batch_size: int = 16, examples: int = 256, prior_scale: float = 1.0,
               coefficients: Optional[List[float]] = None) -> Tensor:
    """θ_base + Σ_k λ_k (θ_k − θ_base) for one tensor, with this tensor's learned λ
    (``coefficients``; without them, λ = prior_scale × weights, i.e. task arithmetic)."""
    lam = coefficients if coefficients is not None else [prior_scale * w for w in weights.tolist()]
    lam = [min(1.0, max(0.0, float(c))) for c in lam]
    out = weighted_sum(tensors, lam)
    rest = 1.0 - sum(lam)
    if abs(rest) > 1e-9:  # weights that sum to one up to rounding: no base
        out.add_(base, alpha=rest)
    return out


if hasattr(common, "PREPARERS"):  # a1 removes: run.py before the prepare= hook reads this table
    common.PREPARERS["adamerging"] = prepare_adamerging
