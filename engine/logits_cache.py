"""The on-disk logits cache: diskcache that holds raw bytes only, and heals when it is corrupt.

diskcache pickles any value that is not bytes and unpickles a row whenever the row's stored mode
says pickle, so whoever can write ``cache.db`` (a shared filesystem on a cluster) could run code
in every process that reads it. :class:`RawDisk` stores bytes only and refuses every row that is
not raw bytes (nor a key that is not raw) before anything is decoded; the caller treats a refused
row as a miss, with a warning, and overwrites it with a fresh raw value. The row is a cache entry,
so recomputing it loses nothing, and the warning keeps the tampering visible.

The cache is only a cache: a ``cache.db`` that SQLite finds corrupt is moved aside (the whole
folder, renamed ``<folder>.corrupt-<timestamp>``) with a warning, and an empty cache takes its
place, instead of blocking every evaluation.
"""
from __future__ import annotations

import os
import sqlite3
import threading
import time
import warnings
from contextlib import contextmanager
from pathlib import Path
from typing import Callable, Iterator, Optional, TypeVar

import diskcache
from diskcache.core import MODE_BINARY, MODE_RAW

T = TypeVar("T")
CORRUPT = ("SQLITE_CORRUPT", "SQLITE_NOTADB")


class UnsafeCacheEntry(ValueError):
    """A cache row that is not raw bytes (e.g. pickled): refused, never decoded."""


class RawDisk(diskcache.Disk):
    """A diskcache ``Disk`` for str keys and bytes values only; never pickles, never unpickles."""

    def put(self, key):
        if type(key) is not str:
            raise TypeError(f"logits cache keys are str, not {type(key).__name__}")
        return super().put(key)

    def get(self, key, raw):
        if not raw:
            raise UnsafeCacheEntry(f"a key in the logits cache {self._directory} is pickled, not raw: "
                                   "refused (nothing was unpickled)")
        return super().get(key, raw)

    def store(self, value, read, key=diskcache.core.UNKNOWN):
        if read or type(value) is not bytes:
            raise TypeError(f"the logits cache stores bytes only, not {type(value).__name__}")
        return super().store(value, read, key)

    def fetch(self, mode, filename, value, read):
        if mode not in (MODE_RAW, MODE_BINARY):
            raise UnsafeCacheEntry(
                f"an entry of the logits cache {Path(self._directory) / 'cache.db'} is stored with "
                f"mode {mode} (raw bytes are {MODE_RAW}/{MODE_BINARY}; 4 is pickle): refused and never "
                "decoded; someone or something wrote it besides this tool")
        if mode == MODE_BINARY and not self._inside(filename):
            raise UnsafeCacheEntry(f"an entry of the logits cache {self._directory} points outside its "
                                   f"folder ({filename!r}): refused")
        return super().fetch(mode, filename, value, read)

    def remove(self, file_path):
        if self._inside(file_path):  # a tampered row must not make the cache delete other files
            super().remove(file_path)

    def _inside(self, filename) -> bool:
        if not isinstance(filename, str) or not filename:
            return False
        root = os.path.realpath(self._directory)
        return os.path.realpath(os.path.join(root, filename)).startswith(root + os.sep)


def is_corrupt(exc: BaseException) -> bool:
    """SQLite says the file is damaged or not a database (not: locked, busy, read-only, full)."""
    return isinstance(exc, sqlite3.DatabaseError) and getattr(exc, "sqlite_errorname", "") in CORRUPT


@contextmanager
def _file_lock(path: Path) -> Iterator[None]:
    """An exclusive lock between processes (flock; where there is none, between threads only)."""
    try:
        import fcntl
    except ImportError:  # not POSIX
        fcntl = None
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a") as handle:
        if fcntl:
            fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            if fcntl:
                fcntl.flock(handle, fcntl.LOCK_UN)


class LogitsCache:
    """bytes by str key in ``folder`` (a diskcache over :class:`RawDisk`), healing on corruption."""

    def __init__(self, folder: Path):
        self.folder = Path(folder)
        self._lock = threading.Lock()
        self._cache = self._open()

    def _open(self) -> diskcache.Cache:
        try:
            return diskcache.Cache(str(self.folder), disk=RawDisk)
        except sqlite3.DatabaseError as exc:
            if not is_corrupt(exc):
                raise OSError(f"cannot open the logits cache {self.folder / 'cache.db'}: {exc}") from None
            return self._heal(exc)

    def _heal(self, exc: BaseException) -> diskcache.Cache:
        """Moves a corrupt cache aside and opens an empty one, under a lock every process shares:
        one moves it, the others then find the rebuilt cache healthy and use it."""
        with self._lock, _file_lock(self.folder.with_name(self.folder.name + ".lock")):
            if self._still_corrupt():
                self._move_aside(exc)
            return diskcache.Cache(str(self.folder), disk=RawDisk)

    def _move_aside(self, exc: BaseException) -> None:
        aside = self.folder.with_name(f"{self.folder.name}.corrupt-{time.strftime('%Y%m%d-%H%M%S')}")
        n = 1
        while aside.exists():
            aside = aside.with_name(f"{aside.name.split('~')[0]}~{n}")
            n += 1
        try:
            self.folder.rename(aside)
        except FileNotFoundError:  # another process moved it already
            return
        warnings.warn(f"the logits cache {self.folder / 'cache.db'} is corrupt ({exc}); moved it aside to "
                      f"{aside} and started an empty one: cached model outputs are recomputed as needed "
                      f"(delete {aside} when you no longer need it)", RuntimeWarning, stacklevel=5)

    def _still_corrupt(self) -> bool:
        """Checked on a fresh connection, so a process with a stale handle never moves aside the
        healthy cache another process has just rebuilt."""
        conn = None
        try:
            conn = sqlite3.connect(str(self.folder / "cache.db"), timeout=30)
            return conn.execute("PRAGMA quick_check").fetchone()[0] != "ok"
        except sqlite3.DatabaseError as exc:
            return is_corrupt(exc)
        finally:
            if conn is not None:
                conn.close()

    def _call(self, fn: Callable[[diskcache.Cache], T]) -> T:
        try:
            return fn(self._cache)
        except sqlite3.DatabaseError as exc:
            if not is_corrupt(exc):
                raise
            self._cache.close()
            self._cache = self._heal(exc)
            return fn(self._cache)

    def get(self, key: str) -> Optional[bytes]:
        """The stored bytes, or None on a miss; a refused (non-raw) entry is a miss with a warning."""
        try:
            return self._call(lambda c: c.get(key))
        except UnsafeCacheEntry as exc:
            warnings.warn(f"{exc}; it is treated as a miss and overwritten", RuntimeWarning, stacklevel=3)
            self._call(lambda c: c.delete(key))
            return None

    def set(self, key: str, value: bytes) -> None:
        self._call(lambda c: c.set(key, value))

    def __contains__(self, key: str) -> bool:
        return self._call(lambda c: key in c)

    def close(self) -> None:
        self._cache.close()
