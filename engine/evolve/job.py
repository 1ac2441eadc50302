"""Evolution as background jobs: submit, resume after a restart or a cancel, export the champion.

Resuming creates a new run whose ``parent`` is the interrupted one (the JobRunner gives every
submission its own row): the new run first copies the parent's curve points up to the
checkpointed generation, then continues with the next generation from the parent's checkpoint,
writing its own checkpoints under ``<cache>/evolve/<new run id>/``. With the same seed the
finished chain gives the same champion and curves as an uninterrupted run.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Dict, List, Optional, Union

from ..store import ACTIVE, STOPPED
from .config import EvolveConfig, EvolveError
from .runner import CHECKPOINT, Evolution, read_checkpoint, resolve_config
from .search import run_label


def checkpoint_dir(ws, run_id: str) -> Path:
    """Where a run's checkpoint lives: ``<cache>/evolve/<run_id>/``."""
    return ws.cache_dir / "evolve" / run_id


def _final(evo: Evolution, result: Dict[str, Any]) -> Dict[str, Any]:
    champion = result["champion"]
    metrics = {evo.config.dev_split: champion["dev"], "test": champion["test"]}
    message = (f"champion test accuracy {champion['test']['accuracy']:.3f} (dev "
               f"{champion['dev']['accuracy']:.3f}); {result['stopped'] or 'all generations run'}")
    return {"metrics": metrics, "result": result, "message": message}


def evolve_job(ws, config: EvolveConfig, resume_from: Optional[Path] = None,
               parent: Optional[str] = None):
    """A JobRunner job: the whole evolution, streaming curves and the champion into its run row."""
    def job(ctx):
        state = None
        if resume_from is not None:
            state = read_checkpoint(resume_from)
            if parent is not None:
                for point in ctx.store.series(parent):
                    if point["step"] <= state["generation"]:
                        ctx.log(point["name"], point["step"], point["value"])
        evo = Evolution(ws, None if state else config, state=state,
                        checkpoint_dir=checkpoint_dir(ws, ctx.run_id), log=ctx.log,
                        progress=ctx.progress, update=lambda r: ctx.update(result=r))
        return _final(evo, evo.run())
    return job


def recorded_settings(ws) -> Dict[str, Any]:
    """The workspace's settings with every path made absolute, so that ``--resume RUN_ID`` alone
    reopens the same zoo, data and cache from any folder."""
    from ..candidate_runs import workspace_record

    return workspace_record(ws)


def workspace_inputs(ws, config: EvolveConfig) -> str:
    """Content fingerprint of what the run's numbers depend on: its sources' and the base's weights,
    the tokenizer, the target's and sources' data (as for any candidate)."""
    from ..experiments import Candidate, inputs_fingerprint

    return inputs_fingerprint(ws, Candidate("merge", run_label(config), config.target,
                                            list(config.sources), list(config.weights)))


def run_fields(ws, config: EvolveConfig, budget=None, name: str = "") -> Dict[str, Any]:
    """What a submitted evolution's run row records: the config, the workspace it runs on (so a
    resume reopens it), that workspace's content fingerprint, and the up-front estimate."""
    from ..runinfo import EVOLVE_TARGET_DATA

    params = {**config.to_dict(), "settings": recorded_settings(ws),
              "inputs": workspace_inputs(ws, config), "target_data": EVOLVE_TARGET_DATA["target"],
              "source_data": EVOLVE_TARGET_DATA["source_data"]}
    if budget is not None:
        params["estimate"] = budget.to_dict()
    return dict(name=name or f"{run_label(config)} → {config.target}", target=config.target,
                method=run_label(config), params=params, sources=config.sources,
                weights=config.weights)


def submit_evolution(runner, ws, config: EvolveConfig, name: str = "", force: bool = False) -> str:
    """Checks the config (declared ranges, then the time / memory estimate against the machine:
    ``force`` runs it anyway), fills in the sources (URIEL top-k), submits; returns the run id."""
    from .budget import check_budget

    config = resolve_config(ws, config)
    budget = check_budget(ws, config, force, runner.store)
    return runner.submit("evolve", evolve_job(ws, config), lane="compute",
                         **run_fields(ws, config, budget, name))


def _checkpoint_of(ws, row: Dict[str, Any]) -> Path:
    recorded = (row.get("result") or {}).get("checkpoint")
    return Path(recorded).parent if recorded else checkpoint_dir(ws, row["id"])


def check_resumable(store, run_id: str) -> Dict[str, Any]:
    """The run row when ``run_id`` is an evolution that stopped early and was not resumed yet;
    otherwise EvolveError saying what it is (running, finished, already resumed as which run)."""
    row = store.get(run_id)
    if row["kind"] != "evolve":
        raise EvolveError(f"run {run_id} is a '{row['kind']}' run, not an evolution")
    if row["status"] in ACTIVE:
        raise EvolveError(f"run {run_id} is still {row['status']}; cancel it first")
    if row["status"] == "done":
        raise EvolveError(f"run {run_id} already finished ({row.get('message') or 'done'}); nothing "
                          f"to resume — its champion is in the store (export it with --export)")
    children = store.runs(kind="evolve", parent=run_id, limit=1)
    if children:
        child = children[0]
        raise EvolveError(f"run {run_id} was already resumed as run {child['id']} "
                          f"({child['status']}); resume that one instead")
    return row


