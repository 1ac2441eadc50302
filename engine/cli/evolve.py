"""``python -m engine evolve``: any registered evolution algorithm from the command line (its
settings' flags are drawn from the Params it registers with: engine/evolve/algorithms.py).

The run goes through the same JobRunner and results store as the dashboard's
(``<cache>/runs.sqlite``), so it shows up on the Evolve page and can be resumed from either side.
Ctrl-C cancels it after the current evaluation; ``--resume RUN_ID`` continues it.
"""
from __future__ import annotations

import shlex
import sys
import time
from dataclasses import fields
from pathlib import Path

from .core import command, open_from_args, progress_for, table_text, workspace_args
from ..evolve.config import DEV_SUBSETS
from ..progress import Progress
from ..store import ACTIVE, STOPPED


def _default(name: str):
    from ..evolve import EvolveConfig

    field = {f.name: f for f in fields(EvolveConfig)}[name]
    return field.default


def _setting_flags(p) -> None:
    """One flag per algorithm setting, drawn from the registered Params (type, range, help);
    default None: the chosen algorithm's own default."""
    from ..evolve.algorithms import EVOLUTIONS, setting_params
    from ..limits import arg_help, arg_type

    g = p.add_argument_group("algorithm settings (each names the algorithms that read it)")
    for name, (param, owners) in setting_params().items():
        who = ", ".join(EVOLUTIONS.get(o).title for o in owners)
        flag = "--" + name.replace("_", "-")
        default = "" if param.default is None else f" (default {param.default})"
        if param.kind == "choice":
            g.add_argument(flag, choices=param.choices, default=None,
                           help=f"{who}: {param.help}{default}")
        elif param.kind == "text":
            g.add_argument(flag, default=None, metavar="TEXT", help=f"{who}: {param.help}")
        elif param.kind == "bool":
            g.add_argument(flag, type=_boolean, default=None, metavar="true|false",
                           help=f"{who}: {param.help}{default}")
        else:
            g.add_argument(flag, type=arg_type(param), default=None,
                           help=f"{who}: " + arg_help(param) + default)


def _boolean(text: str) -> bool:
    import argparse

    if text.lower() in ("true", "1", "yes", "false", "0", "no"):
        return text.lower() in ("true", "1", "yes")
    raise argparse.ArgumentTypeError(f"{text!r} is not true or false")


def _algorithm_settings(args, algorithm: str) -> dict:
    """The flags given for the chosen algorithm; a flag only another algorithm reads is refused."""
    from ..evolve import EvolveError
    from ..evolve.algorithms import EVOLUTIONS, setting_params

    own = {p.name for p in EVOLUTIONS.get(algorithm).params}
    given = {name: getattr(args, name) for name in setting_params() if getattr(args, name, None) is not None}
    other = sorted(set(given) - own)
    if other:
        raise EvolveError(f"{', '.join('--' + n.replace('_', '-') for n in other)}: not a setting of "
                          f"{algorithm} (it takes {', '.join(sorted(own)) or 'none'})")
    return given


def _evolve_args(p) -> None:
    from ..evolve import EVOLUTIONS

    workspace_args(p)
    p.add_argument("--target", help="target locale (required unless --resume)")
    p.add_argument("--algorithm", choices=EVOLUTIONS.names(), default=_default("algorithm"),
                   help="; ".join(f"{m.name}: {m.summary}" for m in EVOLUTIONS))
    p.add_argument("--sources", nargs="*", default=None,
                   help="source locales (default: the target's URIEL top-k)")
    p.add_argument("--weights", nargs="*", type=float, default=None,
                   help="starting weights, one per source (default: URIEL, else equal)")
    p.add_argument("--top-k", type=int, default=_default("top_k"))
    p.add_argument("--generations", type=int, default=_default("generations"))
    p.add_argument("--population", type=int, default=_default("population"))
    p.add_argument("--force", action="store_true",
                   help="start even when the time / memory estimate is far beyond this machine")
    p.add_argument("--seed", type=int, default=_default("seed"))
    p.add_argument("--fitness-weights", default="",
                   help="e.g. accuracy=0.5,loss=0.5,latency=0,memory=0 (default), or 'seed' for "
                        "seed 004's 0.3/0.4/0.2/0.1")
    p.add_argument("--dev-size", type=int, default=_default("dev_size"),
                   help="dev examples of the target's validation split (0: all)")
    p.add_argument("--dev-subset", choices=DEV_SUBSETS, default="random",
                   help="with --dev-size: a random sample, or the informative examples the sources disagree "
                        "on (MERGE³-style, stratified by label; from the sources' cached dev logits)")
    p.add_argument("--patience", type=int, default=_default("patience"),
                   help="stop after this many generations without gain (0: never)")
    p.add_argument("--no-merge-cache", action="store_true",
                   help="do not keep task vectors, sorted magnitudes and draws between merges "
                        "(slower; saves up to ~3x the sources' memory, for models near the limit)")
    p.add_argument("--ray", action="store_true",
                   help="merge and score each generation's candidates as parallel Ray tasks "
                        "(local instance unless --address); same results as local")
    p.add_argument("--address", default=None, help="Ray cluster address, e.g. auto or ray://head:10001")
    p.add_argument("--ray-cpus", type=int, default=_default("ray_cpus"), help="CPUs of the local Ray instance")
    p.add_argument("--resume", metavar="RUN_ID", help="continue an interrupted/cancelled run")
    p.add_argument("--export", metavar="DIR", help="write the champion as an HF folder here "
                   "(never into the zoo; written whole or not at all)")
    p.add_argument("--overwrite", action="store_true", help="replace DIR if it is not empty")
    p.add_argument("--ada-stage", action="store_true",
                   help="then refine the champion by AdaMerging on unlabelled target text (a stored "
                        "run of its own; kept only if its dev fitness is higher; see evolve-ada)")
    p.add_argument("--target-text", default="", metavar="FILE",
                   help="--ada-stage: a UTF-8 file, one sentence per line (default: the target's "
                        "train split, labels withheld)")
    _setting_flags(p)


