"""CLI commands for merges, ensembles, the method registries, the runs store and re-exporting a
stored run; merge and ensemble runs are stored like the app's."""
from __future__ import annotations

import json
from pathlib import Path

from .core import command, open_from_args, open_store, progress_for, table_text, workspace_args


def parse_params(items):
    """``key=value`` pairs; values parsed as JSON when they can be (numbers, lists, booleans)."""
    params = {}
    for item in items or []:
        if "=" not in item:
            raise ValueError(f"parameter '{item}' must look like name=value")
        key, value = item.split("=", 1)
        try:
            params[key] = json.loads(value)
        except json.JSONDecodeError:
            params[key] = value
    return params


def candidate_args(p):
    workspace_args(p)
    p.add_argument("--target", required=True)
    p.add_argument("--method", required=True)
    p.add_argument("--sources", nargs="*", default=None,
                   help="source locales, each once (default: URIEL top-K); without --weights they get "
                        "URIEL weights computed over exactly these sources")
    p.add_argument("--weights", nargs="*", type=float, default=None,
                   help="one per source (default: URIEL weights; 'equal' via --equal)")
    p.add_argument("--equal", action="store_true", help="equal weights (same as --weighting equal)")
    p.add_argument("--weighting", default=None, choices=["uriel", "equal", "predicted"],
                   help="how weights (and, with no --sources, the top-K) are chosen: URIEL + Sinkhorn "
                        "(default), equal, or predicted transfer (leave-target-out predictor fitted on "
                        "the zoo's validation zero-shot matrix; see `python -m engine transfer`)")
    p.add_argument("--top-k", type=int, default=5)
    p.add_argument("--features", default="syntax_knn")
    p.add_argument("--sinkhorn-iters", type=int, default=20)
    p.add_argument("--param", nargs="*", default=[], metavar="NAME=VALUE", help="method parameters")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--data-mode", default="sources", choices=["target", "sources", "both"])
    p.add_argument("--data-examples", type=int, default=64)
    p.add_argument("--target-text", default="", metavar="FILE",
                   help="unlabelled target-language text, one sentence per line (UTF-8), for the methods "
                        "that learn on it (adamerging, ensemble entropy_min); default: the target's "
                        "train split with its labels withheld")
    p.add_argument("--export", default="", metavar="DIR",
                   help="merge: write an HF folder + recipe here; ensemble: a learned fusion "
                        "(never into the zoo; written whole or not at all)")
    p.add_argument("--overwrite", action="store_true", help="replace DIR if it is not empty")


def candidate_from_args(ws, args, kind):
    """Named sources get URIEL weights among themselves (unless --weights/--equal/--weighting say
    otherwise); none named: the target's top-K of the zoo (URIEL, or predicted transfer)."""
    from ..experiments import Candidate, CandidateError, check_unique_sources, source_weights

    weighting = getattr(args, "weighting", None)
    if args.weights and weighting:
        raise CandidateError("give --weights or --weighting, not both")
    if args.equal and weighting not in (None, "equal"):
        raise CandidateError(f"--equal contradicts --weighting {weighting}: give one of them")
    if args.weights and not args.sources:
        raise CandidateError("--weights needs --sources: name the source locales the weights are for")
    if args.sources and args.weights:
        check_unique_sources(args.sources)
        if len(args.weights) != len(args.sources):
            raise CandidateError(f"{len(args.weights)} weights for {len(args.sources)} sources: give "
                                 f"one --weights value per --sources locale")
        sources, weights = list(args.sources), list(args.weights)
    elif args.sources and args.equal:
        check_unique_sources(args.sources)
        sources, weights = list(args.sources), [1.0] * len(args.sources)
    else:
        sources, weights = source_weights(ws, args.target, args.sources, top_k=args.top_k,
                                          features=args.features, sinkhorn_iters=args.sinkhorn_iters,
                                          weighting=weighting or "uriel")
    if args.equal:
        weights = [1.0] * len(sources)
    return Candidate(kind, args.method, args.target, sources, weights, parse_params(args.param),
                     args.seed, args.data_mode, args.data_examples, target_text=args.target_text)


