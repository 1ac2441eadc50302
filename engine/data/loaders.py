"""Loaders for real data, each returning a :class:`Dataset`: MASSIVE through ``datasets`` (hub cache
or a local copy), MASSIVE's released jsonl files, and generic CSV / JSONL tables."""
from __future__ import annotations

import csv
import json
from pathlib import Path
from typing import Dict, Iterable, List, Optional, Sequence, Tuple

from .base import DataError, Dataset, Split, remap_labels

# Split names people use -> ours. MASSIVE's jsonl says "dev".
_SPLIT_ALIASES = {"train": "train", "training": "train", "validation": "validation",
                  "valid": "validation", "val": "validation", "dev": "validation", "test": "test"}

# Rows per locale and split: (texts, label names).
Rows = Dict[str, Dict[str, Tuple[List[str], List[str]]]]


def _split_name(value: str, where: str) -> str:
    split = _SPLIT_ALIASES.get(str(value).strip().lower())
    if split is None:
        raise DataError(f"{where}: unknown split '{value}'; use one of: {', '.join(sorted(_SPLIT_ALIASES))}")
    return split


MASSIVE_ID = "AmazonScience/massive"  # the hub id load_massive reads by default


def _build(name: str, rows: Rows, labels: Optional[Sequence[str]], where: str, info: dict) -> Dataset:
    """Rows -> Dataset over ``labels`` (default: the sorted union of label names)."""
    if not any(texts for parts in rows.values() for texts, _ in parts.values()):
        raise DataError(f"{where}: no data rows")
    if labels is None:
        labels = sorted({y for parts in rows.values() for _, ys in parts.values() for y in ys})
    labels = [str(label) for label in labels]
    splits = {
        locale: {split: Split(texts, remap_labels(ys, labels, f"{where} {locale}/{split}"))
                 for split, (texts, ys) in parts.items() if texts}
        for locale, parts in sorted(rows.items())
    }
    return Dataset(name, labels, splits, info)


# ---------------------------------------------------------------- MASSIVE through `datasets`

def load_massive(locales: Sequence[str], cache_dir: Optional[str] = None,
                 name: str = MASSIVE_ID, revision: Optional[str] = None) -> Dataset:
    """MASSIVE locales through ``datasets.load_dataset`` (columns ``utt`` and ``intent``).

    ``name`` is a hub id or a local folder laid out like the hub's parquet export
    (``{locale}/{train,validation,test}/*.parquet`` or ``.jsonl``), or holding one
    ``save_to_disk`` folder per locale. The hub's ``AmazonScience/massive`` is script-based, which
    ``datasets`` >= 4 refuses to run; its parquet export (revision ``refs/convert/parquet``) is
    tried then. Offline (``HF_HUB_OFFLINE=1``) it reads only the local cache.
    The label list is the ``intent`` ClassLabel's names (the same for every locale), or the sorted
    union of label names when ``intent`` holds strings.
    """
    if isinstance(locales, str):
        locales = [locales]
    if not locales:
        raise DataError("load_massive needs at least one locale")
    classes: Optional[List[str]] = None
    rows: Rows = {}
    for locale in dict.fromkeys(locales):
        parts = _load_locale(name, locale, cache_dir, revision)
        rows[locale] = {}
        for split_name, table in parts.items():
            split = _SPLIT_ALIASES.get(split_name)
            if split is None:
                continue
            missing = [c for c in ("utt", "intent") if c not in table.column_names]
            if missing:
                raise DataError(f"MASSIVE '{name}' {locale}/{split_name} lacks column(s) "
                                f"{', '.join(missing)}; it has: {', '.join(table.column_names)}")
            names = getattr(table.features["intent"], "names", None)
            if names is not None:
                if classes is not None and list(names) != classes:
                    raise DataError(f"MASSIVE '{name}' {locale}: its intent names differ from the "
                                    f"other locales' ({len(names)} vs {len(classes)})")
                classes = list(names)
                ys = [names[i] for i in table["intent"]]
            else:
                ys = [str(y) for y in table["intent"]]
            rows[locale][split] = (list(table["utt"]), ys)
        if not rows[locale]:
            raise DataError(f"MASSIVE '{name}' {locale} has no train/validation/test split; "
                            f"it has: {', '.join(parts) or 'none'}")
    info = {"source": name, "revision": revision, "locales": list(rows)}
    return _build("massive", rows, classes, f"MASSIVE '{name}'", info)