def _follow(store, run_id: str, bar) -> dict:
    start = time.perf_counter()
    while True:
        row = store.get(run_id)
        if bar is not None and row["status"] == "running":
            bar(Progress(row["progress"], 1.0, row["message"] or "", time.perf_counter() - start))
        if row["status"] not in ACTIVE:
            return row
        time.sleep(0.25)


def _summary(row: dict) -> str:
    result = row.get("result") or {}
    champion = result.get("champion") or {}
    lines = [f"run {row['id']}: {row['status']} — {row.get('message', '')}"]
    history = result.get("history") or []
    if history:
        lines.append(table_text([{k: h[k] for k in ("generation", "best", "mean", "worst",
                                                    "diversity", "champion", "evals_per_s")}
                                 for h in history], "{:.4f}"))
    if champion:
        recipe = champion.get("recipe") or {}
        lines.append(f"champion (generation {champion['generation']}, {champion['origin']}): "
                     f"fitness {champion['fitness']:.4f}, dev accuracy "
                     f"{champion['dev'].get('accuracy', float('nan')):.3f}, test accuracy "
                     f"{(champion.get('test') or {}).get('accuracy', float('nan')):.3f}")
        if recipe.get("name"):
            lines.append(f"recipe: {recipe['name']} (combo {recipe['combo']}), weights "
                         + ", ".join(f"{k} {v:.3f}" for k, v in recipe["weights"].items()))
        elif recipe.get("groups"):
            lines.append(f"recipe: {recipe['method']} over {len(recipe['groups'])} layer groups")
    for name, base in (result.get("baselines") or {}).items():
        lines.append(f"baseline {name}: {base['model']} test accuracy {base['accuracy']:.3f}")
    subset = result.get("dev_subset")
    if subset:
        lines.append(f"dev subset ({subset.get('subset', 'random')}): {subset['examples']} of {subset['of']} "
                     f"examples; champion fitness {subset['fitness']:.4f} on it, {subset['fitness_full']:.4f} on "
                     f"the whole split (error {subset['error']:+.4f}"
                     + (f"; anchored on the sources' shift {subset['error_anchored']:+.4f}"
                        if "error_anchored" in subset else "") + ")")
    storage = result.get("storage")
    if storage:
        lines.append(f"study '{storage['study']}' in the journal {storage['journal']}: "
                     f"{storage['trials']} trials of every worker")
    front = result.get("pareto_front")
    if front:
        names = [label.rsplit(" (", 1)[0] for label in result.get("objectives") or []]
        lines.append(f"Pareto front ({', '.join(result['objectives'])}): {len(front)} of "
                     f"{result.get('trials')} trials")
        lines.append(table_text([{"trial": p["trial"], **{n: p[n] for n in names}} for p in front],
                                "{:.4f}"))
    if result.get("combo_counts"):
        lines.append("combinations used: " + ", ".join(f"{k}×{v}" for k, v in
                                                       result["combo_counts"].items()))
    if row["status"] in STOPPED:
        lines.append(f"resume with: {resume_hint(row)}")
    return "\n".join(lines)


def resume_hint(row: dict) -> str:
    """The command that continues a run: the run records its workspace (``params.settings``), so
    only a results folder other than the default needs naming."""
    from ..paths import default_cache_dir

    cache_dir = ((row.get("params") or {}).get("settings") or {}).get("cache_dir")
    extra = "" if not cache_dir or Path(cache_dir).resolve() == Path(default_cache_dir()).resolve() \
        else f" --cache-dir {shlex.quote(str(cache_dir))}"
    return f"python -m engine evolve --resume {row['id']}{extra}"


