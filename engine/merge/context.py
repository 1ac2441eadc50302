"""What data-aware merges need from the outside world, as three plain callables.

The merge library does not know about datasets, tokenizers or evaluation: the caller (CLI, UI,
evolutionary search) wires them in here. The caller also decides *which* language's data a source
is scored on (the target's, the source's own, or both).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Iterable, Mapping, Optional

import torch
from torch import Tensor

from .common import MergeError

StateDict = Mapping[str, Tensor]


@dataclass
class MergeContext:
    """Callables for Fisher, RegMean and frankenmerge.

    build_model: a model with the zoo's architecture with the given state dict loaded (CPU is
        fine; the merge moves it to its device). Used by fisher and regmean.
    batches: ``batches(i)`` yields tokenised batches ``{"input_ids", "attention_mask", "labels"}``
        (tensors, batch first) for source i's Fisher / Gram statistics. A fresh iterator per call.
    score: validation score (e.g. accuracy, higher is better) of a candidate state dict. Used by
        frankenmerge to choose layers.
    texts: ``texts(batch_size)`` yields tokenised batches of the target's text with no labels
        (``{"input_ids", "attention_mask"}``): what adamerging learns its coefficients on.
    """

    build_model: Optional[Callable[[StateDict], torch.nn.Module]] = None
    batches: Optional[Callable[[int], Iterable[dict]]] = None
    score: Optional[Callable[[StateDict], float]] = None
    texts: Optional[Callable[[int], Iterable[dict]]] = None

    def require(self, method: str, *fields: str) -> None:
        """Raises MergeError naming every callable ``method`` needs but did not get."""
        missing = [f for f in fields if getattr(self, f, None) is None]
        if missing:
            raise MergeError(f"merge method '{method}' needs a MergeContext with "
                             f"{', '.join(missing)} set")


def require_context(context: Optional[MergeContext], method: str, *fields: str) -> MergeContext:
    if context is None:
        raise MergeError(f"merge method '{method}' needs data: pass context=MergeContext("
                         f"{', '.join(f + '=...' for f in fields)})")
    context.require(method, *fields)
    return context
