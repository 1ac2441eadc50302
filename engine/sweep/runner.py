"""Experiments at scale: a sweep runs every cell of a spec as ONE background job and stores each cell
as its own run, so a large comparison can be stopped, resumed, and reported on.

- Each cell is a merge or ensemble candidate evaluated on the target's validation and test splits;
  its run (kind ``merge``/``ensemble``, ``parent`` = the sweep's run id) holds the metrics per split,
  the grid values and axes in ``params`` (with the deterministic ``cell_key``), and the test-split
  predictions in ``result['predictions']`` (a list of class ids) for paired tests.
- A cell whose key is already stored as done (by this or any earlier sweep, or by a page: candidate
  runs store the same key, :func:`engine.runinfo.candidate_key`) is not recomputed: a
  re-submitted or resumed sweep links the stored run instead (series ``cells`` of the sweep run
  lists every cell it covers, computed or reused).
- Baselines come from the zero-shot scores of every zoo model on each target (the N×N column, from
  the logits cache): best source among a cell's sources, best zero-shot model overall, the target's
  own model (upper bound); the equal-weight linear merge of the same sources is added as a cell.
- Executors: ``local`` (default) runs cells one after another in the job's thread, sharing the
  workspace's caches; ``ray`` hands them to a Ray cluster (see :mod:`engine.parallel`). Either way
  the driver writes the store, and both give the same numbers.
"""
from __future__ import annotations

import time
import traceback
from typing import Any, Dict, Iterable, Iterator, List, Optional, Tuple, Union

import numpy as np

from ..experiments import Candidate, baselines_from_scores, evaluate_candidate, source_scores
from ..runinfo import target_data_use
from ..progress import Cancelled, Progress, ProgressFn, sub_progress
from ..formats import jsonable
from ..jobs import EXECUTORS  # noqa: F401  (its home is engine.jobs)
from ..store import ACTIVE, Store
from ..workspace import Workspace
from .spec import Cell, expand_cells, load_spec


class SweepError(ValueError):
    """A sweep that cannot be started or resumed as asked."""


# ---- one cell ------------------------------------------------------------------------------------
def compute_cell(ws: Workspace, cand: Candidate, progress: Optional[ProgressFn] = None) -> Dict[str, Any]:
    """Evaluates one candidate; returns plain data: metrics per split, test predictions, timings."""
    started = time.time()
    out = evaluate_candidate(ws, cand, progress, with_baselines=False)
    out.pop("state", None), out.pop("fitted", None)
    predictions = out.pop("predictions")
    result = {k: v for k, v in out.items() if k != "metrics"}
    result["predictions"] = {"test": predictions["test"]}
    result["forward_passes"] = 1 if cand.kind == "merge" else len(cand.sources)
    return jsonable({"metrics": out["metrics"], "result": result, "started": started, "finished": time.time()})


def target_reference(ws: Workspace, target: str, models: Iterable[str],
                     progress: Optional[ProgressFn] = None) -> Dict[str, Any]:
    """Per-target baselines from every zoo model's zero-shot score (logits cache), plus the labels and
    the test predictions of the models the report compares against (``models``, best zero-shot, own)."""
    scores = source_scores(ws, target, progress=progress)
    labels = ws.evaluator.encoded(target, "test").labels
    zero = {m: a for m, a in scores.items() if m != target}
    best = max(zero, key=zero.get) if zero else None
    keep = sorted({m for m in models if m in scores} | ({best} if best else set())
                  | ({target} if target in scores else set()))
    predictions = {m: ws.evaluator.source_logits(m, target, "test").logits.argmax(axis=1).tolist() for m in keep}
    return jsonable({"labels": labels, "scores": scores,
                   "best_zero_shot": {"model": best, "accuracy": zero[best]} if best else None,
                   "target_model": {"model": target, "accuracy": scores[target]} if target in scores else None,
                   "predictions": predictions})


# ---- store ---------------------------------------------------------------------------------------
def find_cells(store: Store, keys: Iterable[str]) -> Dict[str, Dict[str, Any]]:
    """Newest finished run per cell key among ``keys`` (any sweep's, or a page's: they share the key)."""
    found: Dict[str, Dict[str, Any]] = {}
    for row in store.runs_with_keys(keys, status=["done"]):
        key = row["params"].get("cell_key")
        if row["kind"] in ("merge", "ensemble") and key not in found and "predictions" in row["result"]:
            found[key] = row
    return found


