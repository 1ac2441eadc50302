"""Source weights kept resident in memory between merges.

A researcher merges the same few sources again and again (another method, another weight); reading
them from disk every time is most of a small merge's cost, and mergekit pays it on every run. Loaded
state dicts stay here, least recently used first out, within a byte budget: min(8 GiB, 30 % of
RAM) unless ``ENGINE_RESIDENT_GB`` says otherwise (0 turns it off). Entries are keyed by file
size and mtime, so a rebuilt model is reloaded.

The tensors are shared: callers must not modify them in place (the merge kernels do not; a test
checks every registered method).
"""
from __future__ import annotations

import os
import threading
import warnings
from collections import OrderedDict
from pathlib import Path
from typing import Callable, Dict, Tuple

import torch

StateDict = Dict[str, torch.Tensor]


def default_budget() -> int:
    env = os.environ.get("ENGINE_RESIDENT_GB")
    if env not in (None, ""):
        try:
            gib = float(env)
            if gib >= 0:
                return int(gib * 2 ** 30)
        except ValueError:
            pass
        warnings.warn(f"ENGINE_RESIDENT_GB={env!r} is not a size in GiB (>= 0); using the default")
    try:
        ram = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):
        ram = 8 * 2 ** 30
    return int(min(8 * 2 ** 30, 0.3 * ram))


def state_bytes(state: StateDict) -> int:
    return sum(t.numel() * t.element_size() for t in state.values())


class ResidentStates:
    """An LRU of loaded state dicts by model folder, bounded in bytes (thread-safe)."""

    def __init__(self, budget: int | None = None):
        self.budget = default_budget() if budget is None else int(budget)
        self._items: "OrderedDict[Tuple, StateDict]" = OrderedDict()
        self._lock = threading.Lock()
        self._bytes = 0
        self.hits = self.misses = 0

    @staticmethod
    def stamp(model_dir: Path) -> Tuple:
        files = sorted(Path(model_dir).glob("*.safetensors"))
        return (str(Path(model_dir).resolve()),) + tuple(
            (f.name, f.stat().st_size, f.stat().st_mtime_ns) for f in files)

    @property
    def size(self) -> int:
        """Bytes held now."""
        return self._bytes

    def _drop(self, key: Tuple) -> None:
        self._bytes -= state_bytes(self._items.pop(key))

    def get(self, model_dir: Path, load: Callable[[Path], StateDict]) -> StateDict:
        """The state dict of ``model_dir`` (a fresh dict over shared tensors); ``load`` on a miss."""
        key = self.stamp(model_dir)
        with self._lock:
            if key in self._items:
                self._items.move_to_end(key)
                self.hits += 1
                return dict(self._items[key])
        state = load(Path(model_dir))
        self.misses += 1
        need = state_bytes(state)
        if need <= self.budget:
            with self._lock:
                for k in [k for k in self._items if k[0] == key[0]]:  # an older version of it
                    self._drop(k)
                while self._items and self._bytes + need > self.budget:
                    self._drop(next(iter(self._items)))        # least recently used first
                self._items[key] = state
                self._bytes += need
        return dict(state)

    def clear(self) -> None:
        with self._lock:
            self._items.clear()
            self._bytes = 0


RESIDENT = ResidentStates()