def check_same_inputs(ws, row: Dict[str, Any], config: EvolveConfig) -> None:
    """EvolveError, before anything is created, when this workspace is not the one the run ran on."""
    recorded = (row.get("params") or {}).get("inputs")
    if not recorded:  # a run stored before fingerprints were recorded
        return
    try:
        current = workspace_inputs(ws, config)
    except (ValueError, KeyError) as exc:  # a source or the target missing here: another zoo
        current = f"unusable here ({exc})"
    if current != recorded:
        settings = (row.get("params") or {}).get("settings") or {}
        raise EvolveError(
            f"run {row['id']} ran on zoo {settings.get('zoo') or '?'} with data "
            f"{settings.get('data') or '?'}, and this workspace's models or data differ (content "
            f"fingerprint {recorded} vs {current}); resume it on its own workspace: python -m "
            f"engine evolve --resume {row['id']} (without --zoo/--data)")


def resume_evolution(runner, ws, run_id: str, name: str = "") -> str:
    """Continues an interrupted, cancelled or failed run from its last completed generation, as a
    new run linked to it by ``parent``; returns the new run id. Everything that would make the
    resume fail (finished, already resumed, another zoo) is refused before a run row exists."""
    row = check_resumable(runner.store, run_id)
    folder = _checkpoint_of(ws, row)
    state = read_checkpoint(folder)
    config = EvolveConfig.from_dict(state["config"])
    if state["stopped"] or state["generation"] >= config.generations:
        raise EvolveError(f"run {run_id} already finished ({state['stopped'] or 'all generations'})"
                          f"; nothing to resume")
    check_same_inputs(ws, row, config)
    fields = run_fields(ws, config, name=name or f"{run_label(config)} → {config.target} (resumed)")
    return runner.submit("evolve", evolve_job(ws, config, resume_from=folder, parent=run_id),
                         lane="compute", parent=run_id, **fields)


def resumable_runs(ws, store) -> List[Dict[str, Any]]:
    """Evolution runs that stopped early (interrupted, cancelled, failed) with a checkpoint that
    has generations left and no resumed run yet, newest first: what a page offers to resume."""
    out = []
    for row in store.runs(kind="evolve", status=STOPPED):
        if store.runs(parent=row["id"], limit=1):
            continue
        try:
            state = read_checkpoint(_checkpoint_of(ws, row))
        except EvolveError:
            continue
        if not state["stopped"] and state["generation"] < state["config"]["generations"]:
            out.append(row)
    return out


def export_evolution(evo: Evolution, out_dir: Union[str, Path], run_id: str = "",
                     overwrite: bool = False) -> Path:
    """Writes the champion like any merge (HF folder + recipe.json); see export_merge."""
    from ..export_guard import workspace_folders
    from ..merge.export import export_merge

    ws, config, champion = evo.ws, evo.config, evo.champion
    recipe_data = evo.champion_recipe()
    weights, params, note = evo.search.export_parts(recipe_data)
    recipe = {"kind": "evolve", "method": evo.search.export_method(champion.candidate),
              "target": config.target, "sources": config.sources, "weights": weights,
              "params": params, "seed": config.seed, "zoo": ws.zoo.name,
              "base": str(ws.zoo.base) if ws.zoo.base else None, "run_id": run_id,
              "evolve": recipe_data, "fitness": champion.fitness, "dev": champion.metrics,
              "test": evo.champion_test, "config": config.to_dict()}
    return export_merge(evo.champion_model(), ws.zoo.path(config.sources[0]), out_dir, recipe,
                        overwrite=overwrite, protected=workspace_folders(ws), mergekit_note=note)


def export_champion(ws, store, run_id: str, out_dir: Union[str, Path], overwrite: bool = False) -> Path:
    """Rebuilds a run's champion from its checkpoint and exports it (any status, once generation
    0 is done)."""
    row = store.get(run_id)
    if row["kind"] != "evolve":
        raise EvolveError(f"run {run_id} is a '{row['kind']}' run, not an evolution")
    state = read_checkpoint(_checkpoint_of(ws, row))
    if not state.get("champion"):
        raise EvolveError(f"run {run_id} has no champion yet")
    return export_evolution(Evolution(ws, state=state), out_dir, run_id, overwrite)


__all__ = ["CHECKPOINT", "check_resumable", "checkpoint_dir", "recorded_settings", "run_fields", "evolve_job", "export_champion", "export_evolution",
           "resumable_runs", "resume_evolution", "submit_evolution"]
