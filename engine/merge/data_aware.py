"""Merges that look at data through the models: Fisher-weighted averaging and RegMean.

Both run a whole-model pre-pass (one source model at a time, through ``MergeContext``) and then
hand per-key statistics to a per-tensor kernel in the ordinary streaming loop. Sources with
weight 0 are not run (they would not contribute).
"""
from __future__ import annotations

from typing import Dict, Iterator, List, Optional, Set

import torch
from torch import Tensor

from ..progress import Tracker
from ..registry import Param
from . import MERGES
from .common import MergeError, Prepared, linear_average
from .context import require_context

INPUT_KEYS = ("input_ids", "attention_mask", "token_type_ids")

EXAMPLES = Param("examples", "int", 256, 1, 1_000_000,
                 help="examples per source used for the statistics (cost grows linearly)")


def _examples(context, i: int, limit: int, name: str) -> Iterator[Dict[str, Tensor]]:
    """Single examples (batch of one, right padding trimmed) from source i's batches."""
    seen = 0
    for batch in context.batches(i):
        if "input_ids" not in batch:
            raise MergeError(f"batches for model '{name}' lack 'input_ids'")
        size = batch["input_ids"].shape[0]
        for j in range(size):
            if seen >= limit:
                return
            example = {k: batch[k][j:j + 1] for k in (*INPUT_KEYS, "labels") if k in batch}
            mask = example.get("attention_mask")
            if mask is not None:
                length = int(mask.sum())
                if length > 0 and bool(mask[0, :length].all()):
                    for k in INPUT_KEYS:
                        if k in example:
                            example[k] = example[k][:, :length]
            seen += 1
            yield example


def _batches(context, i: int, limit: int, name: str) -> Iterator[Dict[str, Tensor]]:
    """Source i's batches, cut so that at most ``limit`` examples are used in total."""
    seen = 0
    for batch in context.batches(i):
        if "input_ids" not in batch:
            raise MergeError(f"batches for model '{name}' lack 'input_ids'")
        take = min(batch["input_ids"].shape[0], limit - seen)
        if take <= 0:
            return
        seen += take
        yield {k: v[:take] for k, v in batch.items()}


def _model(context, state: Dict[str, Tensor], device, name: str) -> torch.nn.Module:
    try:
        model = context.build_model(state)
    except Exception as exc:  # the caller's builder: name the model it failed on
        raise MergeError(f"could not build a model from source '{name}': {exc}") from exc
    return model.to(device if device is not None else "cpu").eval()


# ---- Fisher -------------------------------------------------------------------------------------

def fisher_information(model: torch.nn.Module, examples, labels: str = "empirical",
                       generator: Optional[torch.Generator] = None, name: str = "model",
                       progress=None) -> Dict[str, Tensor]:
    """Diagonal Fisher: mean over examples of (∂ log p(y|x) / ∂θ)², one backward per example.

    ``labels="empirical"`` takes y from the data (as MergingUriel does); ``"sampled"`` draws y
    from the model's own predictive distribution (the true Fisher's expectation, one sample).
    Keys are the model's parameter names, aliases of tied weights included. Returned on CPU.
    """
    device = next(model.parameters()).device
    named = list(model.named_parameters(remove_duplicate=False))
    squares = {k: torch.zeros_like(p, dtype=torch.float32) for k, p in named}
    count = 0
    with torch.enable_grad():
        for example in examples:
            inputs = {k: example[k].to(device) for k in INPUT_KEYS if k in example}
            model.zero_grad(set_to_none=True)
            logits = model(**inputs).logits
            log_probs = torch.log_softmax(logits.float(), dim=-1)
            if labels == "empirical":
                if "labels" not in example:
                    raise MergeError(f"empirical Fisher needs 'labels' in the batches of '{name}'")
                y = int(example["labels"].reshape(-1)[0])
            else:
                y = int(torch.multinomial(log_probs.detach().exp().cpu()[0], 1,
                                          generator=generator))
            log_probs[0, y].backward()
            for k, p in named:
                if p.grad is not None:
                    squares[k].add_(p.grad.float().square())
            count += 1
            if progress is not None:
                progress()
    model.zero_grad(set_to_none=True)
    if count == 0:
        raise MergeError(f"no data for the Fisher of model '{name}': its batches were empty")
    return {k: (v / count).cpu() for k, v in squares.items()}


def per_source(sources, weights, context, device, names, statistic) -> List[Optional[Dict[str, Tensor]]]:
    """``statistic(i, model)`` for every source with a non-zero weight (None for the others), one
    model alive at a time."""
    out: List[Optional[Dict[str, Tensor]]] = []
    for i, state in enumerate(sources):
        if weights[i] == 0:
            out.append(None)
            continue
        model = _model(context, state, device, names[i])
        out.append(statistic(i, model))
        del model
    return out


