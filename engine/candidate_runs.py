"""A candidate as a stored run: the run row's fields, the job the runner executes, and exports.

The app's pages, the CLI and ``engine export`` share these, so a run records the same recipe,
workspace, content key and target data whichever entry point started it, and an export is written
the same safe way (never into the zoo, whole or not at all).
"""
from __future__ import annotations

from pathlib import Path
from typing import Dict, Optional

from .experiments import Candidate, check_candidate, evaluate_candidate, provenance
from .runinfo import candidate_key, target_data_use
from .workspace import Workspace


def zoo_signature(ws: Workspace) -> dict:
    """What an N×N matrix was computed on, so a stored one is shown only for the same zoo and data."""
    s = ws.settings
    return {"zoo": ws.zoo.name, "root": str(Path(ws.zoo.root).resolve()), "data": s.data,
            "data_path": s.data_path, "locales": ws.zoo.locales}


def workspace_record(ws: Workspace) -> Dict[str, object]:
    """The workspace's settings with local paths made absolute: what a stored run needs so that
    ``python -m engine export RUN_ID DIR`` reopens the same workspace from any folder."""
    from .workspace import default_demo_dir

    def absolute(value):
        return str(Path(value).resolve()) if value and Path(value).exists() else value

    record = ws.settings.to_dict()
    record["zoo"] = absolute(record["zoo"]) or str(default_demo_dir().resolve())
    record["base"] = absolute(record["base"])
    record["data_path"] = absolute(record["data_path"])
    record["cache_dir"] = str(ws.cache_dir.resolve())
    return record


def candidate_fields(cand: Candidate, ws: Optional[Workspace] = None) -> Dict[str, object]:
    """The run row's recipe fields, the same for the app's jobs and the CLI's runs: with ``ws``,
    the content key a sweep finds the run by; always, the target data the recipe uses."""
    use = target_data_use(cand)
    params = {**cand.params, "seed": cand.seed, "data_mode": cand.data_mode, "data_examples": cand.data_examples,
              "target_data": use["target"], "source_data": use["source_data"]}
    if use.get("text"):  # the user's text file: name, lines, sha256
        params["target_text"] = use["text"]
    if ws is not None:
        params["cell_key"] = candidate_key(ws, cand)
    return dict(name=cand.label(), target=cand.target, method=cand.method, params=params,
                sources=cand.sources, weights=cand.weights)


def candidate_job(ws: Workspace, cand: Candidate, export_dir: Optional[Path] = None,
                  export_path: Optional[Path] = None, overwrite: bool = False,
                  keep: Optional[dict] = None, origin: str = "page"):
    """A job function for the runner: evaluate, persist metrics and the recipe, then export a
    merge (or a fitted fusion) to ``export_path``, or to ``export_dir/<run id>``.

    The run records its candidate and workspace, so a failed export loses nothing: the run is
    stored as done with ``export_error`` saying how to export it again. ``keep`` receives the
    evaluation's full output (predictions included), for the CLI. The run keeps its test
    predictions and (in its params) its content key, so a sweep asking for the same cell reuses it.
    """
    def job(ctx):
        out = evaluate_candidate(ws, cand, ctx.progress)
        state = out.pop("state", None)
        fitted = out.pop("fitted", None)
        if keep is not None:
            keep.update(out)
        result = {k: v for k, v in out.items() if k not in ("metrics", "predictions")}
        result.update(provenance=provenance(ws, cand), candidate=cand.to_dict(),
                      workspace=workspace_record(ws), target_data=target_data_use(cand), origin=origin,
                      forward_passes=1 if cand.kind == "merge" else len(cand.sources))
        if "test" in out["predictions"]:
            result["predictions"] = {"test": out["predictions"]["test"]}
        message = (f"test accuracy {out['test_accuracy']:.3f}" if out["test_accuracy"] is not None
                   else "done")
        folder = Path(export_path) if export_path else (Path(export_dir) / ctx.run_id if export_dir else None)
        if folder is not None and fitted is not None and not export_path:
            folder = folder / "fusion"
        if folder is not None and (state is not None or fitted is not None):
            try:
                path = (export_candidate(ws, cand, state, folder, overwrite, ctx.run_id) if state is not None
                        else save_fitted(ws, fitted, folder, overwrite))
                result["export" if state is not None else "fusion"] = str(path)
            except (ValueError, OSError) as exc:
                result["export_error"] = export_failed(ws, ctx.run_id, cand.kind, message, exc)
                message += "; export failed"
        return {"metrics": out["metrics"], "result": result, "message": message}
    return job


def export_failed(ws: Workspace, run_id: str, kind: str, message: str, exc: Exception) -> str:
    """One line: the run is kept, why the export failed (naming the folder), how to redo it."""
    cache = f" --cache-dir {ws.cache_dir}" if ws.settings.cache_dir else ""
    return (f"the {kind} finished ({message}) and is stored as run {run_id}, but it was not "
            f"exported: {exc}. Export the stored run with: python -m engine export {run_id} "
            f"NEW_DIR{cache} (add --overwrite to replace a folder)")


def protected_folders(ws: Workspace) -> Dict[Path, str]:
    """Folders no export may write into: the zoo's models, base and data, the cache's store."""
    from .export_guard import workspace_folders

    return workspace_folders(ws)


def save_fitted(ws: Workspace, fitted, out_dir: Path, overwrite: bool = False) -> Path:
    """A fitted fusion's folder, written whole or not at all (never into the zoo)."""
    from .export_guard import export_folder

    with export_folder(out_dir, protected_folders(ws), overwrite) as tmp:
        fitted.save(tmp)
    return Path(out_dir)


def export_candidate(ws: Workspace, cand: Candidate, state, out_dir: Path, overwrite: bool = False,
                     run_id: str = "") -> Path:
    """HF folder + recipe.json (+ mergekit.yaml naming the real source folders, so it reruns)."""
    from .merge.export import export_merge

    recipe = {**cand.to_dict(), "source_locales": list(cand.sources),
              "sources": [str(ws.zoo.path(s).resolve()) for s in cand.sources],
              "zoo": ws.zoo.name, "base": str(ws.zoo.base.resolve()) if ws.zoo.base else None}
    if run_id:
        recipe["run_id"] = run_id
    return export_merge(state, ws.zoo.path(cand.sources[0]), out_dir, recipe, overwrite=overwrite,
                        protected=protected_folders(ws))


def submit_candidate(runner, ws: Workspace, cand: Candidate, export_dir: Optional[Path] = None,
                     name: str = "", export_path: Optional[Path] = None, overwrite: bool = False,
                     origin: str = "page", weighting: Optional[str] = None) -> str:
    """Queues the candidate as a stored run; ``weighting`` (engine.experiments.WEIGHTINGS) is
    recorded with it when its weights were derived by one."""
    check_candidate(ws, cand)
    lane = "light" if cand.kind == "ensemble" else "compute"
    fields = candidate_fields(cand, ws)
    fields["name"] = name or fields["name"]
    if weighting:
        fields["params"]["weighting"] = weighting
    return runner.submit(cand.kind, candidate_job(ws, cand, export_dir, export_path, overwrite, origin=origin),
                         lane=lane, **fields)
