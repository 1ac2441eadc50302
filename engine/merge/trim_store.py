"""A durable on-disk store for TIES' derived arrays, so a second search over the same sources (or
a later process) reuses them instead of sorting again.

What it keeps depends only on a source tensor and the base tensor, never on weights or densities:

- ``sorted``: |δ| flattened and sorted ascending (float32): every density's cut is an index lookup;
- ``tie_order``: ``torch.argsort(|δ|, descending=True)`` (int32): mergekit's order among entries
  tied at the cut. torch's CPU argsort is unstable (std::sort), so this order cannot be derived
  cheaply: at XLM-R size it is ~31 s per source for the 250,002 × 768 embedding;
- ``order``: breadcrumbs' ascending sort order of |δ| (int64), the same pattern.

The two orders are keyed by torch's version too, since another version may sort ties
differently, and off the CPU by the device type that sorted them.

Entries are keyed by content: a SHA-1 of (kind, format, shape, the XXH3-128 digests of the
source's and the base's float32 bytes); each tensor is hashed once per MergeCache entry
(``tensor_digest``).
Files are plain ``.npy`` under ``<root>/<2 hex>/<digest>.<kind>.npy``, written to a temporary
file in the same folder and renamed (atomic: two processes writing one entry both succeed and one
valid file stays). They are read memory-mapped (the header by numpy's .npy reader, the data by
``torch.from_file``, copy-on-write and never written, with no file descriptor held per array), so
a merge touches only the pages it reads (a binary search for the cut, a slice of the order) and
the arrays cost page cache, not process memory. Never unpickled: only the header is parsed, and
an object dtype is refused.

Every load is checked: dtype, shape, and a sampled consistency check against the live tensors
(4,096 positions: ordered, values present, indices in range). A truncated, foreign or garbled
file gets one warning naming it, is removed and recomputed: it can cost time, never a result.
A folder that cannot be written is one warning; merges go on with the arrays in memory.

Budget: least recently used files (by mtime, touched on every hit) are removed after a write
until the store fits ``budget_bytes``.

One-shot merges (no MergeCache: the Merge page, the CLI, exports, sweeps) use the store for tie
orders only, and hash a tensor only when its cut lands on surplus ties (sparse_trim.stored_ties),
so a merge without ties pays nothing for it.
"""
from __future__ import annotations

import hashlib
import os
import tempfile
import threading
import warnings
from pathlib import Path
from functools import lru_cache
from typing import Callable, Dict, List, Optional, Sequence, Union

import numpy as np
import torch
from torch import Tensor

DTYPES: Dict[str, np.dtype] = {"sorted": np.dtype("<f4"), "tie_order": np.dtype("<i4"),
                               "order": np.dtype("<i8")}
TORCH_DTYPES = {"sorted": torch.float32, "tie_order": torch.int32, "order": torch.int64}
ORDERS = {"tie_order": "descending", "order": "ascending"}  # argsorts of |δ| (unstable: torch's)
FORMAT = 1      # bump when what a kind holds changes
SAMPLE = 4096   # positions each load checks against the live tensors


def folder(cache_dir: Union[str, os.PathLike]) -> Path:
    """Where a cache folder keeps its trim store (searches, one-shot merges, the Setup page)."""
    return Path(cache_dir) / "trim"


def tensor_digests(tensors: Sequence[Tensor]) -> List[bytes]:
    return [tensor_digest(t) for t in tensors]


def tensor_digest(t: Tensor) -> bytes:
    """A tensor's content key: XXH3-128 of its shape and float32 bytes. Non-cryptographic but
    128 bits (no accidental collision) and at memory bandwidth (~30 GB/s here, against SHA-1's
    ~2), so hashing a search's 3.3 GB of XLM-R-size weights costs a fraction of a second; a key
    someone forged on purpose could at most cost a wrong tie order, which the sampled check on
    load is there to catch. xxhash comes with datasets."""
    import xxhash

    flat = t.detach().to(device="cpu", dtype=torch.float32).contiguous()
    h = xxhash.xxh3_128(f"float32|{tuple(flat.shape)}|".encode())
    h.update(memoryview(flat.reshape(-1).numpy()).cast("B"))
    return h.digest()


def entry_digest(kind: str, source: bytes, base: bytes, n: int, device: str = "cpu") -> str:
    """The file name's key of ``kind`` derived from a source and base (by their tensor digests).
    Orders are keyed by torch's version and, off the CPU, the device type that sorted them (a
    CUDA sort orders ties its own way; CPU keys stay as they were)."""
    version = torch.__version__ if kind in ORDERS else ""
    if kind in ORDERS and device != "cpu":
        version += f"|{device}"
    h = hashlib.sha1(f"{kind}|{FORMAT}|{version}|{DTYPES[kind].str}|{n}|".encode(),
                     usedforsecurity=False)
    h.update(source)
    h.update(base)
    return h.hexdigest()


