"""Safetensors files one tensor at a time: a zero-copy reader and an incremental writer.

Whole-file loading (``safetensors.torch.load_file``) copies every tensor into anonymous memory, and
``save_file`` serialises the whole dict into one more buffer before writing. At XLM-R-base size
(1.1 GB per model) that is most of a merge's time and memory. Here a model file is memory-mapped
(tensors are views of the page cache: nothing is copied until a kernel reads it) and an output file
is written tensor by tensor (or slice by slice, at fixed offsets) after a header computed up front —
the bytes are the same format that ``safetensors`` reads and writes.
"""
from __future__ import annotations

import json
import mmap
import os
import struct
import threading
from pathlib import Path
from typing import BinaryIO, Dict, Iterator, List, Mapping, Optional, Sequence, Tuple

import torch

DTYPES: Dict[str, torch.dtype] = {
    "F64": torch.float64, "F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16,
    "I64": torch.int64, "I32": torch.int32, "I16": torch.int16, "I8": torch.int8, "U8": torch.uint8,
    "BOOL": torch.bool,
}
NAMES = {v: k for k, v in DTYPES.items()}


class TensorFileError(ValueError):
    pass


def read_header(path: Path) -> Tuple[Dict[str, dict], int]:
    """The tensor entries of a safetensors file and where its data section starts."""
    with open(path, "rb") as f:
        raw = f.read(8)
        if len(raw) != 8:
            raise TensorFileError(f"{path} is not a safetensors file (too short)")
        (size,) = struct.unpack("<Q", raw)
        if size > 100_000_000:
            raise TensorFileError(f"{path} is not a safetensors file (header of {size} bytes)")
        try:
            header = json.loads(f.read(size))
        except ValueError as exc:
            raise TensorFileError(f"{path} is not a safetensors file: {exc}") from None
    header.pop("__metadata__", None)
    return header, 8 + size


