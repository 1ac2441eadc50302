"""The streaming merge loop: one key at a time, every method through the same checks.

Memory: the K source state dicts (the caller's), the output, and per key the K inputs converted to
float32 on the compute device plus the kernel's scratch — never a stacked copy of whole models.
A MergeCache (opt-in, for repeated merges over the same sources) adds what it keeps: cache.py.
"""
from __future__ import annotations

import time
import zlib
from collections import Counter
from dataclasses import dataclass, field
from typing import Any, Callable, Dict, List, Mapping, Optional, Sequence, Union

import torch
from torch import Tensor

from ..progress import ProgressFn, Tracker, sub_progress
from ..registry import Method
from . import MERGES
from .cache import MergeCache
from .common import MergeError, Prepared, all_finite, linear_average, normalise_weights
from .context import MergeContext

StateDict = Mapping[str, Tensor]


@dataclass
class MergeReport:
    """What happened: the resolved recipe and, per key, which rule produced it."""

    method: str
    params: Dict[str, Any]
    weights: List[float]
    names: List[str]
    seed: int
    device: str
    treatment: Dict[str, str] = field(default_factory=dict)
    notes: List[str] = field(default_factory=list)
    seconds: float = 0.0

    def counts(self) -> Dict[str, int]:
        """How many tensors got each treatment, e.g. {'ties': 36, 'linear (base lacks it)': 4}."""
        return dict(Counter(self.treatment.values()))

    def to_dict(self) -> Dict[str, Any]:
        return {"method": self.method, "params": self.params, "weights": self.weights,
                "names": self.names, "seed": self.seed, "device": self.device,
                "seconds": round(self.seconds, 3), "counts": self.counts(), "notes": self.notes,
                "groups": treatment_groups(self.treatment), "treatment": self.treatment}


MODEL_PREFIXES = {"roberta", "xlm_roberta", "bert", "model", "transformer", "distilbert", "deberta"}
SPECIAL_TREATMENTS = {
    "linear (base lacks it)": "weighted average: the base model has no such tensor (a classification "
                              "head), so there is no task vector to trim or elect signs on",
    "copied (not floating point)": "integer buffers (position ids …), identical in every source: copied",
    "linear (outside the layers)": "weighted average: layer selection only chooses whole layers",
}


def _region(key: str) -> str:
    """Where a tensor sits: 'layer 3', 'embeddings', 'classifier', …"""
    from .common import LAYER_PATTERN

    m = LAYER_PATTERN.match(key)
    if m:
        return f"layer {int(m.group(2))}"
    parts = key.split(".")
    return parts[1] if parts[0] in MODEL_PREFIXES and len(parts) > 2 else parts[0]


def _where(regions: List[str]) -> str:
    """'embeddings, layers 0–5, classifier': layer numbers folded into ranges, in model order."""
    layers = sorted({int(r.split()[1]) for r in regions if r.startswith("layer ")})
    others = list(dict.fromkeys(r for r in regions if not r.startswith("layer ")))
    spans, start = [], None
    for i, n in enumerate(layers):
        start = n if start is None else start
        if i + 1 == len(layers) or layers[i + 1] != n + 1:
            spans.append(f"layer {n}" if start == n else f"layers {start}–{n}")
            start = None
    before = [o for o in others if o in ("embeddings", "embed_tokens", "wte", "wpe")]
    after = [o for o in others if o not in before]
    return ", ".join(before + spans + after)


def treatment_groups(treatment: Mapping[str, str]) -> List[Dict[str, Any]]:
    """The per-tensor treatments as a few readable rows: which treatment, how many tensors, where
    in the model, and what it means (the method's summary, or why a tensor was treated apart)."""
    by: Dict[str, List[str]] = {}
    for key, label in treatment.items():
        by.setdefault(label, []).append(key)
    return [{"treatment": label, "tensors": len(keys), "where": _where([_region(k) for k in keys]),
             "meaning": treatment_meaning(label)} for label, keys in by.items()]


def treatment_meaning(label: str) -> str:
    """What a treatment label means, in words."""
    if label in SPECIAL_TREATMENTS:
        return SPECIAL_TREATMENTS[label]
    if label in MERGES:
        return MERGES.get(label).summary
    if " from " in label:
        return "layer taken whole from that source (it scored best on the target's dev split)"
    if label.startswith("linear ("):
        return "weighted average of the sources"
    return ""


class MergedStateDict(dict):
    """The merged state dict (a plain dict of tensors) carrying its ``report``."""

    report: MergeReport


