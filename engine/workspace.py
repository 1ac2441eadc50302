"""A workspace = a zoo + the dataset it is evaluated on + an evaluator, opened from a few settings.

The CLI and the dashboard both open one from the same :class:`Settings`, so "what is loaded"
means the same thing everywhere.
"""
from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import List, Optional

from .data import Dataset
from .data.sources import data_kinds, load_source  # noqa: F401  (data_kinds: the accepted kinds)
from .evaluate import Evaluator, default_cache_dir
from .settings import Settings  # noqa: F401  (opened from here; its home is engine.settings)
from .zoo import MANIFEST, Zoo, ZooError


def default_demo_dir() -> Path:
    return Path(os.environ.get("FUSION_DEMO_DIR", default_cache_dir() / "demo_zoo"))


def open_dataset(settings: Settings, zoo: Zoo) -> Dataset:
    """The dataset the settings name (a registered data source), restricted to nothing: callers pick locales."""
    return load_source(settings, zoo)


@dataclass
class Workspace:
    settings: Settings
    zoo: Zoo
    dataset: Dataset
    evaluator: Evaluator
    notes: List[str] = field(default_factory=list)

    @property
    def cache_dir(self) -> Path:
        return Path(self.settings.cache_dir) if self.settings.cache_dir else default_cache_dir()

    def target_locales(self) -> List[str]:
        """Locales with test data: the targets a user can pick."""
        return [l for l in self.dataset.locales if self.dataset.has(l, "test")]


def open_workspace(settings: Optional[Settings] = None) -> Workspace:
    from .limits import check_setting

    settings = settings or Settings()
    settings.batch_size = check_setting("batch_size", settings.batch_size)
    settings.trim_store_gb = check_setting("trim_store_gb", settings.trim_store_gb)
    zoo_path = settings.zoo or str(default_demo_dir())
    if not settings.zoo and not (Path(zoo_path) / MANIFEST).exists():
        raise ZooError(f"the demo zoo is not built yet at {zoo_path}; run `python -m engine build-demo`")
    zoo = Zoo.open(zoo_path, settings.pattern, settings.base)
    notes = zoo.validate()
    dataset = open_dataset(settings, zoo)
    notes += [f"locale {loc} has no data" + dataset.empty_reason(loc) for loc in dataset.empty_locales()]
    cache = Path(settings.cache_dir) if settings.cache_dir else None
    evaluator = Evaluator(zoo, dataset, cache_dir=cache, device=settings.device,
                          batch_size=settings.batch_size, precision=settings.precision)
    return Workspace(settings, zoo, dataset, evaluator, notes)