def _load_locale(name: str, locale: str, cache_dir: Optional[str], revision: Optional[str]):
    """One locale's DatasetDict, or a DataError that says how to get it."""
    import datasets

    local = Path(name).expanduser()
    if local.is_dir():
        folder = local / locale
        if (folder / "dataset_dict.json").is_file():
            return datasets.load_from_disk(str(folder))
        if not folder.is_dir():
            present = sorted(p.name for p in local.iterdir() if p.is_dir())
            raise DataError(f"local MASSIVE copy {local} has no locale '{locale}'; "
                            f"it has: {', '.join(present) or 'none'}")
        try:
            return datasets.load_dataset(str(local), data_dir=locale, cache_dir=cache_dir)
        except Exception as err:  # datasets raises many types; name the folder and the cause
            raise DataError(f"could not read local MASSIVE copy {folder}: {_first_line(err)}") from None

    attempts = [dict(name=locale, revision=revision)]
    if revision is None:
        attempts.append(dict(data_dir=locale, revision="refs/convert/parquet"))
    offline = datasets.config.HF_HUB_OFFLINE
    error: Optional[Exception] = None
    for kwargs in attempts:
        try:
            return datasets.load_dataset(name, cache_dir=cache_dir, **kwargs)
        except Exception as err:  # noqa: BLE001 -- turned into one clear DataError below
            error = err
            scripted = isinstance(err, RuntimeError) and "scripts are no longer supported" in str(err)
            if not (scripted or offline):
                break  # online and failing: a second hub round trip would only repeat it
    if offline or type(error) is ConnectionError:
        why = "offline mode" if offline else "the hub is unreachable"
        cache = f" at {cache_dir}" if cache_dir else ""
        raise DataError(
            f"MASSIVE '{name}' {locale} is not available locally ({why} and it is not in the datasets "
            f"cache{cache}); download it once with network and HF_HUB_OFFLINE / HF_DATASETS_OFFLINE "
            f"unset (load_massive(['{locale}'])), or pass a local copy's folder as name"
        ) from None
    raise DataError(f"could not load MASSIVE '{name}' {locale}: {_first_line(error)}") from None


def _first_line(err: Optional[Exception]) -> str:
    text = str(err).strip().splitlines()
    return f"{type(err).__name__}: {text[0] if text else ''}"


# ---------------------------------------------------------------- MASSIVE's released jsonl

def load_massive_jsonl(folder: str, locales: Optional[Sequence[str]] = None,
                       labels: Optional[Sequence[str]] = None) -> Dataset:
    """MASSIVE's released format: ``{locale}.jsonl`` per locale, records with ``locale``,
    ``partition`` (train / dev / test; dev becomes validation), ``utt`` and ``intent``."""
    root = Path(folder).expanduser()
    if root.is_file() and root.suffix.lower() == ".jsonl":  # one locale's file: {locale}.jsonl
        if locales is not None and list([locales] if isinstance(locales, str) else locales) != [root.stem]:
            raise DataError(f"{root} holds locale '{root.stem}' only; give its folder for others")
        root, locales = root.parent, [root.stem]
    elif root.is_file():
        raise DataError(f"{root}: expected a folder of {{locale}}.jsonl files or one such .jsonl file")
    elif not root.is_dir():
        raise DataError(f"MASSIVE jsonl folder not found: {root}")
    present = sorted(p.stem for p in root.glob("*.jsonl"))
    if not present:
        raise DataError(f"no {{locale}}.jsonl files in {root}")
    if isinstance(locales, str):
        locales = [locales]
    wanted = list(dict.fromkeys(locales)) if locales is not None else present
    unknown = [loc for loc in wanted if loc not in present]
    if unknown:
        raise DataError(f"{root} has no locale {', '.join(map(repr, unknown))}; it has: {', '.join(present)}")
    rows: Rows = {}
    empty: Dict[str, str] = {}
    for locale in wanted:
        path = root / f"{locale}.jsonl"
        parts: Dict[str, Tuple[List[str], List[str]]] = {}
        for line_no, record in _jsonl(path):
            where = f"{path}:{line_no}"
            missing = [k for k in ("partition", "utt", "intent") if k not in record]
            if missing:
                raise DataError(f"{where}: record lacks {', '.join(missing)}; it has: {', '.join(record)}")
            if record.get("locale", locale) != locale:
                raise DataError(f"{where}: record is for locale '{record['locale']}', not '{locale}'")
            texts, ys = parts.setdefault(_split_name(record["partition"], where), ([], []))
            texts.append(str(record["utt"]))
            ys.append(str(record["intent"]))
        if not parts:
            if locales is not None:  # asked for by name: nothing else to fall back on
                raise DataError(f"{path} is empty (no records): locale '{locale}' has no data")
            empty[locale] = str(path)
        rows[locale] = parts
    if empty and len(empty) == len(rows):
        raise DataError(f"every {{locale}}.jsonl file in {root} is empty: no data")
    return _build("massive", rows, labels, f"MASSIVE jsonl {root}",
                  {"source": str(root), "locales": wanted, "empty_files": empty})


def _jsonl(path: Path) -> Iterable[Tuple[int, dict]]:
    with open(path, encoding="utf-8") as f:
        for line_no, line in _utf8_lines(path, f):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError as err:
                raise DataError(f"{path}:{line_no}: not valid JSON ({err.msg})") from None
            if not isinstance(record, dict):
                raise DataError(f"{path}:{line_no}: expected a JSON object per line")
            yield line_no, record


