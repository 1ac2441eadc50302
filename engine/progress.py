"""Progress reporting with ETA, shared by the CLI (a text bar) and the UI (polled by pages).

Engine functions take an optional ``progress`` callback and call it with a :class:`Progress`.
A job runner cancels work by making that callback raise :class:`Cancelled`.
"""
from __future__ import annotations

import sys
import time
from dataclasses import dataclass
from typing import Callable, Optional


class Cancelled(Exception):
    """Raised from a progress callback to stop the work that reported it."""


@dataclass(frozen=True)
class Progress:
    done: float
    total: float
    message: str = ""
    elapsed_s: float = 0.0

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

    def _emit(self) -> None:
        if self.callback is not None:
            self.callback(Progress(self.done, self.total, self.message,
                                   time.perf_counter() - self.start))

    def advance(self, steps: float = 1.0, message: Optional[str] = None) -> None:
        self.done += steps
        if message is not None:
            self.message = message
        self._emit()

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
        callback(Progress(start + (end - start) * p.fraction, 1.0, msg, time.perf_counter() - t0))

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