class MappedFile(Mapping[str, torch.Tensor]):
    """The tensors of one safetensors file as read-only views of a memory map (copy-on-write, so
    an accidental in-place write stays private). Indexing costs nothing until the data is read."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self.entries, self.start = read_header(self.path)
        with open(self.path, "rb") as f:
            size = f.seek(0, 2)
            self._map = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_COPY) if size else None
        for key, e in self.entries.items():
            if e.get("dtype") not in DTYPES:
                raise TensorFileError(f"{self.path}: tensor '{key}' has unsupported dtype {e.get('dtype')}")
            end = self.start + e["data_offsets"][1]
            if end > size:
                raise TensorFileError(f"{self.path} is truncated (tensor '{key}' ends past the file)")

    def shape(self, key: str) -> torch.Size:
        return torch.Size(self.entries[key]["shape"])

    def dtype(self, key: str) -> torch.dtype:
        return DTYPES[self.entries[key]["dtype"]]

    def __getitem__(self, key: str) -> torch.Tensor:
        e = self.entries[key]
        dtype, (lo, hi) = DTYPES[e["dtype"]], e["data_offsets"]
        itemsize = torch.empty((), dtype=dtype).element_size()
        count = (hi - lo) // itemsize
        if count == 0:
            return torch.empty(e["shape"], dtype=dtype)
        offset = self.start + lo
        if offset % itemsize:  # unaligned: copy out rather than hand kernels a misaligned view
            return torch.frombuffer(bytearray(self._map[offset:offset + hi - lo]),
                                    dtype=dtype).reshape(e["shape"])
        return torch.frombuffer(self._map, dtype=dtype, count=count, offset=offset).reshape(e["shape"])

    def __iter__(self) -> Iterator[str]:
        return iter(self.entries)

    def __len__(self) -> int:
        return len(self.entries)


class MappedModel(Mapping[str, torch.Tensor]):
    """All safetensors files of a model folder (shards included) as one lazy mapping, with an
    optional prefix added to every name (a bare encoder's keys aligned to a task model's)."""

    def __init__(self, files: Sequence[Path], prefix: str = "", keep: Optional[set] = None):
        self._where: Dict[str, Tuple[MappedFile, str]] = {}
        for path in files:
            part = MappedFile(path)
            for key in part:
                name = prefix + key
                if keep is None or name in keep:
                    self._where[name] = (part, key)

    def shape(self, key: str) -> torch.Size:
        part, k = self._where[key]
        return part.shape(k)

    def dtype(self, key: str) -> torch.dtype:
        part, k = self._where[key]
        return part.dtype(k)

    def __getitem__(self, key: str) -> torch.Tensor:
        part, k = self._where[key]
        return part[k]

    def __iter__(self) -> Iterator[str]:
        return iter(self._where)

    def __len__(self) -> int:
        return len(self._where)


class StreamingWriter:
    """Writes a safetensors file tensor by tensor: the layout (names, dtypes, shapes, in order) is
    fixed up front, so the header goes first and each tensor is written as soon as it exists.
    ``close`` checks every tensor arrived; the file appears under its name only then."""

    def __init__(self, path: str | Path, layout: Sequence[Tuple[str, torch.dtype, Sequence[int]]],
                 metadata: Optional[Dict[str, str]] = None):
        self.path = Path(path)
        self._tmp = self.path.with_name(self.path.name + ".partial")
        header: Dict[str, dict] = {"__metadata__": dict(metadata or {"format": "pt"})}
        self._order: List[Tuple[str, torch.dtype, Tuple[int, ...], int]] = []
        self._where: Dict[str, Tuple[int, int]] = {}  # name -> (index in the layout, data offset)
        offset = 0
        for name, dtype, shape in layout:
            size = torch.Size(shape).numel() * torch.empty((), dtype=dtype).element_size()
            header[name] = {"dtype": NAMES[dtype], "shape": list(shape), "data_offsets": [offset, offset + size]}
            self._where[name] = (len(self._order), offset)
            self._order.append((name, dtype, tuple(shape), size))
            offset += size
        raw = json.dumps(header, separators=(",", ":")).encode("utf-8")
        raw += b" " * (-len(raw) % 8)
        self._file: Optional[BinaryIO] = open(self._tmp, "wb")
        self._file.write(struct.pack("<Q", len(raw)) + raw)
        self._file.flush()
        self._data = 8 + len(raw)  # where the data section starts
        self._sliced: Dict[str, int] = {}  # tensors written slice by slice: bytes so far
        self._lock = threading.Lock()
        self._next = 0

    def _put(self, data, offset: int) -> None:
        """Writes ``data`` (a bytes-like view) at ``offset`` of the data section: positioned
        writes, so slices and whole tensors may arrive from several threads in any order."""
        view, fd, at = memoryview(data).cast("B"), self._file.fileno(), self._data + offset
        while len(view):
            done = os.pwrite(fd, view, at)
            view, at = view[done:], at + done

    def write_slice(self, name: str, start: int, tensor: torch.Tensor) -> None:
        """Writes entries [start, start + numel) of tensor ``name`` (flat): an output computed
        slice by slice goes to the file from the cache, never held whole. Thread-safe; the tensor
        is then skipped by ``write``'s order, and ``close`` checks every byte of it arrived."""
        if name not in self._where:
            raise TensorFileError(f"{self.path}: tensor '{name}' is not in the layout")
        index, offset = self._where[name]
        _, dtype, _, size = self._order[index]
        if tensor.dtype != dtype:
            raise TensorFileError(f"{self.path}: tensor '{name}' is {NAMES[dtype]}, got a "
                                  f"{NAMES.get(tensor.dtype)} slice")
        data = tensor.detach().to("cpu").contiguous().reshape(-1).view(torch.uint8).numpy()
        at = start * tensor.element_size()
        if at + data.size > size:
            raise TensorFileError(f"{self.path}: slice past the end of tensor '{name}'")
        with self._lock:
            self._sliced[name] = self._sliced.get(name, 0) + data.size
        self._put(data, offset + at)

    def write(self, name: str, tensor: torch.Tensor) -> None:
        """Writes the next whole tensor of the layout (tensors sent by ``write_slice`` are
        skipped over)."""
        while self._next < len(self._order) and self._order[self._next][0] in self._sliced:
            self._next += 1
        if self._next >= len(self._order):
            raise TensorFileError(f"{self.path}: tensor '{name}' is not in the layout")
        want, dtype, shape, size = self._order[self._next]
        if name != want or tensor.dtype != dtype or tuple(tensor.shape) != shape:
            raise TensorFileError(f"{self.path}: expected tensor '{want}' {NAMES[dtype]} {list(shape)}, "
                                  f"got '{name}' {NAMES.get(tensor.dtype)} {list(tensor.shape)}")
        if size:
            data = tensor.detach().to("cpu").contiguous().reshape(-1).view(torch.uint8).numpy()
            self._put(data, self._where[name][1])
        self._next += 1

    def close(self) -> Path:
        if self._file is None:
            return self.path
        self._file.close()
        self._file = None
        sizes = {name: size for name, _, _, size in self._order}
        whole = sum(1 for name, _, _, _ in self._order[:self._next] if name not in self._sliced)
        written = whole + sum(1 for name, got in self._sliced.items() if got == sizes[name])
        if written != len(self._order):
            self._tmp.unlink(missing_ok=True)
            raise TensorFileError(f"{self.path}: only {written} of {len(self._order)} tensors were "
                                  "written; nothing was saved")
        self._tmp.replace(self.path)
        return self.path

    def abort(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None
        self._tmp.unlink(missing_ok=True)

    def __enter__(self) -> "StreamingWriter":
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is None:
            self.close()
        else:
            self.abort()


class WriteBehind:
    """Hands tensors to a ``StreamingWriter`` on a thread, so the next tensor is computed while
    this one is written (file writes release the GIL). At most ``depth`` tensors wait; a write
    error is raised on the next ``write`` or on ``close``."""

    def __init__(self, writer: StreamingWriter, depth: int = 1):
        import queue
        import threading

        self.writer = writer
        self._queue: "queue.Queue" = queue.Queue(maxsize=depth)
        self._error: Optional[BaseException] = None
        self._thread = threading.Thread(target=self._run, name="safetensors-writer", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while True:
            item = self._queue.get()
            if item is None:
                return
            if self._error is None:
                try:
                    self.writer.write(*item)
                except BaseException as exc:  # handed to the producer
                    self._error = exc

    def write(self, name: str, tensor: torch.Tensor) -> None:
        if self._error is not None:
            raise self._error
        self._queue.put((name, tensor))

    def write_slice(self, name: str, start: int, tensor: torch.Tensor) -> None:
        """Straight to the file (a positioned write, thread-safe): a slice is small and is
        written while it is in the cache."""
        if self._error is not None:
            raise self._error
        self.writer.write_slice(name, start, tensor)

    def _finish(self) -> None:
        self._queue.put(None)
        self._thread.join()

    def close(self) -> Path:
        self._finish()
        if self._error is not None:
            self.writer.abort()
            raise self._error
        return self.writer.close()

    def abort(self) -> None:
        self._finish()
        self.writer.abort()
