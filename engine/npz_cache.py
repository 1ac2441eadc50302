"""One keyed ``.npz`` table cache on disk, shared by the typology caches (URIEL, URIEL+), and the
one in-process memo over it (``TableMemo``).

Read without pickle; a missing, truncated, foreign or older file reads as None (rebuild rather than
fail); written atomically, so a reader in another process never sees half a file."""
from __future__ import annotations

import os
import threading
import warnings
from pathlib import Path
from typing import Callable, Dict, Optional, Sequence, Tuple, Union

import numpy as np

Tables = Dict[str, np.ndarray]


def read_tables(path: Path, key: str) -> Optional[Tables]:
    """The arrays stored under ``key``, or None when the file is unusable or from another key."""
    try:
        with np.load(path, allow_pickle=False) as npz:
            if str(npz["key"]) != key:
                return None
            return {k: npz[k] for k in npz.files if k != "key"}
    except Exception:
        return None


def write_tables(path: Path, key: str, arrays: Tables, what: str) -> None:
    """Writes the arrays under ``key``; a folder that cannot be written is a warning (the caller
    keeps the tables in memory)."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp.npz")
        np.savez_compressed(tmp, key=np.array(key), **arrays)
        os.replace(tmp, path)
    except OSError as exc:
        warnings.warn(f"could not write the {what} cache {path} ({exc}); keeping it in memory only")


def _signature(path: Path) -> Optional[Tuple[int, int, int]]:
    """What tells one version of the file from the next (an atomic replace is a new inode)."""
    try:
        st = path.stat()
    except OSError:
        return None
    return st.st_ino, st.st_size, st.st_mtime_ns


class TableMemo:
    """In-process copies of one kind of table cache, one per cache folder.

    A copy is reused only while its key (``key()``: everything that changes the tables, such as the
    feature sets, the locales and their codes, the format and the source package's version) is the
    same and the file on disk is the one it was read from or written to; so another process's
    rebuild is read again, and nothing is computed twice. ``required`` names the arrays a usable
    file must hold (an older file without them is rebuilt)."""

    def __init__(self, file_name: str, key: Callable[[], str], compute: Callable[[], Tables],
                 what: str, required: Callable[[], Sequence[str]] = lambda: ()):
        self.file_name, self.key, self.compute, self.what = file_name, key, compute, what
        self.required = required
        self._lock = threading.Lock()
        self._copies: Dict[str, Tuple[str, Optional[Tuple[int, int, int]], Tables]] = {}

    def path(self, cache_dir: Union[str, os.PathLike, None]) -> Path:
        from .paths import default_cache_dir

        return (Path(cache_dir) if cache_dir is not None else default_cache_dir()) / self.file_name

    def read(self, path: Path, key: Optional[str] = None) -> Optional[Tables]:
        """The file's tables when they are usable under the current key, else None."""
        tables = read_tables(path, self.key() if key is None else key)
        if tables is None or any(name not in tables for name in self.required()):
            return None
        return tables

    def tables(self, cache_dir: Union[str, os.PathLike, None], force: bool = False) -> Tables:
        """Memory, else the disk cache, else ``compute`` (then written to disk). One builder at a
        time per process; ``force`` recomputes."""
        path = self.path(cache_dir)
        slot, key = str(path.resolve()), self.key()
        with self._lock:
            copy = self._copies.get(slot)
            if not force and copy is not None and copy[:2] == (key, _signature(path)):
                return copy[2]
            tables = None if force else self.read(path, key)
            if tables is None:
                tables = self.compute()
                write_tables(path, key, tables, self.what)
            self._copies[slot] = (key, _signature(path), tables)
            return tables

    def clear(self) -> None:
        """Forgets the in-process copies; the next call reads the disk cache again."""
        with self._lock:
            self._copies.clear()