def prepared_from(stats: List[Optional[Dict[str, Tensor]]], sources, extra: str, label: str,
                  default_label: str) -> Prepared:
    """Per key, the sources' statistics handed to the kernel as ``extra``; other keys get the
    default treatment (a weighted average) under ``default_label``."""
    keys = set().union(*(f.keys() for f in stats if f is not None))
    prepared = Prepared(default_label=default_label)
    for key in keys:
        if key in sources[0]:
            prepared.extras[key] = {extra: [None if f is None else f.get(key) for f in stats]}
            prepared.labels[key] = label
    return prepared


def prepare_fisher(sources, weights, base, context, params, *, names, device, seed, progress):
    context = require_context(context, "fisher", "build_model", "batches")
    n = params["examples"]
    tracker = Tracker(progress, n * sum(1 for w in weights if w > 0), "Fisher information")

    def fisher(i, model):
        return fisher_information(model, _examples(context, i, n, names[i]), params["labels"],
                                  torch.Generator().manual_seed(seed + i), names[i],
                                  lambda: tracker.advance(1, f"Fisher of {names[i]}"))

    prepared = prepared_from(per_source(sources, weights, context, device, names, fisher), sources,
                             "fishers", "fisher", "linear (not a parameter)")
    prepared.notes.append(f"fisher: {params['labels']} labels, up to {n} examples per source")
    return prepared


@MERGES.register("fisher", params=[
    EXAMPLES,
    Param("labels", "choice", "empirical", choices=("empirical", "sampled"),
          help="y for log p(y|x): the data's labels, or drawn from the model's prediction"),
    Param("epsilon", "float", 1e-3, 0.0, 1.0,
          help="added to every Fisher value, relative to the tensor's mean Fisher, so entries "
               "without gradient fall back to the weighted average")],
    family="data_aware", needs_base=False, needs_data=True, mergekit=None, min_sources=1,
    random=False, context=["build_model", "batches"], uses_labels="labels=empirical",
    data_use="target_dev", prepare=prepare_fisher)
def fisher(tensors: List[Tensor], weights: Tensor, base: Optional[Tensor] = None, *,
           key: str = "", generator=None, examples: int = 256, labels: str = "empirical",
           epsilon: float = 1e-3, fishers: Optional[List[Optional[Tensor]]] = None) -> Tensor:
    """Fisher merging: θ = Σ w_i (F_i + ε·F̄) θ_i / Σ w_i (F_i + ε·F̄), per entry.

    F_i is source i's diagonal Fisher on the context's data (mean squared per-example gradient of
    log p(y|x)); F̄ is the tensor's mean Fisher over the weighted sources, so the floor is
    scale-free and entries no example moves fall back to the weighted average. Every parameter
    the model has, the classification head included, is Fisher-weighted; tensors that are not
    parameters (buffers) get the weighted average.

    FusionBench's fisher_merging is the same formula (tests/test_merge_parity_fusionbench.py) with
    three deliberate differences: it divides each source by its Fisher's global norm first
    (normalize_fisher_weight, so a source more certain on its data counts no more; ours keeps
    that), its floor is one constant for every tensor, and its statistic squares the gradient of
    Σ_c √p_c·log p_c per batch where ours averages per-example squared gradients of log p(y|x).
    """
    if fishers is None:
        return linear_average(tensors, weights)
    w = weights.tolist()
    used = [(t, f, wi) for t, f, wi in zip(tensors, fishers, w) if wi != 0]
    if any(f is None for _, f, _ in used):
        raise MergeError(f"fisher: no Fisher information for tensor '{key}'")
    used = [(t, f.to(t.device, torch.float32), wi) for t, f, wi in used]
    floor = epsilon * sum(float(f.mean()) for _, f, _ in used) / len(used)
    numerator = torch.zeros_like(tensors[0])
    denominator = torch.zeros_like(tensors[0])
    for t, f, wi in used:
        c = (f + floor) * wi
        numerator.addcmul_(c, t)
        denominator.add_(c)
    safe = denominator > 0
    out = numerator / torch.where(safe, denominator, torch.ones_like(denominator))
    return torch.where(safe, out, linear_average(tensors, weights))



# ---- RegMean ------------------------------------------------------------------------------------

class _Stop(Exception):
    """Raised by a hook to end a forward pass once the wanted inputs are seen."""


def _stop(*_):
    raise _Stop()


