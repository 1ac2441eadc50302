"""Background jobs: merges, evaluations, N×N builds, demo builds, evolutions and sweeps run in
worker threads; progress, metrics and results go to the :class:`~engine.store.Store` as plain data.

Pages never touch a worker thread: they submit, then poll the store. Heavy (GPU-bound) jobs share one
lane with ``compute_workers`` threads (1 by default: one model on the device at a time); light jobs
(ensemble re-scoring, reports) use a second lane. Cancelling makes the job's next progress report raise
:class:`~engine.progress.Cancelled`; a failing job records its error and nothing else stops.
"""
from __future__ import annotations

import threading
import time
import traceback
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, Callable, Dict, Optional

from .progress import Cancelled, Progress
from .store import Store

PROGRESS_INTERVAL_S = 0.25
EXECUTORS = ("local", "ray")   # where a sweep's cells or an evolution's candidates run (engine/parallel.py)


@dataclass
class JobContext:
    """What a job function receives: its run id, a progress callback, and a series logger."""

    run_id: str
    store: Store
    cancel_event: threading.Event = field(default_factory=threading.Event)
    echo: Optional[Callable[[Progress], None]] = None  # also shown here (the CLI's progress bar)
    _last_write: float = 0.0

    @property
    def cancelled(self) -> bool:
        return self.cancel_event.is_set()

    def check(self) -> None:
        if self.cancelled:
            raise Cancelled("cancelled by the user")

    def progress(self, p: Progress) -> None:
        """Engine-style progress callback; throttled writes; raises Cancelled when asked to stop."""
        self.check()
        if p.point is not None:  # a live curve (e.g. AdaMerging's entropy per step)
            self.log(*p.point)
        if self.echo is not None:
            self.echo(p)
        now = time.monotonic()
        if now - self._last_write >= PROGRESS_INTERVAL_S or p.fraction >= 1.0:
            self._last_write = now
            self.store.update(self.run_id, progress=p.fraction, message=p.message[:200], eta_s=p.eta_s)

    def log(self, name: str, step: int, value: Any) -> None:
        """One point of a live curve (e.g. best fitness per generation)."""
        self.store.add_point(self.run_id, name, step, value)

    def update(self, **fields: Any) -> None:
        self.store.update(self.run_id, **fields)


JobFn = Callable[[JobContext], Optional[Dict[str, Any]]]


class JobRunner:
    """Submits job functions to background threads and records everything in the store."""

    def __init__(self, store: Store, compute_workers: int = 1, light_workers: int = 2):
        if compute_workers < 1 or light_workers < 1:
            raise ValueError("a job runner needs at least one worker per lane")
        self.store = store
        self._lanes = {"compute": ThreadPoolExecutor(compute_workers, thread_name_prefix="job-compute"),
                       "light": ThreadPoolExecutor(light_workers, thread_name_prefix="job-light")}
        self._contexts: Dict[str, JobContext] = {}
        self._futures: Dict[str, Future] = {}

    def submit(self, kind: str, fn: JobFn, lane: str = "compute", **run_fields: Any) -> str:
        """Creates the run row (status queued) and schedules ``fn``; returns the run id."""
        if lane not in self._lanes:
            raise ValueError(f"unknown lane '{lane}'; use {', '.join(self._lanes)}")
        run_id = self.store.create(kind, **run_fields)
        ctx = JobContext(run_id, self.store)
        self._contexts[run_id] = ctx
        self._futures[run_id] = self._lanes[lane].submit(self._run, fn, ctx)
        return run_id

    def _run(self, fn: JobFn, ctx: JobContext) -> None:
        try:
            execute(fn, ctx)
        finally:
            self._futures.pop(ctx.run_id, None)
            self._contexts.pop(ctx.run_id, None)

    def cancel(self, run_id: str) -> bool:
        """Asks a queued or running job to stop; returns False when it is not active here."""
        ctx = self._contexts.get(run_id)
        if ctx is None:
            return False
        ctx.cancel_event.set()
        self.store.update(run_id, message="cancelling…")
        return True

    def active(self) -> list:
        return sorted(self._contexts)

    def wait(self, run_id: str, timeout: Optional[float] = None) -> Dict[str, Any]:
        """Blocks until a job ends (for the CLI and tests); returns its run row."""
        fut = self._futures.get(run_id)
        if fut is not None:
            try:
                fut.result(timeout=timeout)
            except Exception:
                pass
        return self.store.get(run_id)

    def shutdown(self, wait: bool = True) -> None:
        for ctx in list(self._contexts.values()):
            ctx.cancel_event.set()
        for lane in self._lanes.values():
            lane.shutdown(wait=wait, cancel_futures=True)


def execute(fn: JobFn, ctx: JobContext) -> Optional[BaseException]:
    """Runs one job in this thread and records it: running, then done (with its result), failed
    (with the error) or cancelled; returns the exception that ended it, if any. Ctrl-C marks the
    run interrupted and is raised again."""
    store = ctx.store
    if ctx.cancelled:
        store.update(ctx.run_id, status="cancelled", finished=time.time(), message="cancelled before start")
        return None
    store.update(ctx.run_id, status="running", started=time.time(), message="started")
    try:
        result = fn(ctx) or {}
    except Cancelled as exc:
        store.update(ctx.run_id, status="cancelled", finished=time.time(),
                     message=str(exc)[:200] if exc.args else "cancelled")
        return exc
    except Exception as exc:  # a failing job records its error; the app and other jobs go on
        store.update(ctx.run_id, status="failed", finished=time.time(),
                     error=f"{type(exc).__name__}: {exc}\n\n{traceback.format_exc(limit=8)}",
                     message=f"failed: {exc}"[:200])
        return exc
    except BaseException:
        store.update(ctx.run_id, status="interrupted", finished=time.time(), message="interrupted")
        raise
    fields = {"status": "done", "finished": time.time(), "progress": 1.0, "eta_s": 0.0,
              "message": result.pop("message", "done")}
    for key in ("metrics", "result", "params", "sources", "weights", "target", "method"):
        if key in result:
            fields[key] = result.pop(key)
    if result:
        fields["result"] = {**fields.get("result", {}), **result}
    store.update(ctx.run_id, **fields)
    return None


def run_here(store: Store, kind: str, fn: JobFn, echo: Optional[Callable[[Progress], None]] = None,
             **run_fields: Any) -> Dict[str, Any]:
    """Runs ``fn`` in this thread as a stored run, exactly as a submitted job is recorded (the
    CLI's runs reach Compare like the app's); returns the run row. A failure is stored, then
    raised again."""
    ctx = JobContext(store.create(kind, **run_fields), store, echo=echo)
    error = execute(fn, ctx)
    if error is not None:
        raise error
    return store.get(ctx.run_id)
