"""Merge methods: one registry, one small module per family, one streaming loop.

Every method is a per-tensor kernel
``fn(tensors, weights, base, *, key, generator, **params) -> Tensor`` registered in ``MERGES``
in one call with its parameter schema, traits and hooks (engine/registry.py Traits, Hooks:
needs_base, min/max_sources, random, data_use, cache_aware, mergekit …; a ``prepare`` hook for a
whole-model pre-pass, a ``to_mergekit`` hook for export), so a new method is one file.
``merge_state_dicts`` drives any of them key by key; data-aware methods get a whole-model
pre-pass through a ``MergeContext``; repeated merges over the same sources can share a
``MergeCache`` (opt-in). ``export_merge`` writes the result as an HF folder.
"""
from ..registry import Registry

MERGES = Registry("merge")

from .common import MergeError  # noqa: E402
from .cache import MergeCache  # noqa: E402
from .context import MergeContext  # noqa: E402
from . import linear, sparse, geometric, data_aware, selection  # noqa: E402,F401
from . import spherical, sce, regmean_plusplus, adamerging, subspace  # noqa: E402,F401
from . import prior  # noqa: E402,F401  (wraps the merges above: import it last)
from .run import MergedStateDict, MergeReport, merge_state_dicts  # noqa: E402
from .export import export_merge  # noqa: E402

__all__ = ["MERGES", "MergeCache", "MergeContext", "MergeError", "MergeReport", "MergedStateDict",
           "export_merge", "merge_state_dicts"]
