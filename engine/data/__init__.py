"""Datasets: one interface (:class:`Dataset`), several loaders (demo, MASSIVE, MASSIVE jsonl, tables)."""
from .base import SPLITS, DataError, Dataset, Split, remap_labels
from .loaders import load_massive, load_massive_jsonl, load_table

__all__ = ["SPLITS", "DataError", "Dataset", "Split", "remap_labels", "load_massive",
           "load_massive_jsonl", "load_table"]