def _resume_workspace(args, store):
    """The workspace to resume on: the one the run recorded, unless --zoo/--data/... say otherwise
    (then resume_evolution checks it holds the same models and data)."""
    import argparse

    from ..evolve import check_resumable
    from ..workspace import Settings, open_workspace

    row = check_resumable(store, args.resume)
    recorded = (row.get("params") or {}).get("settings")
    probe = argparse.ArgumentParser()
    workspace_args(probe)
    defaults = vars(probe.parse_args([]))
    chosen = [k for k in ("zoo", "pattern", "base", "data", "data_path", "extra_locales")
              if getattr(args, k) != defaults[k]]
    if chosen or not recorded:
        return open_from_args(args)
    settings = Settings(**{k: v for k, v in recorded.items() if k in Settings.__dataclass_fields__})
    for key in ("device", "batch_size"):  # how to run it may change; what it runs on may not
        if getattr(args, key) != defaults[key]:
            setattr(settings, key, getattr(args, key))
    settings.cache_dir = str(store.path.parent)
    try:
        return open_workspace(settings)
    except ValueError as exc:  # moved or deleted since: say what the run needs
        raise ValueError(f"run {args.resume} ran on zoo {settings.zoo} (data {settings.data}), which "
                         f"cannot be opened now ({exc}); pass --zoo/--data to resume it on a copy "
                         f"with the same content") from None


def _print_estimate(row: dict) -> None:
    from ..evolve.budget import Budget

    estimate = row["params"].get("estimate")
    if estimate:
        budget = Budget(**estimate)
        print("\n".join([budget.summary(), *(f"note: {n}" for n in budget.notes)]), file=sys.stderr)


@command("evolve", "evolutionary merge search (EvoMerge, CMA-ES, Optuna, ...) for a target locale",
         _evolve_args)
def cmd_evolve(args):
    from ..evolve import (EvolveConfig, EvolveError, export_champion, parse_fitness_weights,
                          resume_evolution, submit_evolution)
    from ..jobs import JobRunner
    from ..store import open_store

    if args.resume:  # the store first: the run says which workspace it ran on
        store = open_store(args.cache_dir)
        ws = _resume_workspace(args, store)
    else:
        settings = _algorithm_settings(args, args.algorithm)  # refused before the zoo is opened
        if args.target_text:  # a bad file: refused before any work
            from ..data.target_text import read_target_text

            read_target_text(args.target_text)
        ws = open_from_args(args)
        store = open_store(ws.cache_dir)
    runner = JobRunner(store)
    try:
        if args.resume:
            run_id = resume_evolution(runner, ws, args.resume)
        else:
            if not args.target:
                raise EvolveError("choose a --target locale (or --resume RUN_ID)")
            config = EvolveConfig(
                target=args.target, algorithm=args.algorithm, sources=args.sources or None,
                weights=args.weights or None, top_k=args.top_k, generations=args.generations,
                population=args.population, seed=args.seed, dev_size=args.dev_size, dev_subset=args.dev_subset,
                patience=args.patience, merge_cache=not args.no_merge_cache,
                executor="ray" if args.ray else "local", address=args.address, ray_cpus=args.ray_cpus)
            for name, value in settings.items():
                config.set(name, value)
            if args.fitness_weights:
                config.fitness_weights = parse_fitness_weights(args.fitness_weights)
            run_id = submit_evolution(runner, ws, config, force=args.force)
            if not (args.json or args.quiet):
                _print_estimate(store.get(run_id))
        try:
            row = _follow(store, run_id, progress_for(args))
        except KeyboardInterrupt:
            runner.cancel(run_id)
            runner.wait(run_id)
            print(f"\ncancelled; resume with: {resume_hint(store.get(run_id))}", file=sys.stderr)
            raise
    finally:
        runner.shutdown()
    if row["status"] == "failed":
        raise EvolveError(f"run {run_id} failed: {(row.get('error') or '').splitlines()[0]}")
    if args.export:
        try:
            path = export_champion(ws, store, run_id, args.export, args.overwrite)
        except (ValueError, OSError) as exc:  # the run is stored; say how to export it again
            raise EvolveError(f"the evolution is stored as run {run_id}, but its champion was not "
                              f"exported: {exc}. Export it with: python -m engine export {run_id} "
                              f"NEW_DIR --cache-dir {ws.cache_dir} (plus this run's --zoo/--data "
                              f"options; --overwrite to replace a folder)") from exc
        row["result"]["export"] = str(path)
    text = _summary(row) + (f"\nexported to {row['result']['export']}" if args.export else "")
    data = {"run_id": run_id, "status": row["status"], "params": row["params"],
            "metrics": row["metrics"], "result": row["result"]}
    if args.ada_stage:
        from ..evolve.ada_stage import stage_fields, stage_job
        from ..jobs import run_here

        stage = run_here(store, "merge", stage_job(ws, row, {}, args.target_text), echo=progress_for(args),
                         **stage_fields(row, {}, args.target_text))
        data["ada_stage"] = {"run_id": stage["id"], **stage["result"]}
        text += f"\nAdaMerging stage (run {stage['id']}): {stage['message']}"
    return data, text
