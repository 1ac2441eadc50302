"""Progress reporting with ETA, shared by the CLI (a text bar) and the UI (polled by pages).

Engine functions take an optional ``progress`` callback and call it with a :class:`Progress`.
A job runner cancels work by making that callback raise :class:`Cancelled`.
"""
from __future__ import annotations

import sys
import time
from dataclasses import dataclass
from typing import Callable, Dict, Optional, Tuple


class Cancelled(Exception):
    """Raised from a progress callback to stop the work that reported it."""


@dataclass(frozen=True)
class Progress:
    done: float
    total: float
    message: str = ""
    elapsed_s: float = 0.0
    point: Optional[Tuple[str, int, float]] = None  # (series, step, value): a live curve's next point

    @property
    def fraction(self) -> float:
        return 0.0 if self.total <= 0 else min(1.0, max(0.0, self.done / self.total))

    @property
    def eta_s(self) -> Optional[float]:
        if self.done <= 0 or self.total <= 0:
            return None
        return max(0.0, self.elapsed_s * (self.total - self.done) / self.done)


ProgressFn = Callable[[Progress], None]


def format_seconds(seconds: Optional[float]) -> str:
    if seconds is None:
        return "--:--"
    seconds = int(round(seconds))
    h, rem = divmod(seconds, 3600)
    m, s = divmod(rem, 60)
    return f"{h}:{m:02d}:{s:02d}" if h else f"{m:02d}:{s:02d}"


class Tracker:
    """Counts steps of one task and forwards them, with elapsed time, to a callback."""

    def __init__(self, callback: Optional[ProgressFn], total: float, message: str = ""):
        self.callback = callback
        self.total = float(total)
        self.done = 0.0
        self.message = message
        self.start = time.perf_counter()
        self._emit()

    def _emit(self, point: Optional[Tuple[str, int, float]] = None) -> None:
        if self.callback is not None:
            self.callback(Progress(self.done, self.total, self.message,
                                   time.perf_counter() - self.start, point))

    def advance(self, steps: float = 1.0, message: Optional[str] = None,
                point: Optional[Tuple[str, int, float]] = None) -> None:
        self.done += steps
        if message is not None:
            self.message = message
        self._emit(point)

    def set(self, done: float, message: Optional[str] = None) -> None:
        self.done = float(done)
        if message is not None:
            self.message = message
        self._emit()


def sub_progress(callback: Optional[ProgressFn], start: float, end: float, prefix: str = "",
                 started: Optional[float] = None) -> Optional[ProgressFn]:
    """Maps a child task's 0..1 progress into the [start, end] slice of a parent's 0..1.

    ``started`` is the parent's start time (``time.perf_counter()``), so the ETA covers the whole task.
    """
    if callback is None:
        return None
    t0 = time.perf_counter() if started is None else started

    def child(p: Progress) -> None:
        msg = f"{prefix}{p.message}" if prefix else p.message
        callback(Progress(start + (end - start) * p.fraction, 1.0, msg, time.perf_counter() - t0, p.point))

    return child


def text_bar(stream=sys.stderr, width: int = 30) -> ProgressFn:
    """A progress callback that draws ``[#####.....]  42%  ETA 01:23  message`` on a terminal."""
    last = [0.0]

    def draw(p: Progress) -> None:
        now = time.perf_counter()
        if p.fraction < 1.0 and now - last[0] < 0.2:
            return
        last[0] = now
        filled = int(width * p.fraction)
        line = (f"\r[{'#' * filled}{'.' * (width - filled)}] {p.fraction * 100:5.1f}%  "
                f"ETA {format_seconds(p.eta_s)}  {p.message[:60]:<60}")
        stream.write(line)
        if p.fraction >= 1.0:
            stream.write("\n")
        stream.flush()

    return draw


# ---- phases weighted by their cost ---------------------------------------------------------------
# Seconds per unit of work, by kind; the defaults were measured on the project's 2-core machine
# (demo zoo), and every finished phase updates its kind's rate (half old, half measured), so the
# weights of a process's later tasks are the costs it actually saw.
RATES: Dict[str, float] = {
    "forward": 6e-5,     # per example × M compute parameters (non-embedding) in a forward pass
    "load": 2e-3,        # per M parameters read from disk into memory
    "merge": 4e-3,       # per source × M parameters merged (the method's own kind overrides it)
    "fixed": 1.0,        # per unit of a phase with no better measure
}


def phase_cost(kind: str, units: float) -> float:
    return max(0.0, units) * RATES.get(kind, RATES["merge"] if kind.startswith("merge") else RATES["fixed"])


class Phases:
    """A task made of named phases, each given (kind, units of work): its share of the bar is its
    estimated seconds (units × RATES[kind]) over the total, so the fraction grows at the rate work
    is done and the ETA holds. ``child(name)`` is the phase's progress callback; ``finish(name)``
    closes it (and learns the kind's rate from the time it took)."""

    def __init__(self, callback: Optional[ProgressFn], plan: Dict[str, tuple],
                 started: Optional[float] = None):
        self.callback, self.plan = callback, dict(plan)
        self.started = time.perf_counter() if started is None else started
        costs = {name: phase_cost(kind, units) for name, (kind, units) in self.plan.items()}
        total = sum(costs.values()) or 1.0
        self.bounds: Dict[str, tuple] = {}
        lo = 0.0
        for name, cost in costs.items():
            self.bounds[name] = (lo, lo + cost / total)
            lo += cost / total
        self._begun: Dict[str, float] = {}

    def child(self, name: str, prefix: str = "") -> Optional[ProgressFn]:
        self._begun[name] = time.perf_counter()
        lo, hi = self.bounds[name]
        return sub_progress(self.callback, lo, hi, prefix, self.started)

    def finish(self, name: str, message: str = "") -> None:
        kind, units = self.plan[name]
        took = time.perf_counter() - self._begun.pop(name, time.perf_counter())
        if units > 0 and took > 0.05 and kind != "fixed":
            RATES[kind] = 0.5 * RATES.get(kind, took / units) + 0.5 * took / units
        if self.callback is not None:
            self.callback(Progress(self.bounds[name][1], 1.0, message or f"{name} done",
                                   time.perf_counter() - self.started))