def key_generator(seed: int, key: str, device: torch.device) -> torch.Generator:
    """A generator for one tensor, from the seed and a stable hash of its name (so results do
    not depend on the order keys are visited, nor on Python's hash randomisation)."""
    gen = torch.Generator(device=device)
    gen.manual_seed((int(seed) * 1_000_003 + zlib.crc32(key.encode("utf-8"))) % (2 ** 63))
    return gen


def resolve_method(method: Union[str, Method]) -> Method:
    if isinstance(method, Method):
        return method
    if method not in MERGES:
        raise MergeError(f"unknown merge method '{method}'; known: {', '.join(MERGES.names())}")
    return MERGES.get(method)


def resolve_params(method: Method, params: Optional[Mapping[str, Any]], count: int) -> Dict:
    """Defaults filled in and checked; per-model values broadcast to one per source."""
    try:
        resolved = method.resolve(dict(params or {}))
    except ValueError as exc:
        raise MergeError(str(exc)) from None
    for p in method.params:
        if p.per_model:
            value = resolved[p.name]
            if isinstance(value, list) and len(value) != count:
                raise MergeError(f"{method.name}: parameter '{p.name}' has {len(value)} values "
                                 f"but there are {count} source models")
    return resolved


def match_base(base: StateDict, keys: Sequence[str]) -> Dict[str, str]:
    """Source key -> base key. Exact names first; otherwise the name without its first
    component ('roberta.encoder…' -> 'encoder…'), since a bare encoder is saved without the
    task model's prefix."""
    found = {}
    for key in keys:
        if key in base:
            found[key] = key
        elif "." in key and key.split(".", 1)[1] in base:
            found[key] = key.split(".", 1)[1]
    return found


def _check_keys(sources: Sequence[StateDict], names: Sequence[str]) -> List[str]:
    keys = list(sources[0].keys())
    first = set(keys)
    for state, name in zip(sources[1:], names[1:]):
        other = set(state.keys())
        if other != first:
            missing, extra = sorted(first - other), sorted(other - first)
            parts = []
            if missing:
                parts.append(f"lacks {len(missing)} tensor(s) of '{names[0]}', e.g. {missing[:3]}")
            if extra:
                parts.append(f"has {len(extra)} tensor(s) '{names[0]}' lacks, e.g. {extra[:3]}")
            raise MergeError(f"model '{name}' does not match model '{names[0]}': "
                             + "; ".join(parts))
    for key in keys:  # shapes up front: a data-aware pre-pass must not run on mismatched models
        shape = shape_of(sources[0], key)
        for state, name in zip(sources[1:], names[1:]):
            if shape_of(state, key) != shape:
                raise MergeError(f"tensor '{key}' has shape {tuple(shape_of(state, key))} in model "
                                 f"'{name}' but {tuple(shape)} in model '{names[0]}'")
    return keys


def shape_of(state: StateDict, key: str) -> torch.Size:
    """A tensor's shape without reading it when the state is lazy (engine/tensorfile.py)."""
    return state.shape(key) if hasattr(state, "shape") else state[key].shape


def _finite(t: Tensor, who: str, key: str) -> None:
    if not all_finite(t):
        raise MergeError(f"model '{who}' tensor '{key}' contains NaN or inf")


def _emit(out: Dict[str, Tensor], sink: Optional[Callable[[str, Tensor], None]], key: str,
          tensor: Tensor) -> None:
    if sink is None:
        out[key] = tensor
    else:
        sink(key, tensor)


ELEMENTWISE = ("linear", "task_arithmetic")  # kernels whose output slice is the kernel on slices
SLICED_FROM = 1 << 16  # entries: smaller tensors are merged whole


def merge_in_slices(fn: Callable, originals: Sequence[Tensor], base: Optional[Tensor],
                    weights: Tensor, params: Dict[str, Any], key: str, dtype: torch.dtype,
                    write_slice: Callable[[str, int, Tensor], None]) -> bool:
    """An elementwise kernel over cache-sized flat slices, each checked and written at once: the
    sources are read once (from their memory maps), no output tensor is allocated, and the NaN/inf
    check is made while the slice is in the cache. Slices are under ATen's parallel grain and
    shared out to worker threads (combine.run_slices); the kernel's ops are elementwise, so every
    entry gets the bits the whole-tensor call gives. Returns False when a slice was not finite."""
    from .combine import SLICE, run_slices

    flats = [t.reshape(-1) for t in originals]
    flat_base = base.reshape(-1) if base is not None else None
    finite = [True]

    def work(start: int, stop: int) -> None:
        parts = [f[start:stop].to(torch.float32) for f in flats]
        part_base = flat_base[start:stop].to(torch.float32) if flat_base is not None else None
        merged = fn(parts, weights, part_base, key=key, generator=None, **params)
        if not all_finite(merged):
            finite[0] = False
            return
        write_slice(key, start, merged.to(dtype))
    run_slices(flats[0].numel(), work, chunk=SLICE)
    return finite[0]


