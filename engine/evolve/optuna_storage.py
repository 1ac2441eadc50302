"""Where an Optuna search keeps its study: in memory (the default), or in Optuna's JournalStorage
with a file backend (``storage``: a file path) so that several worker processes — several
``python -m engine evolve`` runs, on one machine or on a shared file system — add trials to one
study and each worker's sampler sees everybody's trials, and a study outlives the process.

The journal is Optuna's own append-only log of JSON lines (``JournalFileBackend``; nothing in it is
pickled), guarded by Optuna's file lock. A study is named by ``study`` or, left empty, after what
its trials mean (target, method, sources, genome, objectives, fitness), so runs with the same
settings share one study on their own and runs whose trials would not be comparable never do: the
study records that meaning (a fingerprint) and a worker with other settings is refused.

Workers register in the study (a user attribute, under a lock of their own); the n-th worker's
sampler is seeded ``seed + n``, so workers given the same --seed still propose different points,
and the first worker alone enqueues the start point. A single worker on a journal proposes exactly
what the in-memory study does.
"""
from __future__ import annotations

import hashlib
import json
import uuid
from pathlib import Path
from typing import Any, Dict, List, Optional

from .config import EvolveConfig, EvolveError

WORKERS_ATTR = "fusion_workers"     # study user attribute: worker ids in join order
MEANING_ATTR = "fusion_meaning"     # study user attribute: what a trial's values mean
WORKER_ATTR = "fusion_worker"       # trial user attribute: the worker that asked it


def check_storage_path(text: str, where: str) -> str:
    """'' (in memory) or the absolute path of a journal file that is one or can become one."""
    if not text:
        return ""
    path = Path(text).expanduser().resolve()
    if path.is_dir():
        raise EvolveError(f"{where}: storage {path} is a folder; give a journal file path, e.g. "
                          f"{path / 'study.journal'}")
    if not path.parent.is_dir():
        raise EvolveError(f"{where}: storage {path}: its folder {path.parent} does not exist; "
                          f"create it first")
    if path.is_file() and path.stat().st_size:
        with path.open("rb") as fh:
            first = fh.readline()
        try:
            ok = isinstance(json.loads(first), dict) and "op_code" in json.loads(first)
        except ValueError:
            ok = False
        if not ok:
            raise EvolveError(f"{where}: storage {path} is not an Optuna journal file (its first line "
                              f"is not a journal JSON record); choose a new file name")
    return str(path)


def meaning(config: EvolveConfig, coordinates: List[str], objectives: List[str]) -> Dict[str, Any]:
    """What a trial's values mean: workers whose trials could not be compared must not share."""
    return {"target": config.target, "method": config.method, "sources": list(config.sources or []),
            "coordinates": list(coordinates), "objectives": list(objectives),
            "fitness_weights": dict(config.fitness_weights), "dev_split": config.dev_split,
            "dev_size": config.dev_size, "dev_seed": config.seed if config.dev_size else None,
            "fixed": dict(config.method_params)}


def study_name(config: EvolveConfig, meant: Dict[str, Any]) -> str:
    if config.setting("study"):
        return str(config.setting("study"))
    digest = hashlib.sha256(json.dumps(meant, sort_keys=True).encode()).hexdigest()[:10]
    return f"{config.target}-{config.method}-{digest}"


def journal(path: str):
    import optuna
    from optuna.storages.journal import JournalFileBackend

    return optuna.storages.JournalStorage(JournalFileBackend(path))


def join(optuna, path: str, name: str, meant: Dict[str, Any], directions: List[str],
         worker: str) -> int:
    """Creates or loads the study in the journal, checks it means what this worker's trials mean,
    registers the worker; returns its join index (0: the study's first worker)."""
    from optuna.storages.journal import JournalFileOpenLock

    storage = journal(path)
    lock = JournalFileOpenLock(path + ".workers")
    lock.acquire()
    try:
        study = optuna.create_study(storage=storage, study_name=name, directions=directions,
                                    load_if_exists=True)
        recorded = study.user_attrs.get(MEANING_ATTR)
        if recorded is None:
            study.set_user_attr(MEANING_ATTR, meant)
        elif recorded != meant:
            differ = sorted(k for k in set(recorded) | set(meant) if recorded.get(k) != meant.get(k))
            raise EvolveError(f"study '{name}' in {path} holds trials of other settings ({', '.join(differ)} "
                              f"differ); use the same settings, or another study name or journal")
        workers = list(study.user_attrs.get(WORKERS_ATTR, []))
        if worker not in workers:
            workers.append(worker)
            study.set_user_attr(WORKERS_ATTR, workers)
        return workers.index(worker)
    finally:
        lock.release()


def new_worker() -> str:
    return uuid.uuid4().hex[:12]


def fail_stale(optuna, study, worker: str) -> int:
    """This worker's trials left RUNNING by a process that stopped mid-generation: marked FAIL so
    the samplers stop waiting on them; returns how many."""
    stale = [t for t in study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.RUNNING,))
             if t.user_attrs.get(WORKER_ATTR) == worker]
    for t in stale:
        study.tell(t.number, state=optuna.trial.TrialState.FAIL)
    return len(stale)


def _specs(result: Dict[str, Any]) -> List[List[str]]:
    labels = result.get("objectives") or ["fitness (maximize)"]
    return [[label.rsplit(" (", 1)[0], label.rsplit(" (", 1)[1].rstrip(")")] for label in labels]


def study_record(result: Dict[str, Any]) -> Optional[Dict[str, Any]]:
    """What an Optuna run's study views draw, as plain data — objectives [(name, direction)],
    coordinate names, trials [{number, generation, x, values, state}] — read from the journal
    (every worker's trials) when the run keeps one, else from its checkpoint (its own trials).
    None for a run of another algorithm or before its first checkpoint."""
    coordinates = result.get("coordinates")
    if not coordinates:
        return None
    record = {"objectives": _specs(result), "coordinates": list(coordinates), "trials": []}
    history = []
    if result.get("checkpoint") and Path(result["checkpoint"]).is_file():
        data = json.loads(Path(result["checkpoint"]).read_text(encoding="utf-8"))
        history = (data.get("search") or {}).get("history") or []
    born = {s.get("trial", n): g for n, (g, s) in
            enumerate((g, s) for g, step in enumerate(history) for s in step)}
    storage = result.get("storage") or {}
    if storage.get("journal") and Path(storage["journal"]).is_file():
        import optuna

        study = optuna.load_study(study_name=storage["study"], storage=journal(storage["journal"]))
        record["trials"] = [{"number": t.number, "generation": born.get(t.number), "state": t.state.name,
                             "x": [t.params.get(f"x{i}") for i in range(len(coordinates))],
                             "values": t.values} for t in study.get_trials(deepcopy=False)]
        return record
    record["trials"] = [{"number": s.get("trial", n), "generation": g, "x": s["x"], "values": s["values"],
                         "state": "COMPLETE" if s["values"] else "FAIL"}
                        for n, (g, s) in enumerate((g, s) for g, step in enumerate(history) for s in step)]
    return record


def record_stamp(result: Dict[str, Any]) -> tuple:
    """What ``study_record`` reads, as (path, size, mtime) per file: a page redraws the views only
    when it changes (a journal grows with every worker's trial, a checkpoint with every generation)."""
    paths = [result.get("checkpoint"), (result.get("storage") or {}).get("journal")]
    out = []
    for path in filter(None, paths):
        try:
            info = Path(path).stat()
        except OSError:
            out.append((path, None, None))
        else:
            out.append((path, info.st_size, info.st_mtime_ns))
    return tuple(out)
