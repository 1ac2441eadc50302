"""A user's unlabelled target-language text: a UTF-8 file, one sentence per line.

AdaMerging and the entropy-minimised ensemble learn from target text with no labels. By default
that is the target's train split with its labels withheld; a researcher with only raw text of the
target language (no labelled data at all) hands it over as such a file instead. The file is read
whole, checked (missing, a folder, empty, binary, not UTF-8, too large: each a one-line error that
names the file and what to do), and identified by its content: a run records its name, its number
of lines and its sha256, and the content key of a run changes with the content, not the path.
"""
from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass
from pathlib import Path
from typing import List, Union

from .base import DataError

MAX_BYTES = 64 * 2 ** 20          # a sentence-per-line file this large is not the intended input
STORE_FOLDER = "target_texts"     # under the cache folder: uploaded files, by content


class TargetTextError(DataError):
    """A text file that cannot be used as unlabelled target text."""


@dataclass(frozen=True)
class TargetText:
    name: str           # the file's name (what a run shows)
    path: str           # where it was read from
    lines: List[str]    # non-blank lines, stripped, in file order
    sha256: str         # of the file's bytes

    def describe(self) -> str:
        """'file: NAME, N lines, sha256 HEX…' (the run records this as its target text; the first
        16 hex digits of the sha256, the full one is in the run's content key)."""
        n = len(self.lines)
        return f"file: {self.name}, {n} line{'' if n == 1 else 's'}, sha256 {self.sha256[:16]}…"


def parse_text(data: bytes, name: str, path: str = "") -> TargetText:
    """The non-blank lines of a UTF-8 text (a leading BOM is dropped), or a TargetTextError."""
    where = path or name
    if len(data) > MAX_BYTES:
        raise TargetTextError(f"target text file {where} is {len(data) / 2 ** 20:.0f} MiB; give at most "
                              f"{MAX_BYTES // 2 ** 20} MiB of sentences, one per line")
    if b"\x00" in data:
        raise TargetTextError(f"target text file {where} looks binary (it holds NUL bytes): give a "
                              f"UTF-8 text file with one sentence per line")
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        line = data[:exc.start].count(b"\n") + 1
        raise TargetTextError(f"target text file {where} is not UTF-8 (line {line}, byte offset {exc.start}): "
                              f"save it as UTF-8, one sentence per line") from None
    lines = [s for s in (raw.strip() for raw in text.splitlines()) if s]
    if not lines:
        raise TargetTextError(f"target text file {where} has no text (empty or only blank lines): "
                              f"give one sentence per line")
    return TargetText(name, path, lines, hashlib.sha256(data).hexdigest())


def read_target_text(path: Union[str, Path]) -> TargetText:
    """Reads and checks a sentence-per-line UTF-8 file (see :func:`parse_text`)."""
    p = Path(path).expanduser()
    if not p.exists():
        raise TargetTextError(f"target text file {p} does not exist: give the path of a UTF-8 text "
                              f"file with one sentence per line")
    if not p.is_file():
        raise TargetTextError(f"target text {p} is not a file: give a UTF-8 text file with one "
                              f"sentence per line")
    size = p.stat().st_size
    if size > MAX_BYTES:  # refused before it is read into memory
        raise TargetTextError(f"target text file {p} is {size / 2 ** 20:.0f} MiB; give at most "
                              f"{MAX_BYTES // 2 ** 20} MiB of sentences, one per line")
    try:
        data = p.read_bytes()
    except OSError as exc:
        raise TargetTextError(f"target text file {p} cannot be read ({exc.strerror or exc}): check "
                              f"its permissions") from None
    return parse_text(data, p.name, str(p))


def store_target_text(data: bytes, name: str, cache_dir: Union[str, Path]) -> TargetText:
    """Checks an uploaded file's bytes and keeps them under the cache folder, by content
    (``target_texts/<sha256[:16]>/<name>``), so a run can read them again; the same file
    uploaded twice is stored once. Returns the stored text (its ``path`` is the kept copy)."""
    text = parse_text(data, safe_name(name))
    folder = Path(cache_dir) / STORE_FOLDER / text.sha256[:16]
    target = folder / text.name
    if not target.is_file() or hashlib.sha256(target.read_bytes()).hexdigest() != text.sha256:
        folder.mkdir(parents=True, exist_ok=True)
        tmp = folder / f".{text.name}.partial"
        tmp.write_bytes(data)
        tmp.replace(target)
    return TargetText(text.name, str(target), text.lines, text.sha256)


def safe_name(name: str) -> str:
    """A file name with no folder part and no characters a path could misread."""
    base = re.sub(r"[^\w.\-]+", "_", Path(str(name)).name).strip("._")
    return base or "target_text.txt"


def reads_target_text(kind: str, traits) -> bool:
    """Whether a method learns from unlabelled target text (AdaMerging's ``texts`` context, an
    ensemble fitted with labels withheld), i.e. whether a text file means anything to it."""
    if kind == "merge":
        return "texts" in traits.context
    return bool(traits.needs_fit) and traits.data_use == "target_text"