# ---------------------------------------------------------------- generic CSV / JSONL tables

_TABLE_SUFFIXES = (".csv", ".jsonl")


def load_table(path_or_folder: str, text_column: str = "text", label_column: str = "label",
               locale_column: str = "locale", split_column: str = "split",
               locale: Optional[str] = None, split: Optional[str] = None,
               labels: Optional[Sequence[str]] = None) -> Dataset:
    """A CSV or JSONL file (or a folder of them) of labelled texts.

    Locale and split come from their columns; ``locale=`` / ``split=`` fix them for a file without
    that column, or select those rows from a file with it. Label names are strings; the label list
    is their sorted union unless ``labels`` is given (then any other label is an error).
    """
    root = Path(path_or_folder).expanduser()
    if root.is_dir():
        files = sorted(p for p in root.iterdir() if p.suffix.lower() in _TABLE_SUFFIXES)
        if not files:
            raise DataError(f"no .csv or .jsonl files in {root}")
    elif root.is_file():
        if root.suffix.lower() not in _TABLE_SUFFIXES:
            raise DataError(f"{root}: expected a .csv or .jsonl file")
        files = [root]
    else:
        raise DataError(f"data file or folder not found: {root}")
    fixed_split = _split_name(split, "split=") if split is not None else None
    rows: Rows = {}
    skipped = 0
    locales_seen: set = set()
    for path in files:
        records = list(_read_table(path))
        if not records:
            continue
        columns = list(records[0][1])
        need = [text_column, label_column] + [c for c, fixed in ((locale_column, locale),
                                                                 (split_column, split)) if fixed is None]
        missing = [c for c in need if c not in columns]
        if missing:
            raise DataError(f"{path}: missing column(s) {', '.join(map(repr, missing))}; it has: "
                            f"{', '.join(map(repr, columns))} (choose others with text_column=, "
                            f"label_column=, ... or fix locale=/split=)")
        for row_no, record in records:
            where = f"{path}:{row_no}"
            row_locale = str(record[locale_column] or "").strip() if locale_column in record else locale
            locales_seen.add(row_locale)
            if locale is not None and row_locale != locale:
                continue
            row_split = _split_name(record[split_column], where) \
                if split_column in record and record[split_column] not in (None, "") else fixed_split
            if row_split is None:
                raise DataError(f"{where}: empty '{split_column}'")
            if fixed_split is not None and row_split != fixed_split:
                continue
            if not row_locale:
                raise DataError(f"{where}: empty '{locale_column}'")
            text = str(record.get(text_column) or "").strip()
            label = record.get(label_column)
            if label is None or str(label).strip() == "":
                raise DataError(f"{where}: empty '{label_column}'")
            if not text:
                skipped += 1
                continue
            texts, ys = rows.setdefault(row_locale, {}).setdefault(row_split, ([], []))
            texts.append(text)
            ys.append(str(label).strip())
    if not rows and not locales_seen:
        raise DataError(f"{root}: no data rows")
    if locale is not None and locale not in rows:
        present = ", ".join(sorted(loc for loc in locales_seen if loc)) or "none"
        raise DataError(f"{root}: no rows for locale '{locale}'"
                        f"{f' in split {split!r}' if split else ''}; locales present: {present}")
    info = {"source": str(root), "files": [str(p) for p in files], "skipped_empty_texts": skipped}
    return _build(root.stem, rows, labels, str(root), info)


def _read_table(path: Path) -> Iterable[Tuple[int, dict]]:
    """(row number, record) pairs; CSV row numbers count the header as row 1."""
    if path.suffix.lower() == ".jsonl":
        yield from _jsonl(path)
        return
    with open(path, encoding="utf-8-sig", newline="") as f:
        try:
            for row_no, record in enumerate(csv.DictReader(f), 2):
                if None in record:
                    raise DataError(f"{path}:{row_no}: more fields than the header has columns")
                yield row_no, record
        except csv.Error as err:
            raise DataError(f"{path}: not valid CSV ({err})") from None
        except UnicodeDecodeError as err:
            raise DataError(_not_utf8(path, err)) from None


def _utf8_lines(path: Path, handle) -> Iterable[Tuple[int, str]]:
    """(line number, line), or a DataError naming the file that is not UTF-8 (decoding runs in
    chunks, so the line is not known)."""
    try:
        for line_no, line in enumerate(handle, 1):
            yield line_no, line
    except UnicodeDecodeError as err:
        raise DataError(_not_utf8(path, err)) from None


def _not_utf8(path: Path, err: UnicodeDecodeError) -> str:
    return (f"{path}: not UTF-8 text (byte 0x{err.object[err.start]:02x}); save the file as UTF-8 "
            f"(e.g. iconv -f latin1 -t utf-8)")
