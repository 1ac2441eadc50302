"""The results store: every run (merge, ensemble, evaluation, N×N, evolution, sweep) in one SQLite file.

One place, documented: ``<cache>/runs.sqlite``. A run row holds its kind, recipe, sources and weights,
metrics, timings, status and live progress; a ``series`` table holds per-step metrics (fitness curves).
SQLite in WAL mode lets the job threads write while pages read; several processes (the app, CLI
commands, sweep drivers) may write at once: every connection waits up to ``BUSY_TIMEOUT_S`` for a
lock and every write is retried while SQLite still answers "locked"/"busy". Runs left ``queued``/``running`` by a
process that is gone are marked ``interrupted`` when the store is next opened — never silently lost.
"""
from __future__ import annotations

import json
import os
import sqlite3
import threading
import time
import uuid
from pathlib import Path
from typing import Any, Callable, Dict, Iterable, List, Optional, Union

from .paths import pid_alive as _pid_alive, store_path

STATUSES = ("queued", "running", "done", "failed", "cancelled", "interrupted")
ACTIVE = ("queued", "running")
STOPPED = ("cancelled", "interrupted", "failed")   # ended before the end: what a resume may continue

SCHEMA = """
CREATE TABLE IF NOT EXISTS runs (
    id TEXT PRIMARY KEY,
    kind TEXT NOT NULL,
    name TEXT NOT NULL DEFAULT '',
    status TEXT NOT NULL,
    target TEXT,
    method TEXT,
    params TEXT NOT NULL DEFAULT '{}',
    sources TEXT NOT NULL DEFAULT '[]',
    weights TEXT NOT NULL DEFAULT '[]',
    metrics TEXT NOT NULL DEFAULT '{}',
    result TEXT NOT NULL DEFAULT '{}',
    error TEXT,
    progress REAL NOT NULL DEFAULT 0,
    message TEXT NOT NULL DEFAULT '',
    eta_s REAL,
    created REAL NOT NULL,
    started REAL,
    finished REAL,
    owner TEXT,
    parent TEXT
);
CREATE INDEX IF NOT EXISTS runs_created ON runs(created);
CREATE INDEX IF NOT EXISTS runs_cell_key ON runs(json_extract(params, '$.cell_key'));
-- what every page asks on each rerun (runs of a kind, a sweep's cells, active jobs): index searches
CREATE INDEX IF NOT EXISTS runs_kind_created ON runs(kind, created);
CREATE INDEX IF NOT EXISTS runs_parent_status ON runs(parent, status, created);
CREATE INDEX IF NOT EXISTS runs_status_created ON runs(status, created);
CREATE TABLE IF NOT EXISTS series (
    run_id TEXT NOT NULL,
    name TEXT NOT NULL,
    step INTEGER NOT NULL,
    value TEXT NOT NULL,
    PRIMARY KEY (run_id, name, step)
);
CREATE TABLE IF NOT EXISTS pins (
    run_id TEXT PRIMARY KEY,
    pinned REAL NOT NULL
);
"""

BUSY_TIMEOUT_S = 30.0
WRITE_RETRY_S = 120.0   # a write gives up only after this long of "database is locked"

LIVE_OWNERS: set = set()  # owners (stores) alive in this process; their active runs are not stale

JSON_FIELDS = ("params", "sources", "weights", "metrics", "result")


class StoreError(RuntimeError):
    """The results store cannot be opened; the message names the file and how to recover."""


def store_problem(path: Path, exc: sqlite3.Error) -> str:
    """What went wrong with the store file, and what to do: it is never overwritten or moved here,
    since it holds every stored run."""
    name = getattr(exc, "sqlite_errorname", "")
    if name in ("SQLITE_CORRUPT", "SQLITE_NOTADB"):
        return (f"the results store {path} is corrupt ({exc}); it was left untouched. To salvage its runs: "
                f"sqlite3 {path} .recover | sqlite3 {path}.recovered, then move {path}.recovered to {path}; "
                f"or move {path} aside (or use another --cache-dir / FUSION_CACHE_DIR) to start an empty store")
    return (f"cannot open the results store {path} ({exc}): check that the file and its folder are readable "
            f"and writable, or use another --cache-dir / FUSION_CACHE_DIR")


def _locked(exc: sqlite3.OperationalError) -> bool:
    text = str(exc).lower()
    return "locked" in text or "busy" in text


def _retry(write):
    """Runs ``write`` until SQLite stops answering "locked"/"busy" (another process's write or
    checkpoint), with growing pauses, for up to ``WRITE_RETRY_S``."""
    deadline, pause = time.monotonic() + WRITE_RETRY_S, 0.01
    while True:
        try:
            return write()
        except sqlite3.OperationalError as exc:
            if not _locked(exc) or time.monotonic() > deadline:
                raise
        time.sleep(pause)
        pause = min(pause * 2, 0.5)