def linear_grams(model: torch.nn.Module, batches, name: str = "model", progress=None,
                 only: Optional[Set[str]] = None,
                 stop_after: Optional[torch.nn.Module] = None) -> Dict[str, Tensor]:
    """Mean Gram matrix XᵀX / rows of the inputs to every nn.Linear, keyed '<module>.weight'.

    Rows are token positions; padding positions are left out where the input is
    (batch, seq, features) and the batch's attention mask matches. Returned on CPU, float32.
    ``only``: the module names to record (default all); ``stop_after``: a module after which
    each forward pass ends (RegMean++ reads one layer at a time).
    """
    device = next(model.parameters()).device
    sums: Dict[str, Tensor] = {}
    rows: Dict[str, int] = {}
    mask_now: List[Optional[Tensor]] = [None]

    def hook_for(module_name: str):
        def hook(module, args):
            x = args[0].detach().float()
            mask = mask_now[0]
            if mask is not None and x.dim() == 3 and tuple(x.shape[:2]) == tuple(mask.shape):
                x = x[mask.bool()]
            x = x.reshape(-1, x.shape[-1])
            gram = x.T @ x
            if module_name in sums:
                sums[module_name].add_(gram)
            else:
                sums[module_name] = gram
            rows[module_name] = rows.get(module_name, 0) + x.shape[0]
        return hook

    handles = [m.register_forward_pre_hook(hook_for(n)) for n, m in model.named_modules()
               if isinstance(m, torch.nn.Linear) and (only is None or n in only)]
    if stop_after is not None:
        handles.append(stop_after.register_forward_hook(_stop))
    try:
        with torch.no_grad():
            for batch in batches:
                inputs = {k: batch[k].to(device) for k in INPUT_KEYS if k in batch}
                mask_now[0] = inputs.get("attention_mask")
                try:
                    model(**inputs)
                except _Stop:
                    pass
                if progress is not None:
                    progress(batch["input_ids"].shape[0])
    finally:
        for h in handles:
            h.remove()
    if not sums:
        raise MergeError(f"regmean: no data reached the linear layers of model '{name}'")
    return {f"{n}.weight": (g / max(rows[n], 1)).cpu() for n, g in sums.items()}


def prepare_regmean(sources, weights, base, context, params, *, names, device, seed, progress):
    context = require_context(context, "regmean", "build_model", "batches")
    n = params["examples"]
    tracker = Tracker(progress, n * sum(1 for w in weights if w > 0), "RegMean Gram matrices")

    def grams(i, model):
        return linear_grams(model, _batches(context, i, n, names[i]), names[i],
                            lambda b: tracker.advance(b, f"Gram of {names[i]}"))

    prepared = prepared_from(per_source(sources, weights, context, device, names, grams), sources,
                             "grams", "regmean", "linear (not an nn.Linear weight)")
    prepared.notes.append(f"regmean: Gram matrices of {len(prepared.labels)} linear layers, up to {n} "
                          f"examples per source")
    return prepared


@MERGES.register("regmean", params=[
    EXAMPLES,
    Param("alpha", "float", 0.9, 0.0, 1.0,
          help="scale of the Gram matrices' off-diagonal entries (1 = exact regression, "
               "0 = per-input-feature weighted average)")],
    family="data_aware", needs_base=False, needs_data=True, mergekit=None, min_sources=1,
    random=False, context=["build_model", "batches"], uses_labels=False, data_use="target_text",
    prepare=prepare_regmean)
def regmean(tensors: List[Tensor], weights: Tensor, base: Optional[Tensor] = None, *,
            key: str = "", generator=None, examples: int = 256, alpha: float = 0.9,
            grams: Optional[List[Optional[Tensor]]] = None) -> Tensor:
    """RegMean for one nn.Linear weight W_i (out × in): the W minimising Σ w_i ‖X_i Wᵀ − X_i W_iᵀ‖².

    Wᵀ = (Σ w_i G_i)⁻¹ Σ w_i G_i W_iᵀ with G_i = X_iᵀX_i / rows (off-diagonals × α), solved in
    float64 (no explicit inverse). A ridge of 1e-6 × mean diagonal pulls directions no input ever
    spans towards the weighted average instead of zero. Everything that is not an nn.Linear
    weight (biases, embeddings, LayerNorms) gets the weighted average; the classification head's
    dense/out_proj layers are nn.Linear and are RegMean-merged.

    FusionBench's regmean_merging is the same (α = its reduce_non_diagonal_ratio, default 1.0
    there, 0.9 here; tests/test_merge_parity_fusionbench.py) except, on purpose: the weights w_i
    (it has none: equal), the ridge (its float32 inverse gives arbitrary values in directions
    the data never spans), and padding, which its Grams count and ours leave out.
    """
    if grams is None:
        return linear_average(tensors, weights)
    if tensors[0].dim() != 2:
        raise MergeError(f"regmean: tensor '{key}' has Gram statistics but is not a matrix")
    size = tensors[0].shape[1]
    w = weights.tolist()
    average = linear_average(tensors, weights).double()
    lhs = torch.zeros(size, size, dtype=torch.float64, device=tensors[0].device)
    rhs = torch.zeros(size, tensors[0].shape[0], dtype=torch.float64, device=tensors[0].device)
    for t, g, wi in zip(tensors, grams, w):
        if wi == 0:
            continue
        if g is None or tuple(g.shape) != (size, size):
            raise MergeError(f"regmean: Gram matrix for '{key}' missing or not {size}×{size}")
        g = g.to(t.device, torch.float64)
        g = alpha * g + (1 - alpha) * torch.diag(torch.diagonal(g))
        lhs.add_(g, alpha=wi)
        rhs.add_(g @ t.double().T, alpha=wi)
    ridge = 1e-6 * float(torch.diagonal(lhs).mean())
    if ridge <= 0:
        return linear_average(tensors, weights)
    lhs.diagonal().add_(ridge)
    rhs.add_(average.T, alpha=ridge)
    return torch.linalg.solve(lhs, rhs).T.float()

