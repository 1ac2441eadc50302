"""The settings a workspace is opened from: where the models and the data come from.

Plain data with no engine imports beyond the zoo's default pattern, so the data-source registry
can check its declared settings against these fields without importing the workspace.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Dict, Optional

from .zoo import DEFAULT_PATTERN


@dataclass
class Settings:
    """Where the models and the data come from. ``data='zoo'`` uses the dataset the manifest names."""

    zoo: str = ""                    # manifest, folder with zoo.json, or folder to scan; "" = demo zoo
    pattern: str = DEFAULT_PATTERN
    base: Optional[str] = None
    data: str = "zoo"
    data_path: str = ""              # jsonl/table: the file or folder; massive: hub id or local copy
    extra_locales: str = ""          # massive: comma-separated targets that have no model of their own
    text_column: str = "text"
    label_column: str = "label"
    device: str = "auto"
    cache_dir: str = ""
    batch_size: int = 64
    precision: str = "float32"       # evaluation on CUDA: float32, auto, bfloat16, float16 (CPU: float32)
    trim_store_gb: float = 16.0      # on-disk TIES sorts of searches and merges (<cache_dir>/trim/), GB; 0 = off

    def to_dict(self) -> Dict[str, object]:
        return asdict(self)
