"""The one dataset interface: per locale, train / validation / test lists of (text, label id)
over one shared label list. Every loader returns a :class:`Dataset`."""
from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from typing import Dict, Iterable, List, Sequence

SPLITS = ("train", "validation", "test")


class DataError(ValueError):
    """A dataset problem the user can fix: missing files, unknown locale, empty split, bad labels."""


@dataclass
class Split:
    texts: List[str]
    labels: List[int]

    def __post_init__(self):
        if len(self.texts) != len(self.labels):
            raise DataError(f"split has {len(self.texts)} texts but {len(self.labels)} labels")

    def __len__(self) -> int:
        return len(self.texts)

    def head(self, n: int) -> "Split":
        return Split(self.texts[:n], self.labels[:n])

    def fingerprint(self) -> str:
        h = hashlib.sha256()
        for text, label in zip(self.texts, self.labels):
            h.update(text.encode("utf-8"))
            h.update(b"\x00%d\x01" % label)
        return h.hexdigest()[:24]


@dataclass
class Dataset:
    """``splits[locale][split]`` -> :class:`Split`; ``labels[i]`` is the name of label id ``i``."""

    name: str
    labels: List[str]
    splits: Dict[str, Dict[str, Split]] = field(default_factory=dict)
    info: Dict[str, object] = field(default_factory=dict)

    def __post_init__(self):
        if len(set(self.labels)) != len(self.labels):
            raise DataError(f"dataset '{self.name}' has duplicate label names")
        n = len(self.labels)
        for locale, parts in self.splits.items():
            for split, data in parts.items():
                bad = [l for l in data.labels if not 0 <= l < n]
                if bad:
                    raise DataError(f"{self.name} {locale}/{split}: label id {bad[0]} outside 0..{n - 1}")

    @property
    def locales(self) -> List[str]:
        return sorted(self.splits)

    def get(self, locale: str, split: str = "test") -> Split:
        if locale not in self.splits:
            raise DataError(f"dataset '{self.name}' has no locale '{locale}'; it has: "
                            f"{', '.join(self.locales) or 'none'}")
        parts = self.splits[locale]
        if not parts:
            raise DataError(f"dataset '{self.name}' has no data for locale '{locale}'"
                            f"{self.empty_reason(locale)}; choose another locale or add its data")
        if split not in parts:
            raise DataError(f"dataset '{self.name}' has no '{split}' split for {locale}; "
                            f"it has: {', '.join(sorted(parts))}")
        data = parts[split]
        if len(data) == 0:
            raise DataError(f"dataset '{self.name}' {locale}/{split} is empty")
        return data

    def empty_reason(self, locale: str) -> str:
        source = (self.info.get("empty_files") or {}).get(locale)
        return f" ({source} has no records)" if source else ""

    def empty_locales(self) -> List[str]:
        """Locales that are present (e.g. an empty file) but have no examples in any split."""
        return [l for l in self.locales if not any(len(s) for s in self.splits[l].values())]

    def has(self, locale: str, split: str) -> bool:
        return len(self.splits.get(locale, {}).get(split, Split([], []))) > 0

    def fingerprint(self, locale: str, split: str) -> str:
        return hashlib.sha256(
            (self.get(locale, split).fingerprint() + json.dumps(self.labels)).encode()
        ).hexdigest()[:24]

    def summary(self) -> List[Dict[str, object]]:
        rows = []
        for locale in self.locales:
            row: Dict[str, object] = {"locale": locale}
            for split in SPLITS:
                row[split] = len(self.splits[locale].get(split, Split([], [])))
            rows.append(row)
        return rows

    def subset(self, locales: Iterable[str]) -> "Dataset":
        keep = list(locales)
        for loc in keep:
            self.get(loc, next(iter(self.splits.get(loc, {"test": None}))))
        return Dataset(self.name, list(self.labels), {l: self.splits[l] for l in keep}, dict(self.info))


def remap_labels(names: Sequence[str], label_list: Sequence[str], where: str) -> List[int]:
    """Label names -> ids of ``label_list``; an unknown name is an error that names it."""
    index = {name: i for i, name in enumerate(label_list)}
    out = []
    for name in names:
        if name not in index:
            raise DataError(f"{where}: label '{name}' is not in the label set ({len(label_list)} labels)")
        out.append(index[name])
    return out
