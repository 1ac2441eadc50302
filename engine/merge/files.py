"""Disk → disk merges that stream: sources memory-mapped, output written tensor by tensor.

``merge_state_dicts`` over whole loaded state dicts holds K models plus the output in anonymous
memory (6.6 GB for five XLM-R-base sources) and pays a full copy to load each and one to save.
Here each source is a memory map (engine/tensorfile.py): a key's K tensors are read from the page
cache when the kernel reads them, and the merged tensor goes to the file at once — the loop holds
about one tensor per source (the float32 working copies, when the sources are not float32) plus the
output tensor. The same loop, the same checks and the same report as the in-memory path.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Mapping, Optional, Sequence

import torch

from ..tensorfile import MappedModel, StreamingWriter, TensorFileError, WriteBehind
from ..zoo import safetensors_files
from .common import MergeError
from .run import MergedStateDict, merge_state_dicts, resolve_method


def mapped_model(model_dir: str | Path, label: str, prefix: str = "", keep: Optional[set] = None) -> MappedModel:
    files = safetensors_files(Path(model_dir))
    if not files:
        raise MergeError(f"{label}: no .safetensors files in {model_dir}")
    try:
        return MappedModel(files, prefix=prefix, keep=keep)
    except TensorFileError as exc:
        raise MergeError(f"{label}: {exc}") from None


def aligned_base(base_dir: str | Path, source_keys: Sequence[str], prefix: str) -> MappedModel:
    """The base's tensors under the sources' names: as they are when they match, else with
    ``prefix`` added (a bare encoder saved without the task model's 'roberta.')."""
    keys = set(source_keys)
    base = mapped_model(base_dir, "the base model", keep=keys)
    if len(base) or not prefix:
        return base
    return mapped_model(base_dir, "the base model", prefix=f"{prefix}.", keep=keys)


def merge_files(method: str, source_dirs: Sequence[str | Path], out_file: str | Path,
                weights: Optional[Sequence[float]] = None, base_dir: Optional[str | Path] = None,
                params: Optional[Mapping[str, Any]] = None, names: Optional[Sequence[str]] = None,
                seed: int = 0, dtype: Optional[torch.dtype] = None, base_prefix: str = "roberta",
                progress=None, store=None) -> MergedStateDict:
    """Merges model folders into one safetensors file; returns the (empty) result with its report.
    Methods that need data (Fisher, RegMean) take the in-memory path with a context instead.
    ``store``: a TrimStore whose TIES tie orders the merge reuses (see merge_state_dicts)."""
    resolved = resolve_method(method)
    if resolved.traits.needs_data:
        raise MergeError(f"merge method '{resolved.name}' needs data: merge in memory with a context")
    names = list(names) if names is not None else [Path(d).name for d in source_dirs]
    sources = [mapped_model(d, n) for d, n in zip(source_dirs, names)]
    if not sources:
        raise MergeError("no source models to merge")
    base = None
    if base_dir is not None and resolved.traits.needs_base:
        base = aligned_base(base_dir, list(sources[0]), base_prefix)
    first = sources[0]
    layout = [(k, dtype if dtype is not None and first.dtype(k).is_floating_point else first.dtype(k),
               first.shape(k)) for k in first]
    writer = WriteBehind(StreamingWriter(out_file, layout))
    try:
        result = merge_state_dicts(resolved, sources, weights, base=base, params=params, names=names,
                                   seed=seed, dtype=dtype, progress=progress, sink=writer.write,
                                   write_slice=writer.write_slice, store=store)
    except BaseException:
        writer.abort()
        raise
    writer.close()
    return result