def merge_state_dicts(method: Union[str, Method], sources: Sequence[StateDict],
                      weights: Optional[Sequence[float]] = None, base: Optional[StateDict] = None,
                      params: Optional[Mapping[str, Any]] = None,
                      names: Optional[Sequence[str]] = None,
                      context: Optional[MergeContext] = None,
                      device: Union[str, torch.device, None] = None,
                      dtype: Optional[torch.dtype] = None, seed: int = 0,
                      progress: Optional[ProgressFn] = None,
                      cache: Optional[MergeCache] = None,
                      sink: Optional[Callable[[str, Tensor], None]] = None,
                      write_slice: Optional[Callable[[str, int, Tensor], None]] = None,
                      store=None) -> MergedStateDict:
    """Merges K state dicts with a registered method; returns the merged dict with ``.report``.

    weights: one non-negative number per source (None: equal), normalised to sum to one.
    base: the PRETRAINED base, required by task-vector methods (trait needs_base); tensors the base
        lacks (a classification head) are linear-averaged and recorded in the report.
    Computes in float32 on ``device`` (default CPU); each output tensor is written in the
    sources' dtype (or ``dtype``) on the sources' device. Non-floating tensors are copied when
    all sources agree. Random methods draw from a generator seeded by (seed, key).
    cache: a MergeCache shared by repeated merges over the same sources and base (an evolutionary
        search): their float32 copies, NaN/inf checks, task vectors, sorted magnitudes and random
        draws are then computed once (see engine/merge/cache.py for what it costs in memory).
        Same results as without it.
    sink: called with each output tensor as soon as it is merged, which is then not kept (the
        returned dict stays empty): a disk→disk merge writes it out (engine/merge/files.py).
    write_slice: with a sink, called as (key, start, flat slice) for large tensors of elementwise
        methods (linear, task arithmetic), which are then merged slice by slice in the CPU cache
        and never held whole (merge_in_slices); the same bits, the same checks.
    store: a TrimStore (engine/merge/trim_store.py) for a merge without a cache: TIES reads the
        tie orders it would sort from it (and writes those it sorts), hashing only tensors whose
        cut lands on surplus ties; the same bits. A cache brings its own store.
    """
    started = time.perf_counter()
    method = resolve_method(method)
    sources = list(sources)
    if not sources:
        raise MergeError("no source models to merge")
    count = len(sources)
    names = [str(n) for n in names] if names is not None else [f"model {i}" for i in
                                                                range(count)]
    if len(names) != count:
        raise MergeError(f"got {len(names)} names for {count} source models")
    w = normalise_weights([1.0] * count if weights is None else weights, count, names)
    resolved = resolve_params(method, params, count)
    traits = method.traits
    if count < traits.min_sources:
        raise MergeError(f"merge method '{method.name}' needs at least "
                         f"{traits.min_sources} source models, got {count}")
    if traits.max_sources is not None and count > traits.max_sources:
        raise MergeError(f"merge method '{method.name}' takes at most "
                         f"{traits.max_sources} source models, got {count}")
    needs_base = traits.needs_base
    if needs_base and base is None:
        raise MergeError(f"merge method '{method.name}' needs the pretrained base model "
                         "(task vectors are differences from it); pass base=")
    keys = _check_keys(sources, names)
    base_keys = match_base(base, keys) if needs_base else {}
    compute = torch.device(device) if device is not None else torch.device("cpu")
    report = MergeReport(method.name, resolved, w, names, int(seed), str(compute))
    if base is not None and not needs_base:
        report.notes.append(f"{method.name} does not use a base model; the given base was ignored")
    if needs_base:
        renamed = sum(1 for k, b in base_keys.items() if k != b)
        if renamed:
            report.notes.append(f"{renamed} base tensors matched without the task model's prefix")
        lacking = len(keys) - len(base_keys)
        if lacking:
            report.notes.append(f"{lacking} tensors missing from the base (e.g. the "
                                "classification head) were linear-averaged")

    prepared = Prepared()
    loop_progress = progress
    preparer = method.hooks.prepare
    if preparer is not None:
        prepared = preparer(sources, w, base, context, resolved, names=names, device=compute,
                            seed=int(seed), progress=sub_progress(progress, 0.0, 0.9))
        report.notes.extend(prepared.notes)
        loop_progress = sub_progress(progress, 0.9, 1.0)

    kernel_params = {p.name: resolved[p.name] for p in method.params}
    weight_tensor = torch.tensor(w, dtype=torch.float32, device=compute)
    tracker = Tracker(loop_progress, len(keys), f"merging ({method.name})")
    out = MergedStateDict()
    aware = cache is not None and traits.cache_aware
    # propagates_nonfinite: the output is a weighted sum of every input with a non-zero weight, so a
    # NaN/inf there makes it non-finite (NaN·w = NaN, inf − inf = NaN) and checking the output alone
    # catches it, saving a read of every source. Zero-weight sources and the base are still checked.
    propagates = traits.propagates_nonfinite
    for key in keys:
        originals = [state[key] for state in sources]
        shape = originals[0].shape
        if not all(t.is_floating_point() for t in originals):
            if any(t.dtype != originals[0].dtype or not torch.equal(t, originals[0])
                   for t in originals[1:]):
                raise MergeError(f"non-floating tensor '{key}' differs between source models; "
                                 "it cannot be averaged")
            _emit(out, sink, key, originals[0].clone())
            report.treatment[key] = "copied (not floating point)"
            tracker.advance(1)
            continue
        raw = base[base_keys[key]] if needs_base and key in base_keys else None
        if raw is not None and shape_of(base, base_keys[key]) != shape:
            raise MergeError(f"tensor '{key}' has shape {tuple(shape)} in the sources but "
                             f"{tuple(raw.shape)} in the base model")
        if (write_slice is not None and method.name in ELEMENTWISE and cache is None
                and compute.type == "cpu" and shape.numel() >= SLICED_FROM
                and (not needs_base or raw is not None) and not prepared.extras.get(key)):
            for t, name, weight in zip(originals, names, w):  # as below: the output check
                if not propagates or weight == 0:              # covers weighted sources
                    _finite(t, name, key)
            if raw is not None:
                _finite(raw, "base", key)
            out_dtype = dtype or originals[0].dtype
            if not merge_in_slices(method.fn, originals, raw, weight_tensor, kernel_params, key,
                                   out_dtype, write_slice):
                for t, name in zip(originals, names):
                    _finite(t, name, key)
                raise MergeError(f"merge method '{method.name}' produced NaN/inf in tensor '{key}'")
            report.treatment[key] = prepared.labels.get(key, prepared.default_label or method.name)
            tracker.advance(1)
            continue
        inputs = None
        if cache is not None:  # checked and converted once per run
            inputs = cache.inputs(key, originals, raw, names, compute)
            tensors, base_t = inputs.tensors, inputs.base if raw is not None else None
        else:
            for t, name, weight in zip(originals, names, w):
                if not propagates or weight == 0:  # else the output check below covers it
                    _finite(t, name, key)
            tensors = [t.to(device=compute, dtype=torch.float32) for t in originals]
            base_t = None
            if raw is not None:
                _finite(raw, "base", key)
                base_t = raw.to(device=compute, dtype=torch.float32)
        if needs_base and base_t is None:
            merged = linear_average(tensors, weight_tensor)
            report.treatment[key] = "linear (base lacks it)"
        else:
            extras = dict(prepared.extras.get(key, {}))
            if aware:
                extras["inputs"] = inputs
            elif store is not None and traits.cache_aware:
                extras["store"] = store
            merged = method.fn(tensors, weight_tensor, base_t, key=key,
                               generator=key_generator(seed, key, compute),
                               **kernel_params, **extras)
            report.treatment[key] = prepared.labels.get(key, prepared.default_label
                                                         or method.name)
        if key in prepared.offsets:
            merged = merged + prepared.offsets[key].to(device=merged.device, dtype=merged.dtype)
            report.treatment[key] += " + offset"
        if not all_finite(merged):
            for t, name in zip(originals, names):  # name the source that brought it
                _finite(t, name, key)
            raise MergeError(f"merge method '{method.name}' produced NaN/inf in tensor '{key}'")
        _emit(out, sink, key, merged.to(device=originals[0].device, dtype=dtype or originals[0].dtype))
        del tensors, base_t, merged, inputs
        tracker.advance(1)
    report.seconds = time.perf_counter() - started
    out.report = report
    return out