class TrimStore:
    """Derived arrays of (source, base) pairs kept on disk under ``root`` (see the module
    docstring); ``budget_bytes`` bounds the folder (least recently used removed first)."""

    def __init__(self, root: Union[str, os.PathLike], budget_bytes: int):
        self.root, self.budget = Path(root), int(budget_bytes)
        self.hits = self.writes = self.rejected = self.evicted = 0
        self._unwritable = self._unreadable = False
        self._lock = threading.Lock()

    def path(self, digest: str, kind: str) -> Path:
        return self.root / digest[:2] / f"{digest}.{kind}.npy"

    def get(self, kind: str, digest: str, n: int, make: Callable[[], Tensor],
            check: Callable[[np.ndarray], Optional[str]]) -> Tensor:
        """The stored array of ``kind`` (memory-mapped, as a CPU tensor) when a valid file is
        there, else ``make()``, written to the store and returned — as the file just written,
        mapped, when it is a CPU array, so that even the search that fills the store holds these
        arrays as page cache, not as process memory. ``check(array)``: the live tensors' sampled
        check (None when consistent, else what is wrong)."""
        path = self.path(digest, kind)
        found = self._load(path, kind, n, check)
        if found is not None:
            return found
        made = make()
        if self.put(kind, digest, made) and made.device.type == "cpu":
            mapped = self._load(path, kind, n, lambda array: None, hit=False)
            if mapped is not None:
                return mapped
        return made

    def _load(self, path: Path, kind: str, n: int, check, hit: bool = True) -> Optional[Tensor]:
        """The file's array, mapped copy-on-write, when it is valid; else None (a bad file is
        warned about and removed)."""
        try:
            with open(path, "rb") as f:  # numpy's .npy header reader: no pickle is ever read
                version = np.lib.format.read_magic(f)
                header = {(1, 0): np.lib.format.read_array_header_1_0,
                          (2, 0): np.lib.format.read_array_header_2_0}.get(version)
                if header is None:
                    raise ValueError(f".npy format version {version}")
                shape, fortran, dtype = header(f)
                offset, size = f.tell(), os.fstat(f.fileno()).st_size
        except (FileNotFoundError, NotADirectoryError):
            return None
        except (ValueError, EOFError) as exc:  # not an .npy, or its header cut short
            return self._reject(path, f"unreadable ({exc})")
        except OSError as exc:  # the folder, not the file: a miss (warned once)
            if not self._unreadable:
                self._unreadable = True
                warnings.warn(f"could not read the trim store {self.root} ({exc}); sorting "
                              f"instead", RuntimeWarning, stacklevel=4)
            return None
        want = DTYPES[kind]
        if dtype != want or shape != (n,) or fortran:
            return self._reject(path, f"holds {dtype} {shape}, not {want} ({n},)")
        if size != offset + n * want.itemsize or offset % want.itemsize:
            return self._reject(path, f"has {size} bytes, not {offset + n * want.itemsize}")
        try:  # torch's map holds no file descriptor (numpy's memmap keeps one per array)
            mapped = torch.from_file(str(path), shared=False, size=size, dtype=torch.uint8)
        except RuntimeError:  # removed or replaced since (another process): a miss
            return None
        mapped = mapped[offset:].view(TORCH_DTYPES[kind])
        array = mapped.numpy()
        problem = check(array)
        if problem is not None:
            return self._reject(path, problem)
        try:
            os.utime(path)  # the LRU's clock
        except OSError:
            pass
        self.hits += hit
        return mapped

    def _reject(self, path: Path, why: str) -> None:
        self.rejected += 1
        warnings.warn(f"trim store file {path} {why}: removed and recomputed", RuntimeWarning,
                      stacklevel=4)
        try:
            path.unlink()
        except OSError:
            pass
        return None

    def put(self, kind: str, digest: str, made: Tensor) -> bool:
        """Writes ``made`` as the entry (atomically), then evicts down to the budget; a folder
        that cannot be written is one warning per store, and nothing more. True when written."""
        if self._unwritable or self.budget <= 0:
            return False
        path = self.path(digest, kind)
        array = made.detach().cpu().numpy()
        tmp = None
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
            with os.fdopen(fd, "wb") as f:
                np.save(f, array, allow_pickle=False)
            os.replace(tmp, path)
            tmp = None
            self.writes += 1
        except OSError as exc:
            self._unwritable = True
            warnings.warn(f"could not write the trim store {self.root} ({exc}); merges go on "
                          f"with the arrays in memory only", RuntimeWarning, stacklevel=4)
            return False
        finally:
            if tmp is not None:
                try:
                    os.unlink(tmp)
                except OSError:
                    pass
        self.evict()
        return True

    def files(self):
        """(mtime, size, path) of every stored file."""
        out = []
        for path in self.root.glob("??/*.npy"):
            try:
                st = path.stat()
            except OSError:
                continue
            out.append((st.st_mtime, st.st_size, path))
        return out

    def nbytes(self) -> int:
        return sum(size for _, size, _ in self.files())

    def evict(self) -> None:
        """Removes the least recently used files until the store fits its budget."""
        with self._lock:
            files = sorted(self.files(), key=lambda f: (f[0], str(f[2])))
            total = sum(size for _, size, _ in files)
            for _, size, path in files:
                if total <= self.budget:
                    break
                try:
                    path.unlink()
                    self.evicted += 1
                except OSError:
                    pass
                total -= size


