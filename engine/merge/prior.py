"""A merge with its class prior corrected on unlabelled target text (label-prior shift).

The inner merge (TIES by default, at its defaults) is built, run on the target's texts (labels
withheld: the context hands over input ids only), and the per-class log shift b of
``engine.ensemble.prior`` (EM of Saerens et al. 2002, or recentering the mean prediction to
uniform) is added to the classifier's output bias. softmax(W h + c + b) is exactly the shifted
prediction, so the result is an ordinary model: one forward pass, exportable, usable in sweeps.
Every other tensor is the inner merge's; the bias gets the shift even where the base lacks the
head (a :class:`~.common.Prepared` offset). Cost: the inner merge plus one forward pass over the
texts.
"""
from __future__ import annotations

from typing import Dict, List, Optional

import numpy as np
import torch
from torch import Tensor

from ..ensemble.prior import MODES, log_shift
from ..progress import Tracker
from ..registry import Param
from . import MERGES
from .common import MergeError, Prepared
from .context import require_context
from .data_aware import INPUT_KEYS, _model

INNER = ("ties", "linear", "task_arithmetic", "dare_ties", "breadcrumbs_ties", "della", "sce")


def output_bias_key(model: torch.nn.Module, keys) -> str:
    """The state-dict key of the classifier's output bias: the last Linear layer with one output
    per label (XLM-R: 'classifier.out_proj.bias'); MergeError when the model has none."""
    n_labels = int(getattr(model.config, "num_labels", 0))
    found = [name for name, mod in model.named_modules()
             if isinstance(mod, torch.nn.Linear) and mod.out_features == n_labels and mod.bias is not None]
    if not found or f"{found[-1]}.bias" not in keys:
        raise MergeError(f"prior_shift: no classifier output bias with {n_labels} outputs among the "
                         f"model's tensors; it needs a sequence classifier with a biased output layer")
    return f"{found[-1]}.bias"


def target_logits(model: torch.nn.Module, context, batch_size: int, limit: int, device) -> Tensor:
    """The model's logits [N, C] on up to ``limit`` of the target's texts; a batch carrying labels
    is refused, so the shift provably comes from unlabelled text."""
    out, seen = [], 0
    with torch.inference_mode():
        for batch in context.texts(batch_size):
            if "labels" in batch:
                raise MergeError("prior_shift learns from unlabelled text: the context's texts() must "
                                 "not carry labels")
            take = min(int(batch["input_ids"].shape[0]), limit - seen)
            if take <= 0:
                break
            inputs = {k: batch[k][:take].to(device) for k in INPUT_KEYS if k in batch}
            out.append(model(**inputs).logits.float().cpu())
            seen += take
    if not out:
        raise MergeError("prior_shift: the target has no text to estimate its class prior from")
    return torch.cat(out)


def prepare_prior_shift(sources, weights, base, context, params, *, names, device, seed, progress):
    """Inner merge, its predictions on target text, the shift; hands the inner merge's tensors to
    the loop (``merged``) and the shift as the output bias's offset."""
    from .run import merge_state_dicts

    context = require_context(context, "prior_shift", "build_model", "texts")
    inner = MERGES.get(params["inner"])
    if inner.traits.needs_data:
        raise MergeError(f"prior_shift: inner merge '{inner.name}' reads data itself; choose one of {INNER}")
    tracker = Tracker(progress, 3, f"prior shift: merging ({inner.name})")
    state = merge_state_dicts(inner, sources, weights, base=base if inner.traits.needs_base else None,
                              names=names, device=device, seed=seed)
    tracker.advance(1, "prior shift: reading the target's texts")
    model = _model(context, dict(state), device, f"{inner.name} merge")
    key = output_bias_key(model, state)
    logits = target_logits(model, context, int(params["batch_size"]), int(params["examples"]), device)
    del model
    probs = torch.softmax(logits.double(), dim=-1).numpy()
    iterations = int(params["iterations"])
    shift = log_shift(probs, params["mode"], iterations) if iterations > 0 else np.zeros(probs.shape[1])
    tracker.advance(1, "prior shift: shift estimated")
    prepared = Prepared()
    for k, tensor in state.items():
        prepared.extras[k] = {"merged": tensor}
    prepared.offsets[key] = torch.tensor(shift, dtype=torch.float32)
    before = probs.mean(0)
    after = torch.softmax(logits.double() + torch.from_numpy(shift), dim=-1).numpy().mean(0)
    prepared.notes.append(
        f"prior_shift ({params['mode']}) on {len(probs)} unlabelled target texts, added to '{key}': "
        f"mean predicted class share {before.min():.3f}–{before.max():.3f} → {after.min():.3f}–"
        f"{after.max():.3f}; shift " + " ".join(f"{v:+.3f}" for v in shift))
    prepared.notes.extend(f"inner {inner.name}: {note}" for note in state.report.notes)
    tracker.advance(1)
    return prepared


@MERGES.register(
    "prior_shift", title="Prior-shifted merge", family="prior", needs_base=True, needs_data=True,
    mergekit=None, random=False, context=["build_model", "texts"], uses_labels=False,
    data_use="target_text", prepare=prepare_prior_shift, identity=(),
    summary="A merge (TIES by default) whose class prior is corrected on unlabelled target text: EM "
            "(Saerens et al. 2002) or recentering, added to the classifier bias; no labels.",
    params=[Param("inner", "choice", "ties", choices=INNER, help="the merge to correct, at its defaults"),
            Param("mode", "choice", "recenter", choices=MODES,
                  help="em: the target prior re-estimated by EM; recenter: shift until the mean "
                       "prediction on target text is uniform"),
            Param("iterations", "int", 100, 0, 100_000, help="EM / recentering iterations (0: no shift)"),
            Param("examples", "int", 256, 1, 1_000_000,
                  help="unlabelled target texts read (the target's train split, labels withheld)"),
            Param("batch_size", "int", 32, 1, 4096, help="texts per forward pass")])
def prior_shift(tensors: List[Tensor], weights: Tensor, base: Optional[Tensor], *, key: str = "",
                generator=None, inner: str = "ties", mode: str = "recenter", iterations: int = 100,
                examples: int = 256, batch_size: int = 32, merged: Optional[Tensor] = None) -> Tensor:
    """The inner merge's tensor (``merged``, from the prepare pass; called alone, the inner
    kernel at its defaults). The shift itself is the prepare pass's offset on the output bias."""
    if merged is not None:
        return merged.to(device=tensors[0].device, dtype=torch.float32, copy=True)
    method = MERGES.get(inner)
    defaults: Dict[str, object] = method.defaults()
    return method.fn(tensors, weights, base, key=key, generator=generator, **defaults)
