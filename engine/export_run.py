"""Exporting a stored run again: ``python -m engine export RUN_ID DIR``.

A merge run records its candidate (the recipe) and its workspace settings, so the merge is rebuilt
deterministically from RUN_ID alone — after a failed export, or to write another copy. The inputs'
fingerprint must match the run's, so a changed zoo, base or dataset cannot pass for the same merge.
"""
from __future__ import annotations

from dataclasses import fields
from pathlib import Path
from typing import Optional

from .export_guard import ExportError, check_export_dir, workspace_folders
from .progress import ProgressFn
from .workspace import Settings, Workspace, open_workspace


def stored_workspace(row: dict, fallback: Optional[Settings] = None) -> Workspace:
    """The workspace a run was made on (as it recorded it), else ``fallback``."""
    recorded = (row.get("result") or {}).get("workspace")
    if recorded:
        known = {f.name for f in fields(Settings)}
        return open_workspace(Settings(**{k: v for k, v in recorded.items() if k in known}))
    if fallback is None:
        raise ExportError(f"run {row['id']} does not record the workspace it ran on; give the "
                          f"same --zoo/--data options it ran with")
    return open_workspace(fallback)


def export_stored_run(store, run_id: str, out_dir: Path, overwrite: bool = False,
                      fallback: Optional[Settings] = None,
                      progress: Optional[ProgressFn] = None) -> Path:
    """Rebuilds a stored merge (or an evolution's champion, or a fitted fusion) and writes it to
    ``out_dir`` with the same guards as any export; returns the folder."""
    from .experiments import Candidate, build_merge, evaluate_candidate, inputs_fingerprint
    from .candidate_runs import export_candidate, save_fitted

    row = store.get(run_id)
    kind = row["kind"]
    if kind == "evolve":
        from .evolve import export_champion

        return export_champion(stored_workspace(row, fallback), store, run_id, out_dir, overwrite)
    if kind not in ("merge", "ensemble"):
        raise ExportError(f"run {run_id} is a '{kind}' run; only merge, ensemble and evolve runs "
                          f"have a model to export")
    if row["status"] != "done":
        raise ExportError(f"run {run_id} is {row['status']}, not done: there is no finished "
                          f"{kind} to export")
    result = row.get("result") or {}
    if not result.get("candidate"):
        raise ExportError(f"run {run_id} does not record its recipe (made by an older engine); "
                          f"run it again with --export")
    ws = stored_workspace(row, fallback)
    cand = Candidate(**result["candidate"])
    recorded = (result.get("provenance") or {}).get("inputs")
    if recorded and inputs_fingerprint(ws, cand) != recorded:
        raise ExportError(f"the models, base or data of run {run_id} changed since it ran (zoo "
                          f"{ws.zoo.root}); the rebuilt {kind} would not be the one that was "
                          f"scored, so nothing was exported")
    _check_same_text(run_id, cand, result)
    check_export_dir(out_dir, workspace_folders(ws), overwrite)  # before minutes of rebuilding
    if kind == "merge":
        return export_candidate(ws, cand, build_merge(ws, cand, progress), Path(out_dir),
                                overwrite, run_id)
    fitted = evaluate_candidate(ws, cand, progress, splits=(), with_baselines=False).get("fitted")
    if fitted is None:
        raise ExportError(f"run {run_id} is a '{cand.method}' ensemble: it learns nothing, so "
                          f"there is no folder to export (its recipe is the run itself)")
    return save_fitted(ws, fitted, Path(out_dir), overwrite)


def _check_same_text(run_id: str, cand, result: dict) -> None:
    """A run that learned on a user's text file is rebuilt only from the same file content."""
    recorded = (result.get("target_data") or {}).get("text")
    if not getattr(cand, "target_text", "") or not recorded:
        return
    from .data.target_text import TargetTextError, read_target_text

    try:
        now = read_target_text(cand.target_text).describe()
    except TargetTextError as exc:
        raise ExportError(f"run {run_id} learned on {recorded}, which cannot be read now ({exc}); "
                          f"nothing was exported") from None
    if now != recorded:
        raise ExportError(f"run {run_id} learned on {recorded}, but {cand.target_text} is now {now}; "
                          f"the rebuilt merge would not be the one that was scored, so nothing was "
                          f"exported")
