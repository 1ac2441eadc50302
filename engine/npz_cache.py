"""One keyed ``.npz`` table cache on disk, shared by the typology caches (URIEL, URIEL+).

Read without pickle; a missing, truncated, foreign or older file reads as None (rebuild rather than
fail); written atomically, so a reader in another process never sees half a file."""
from __future__ import annotations

import os
import warnings
from pathlib import Path
from typing import Dict, Optional

import numpy as np


def read_tables(path: Path, key: str) -> Optional[Dict[str, np.ndarray]]:
    """The arrays stored under ``key``, or None when the file is unusable or from another key."""
    try:
        with np.load(path, allow_pickle=False) as npz:
            if str(npz["key"]) != key:
                return None
            return {k: npz[k] for k in npz.files if k != "key"}
    except Exception:
        return None


def write_tables(path: Path, key: str, arrays: Dict[str, np.ndarray], what: str) -> None:
    """Writes the arrays under ``key``; a folder that cannot be written is a warning (the caller
    keeps the tables in memory)."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp.npz")
        np.savez_compressed(tmp, key=np.array(key), **arrays)
        os.replace(tmp, path)
    except OSError as exc:
        warnings.warn(f"could not write the {what} cache {path} ({exc}); keeping it in memory only")
