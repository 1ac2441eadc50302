"""Where results live on disk, in one place so the app, the CLI, the jobs and the tests open the same
folder and the same store: ``$FUSION_CACHE_DIR`` (else ``cache/`` at the project root), with the run
store ``runs.sqlite`` inside it. No heavy imports: every layer may use it.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Optional, Union

CACHE_ENV = "FUSION_CACHE_DIR"
DEFAULT_CACHE = Path(__file__).resolve().parent.parent / "cache"
STORE_FILE = "runs.sqlite"


def default_cache_dir() -> Path:
    """$FUSION_CACHE_DIR, else ``cache/`` at the project root (an empty variable counts as unset)."""
    env = os.environ.get(CACHE_ENV)
    return Path(env) if env else DEFAULT_CACHE


def store_path(cache_dir: Optional[Union[str, Path]] = None) -> Path:
    """The run store of ``cache_dir`` (empty or None: the default cache folder)."""
    return Path(cache_dir or default_cache_dir()) / STORE_FILE


def pid_alive(pid: int) -> bool:
    """Whether process ``pid`` still runs: a store's run owner, the writer of a temp export folder."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
