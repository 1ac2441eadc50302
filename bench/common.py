"""Shared bench setup: the demo zoo when it is built, else the tiny test zoo (built on demand)."""
from __future__ import annotations

import os
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")


def open_bench_workspace(device: str = "auto", zoo: str = ""):
    from engine.workspace import Settings, default_demo_dir, open_workspace

    if not zoo:
        demo = default_demo_dir()
        if (demo / "zoo.json").exists():
            zoo = str(demo)
        else:
            from engine.demo.build import build_demo_zoo

            zoo = str(ROOT / "cache" / "test_zoo")
            build_demo_zoo(zoo, size="tiny", replace_stale=True)
    return open_workspace(Settings(zoo=zoo, device=device, cache_dir=str(ROOT / "cache" / "bench")))


def best_of(fn, repeat: int = 3) -> float:
    """Minimum wall time of ``repeat`` calls (after one warm-up call)."""
    fn()
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return min(times)


def print_table(rows, title: str) -> None:
    print(f"\n{title}")
    cols = list(rows[0])
    widths = [max(len(c), *(len(str(r[c])) for r in rows)) for c in cols]
    print("  ".join(c.ljust(w) for c, w in zip(cols, widths)))
    print("  ".join("-" * w for w in widths))
    for r in rows:
        print("  ".join(str(r[c]).ljust(w) for c, w in zip(cols, widths)))
