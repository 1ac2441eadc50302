"""The command registry, the options every command shares, and the workspace commands (locales,
similarity, build-demo, info, evaluate, nxn). The other command groups import :func:`command` from
here; ``engine/cli/__init__.py`` imports every group and parses the command line.
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Callable, Dict, List, Optional

from ..data.base import SPLITS
from ..progress import text_bar

COMMANDS: Dict[str, tuple] = {}


def command(name: str, help: str, args: Optional[Callable[[argparse.ArgumentParser], None]] = None):
    """Registers ``fn(args) -> (json_data, text)``; ``args(parser)`` adds its options."""
    def register(fn):
        COMMANDS[name] = (help, args or (lambda p: None), fn)
        return fn
    return register


def workspace_args(p: argparse.ArgumentParser) -> None:
    from ..data.sources import DATA_SOURCES, DEFAULT_SOURCE, data_kinds, source_fields
    from ..workspace import Settings
    from ..zoo import DEFAULT_PATTERN

    g = p.add_argument_group("workspace")
    g.add_argument("--zoo", default="", help="manifest, folder with zoo.json, or folder to scan (default: demo zoo)")
    g.add_argument("--pattern", default=DEFAULT_PATTERN, help="folder name pattern when scanning")
    g.add_argument("--base", default=None, help="pretrained base model folder or hub id")
    g.add_argument("--data", default=DEFAULT_SOURCE, choices=data_kinds(),
                   help="; ".join(f"{m.name}: {m.title}" for m in map(DATA_SOURCES.get, data_kinds())))
    for field, users in source_fields().items():   # each setting a data source declares, e.g. --data-path
        g.add_argument("--" + field.replace("_", "-"), default=getattr(Settings(), field),
                       help="; ".join(f"{source}: {p.help}" for source, p in users))
    g.add_argument("--device", default="auto", help="auto, cpu or cuda[:N]")
    g.add_argument("--cache-dir", default="", help="cache/results folder (default: ./cache)")
    g.add_argument("--batch-size", type=int, default=64)
    g.add_argument("--trim-store-gb", type=float, default=Settings().trim_store_gb,
                   help="disk for TIES' sorted magnitudes and tie orders kept in <cache-dir>/trim/ "
                        "between merges and searches, least recently used removed first; 0: off")
    g.add_argument("--mlflow", default="", metavar="URI",
                   help="also log each finished run to this MLflow tracking store: a local folder, file:/path "
                        "or sqlite:///path.db (default: $FUSION_MLFLOW_URI; the engine's store stays the record)")
    g.add_argument("--mlflow-model", action="store_true",
                   help="with --mlflow: also log the exported model folder as artifacts (its full size; "
                        "recipe.json and mergekit.yaml are always logged)")


def open_from_args(args):
    from ..data.sources import source_fields
    from ..workspace import Settings, open_workspace

    return open_workspace(Settings(zoo=args.zoo, pattern=args.pattern, base=args.base, data=args.data,
                                   device=args.device, cache_dir=args.cache_dir, batch_size=args.batch_size,
                                   trim_store_gb=args.trim_store_gb,
                                   **{field: getattr(args, field) for field in source_fields()}))


def open_store(ws):
    """The one results store of the workspace's cache folder (the app's too)."""
    from ..store import open_store as store_of

    return store_of(ws.cache_dir)


def progress_for(args):
    return None if getattr(args, "quiet", False) else text_bar()


def table_text(rows: List[dict], floatfmt: str = "{:.3f}") -> str:
    if not rows:
        return "(nothing)"
    cols = list(rows[0])
    cells = [[floatfmt.format(r[c]) if isinstance(r[c], float) else str(r[c]) for c in cols] for r in rows]
    widths = [max(len(c), *(len(row[i]) for row in cells)) for i, c in enumerate(cols)]
    line = lambda vals: "  ".join(v.ljust(w) for v, w in zip(vals, widths))  # noqa: E731
    return "\n".join([line(cols), line(["-" * w for w in widths])] + [line(r) for r in cells])


# ---- commands --------------------------------------------------------------------------------
@command("locales", "list the 51 MASSIVE locales with their ISO 639-3 codes")
def cmd_locales(args):
    from ..languages import locale_table

    rows = locale_table()
    return rows, table_text(rows)


def _similarity_args(p):
    p.add_argument("--target", required=True)
    p.add_argument("--top-k", type=int, default=5)
    p.add_argument("--sinkhorn-iters", type=int, default=20)
    p.add_argument("--features", default="syntax_knn")
    p.add_argument("--sources", nargs="*", default=None, help="available source locales (default: all)")


@command("similarity", "URIEL similarity and source weights for a target locale", _similarity_args)
def cmd_similarity(args):
    from ..languages import target_similarity

    res = target_similarity(args.target, sources=args.sources, features=args.features,
                            top_k=args.top_k, sinkhorn_iters=args.sinkhorn_iters)
    rows = res.table().to_dict(orient="records")
    text = table_text(rows) + "".join(f"\nnote: {n}" for n in res.notes)
    return {"target": res.target, "features": res.features, "top_k": res.top_k,
            "sinkhorn_iters": res.sinkhorn_iters, "weights": res.weights, "neighbours": rows,
            "notes": list(res.notes)}, text


def _build_args(p):
    p.add_argument("--out", default="", help="folder (default: cache/demo_zoo)")
    p.add_argument("--size", default="default", choices=["tiny", "default", "full", "xlmr-base"],
                   help="xlmr-base: random weights with XLM-R-base shapes (1.1 GB per model), for "
                        "benchmarks at real size (default folder: cache/scale_zoo)")
    p.add_argument("--locales", nargs="*", default=None)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--steps", type=int, default=None, help="fine-tuning steps per locale")
    p.add_argument("--cache-dir", default="", help="the app's cache folder, whose logits cache gets every "
                   "model's zero-shot score on every locale (default: ./cache)")
    p.add_argument("--no-warm", action="store_true", help="skip that zero-shot matrix (the first merge "
                   "per target then scores the other models itself, once)")


@command("build-demo", "build (or resume) the offline demo zoo", _build_args)
def cmd_build_demo(args):
    from ..demo.build import build_demo_zoo
    from ..demo.scale import SCALE_SIZES, build_scale_zoo
    from ..paths import default_cache_dir
    from ..workspace import default_demo_dir

    if args.size in SCALE_SIZES:
        manifest = build_scale_zoo(args.out or default_demo_dir().parent / "scale_zoo", size=args.size,
                                   locales=args.locales, seed=args.seed, progress=progress_for(args))
    else:
        warm = None if args.no_warm else Path(args.cache_dir or default_cache_dir())
        manifest = build_demo_zoo(args.out or default_demo_dir(), size=args.size, locales=args.locales,
                                  seed=args.seed, steps=args.steps, progress=progress_for(args),
                                  warm_cache=warm)
    spec = json.loads(manifest.read_text())
    return ({"manifest": str(manifest), **{k: spec[k] for k in ("name", "models", "labels", "build_seconds")}},
            f"demo zoo ready: {manifest} ({len(spec['models'])} models, {len(spec['labels'])} labels, "
            f"built in {spec['build_seconds']} s)")


def _info_args(p):
    workspace_args(p)


@command("info", "what the workspace holds: models, locales, labels, data sizes, notes", _info_args)
def cmd_info(args):
    ws = open_from_args(args)
    data = {**ws.zoo.describe(), "data": ws.dataset.summary(), "notes": ws.notes}
    text = (f"zoo {ws.zoo.name}: {len(ws.zoo.locales)} models, {data['parameters']:,} parameters, "
            f"{len(ws.zoo.labels)} labels\nbase: {data['base']}\n" + table_text(data["data"])
            + "".join(f"\nnote: {n}" for n in ws.notes))
    return data, text


def _evaluate_args(p):
    workspace_args(p)
    p.add_argument("--model", required=True, help="a zoo locale (e.g. de-DE) or a model folder")
    p.add_argument("--locale", required=True)
    p.add_argument("--split", default="test", choices=SPLITS)


@command("evaluate", "evaluate one model of the zoo (or a model folder) on a locale", _evaluate_args)
def cmd_evaluate(args):
    from pathlib import Path

    from ..candidate_runs import workspace_record
    from ..jobs import run_here
    from ..zoo import load_state_dict

    ws = open_from_args(args)
    ws.dataset.get(args.locale, args.split)  # an unknown locale or split is bad input, not a run
    model = args.model if args.model in ws.zoo.models else str(Path(args.model).resolve())

    def job(ctx):
        if args.model in ws.zoo.models:
            metrics = ws.evaluator.evaluate_source(args.model, args.locale, args.split, ctx.progress)
        else:
            state = load_state_dict(Path(args.model), label=f"model folder {args.model}")
            metrics = ws.evaluator.evaluate_state(state, args.locale, args.split, ctx.progress)
        return {"metrics": {args.split: metrics}, "message": f"accuracy {metrics['accuracy']:.3f}",
                "result": {"model": model, "locale": args.locale, "split": args.split,
                           "workspace": workspace_record(ws)}}

    row = run_here(open_store(ws), "evaluate", job, echo=progress_for(args),
                   name=f"evaluate {args.model} on {args.locale}/{args.split}", target=args.locale,
                   params={"model": model, "split": args.split})
    metrics = row["metrics"][args.split]
    rows = [{"metric": k, "value": float(v)} for k, v in metrics.items()]
    return ({"run_id": row["id"], "model": args.model, "locale": args.locale, "split": args.split,
             "metrics": metrics}, table_text(rows))


def _nxn_args(p):
    workspace_args(p)
    p.add_argument("--split", default="test", choices=SPLITS)
    p.add_argument("--metric", default="accuracy")
    p.add_argument("--csv", default="", help="also write the matrix to this CSV file")


@command("nxn", "the zero-shot matrix: every source model on every locale's test set", _nxn_args)
def cmd_nxn(args):
    from ..candidate_runs import workspace_record, zoo_signature
    from ..jobs import run_here

    ws = open_from_args(args)
    tables = []

    def job(ctx):  # stored as the app's N×N job is, so Compare shows it
        table = ws.evaluator.nxn(args.split, args.metric, progress=ctx.progress)
        tables.append(table)
        return {"result": {"matrix": {m: {l: float(v) for l, v in row.items()} for m, row in table.iterrows()},
                           "split": args.split, "metric": args.metric, "workspace": workspace_record(ws)},
                "message": f"{len(table.index)}×{len(table.columns)} matrix ready"}

    row = run_here(open_store(ws), "nxn", job, echo=progress_for(args),
                   name=f"zero-shot matrix ({args.split} {args.metric})", method=args.metric,
                   params={"split": args.split, **zoo_signature(ws)})
    table = tables[0]
    if args.csv:
        table.to_csv(args.csv)
    return ({"run_id": row["id"], "metric": args.metric, "split": args.split,
             "matrix": json.loads(table.to_json(orient="index"))}, table.round(3).to_string())
