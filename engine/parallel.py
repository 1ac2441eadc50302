"""The one Ray module: start or join Ray, open each worker's workspace from the driver's Settings,
and map a task function over items with a bounded number in flight. The work is passed in (sweeps:
:func:`engine.sweep.runner.remote_cell`; evolution: :func:`engine.evolve.remote.remote_candidate`),
so this module knows nothing of either; results come back as plain data and the driver writes the
store.

Local (the default when ``address`` is None): ``ray.init(num_cpus=2, include_dashboard=False)`` in
this process, nothing on the network; workers find ``engine`` through PYTHONPATH.

A real cluster (``address="ray://head:10001"`` or ``"auto"`` on a cluster node)::

    # on every node: the same Python environment (requirements.txt, incl. the ray pin), and the zoo,
    # the data and the cache folder at the same paths (a shared filesystem, e.g. NFS)
    ray start --head --port=6379                     # head node
    ray start --address=HEAD_IP:6379                 # each worker node
    python -m engine sweep spec.yaml --ray --address auto --zoo /shared/zoo --cache-dir /shared/cache

The ``engine`` package is shipped to the workers with ``runtime_env={"py_modules": [...]}``; each worker
opens its own Workspace from the driver's Settings (paths made absolute) and keeps it for later tasks.
GPU workers: pass ``ray_options={"num_gpus": 1}`` (``--gpus-per-cell 1`` on the CLI).
"""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Callable, Dict, Iterator, List, Optional, Tuple

from .workspace import Workspace, default_demo_dir

ENGINE_DIR = Path(__file__).resolve().parent
PASS_ENV = ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE", "TRANSFORMERS_OFFLINE", "HF_HUB_DISABLE_PROGRESS_BARS",
            "TOKENIZERS_PARALLELISM", "FUSION_CACHE_DIR", "FUSION_DEMO_DIR")

_WORKSPACES: Dict[str, Workspace] = {}   # per worker process: settings -> opened workspace


class RayUnavailable(RuntimeError):
    """Ray is not installed (pip install ray, pinned in requirements.txt)."""


def require_ray():
    try:
        import ray
    except ImportError as exc:
        raise RayUnavailable("the ray executor needs the 'ray' package: pip install ray "
                             "(see requirements.txt for the pinned version)") from exc
    return ray


def init_ray(address: Optional[str] = None, num_cpus: int = 2) -> None:
    """Connects to ``address`` or starts a local instance once per process (no-op when connected)."""
    ray = require_ray()
    if ray.is_initialized():
        return
    env = {k: os.environ[k] for k in PASS_ENV if k in os.environ}
    env.setdefault("HF_HUB_OFFLINE", "1")
    env.setdefault("TOKENIZERS_PARALLELISM", "false")
    if address:
        ray.init(address=address, runtime_env={"py_modules": [str(ENGINE_DIR)], "env_vars": env},
                 log_to_driver=False)
    else:
        path = os.pathsep.join(p for p in (str(ENGINE_DIR.parent), os.environ.get("PYTHONPATH", "")) if p)
        ray.init(num_cpus=num_cpus, include_dashboard=False, log_to_driver=False,
                 runtime_env={"env_vars": {**env, "PYTHONPATH": path}})


def worker_settings(ws: Workspace) -> Dict[str, Any]:
    """The workspace's Settings with the default zoo and cache made explicit absolute paths."""
    settings = ws.settings.to_dict()
    settings["zoo"] = str(Path(settings["zoo"] or default_demo_dir()).resolve())
    settings["cache_dir"] = str(Path(ws.cache_dir).resolve())
    return settings


def worker_workspace(settings: Dict[str, Any]) -> Workspace:
    """The workspace the driver's settings name, opened once per worker process."""
    from .workspace import Settings, open_workspace

    key = json.dumps(settings, sort_keys=True)
    if key not in _WORKSPACES:
        _WORKSPACES[key] = open_workspace(Settings(**settings))
    return _WORKSPACES[key]


def _cause(exc: BaseException) -> BaseException:
    """The worker's own exception inside Ray's wrapper (so a failed cell says what went wrong)."""
    cause = getattr(exc, "cause", None)
    return cause if isinstance(cause, BaseException) else exc


def ray_map(submit: Callable[[Any], Any], items: List[Any], tick: Callable[[], None],
            limit: int) -> Iterator[Tuple[Any, Any]]:
    """Yields (item, result or the worker's exception) as Ray tasks finish, at most ``limit`` in
    flight; ``submit(item)`` starts one task. ``tick()`` runs between waits (it raises Cancelled to
    stop: the tasks still queued or running are then cancelled)."""
    ray = require_ray()
    queue, pending = list(items), {}
    try:
        while queue or pending:
            while queue and len(pending) < limit:
                item = queue.pop(0)
                pending[submit(item)] = item
            ready, _ = ray.wait(list(pending), num_returns=1, timeout=0.5)
            tick()
            for ref in ready:
                item = pending.pop(ref)
                try:
                    outcome = ray.get(ref)
                except Exception as exc:  # the task failed on its worker: hand it over, go on
                    outcome = _cause(exc)
                yield item, outcome
    finally:
        for ref in pending:
            try:
                ray.cancel(ref)
            except Exception:
                pass


def ray_tasks(ws: Workspace, fn: Callable[..., Any], items: List[Any], args: Callable[[Any], tuple],
              tick: Callable[[], None], address: Optional[str] = None, num_cpus: int = 2,
              options: Optional[Dict[str, Any]] = None,
              max_in_flight: Optional[int] = None) -> Iterator[Tuple[Any, Any]]:
    """Runs ``fn(settings, *args(item))`` as a Ray task per item, ``settings`` being the workspace's
    (see :func:`worker_workspace`); yields (item, result or the worker's exception) as they finish
    (see :func:`ray_map`). ``options`` go to the task (``{"num_gpus": 1}``)."""
    ray = init_ray(address, num_cpus) or require_ray()
    settings = worker_settings(ws)
    task = ray.remote(fn).options(**{"num_cpus": 1, "max_retries": 1, **(options or {})})
    limit = max_in_flight or max(2, 2 * int(ray.cluster_resources().get("CPU", 1)))
    return ray_map(lambda item: task.remote(settings, *args(item)), items, tick, limit)