def _record(store: Store, sweep_id: str, cell: Cell, outcome: Union[Dict[str, Any], BaseException],
            name: str, scores: Dict[str, float], origin: str = "sweep") -> Tuple[str, bool]:
    """Writes one cell's run, with its baselines like any candidate run (from the target's zero-shot
    ``scores``); returns (run id, succeeded)."""
    c = cell.candidate
    run_id = store.create(c.kind, name=f"{name}: {c.label()}", target=c.target, method=c.method,
                          params=cell.run_params(), sources=c.sources, weights=c.weights, parent=sweep_id,
                          status="running")
    if isinstance(outcome, BaseException):
        text = "".join(traceback.format_exception_only(type(outcome), outcome)).strip()
        store.update(run_id, status="failed", finished=time.time(), error=text, message=f"failed: {outcome}"[:200])
        return run_id, False
    result = {**outcome["result"], "cell_key": cell.key, "role": cell.role, "axes": cell.axes,
              "method_params": c.params, "sweep": sweep_id, "origin": origin,
              "target_data": target_data_use(c), "baselines": baselines_from_scores(scores, c.target, c.sources)}
    acc = outcome["metrics"].get("test", {}).get("accuracy")
    store.update(run_id, status="done", metrics=outcome["metrics"], result=result, progress=1.0, eta_s=0.0,
                 started=outcome["started"], finished=outcome["finished"],
                 message=f"test accuracy {acc:.3f}" if acc is not None else "done")
    return run_id, True


# ---- executors -----------------------------------------------------------------------------------
def _warm_kernels(ws: Workspace, cells: List[Cell]) -> None:
    """Compiles the fused CPU merge kernels the cells will run (engine/merge/fused_warm.py) on a
    background thread when more than one merge cell is to be computed: without it, tensors under
    4 M entries never leave the torch path (a one-shot merge does not pay the ~3 s compile)."""
    from ..merge.fused_warm import kernels_for, warm_in_background

    merges = [c.candidate for c in cells if c.candidate.kind == "merge"]
    if len(merges) > 1 and str(ws.evaluator.device).startswith("cpu"):
        warm_in_background([(len(c.sources), kernels_for(c.method, c.params)) for c in merges])


def _local_cells(ws: Workspace, cells: List[Cell], step) -> Iterator[Tuple[Cell, Any]]:
    _warm_kernels(ws, cells)
    for i, cell in enumerate(cells):
        try:
            yield cell, compute_cell(ws, cell.candidate, step(i, cell))
        except Cancelled:
            raise
        except Exception as exc:  # one bad cell is recorded as failed; the sweep goes on
            yield cell, exc


def remote_cell(settings: Dict[str, Any], candidate: Dict[str, Any]) -> Dict[str, Any]:
    """The Ray task body: one sweep cell in this worker's workspace (the local executor's function,
    so both give the same numbers)."""
    from ..parallel import worker_workspace

    return compute_cell(worker_workspace(settings), Candidate(**candidate))


def sweep_job(ws: Workspace, spec, executor: str = "local", address: Optional[str] = None,
              num_cpus: int = 2, ray_options: Optional[Dict[str, Any]] = None, origin: str = "sweep"):
    """A JobFn for :class:`~engine.jobs.JobRunner` that runs the whole sweep with progress and ETA."""
    spec = load_spec(spec)
    if executor not in EXECUTORS:
        raise SweepError(f"unknown executor '{executor}'; use one of {', '.join(EXECUTORS)}")
    if executor == "ray":
        from ..parallel import require_ray

        require_ray()

    mirror = None
    if spec.mlflow:      # the spec's MLflow store: the sweep and every cell, reused ones included
        from ..mlflow_mirror import MlflowMirror

        mirror = MlflowMirror(spec.mlflow)

    def job(ctx):
        t0 = time.perf_counter()
        if mirror is not None:
            ctx.store.mirror_run(ctx.run_id, mirror)
        ctx.progress(Progress(0, 1, "expanding the sweep", 0.0))
        cells = expand_cells(ws, spec)
        targets = list(dict.fromkeys(c.candidate.target for c in cells))
        found = find_cells(ctx.store, [c.key for c in cells])
        todo = [c for c in cells if c.key not in found]
        links: Dict[str, str] = {}
        for cell in cells:
            if cell.key in found:
                links[cell.key] = found[cell.key]["id"]
                if mirror is not None:
                    mirror(ctx.store, links[cell.key])
                ctx.log("cells", len(links) - 1, {"key": cell.key, "run_id": links[cell.key], "reused": True,
                                                  "axes": cell.axes, "role": cell.role,
                                                  "method_params": cell.candidate.params})
        # Two phases, so the ETA means something: the baselines (cheap once logits are cached) are
        # shown at 0 % with their own message; the bar and its ETA then count the cells to compute.
        references = {}
        for i, target in enumerate(targets):
            models = {s for c in cells if c.candidate.target == target for s in c.candidate.sources}
            references[target] = target_reference(
                ws, target, models, sub_progress(ctx.progress, 0.0, 0.0,
                                                 f"baselines {target} ({i + 1}/{len(targets)}): ", t0))
        n = max(1, len(todo))
        t1 = time.perf_counter()

        def step(done: int, message: str) -> ProgressFn:
            return sub_progress(ctx.progress, done / n, (done + 1) / n, message, t1)

        summary = {"spec": spec.to_dict(), "executor": executor, "cells_total": len(cells),
                   "reused": len(found), "computed": 0, "failed": {}, "targets": references}
        ctx.update(result=summary)

        if executor == "local":
            stream = _local_cells(ws, todo, lambda i, c: step(i, f"cell {i + 1}/{len(todo)} {c.candidate.label()}: "))
        else:
            from ..parallel import ray_tasks

            stream = ray_tasks(ws, remote_cell, todo, lambda cell: (cell.candidate.to_dict(),), tick=ctx.check,
                               address=address, num_cpus=num_cpus, options=ray_options)
        for done, (cell, outcome) in enumerate(stream, start=1):
            run_id, ok = _record(ctx.store, ctx.run_id, cell, outcome, spec.name,
                                 references[cell.candidate.target]["scores"], origin)
            if ok:
                links[cell.key] = run_id
                if mirror is not None:
                    mirror(ctx.store, run_id)
                summary["computed"] += 1
                ctx.log("cells", len(links) - 1, {"key": cell.key, "run_id": run_id, "reused": False})
            else:
                summary["failed"][cell.key] = run_id
            ctx.progress(Progress(done, n, f"{done}/{len(todo)} cells computed", time.perf_counter() - t1))
        summary["cells"] = links
        summary["seconds"] = time.perf_counter() - t0
        failed = len(summary["failed"])
        return {"result": summary,
                "metrics": {"cells": len(cells), "computed": summary["computed"], "reused": summary["reused"],
                            "failed": failed, "seconds": summary["seconds"]},
                "message": f"{len(links)}/{len(cells)} cells ({summary['computed']} computed, "
                           f"{summary['reused']} reused" + (f", {failed} failed)" if failed else ")")}
    return job


