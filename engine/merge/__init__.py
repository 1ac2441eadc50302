"""Merge methods: one registry, one small module per family, one streaming loop.

Every method is a per-tensor kernel
``fn(tensors, weights, base, *, key, generator, **params) -> Tensor`` registered in ``MERGES``
with its parameter schema and meta (needs_base, needs_data, mergekit, family, min_sources,
random; data-aware methods also list the ``context`` callables they need).
``merge_state_dicts`` drives any of them key by key; data-aware methods get a whole-model
pre-pass through a ``MergeContext``; repeated merges over the same sources can share a
``MergeCache`` (opt-in). ``export_merge`` writes the result as an HF folder.
"""
from ..registry import Registry

MERGES = Registry("merge")

from .common import MergeError  # noqa: E402
from .cache import MergeCache  # noqa: E402
from .context import MergeContext  # noqa: E402
from . import linear, sparse, geometric, data_aware, selection, subspace  # noqa: E402,F401
from .run import MergedStateDict, MergeReport, merge_state_dicts  # noqa: E402
from .export import export_merge  # noqa: E402

__all__ = ["MERGES", "MergeCache", "MergeContext", "MergeError", "MergeReport", "MergedStateDict",
           "export_merge", "merge_state_dicts"]