def _run_candidate(args, kind):
    """Runs the candidate as a stored run (like the app's), so it reaches Compare; a failed export
    keeps the finished run and says how to export it again."""
    from ..experiments import check_candidate
    from ..candidate_runs import candidate_fields, candidate_job
    from ..export_guard import ExportError
    from ..jobs import run_here

    ws = open_from_args(args)
    cand = candidate_from_args(ws, args, kind)
    check_candidate(ws, cand)
    out: dict = {}
    job = candidate_job(ws, cand, export_path=Path(args.export) if args.export else None,
                        overwrite=args.overwrite, keep=out, origin="CLI")
    fields = candidate_fields(cand, ws)
    if not args.weights:  # weights derived by a weighting: recorded with the run, as the app's are
        fields["params"]["weighting"] = "equal" if args.equal else (getattr(args, "weighting", None) or "uriel")
    row = run_here(open_store(ws), kind, job, echo=progress_for(args), **fields)
    result = row["result"]
    if result.get("export_error"):
        raise ExportError(result["export_error"])
    out["export"] = result.get("export") or result.get("fusion")
    rows = [{"split": s, **{k: float(v) for k, v in m.items() if k in ("accuracy", "macro_f1", "nll", "latency_ms")}}
            for s, m in out["metrics"].items()]
    base = [{"baseline": k, "model": v["model"], "accuracy": float(v["accuracy"])} for k, v in out["baselines"].items()]
    text = (f"{cand.label()}\nsources: " + ", ".join(f"{s} ({w:.3f})" for s, w in zip(cand.sources, cand.weights))
            + "\n\n" + table_text(rows) + "\n\n" + table_text(base)
            + (f"\n\nexported to {out['export']}" if out.get("export") else "")
            + f"\nstored as run {row['id']}")
    return {"run_id": row["id"], "candidate": cand.to_dict(), **out}, text


def _merge_args(p):
    candidate_args(p)


@command("merge", "merge source models for a target and evaluate the result", _merge_args)
def cmd_merge(args):
    return _run_candidate(args, "merge")


@command("ensemble", "ensemble source models' outputs for a target and evaluate", candidate_args)
def cmd_ensemble(args):
    return _run_candidate(args, "ensemble")


def _methods_args(p):
    p.add_argument("--kind", default="merge", choices=["merge", "ensemble"])


@command("methods", "list merge or ensemble methods with their parameter schemas", _methods_args)
def cmd_methods(args):
    if args.kind == "merge":
        from ..merge import MERGES as registry
    else:
        from ..ensemble import ENSEMBLES as registry
    schema = registry.schema()
    rows = [{"method": name, "parameters": ", ".join(
        f"{p['name']}={p['default']}" + (f" [{p['low']}, {p['high']}]" if p["low"] is not None else "")
        for p in spec["params"]) or "-", "summary": spec["summary"][:70]} for name, spec in schema.items()]
    return schema, table_text(rows)


def _runs_args(p):
    p.add_argument("--cache-dir", default="")
    p.add_argument("--kind", default=None)
    p.add_argument("--target", default=None)
    p.add_argument("--limit", type=int, default=30)


@command("runs", "list stored runs (the same store the app reads)", _runs_args)
def cmd_runs(args):
    import pandas as pd

    from ..report.tables import runs_frame
    from ..store import open_store as store_of

    store = store_of(args.cache_dir)
    runs = store.runs(kind=args.kind, target=args.target, limit=args.limit)
    frame = runs_frame(runs)  # the Compare page's table: the same accuracy for the same run
    rows = [{"id": r.id, "kind": r.kind, "method": r.method or "", "target": r.target or "", "status": r.status,
             "test acc": "" if pd.isna(r.test_accuracy) else f"{r.test_accuracy:.3f}"}
            for r in frame.itertuples(index=False)]
    return runs, table_text(rows)


def _export_args(p):
    workspace_args(p)
    p.add_argument("run_id", metavar="RUN_ID", help="a stored merge, ensemble or evolve run")
    p.add_argument("out_dir", metavar="DIR", help="the folder to write (never into the zoo)")
    p.add_argument("--overwrite", action="store_true", help="replace DIR if it is not empty")


@command("export", "rebuild a stored run's merge (or champion, or fusion) and write it to DIR",
         _export_args)
def cmd_export(args):
    from ..export_run import export_stored_run
    from ..store import open_store as store_of
    from ..workspace import Settings

    store = store_of(args.cache_dir)
    fallback = Settings(zoo=args.zoo, pattern=args.pattern, base=args.base, data=args.data,
                        data_path=args.data_path, extra_locales=args.extra_locales,
                        device=args.device, cache_dir=args.cache_dir, batch_size=args.batch_size,
                        trim_store_gb=args.trim_store_gb)
    path = export_stored_run(store, args.run_id, Path(args.out_dir), args.overwrite, fallback,
                             progress_for(args))
    return {"run_id": args.run_id, "export": str(path)}, f"run {args.run_id} exported to {path}"
