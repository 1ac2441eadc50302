"""Data sources: each is one registration carrying its title, its settings (as :class:`Param`\\ s
naming the :class:`~engine.workspace.Settings` fields it reads) and its loader.

The workspace accepts exactly these kinds, the CLI's ``--data`` offers them and the Setup page lists
them with their titles and enables the fields their settings name, so a new source is one function:

    @DATA_SOURCES.register("tsv", title="Local TSV file", params=[PATH])
    def load_tsv(settings, zoo):          # -> Dataset, labels mapped onto zoo.labels
        ...
"""
from __future__ import annotations

from typing import TYPE_CHECKING, Dict, List, Tuple

from ..registry import Param, Registry
from ..settings import Settings
from .base import DataError, Dataset
from .loaders import MASSIVE_ID

if TYPE_CHECKING:  # annotations only
    from ..zoo import Zoo

DATA_SOURCES = Registry("data source")
DEFAULT_SOURCE = "zoo"

# The Settings fields a source may read, declared once so the CLI, page and checks agree on them.
PATH = Param("data_path", "text", "", help="the file or folder to read")
TEXT_COLUMN = Param("text_column", "text", "text", help="the column holding the text")
LABEL_COLUMN = Param("label_column", "text", "label", help="the column holding the label name")
EXTRA_LOCALES = Param("extra_locales", "text", "", help="comma-separated targets that have no model of their own")


def data_kinds() -> List[str]:
    """Every registered source, in registration order (the zoo's own first: it is the default)."""
    return DATA_SOURCES.registered()


def source_fields() -> Dict[str, List[Tuple[str, Param]]]:
    """Settings field -> (source, Param) for every source that reads it: the CLI's options and the
    Setup page's fields come from here."""
    known = set(Settings.__dataclass_fields__)
    fields: Dict[str, List[Tuple[str, Param]]] = {}
    for name in data_kinds():
        for p in DATA_SOURCES.get(name).params:
            if p.name not in known:
                raise DataError(f"data source '{name}' declares the setting '{p.name}', which Settings has no "
                                f"field for; use one of {', '.join(sorted(known))}")
            fields.setdefault(p.name, []).append((name, p))
    return fields


def source_settings(settings: "Settings") -> Dict[str, str]:
    """The settings the chosen source reads, checked against its Params (a bad value names its field)."""
    source = DATA_SOURCES.get(settings.data)
    values = source.resolve({p.name: getattr(settings, p.name) for p in source.params})
    for p in source.params:
        if p.name == PATH.name and not values[p.name] and not p.default:
            raise DataError(f"data source '{source.name}' needs a path (--data-path, or the Setup page's "
                            f"Data path): {p.help}")
    return values


def load_source(settings: "Settings", zoo: "Zoo") -> Dataset:
    """The dataset ``settings.data`` names, through its registered loader."""
    if settings.data not in DATA_SOURCES:
        raise DataError(f"unknown data source '{settings.data}'; use one of {', '.join(data_kinds())}")
    source_settings(settings)
    return DATA_SOURCES.get(settings.data).fn(settings, zoo)


# ---- the built-in sources, in the order the page and the CLI list them ---------------------------
@DATA_SOURCES.register("zoo", title="The zoo's own (from its manifest)",
                       summary="the dataset the zoo's manifest names (the demo zoo's: its jsonl)")
def _zoo_dataset(settings: "Settings", zoo: "Zoo") -> Dataset:
    from . import loaders

    spec = zoo.info.get("dataset")
    if not spec:
        others = ", ".join(k for k in data_kinds() if k != "zoo")
        raise DataError(f"the zoo '{zoo.name}' names no dataset in its manifest; choose one ({others})")
    kind, path = spec.get("kind"), zoo.root / spec.get("path", "")
    if kind == "massive_jsonl":  # the manifest may say what the data are (the demo's: intents)
        dataset = loaders.load_massive_jsonl(path, labels=zoo.labels or None)
        dataset.name = spec.get("name") or dataset.name
        return dataset
    if kind == "massive":
        return loaders.load_massive(spec.get("locales") or zoo.locales)
    raise DataError(f"the zoo's manifest names an unknown dataset kind '{kind}'")


@DATA_SOURCES.register("demo", title="Built-in demo data", summary="the offline demo intents, built on the fly")
def _demo_dataset(settings: "Settings", zoo: "Zoo") -> Dataset:
    from .demo import build_demo_dataset

    return build_demo_dataset(locales=zoo.locales, n_intents=len(zoo.labels))


@DATA_SOURCES.register("massive", title="MASSIVE through `datasets` (cached)",
                       params=[Param("data_path", "text", MASSIVE_ID,
                                     help="hub id or local copy of MASSIVE"), EXTRA_LOCALES],
                       summary="AmazonScience/massive from the Hugging Face cache (or a local copy)")
def _massive_dataset(settings: "Settings", zoo: "Zoo") -> Dataset:
    from . import loaders

    extra = [l.strip() for l in settings.extra_locales.split(",") if l.strip()]
    return loaders.load_massive(list(dict.fromkeys(zoo.locales + extra)),
                                name=settings.data_path or MASSIVE_ID)


@DATA_SOURCES.register("jsonl", title="Local MASSIVE-format jsonl",
                       params=[Param("data_path", "text", "", help="a folder of {locale}.jsonl files, or one")],
                       summary="MASSIVE's released format: {locale}.jsonl with partition, utt, intent")
def _jsonl_dataset(settings: "Settings", zoo: "Zoo") -> Dataset:
    from . import loaders

    # labels mapped by name onto the zoo's ids, whatever their order
    return loaders.load_massive_jsonl(settings.data_path, labels=zoo.labels or None)


@DATA_SOURCES.register("table", title="Local CSV / JSONL table",
                       params=[Param("data_path", "text", "", help="a CSV or JSONL file, or a folder of them"),
                               TEXT_COLUMN, LABEL_COLUMN],
                       summary="labelled texts with locale and split columns")
def _table_dataset(settings: "Settings", zoo: "Zoo") -> Dataset:
    from . import loaders

    return loaders.load_table(settings.data_path, text_column=settings.text_column,
                              label_column=settings.label_column, labels=zoo.labels)