class Store:
    """Thread-safe access to the runs database (one connection per thread)."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.owner = f"{os.getpid()}:{uuid.uuid4().hex[:8]}"
        LIVE_OWNERS.add(self.owner)
        self._local = threading.local()
        self.mirror: Optional[Callable[["Store", str], None]] = None  # called with each run that ends done
        self.run_mirrors: Dict[str, Callable[["Store", str], None]] = {}  # one run's own mirror (a sweep's spec)
        try:
            _retry(lambda: self._conn().executescript(SCHEMA))
            self.mark_interrupted()
        except sqlite3.DatabaseError as exc:
            if getattr(exc, "sqlite_errorname", "").startswith(("SQLITE_BUSY", "SQLITE_LOCKED")):
                raise
            self.close()
            raise StoreError(store_problem(self.path, exc)) from None

    def _conn(self) -> sqlite3.Connection:
        conn = getattr(self._local, "conn", None)
        if conn is None:
            conn = sqlite3.connect(str(self.path), timeout=BUSY_TIMEOUT_S, isolation_level=None)
            conn.execute(f"PRAGMA busy_timeout={int(BUSY_TIMEOUT_S * 1000)}")
            _retry(lambda: conn.execute("PRAGMA journal_mode=WAL"))  # switching needs a moment alone
            conn.execute("PRAGMA synchronous=NORMAL")
            conn.row_factory = sqlite3.Row
            self._local.conn = conn
        return conn

    def _write(self, sql: str, args: Iterable[Any] = ()) -> None:
        args = tuple(args)
        _retry(lambda: self._conn().execute(sql, args))

    # ---- writing ---------------------------------------------------------------------------
    def create(self, kind: str, name: str = "", target: Optional[str] = None,
               method: Optional[str] = None, params: Optional[dict] = None,
               sources: Iterable[str] = (), weights: Iterable[float] = (),
               parent: Optional[str] = None, status: str = "queued") -> str:
        run_id = time.strftime("%Y%m%d-%H%M%S-") + uuid.uuid4().hex[:6]
        self._write(
            "INSERT INTO runs (id, kind, name, status, target, method, params, sources, weights, "
            "created, owner, parent) VALUES (?,?,?,?,?,?,?,?,?,?,?,?)",
            (run_id, kind, name, status, target, method, json.dumps(params or {}),
             json.dumps(list(sources)), json.dumps([float(w) for w in weights]), time.time(),
             self.owner, parent))
        return run_id

    def update(self, run_id: str, **fields: Any) -> None:
        if not fields:
            return
        bad = set(fields) - {"status", "name", "target", "method", "params", "sources", "weights",
                             "metrics", "result", "error", "progress", "message", "eta_s",
                             "started", "finished"}
        if bad:
            raise ValueError(f"unknown run fields {sorted(bad)}")
        if "status" in fields and fields["status"] not in STATUSES:
            raise ValueError(f"unknown status {fields['status']!r}")
        values = [json.dumps(v) if k in JSON_FIELDS else v for k, v in fields.items()]
        sets = ", ".join(f"{k}=?" for k in fields)
        self._write(f"UPDATE runs SET {sets} WHERE id=?", (*values, run_id))
        own = self.run_mirrors.pop(run_id, None) if fields.get("status", "queued") not in ACTIVE else None
        if fields.get("status") == "done":   # after the write: the store keeps the run whatever a mirror does
            for mirror in (self.mirror, own):
                if mirror is not None:
                    mirror(self, run_id)

    def mirror_run(self, run_id: str, mirror: Callable[["Store", str], None]) -> None:
        """Mirrors this one run when it ends done (a sweep whose spec names an MLflow store), beside
        the store-wide ``mirror``; a mirror that already holds the run logs it once."""
        self.run_mirrors[run_id] = mirror

    def mirror_to(self, uri: str = "") -> None:
        """Mirrors every run that ends done from now on to the MLflow tracking ``uri`` (a local folder,
        ``file:`` or ``sqlite:`` URI); "" stops mirroring. Raises MlflowMirrorError for a non-local URI."""
        from .mlflow_mirror import MlflowMirror

        self.mirror = MlflowMirror(uri) if uri.strip() else None

    def add_point(self, run_id: str, name: str, step: int, value: Any) -> None:
        self._write("INSERT OR REPLACE INTO series (run_id, name, step, value) VALUES (?,?,?,?)",
                    (run_id, name, int(step), json.dumps(value)))

    def pin(self, run_id: str, pinned: bool = True) -> None:
        """Marks a run for comparison (kept across restarts), or unmarks it."""
        if pinned:
            self.get(run_id)  # a KeyError for an unknown run
            self._write("INSERT OR REPLACE INTO pins (run_id, pinned) VALUES (?,?)",
                        (run_id, time.time()))
        else:
            self._write("DELETE FROM pins WHERE run_id=?", (run_id,))

    def pinned(self) -> List[str]:
        """Pinned run ids, oldest pin first."""
        return [r["run_id"] for r in self._conn().execute("SELECT run_id FROM pins ORDER BY pinned")]

    def delete(self, run_id: str) -> None:
        self._write("DELETE FROM pins WHERE run_id=?", (run_id,))
        self._write("DELETE FROM series WHERE run_id=?", (run_id,))
        self._write("DELETE FROM runs WHERE id=?", (run_id,))

    def mark_interrupted(self) -> int:
        """Runs left active by a dead process become ``interrupted``; returns how many."""
        count = 0
        # fetch first: updating while a read is open cannot take the write lock in WAL mode
        active = self._conn().execute("SELECT id, owner FROM runs WHERE status IN ('queued','running')").fetchall()
        for row in active:
            pid = int((row["owner"] or "0:").split(":")[0] or 0)
            other_live_process = pid and pid != os.getpid() and _pid_alive(pid)
            if row["owner"] not in LIVE_OWNERS and not other_live_process:
                self.update(row["id"], status="interrupted", finished=time.time(),
                            message="interrupted: the app stopped while this run was active")
                count += 1
        return count

    def close(self) -> None:
        """This store's active runs count as stale from now on (as after a restart)."""
        LIVE_OWNERS.discard(self.owner)
        conn = getattr(self._local, "conn", None)
        if conn is not None:
            conn.close()
            self._local.conn = None

    # ---- reading ---------------------------------------------------------------------------
    @staticmethod
    def _row(row: sqlite3.Row) -> Dict[str, Any]:
        out = dict(row)
        for k in JSON_FIELDS:
            out[k] = json.loads(out[k]) if out.get(k) else ({} if k in ("params", "metrics", "result") else [])
        return out

    def get(self, run_id: str) -> Dict[str, Any]:
        row = self._conn().execute("SELECT * FROM runs WHERE id=?", (run_id,)).fetchone()
        if row is None:
            raise KeyError(f"no run with id '{run_id}'")
        return self._row(row)

    def runs(self, kind: Optional[str] = None, status: Optional[Iterable[str]] = None,
             target: Optional[str] = None, limit: int = 1000, parent: Optional[str] = None) -> List[Dict[str, Any]]:
        sql, args = "SELECT * FROM runs WHERE 1=1", []
        if kind:
            sql += " AND kind=?"
            args.append(kind)
        if status:
            status = list(status)
            sql += f" AND status IN ({','.join('?' * len(status))})"
            args += status
        if target:
            sql += " AND target=?"
            args.append(target)
        if parent:
            sql += " AND parent=?"
            args.append(parent)
        sql += " ORDER BY created DESC LIMIT ?"
        args.append(limit)
        return [self._row(r) for r in self._conn().execute(sql, args)]

    def runs_with_keys(self, keys: Iterable[str], status: Optional[Iterable[str]] = None) -> List[Dict[str, Any]]:
        """Runs whose content key (``params.cell_key``) is among ``keys``, newest first: an index
        lookup, not a scan of every run."""
        keys = list(dict.fromkeys(keys))
        out: List[Dict[str, Any]] = []
        for lo in range(0, len(keys), 500):  # SQLite's limit on bound parameters
            chunk = keys[lo:lo + 500]
            # INDEXED BY: the planner would otherwise walk the status index (every 'done' run)
            sql = (f"SELECT * FROM runs INDEXED BY runs_cell_key WHERE json_extract(params, '$.cell_key') "
                   f"IN ({','.join('?' * len(chunk))})")
            args: List[Any] = list(chunk)
            if status:
                status = list(status)
                sql += f" AND status IN ({','.join('?' * len(status))})"
                args += status
            out += [self._row(r) for r in self._conn().execute(sql + " ORDER BY created DESC", args)]
        return sorted(out, key=lambda r: r["created"], reverse=True)

    def series(self, run_id: str, name: Optional[str] = None) -> List[Dict[str, Any]]:
        sql, args = "SELECT name, step, value FROM series WHERE run_id=?", [run_id]
        if name:
            sql += " AND name=?"
            args.append(name)
        rows = self._conn().execute(sql + " ORDER BY name, step", args)
        return [{"name": r["name"], "step": r["step"], "value": json.loads(r["value"])} for r in rows]


def open_store(cache_dir: Optional[Union[str, Path]] = None) -> Store:
    """The one results store of ``cache_dir`` (empty or None: the default cache folder), mirroring its
    finished runs to MLflow when ``FUSION_MLFLOW_URI`` is set (a bad URI: one warning, no mirror)."""
    import warnings

    from .mlflow_mirror import ENV_URI, MlflowMirrorError

    store = Store(store_path(cache_dir))
    try:
        store.mirror_to(os.environ.get(ENV_URI, ""))
    except MlflowMirrorError as exc:
        warnings.warn(f"{ENV_URI}: {exc}; runs are not mirrored to MLflow", stacklevel=2)
    return store