def workspace_store(ws) -> Optional[TrimStore]:
    """The workspace's durable store of TIES sorts, shared by searches and one-shot merges:
    ``<cache_dir>/trim/`` within ``Settings.trim_store_gb`` (None when that is 0)."""
    budget = float(getattr(ws.settings, "trim_store_gb", 0) or 0)
    return TrimStore(folder(ws.cache_dir), int(budget * 1e9)) if budget > 0 else None


def stored(store: TrimStore, kind: str, x: Tensor, b: Tensor, make: Callable[[], Tensor],
           source_digest: bytes, base_digest: bytes,
           sorted_size: Optional[Tensor] = None) -> Tensor:
    """``make()``'s array of ``kind`` for source tensor ``x`` over base ``b`` (flat, float32),
    from ``store`` when it holds a valid one (checked against the live tensors), else made and
    written; the digests are the tensors' ``tensor_digest``."""
    x, b = x.reshape(-1), b.reshape(-1)
    n = x.numel()

    def size_at(idx: np.ndarray) -> np.ndarray:  # |δ| at flat indices, as the sorts see it
        if x.device.type == "cpu":
            return np.abs(np.subtract(x.numpy()[idx], b.numpy()[idx]))
        at = torch.from_numpy(np.array(idx)).to(x.device)
        return torch.sub(x[at], b[at]).abs_().cpu().numpy()

    check = (check_sorted(size_at, n) if kind == "sorted" else
             check_order(size_at, n, sorted_size, descending=ORDERS[kind] == "descending"))
    key = entry_digest(kind, source_digest, base_digest, n, x.device.type)
    return store.get(kind, key, n, make, check)


# ---- the sampled checks against the live tensors ------------------------------------------------

@lru_cache(maxsize=256)
def _positions(n: int) -> np.ndarray:
    """The sampled ranks/indices checked for an array of n entries (sorted; the same each time)."""
    at = np.unique(np.random.default_rng(n).integers(0, max(n, 1), min(SAMPLE, n)))
    at.flags.writeable = False
    return at


def check_sorted(size_at: Callable[[np.ndarray], np.ndarray], n: int):
    """A check for stored sorted magnitudes: non-decreasing at sampled ranks, and |δ| at sampled
    entries found among them (``size_at(idx)``: the live |δ| at flat indices)."""
    def check(array: np.ndarray) -> Optional[str]:
        at = _positions(n)
        if not len(at):
            return None
        nxt = np.minimum(at + 1, n - 1)
        if not np.all(array[at] <= array[nxt]) or not array[0] >= 0:
            return "is not sorted ascending"
        values = np.sort(size_at(at))  # sorted keys: the binary searches share their pages
        where = np.minimum(np.searchsorted(array, values), n - 1)
        if not np.array_equal(array[where], values):
            return "does not hold this tensor's magnitudes"
        return None
    return check


def check_order(size_at: Callable[[np.ndarray], np.ndarray], n: int,
                sorted_size: Optional[Tensor] = None, descending: bool = True):
    """A check for a stored order of |δ|: indices in range, |δ| monotone along sampled ranks, and
    equal to the sorted magnitudes at those ranks where they are known."""
    def check(array: np.ndarray) -> Optional[str]:
        at = _positions(n)
        if not len(at):
            return None
        order = np.asarray(array[at], dtype=np.int64)
        if order.min() < 0 or order.max() >= n:
            return "holds indices out of range"
        values = size_at(order)
        steps = np.diff(values)
        if not np.all(steps <= 0 if descending else steps >= 0):
            return "is not this tensor's order by magnitude"
        ranks = n - 1 - at if descending else at
        if sorted_size is not None and not np.array_equal(
                values, sorted_size.numpy()[ranks] if sorted_size.device.type == "cpu"
                else sorted_size[torch.from_numpy(ranks)].cpu().numpy()):
            return "does not match this tensor's magnitudes"
        return None
    return check


def usage_line(cache_dir: Union[str, os.PathLike, None]) -> str:
    """What the trim store of a cache folder holds, in one line (the Setup page's caption)."""
    from ..paths import default_cache_dir

    root = folder(cache_dir or default_cache_dir())
    files = TrimStore(root, 0).files()
    if not files:
        return f"The trim store ({root}) is empty."
    return (f"The trim store ({root}) holds {sum(size for _, size, _ in files) / 1e9:.2f} GB "
            f"in {len(files)} files.")
