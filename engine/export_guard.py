"""Safe export folders: never into a zoo's models or base, never over a user's files unasked, never
half-written.

Every export (a merge, an evolution's champion, a fitted ensemble) is built in a temporary sibling
folder and renamed into place only when complete; replacing a folder swaps it, so a failure at any
point leaves the old folder as it was.
"""
from __future__ import annotations

import os
import shutil
import uuid
from contextlib import contextmanager
from pathlib import Path
from typing import Dict, Iterator, Mapping, Optional, Union

from .paths import pid_alive

PathLike = Union[str, Path]
ROOT_PREFIX = "the folder of"  # such a folder may hold a new export in a subfolder, no more


class ExportError(ValueError):
    """An export folder that may not (or could not) be written."""


def zoo_folders(zoo) -> Dict[Path, str]:
    """The folders an export must never write into, around or inside, resolved, with what each
    holds: every model of ``zoo`` and its base; and its root (manifest, data), which an export may
    not be or contain (a new subfolder of it is allowed)."""
    out: Dict[Path, str] = {}
    for locale, path in getattr(zoo, "models", {}).items():
        if Path(path).exists():
            out[Path(path).resolve()] = f"the zoo's model for {locale}"
    base = getattr(zoo, "base", None)
    if base is not None and Path(base).exists():
        out[Path(base).resolve()] = "the zoo's base model"
    root = getattr(zoo, "root", None)
    dataset = (getattr(zoo, "info", None) or {}).get("dataset") or {}
    if root is not None and dataset.get("path") and (Path(root) / dataset["path"]).exists():
        out.setdefault((Path(root) / dataset["path"]).resolve(), "the zoo's dataset")
    if root is not None and Path(root).exists():
        out.setdefault(Path(root).resolve(), f"{ROOT_PREFIX} the zoo '{getattr(zoo, 'name', root)}'")
    return out


def workspace_folders(ws) -> Dict[Path, str]:
    """:func:`zoo_folders` plus the workspace's data and its cache folder (the results store and
    caches; the app's exports go to a subfolder of it)."""
    out = zoo_folders(ws.zoo)
    data_path = getattr(ws.settings, "data_path", "")
    if data_path and Path(data_path).exists():
        out.setdefault(Path(data_path).resolve(), "the workspace's data")
    cache = Path(ws.cache_dir)
    if cache.exists():
        out.setdefault(cache.resolve(), f"{ROOT_PREFIX} the results store and caches")
    return out


def _within(child: Path, parent: Path) -> bool:
    return child == parent or parent in child.parents


def check_export_dir(out: PathLike, protected: Optional[Mapping[Path, str]] = None,
                     overwrite: bool = False) -> Path:
    """The resolved folder ``out`` if an export may be written there; else an ExportError naming
    the folder and what to do. Refused: a folder holding (or inside, or around) a protected
    folder, an existing file, and a non-empty folder unless ``overwrite``."""
    target = Path(out).expanduser().resolve()
    for folder, what in (protected or {}).items():
        folder = Path(folder).resolve()
        if folder == target or (_within(target, folder) and not what.startswith(ROOT_PREFIX)):
            raise ExportError(f"export folder '{out}' is {what} or inside it ({folder}); nothing "
                              f"was written: choose a folder outside the zoo's models")
        if _within(folder, target):
            raise ExportError(f"export folder '{out}' contains {what} ({folder}); nothing was "
                              f"written: choose a folder outside the zoo")
    if target.exists() and not target.is_dir():
        raise ExportError(f"export folder '{out}' is an existing file; nothing was written: "
                          f"choose a folder name that is not taken")
    if target.is_dir() and any(target.iterdir()) and not overwrite:
        raise ExportError(f"export folder '{out}' is not empty; nothing was written: choose a new "
                          f"folder, or pass --overwrite (the app: tick 'replace') to replace it")
    return target


@contextmanager
def export_folder(out: PathLike, protected: Optional[Mapping[Path, str]] = None,
                  overwrite: bool = False) -> Iterator[Path]:
    """Yields an empty temporary folder next to ``out``; when the block ends without an error it
    becomes ``out`` (an existing ``out`` is swapped out and removed only afterwards). On any error
    the temporary folder is removed and ``out`` is left as it was."""
    target = check_export_dir(out, protected, overwrite)
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        _remove_stale_partials(target)
        tmp = target.parent / f".{target.name}.partial-{os.getpid()}-{uuid.uuid4().hex[:8]}"
        tmp.mkdir()
    except OSError as exc:
        raise ExportError(f"cannot write the export folder '{out}': {_reason(exc)}") from exc
    try:
        yield tmp
        _swap_in(tmp, target, overwrite)
    except OSError as exc:
        raise ExportError(f"cannot write the export folder '{out}': {_reason(exc)}; "
                          f"nothing was changed there") from exc
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)


def _remove_stale_partials(target: Path) -> None:
    """Temporary folders of this export left by a killed process (its pid is gone)."""
    for stale in target.parent.glob(f".{target.name}.partial-*"):
        pid = stale.name.rsplit(".partial-", 1)[1].split("-")[0]
        if pid.isdigit() and not pid_alive(int(pid)):
            shutil.rmtree(stale, ignore_errors=True)


def _swap_in(tmp: Path, target: Path, overwrite: bool) -> None:
    if not target.exists():
        os.rename(tmp, target)  # atomic; a racing writer's non-empty folder makes this fail
        return
    check_export_dir(target, None, overwrite)  # it may have been filled meanwhile
    old = target.parent / f".{target.name}.old-{uuid.uuid4().hex[:8]}"
    os.rename(target, old)
    try:
        os.rename(tmp, target)
    except OSError:
        os.rename(old, target)  # put the previous folder back
        raise
    shutil.rmtree(old, ignore_errors=True)


def _reason(exc: OSError) -> str:
    if isinstance(exc, PermissionError):
        return "permission denied (a read-only folder?)"
    if isinstance(exc, FileExistsError):
        return f"'{exc.filename}' already exists as a file"
    return exc.strerror or str(exc)
