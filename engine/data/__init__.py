"""Datasets: one interface (:class:`Dataset`), several loaders."""
from .base import SPLITS, DataError, Dataset, Split, remap_labels

__all__ = ["SPLITS", "DataError", "Dataset", "Split", "remap_labels"]