def submit_sweep(runner, ws: Workspace, spec, executor: str = "local", address: Optional[str] = None,
                 num_cpus: int = 2, ray_options: Optional[Dict[str, Any]] = None,
                 resumed_from: Optional[str] = None, origin: str = "sweep") -> str:
    """Submits the sweep as one job on the compute lane; returns the sweep's run id. ``origin`` is
    what its cell runs say they came from ("sweep" from the page, "sweep (CLI)" from the CLI)."""
    spec = load_spec(spec)
    fn = sweep_job(ws, spec, executor, address, num_cpus, ray_options, origin)
    params = {"spec": spec.to_dict(), "executor": executor, "address": address, "num_cpus": num_cpus,
              "settings": ws.settings.to_dict(), "origin": origin}
    if resumed_from:
        params["resumed_from"] = resumed_from
    return runner.submit("sweep", fn, lane="compute", name=f"sweep {spec.name}", params=params)


def resume_sweep(runner, ws: Workspace, sweep_run_id: str, executor: Optional[str] = None,
                 address: Optional[str] = None) -> str:
    """Re-submits a stored sweep's spec: finished cells are linked, only the rest is computed.

    Returns the new sweep run id (its ``params['resumed_from']`` names the old one).
    """
    row = runner.store.get(sweep_run_id)
    if row["kind"] != "sweep" or "spec" not in row["params"]:
        raise SweepError(f"run {sweep_run_id} is a {row['kind']} run, not a sweep")
    if row["status"] in ACTIVE:
        raise SweepError(f"sweep {sweep_run_id} is still {row['status']}; cancel it (or wait) before resuming")
    old = row["params"]
    return submit_sweep(runner, ws, old["spec"], executor or old.get("executor", "local"),
                        address if address is not None else old.get("address"), old.get("num_cpus", 2),
                        resumed_from=sweep_run_id, origin=old.get("origin", "sweep"))


def sweep_cells(store: Store, sweep_run_id: str) -> List[Dict[str, Any]]:
    """The finished cell runs a sweep covers (computed by it or reused), one per cell key. A reused
    run (from a page or another sweep) is shown with this sweep's axes and role for its cell."""
    logged = [p["value"] for p in store.series(sweep_run_id, "cells")]
    overlay = {v["run_id"]: v for v in logged if "role" in v}
    ids = [v["run_id"] for v in logged]
    ids += list((store.get(sweep_run_id)["result"].get("cells") or {}).values())
    rows, seen = [], set()
    for run_id in dict.fromkeys(ids):
        try:
            row = store.get(run_id)
        except KeyError:
            continue
        key = row["params"].get("cell_key")
        if row["status"] == "done" and key not in seen:
            seen.add(key)
            if run_id in overlay:  # a reused run: this sweep's axes, role and grid values for it
                cell = overlay[run_id]
                row["params"] = {**row["params"], **cell.get("axes", {}), "role": cell["role"]}
                row["result"] = {**row["result"], "method_params": cell.get("method_params", {})}
            rows.append(row)
    for row in store.runs(parent=sweep_run_id, status=["done"], limit=10 ** 9):
        key = row["params"].get("cell_key")
        if key and key not in seen:
            seen.add(key)
            rows.append(row)
    return rows
