"""``mlflow-export``: copies the store's finished runs to an MLflow tracking store (see
:mod:`engine.mlflow_mirror`); ``--mlflow URI`` on the run-creating commands mirrors new runs as they end."""
from __future__ import annotations

import time
from datetime import datetime

from .core import command, table_text


def since_time(text: str) -> float:
    """``--since``: an ISO date/time (2026-12-01, 2026-12-01T09:30) or an age like 3h, 2d, 45m."""
    units = {"m": 60, "h": 3600, "d": 86400}
    text = text.strip()
    if text[:-1].isdigit() and text[-1:] in units:
        return time.time() - int(text[:-1]) * units[text[-1]]
    try:
        return datetime.fromisoformat(text).timestamp()
    except ValueError:
        raise ValueError(f"--since {text!r} is neither an ISO date (2026-12-01, 2026-12-01T09:30) "
                         f"nor an age (45m, 3h, 2d)") from None


def _export_args(p):
    p.add_argument("uri", help="MLflow tracking URI: a local folder, file:/path or sqlite:///path.db")
    p.add_argument("--since", default="", help="only runs created since: ISO date/time or an age (45m, 3h, 2d)")
    p.add_argument("--kind", nargs="*", default=None, help="only these run kinds (merge, ensemble, evolve, ...)")
    p.add_argument("--no-recipe", action="store_true",
                   help="do not log each run's recipe.json and mergekit.yaml (logged by default)")
    p.add_argument("--model", action="store_true",
                   help="also log each run's exported model folder, where it still exists (its full size)")
    p.add_argument("--cache-dir", default="", help="cache/results folder (default: ./cache)")


@command("mlflow-export", "copy finished runs to an MLflow tracking store (each run once)", _export_args)
def cmd_mlflow_export(args):
    from .. import ensemble, merge  # noqa: F401  (their registries: each run's method traits become tags)
    from ..mlflow_mirror import export_runs, normalise_uri
    from ..store import Store
    from ..paths import store_path

    normalise_uri(args.uri)    # a bad URI is refused before the store is read
    since = since_time(args.since) if args.since else None
    out = export_runs(Store(store_path(args.cache_dir)), args.uri, since=since, kinds=args.kind,
                      recipe=not args.no_recipe, model=args.model)
    rows = [{"run": run, "mlflow_run": mid} for run, mid in out["logged"].items()]
    text = (table_text(rows) + f"\n{len(rows)} run(s) logged to {out['uri']} (experiment {out['experiment']}); "
            f"{out['already']} already there")
    return out, text
