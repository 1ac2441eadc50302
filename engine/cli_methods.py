"""CLI commands for merges, ensembles, the method registries and the runs store."""
from __future__ import annotations

import json
from pathlib import Path

from .cli import command, open_from_args, progress_for, table_text, workspace_args


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
    p.add_argument("--sources", nargs="*", default=None, help="source locales (default: URIEL top-K)")
    p.add_argument("--weights", nargs="*", type=float, default=None,
                   help="one per source (default: URIEL weights; 'equal' via --equal)")
    p.add_argument("--equal", action="store_true", help="equal weights")
    p.add_argument("--top-k", type=int, default=5)
    p.add_argument("--features", default="syntax_knn")
    p.add_argument("--sinkhorn-iters", type=int, default=20)
    p.add_argument("--param", nargs="*", default=[], metavar="NAME=VALUE", help="method parameters")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--data-mode", default="sources", choices=["target", "sources", "both"])
    p.add_argument("--data-examples", type=int, default=64)
    p.add_argument("--export", default="", help="merge: write an HF folder + recipe here")


def candidate_from_args(ws, args, kind):
    from .experiments import Candidate, suggest_sources

    if args.sources:
        sources = list(args.sources)
        weights = list(args.weights) if args.weights else None
        if weights is None:
            uriel = suggest_sources(ws, args.target, top_k=len(sources), features=args.features,
                                    sinkhorn_iters=args.sinkhorn_iters)
            weights = [uriel.get(s, 0.0) for s in sources]
            if sum(weights) <= 0:
                weights = [1.0] * len(sources)
    else:
        uriel = suggest_sources(ws, args.target, top_k=args.top_k, features=args.features,
                                sinkhorn_iters=args.sinkhorn_iters)
        sources, weights = list(uriel), list(uriel.values())
    if args.equal:
        weights = [1.0] * len(sources)
    return Candidate(kind, args.method, args.target, sources, weights, parse_params(args.param),
                     args.seed, args.data_mode, args.data_examples)


def _run_candidate(args, kind):
    from .experiments import evaluate_candidate, export_candidate

    ws = open_from_args(args)
    cand = candidate_from_args(ws, args, kind)
    out = evaluate_candidate(ws, cand, progress_for(args))
    state, fitted = out.pop("state", None), out.pop("fitted", None)
    if args.export:
        if state is not None:
            out["export"] = str(export_candidate(ws, cand, state, Path(args.export)))
        elif fitted is not None:
            fitted.save(Path(args.export))
            out["export"] = args.export
    rows = [{"split": s, **{k: float(v) for k, v in m.items() if k in ("accuracy", "macro_f1", "nll", "latency_ms")}}
            for s, m in out["metrics"].items()]
    base = [{"baseline": k, "model": v["model"], "accuracy": float(v["accuracy"])} for k, v in out["baselines"].items()]
    text = (f"{cand.label()}\nsources: " + ", ".join(f"{s} ({w:.3f})" for s, w in zip(cand.sources, cand.weights))
            + "\n\n" + table_text(rows) + "\n\n" + table_text(base)
            + (f"\n\nexported to {out['export']}" if out.get("export") else ""))
    return {"candidate": cand.to_dict(), **out}, text


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
        from .merge import MERGES as registry
    else:
        from .ensemble import ENSEMBLES as registry
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
    from .evaluate import default_cache_dir
    from .store import Store

    store = Store(Path(args.cache_dir or default_cache_dir()) / "runs.sqlite")
    runs = store.runs(kind=args.kind, target=args.target, limit=args.limit)
    rows = [{"id": r["id"], "kind": r["kind"], "method": r["method"] or "", "target": r["target"] or "",
             "status": r["status"],
             "test acc": f"{r['metrics'].get('test', {}).get('accuracy', float('nan')):.3f}"
             if isinstance(r["metrics"].get("test"), dict) else ""} for r in runs]
    return runs, table_text(rows)
