"""CLI for sweeps and their reports: ``python -m engine sweep spec.yaml`` and ``python -m engine report RUN_ID``.

Both use the store the app reads (``<cache>/runs.sqlite``), so a sweep started here shows up on the
Compare page and can be resumed from either side.
"""
from __future__ import annotations

import time

from .core import command, open_from_args, progress_for, table_text, workspace_args


def _store(cache_dir: str):
    from ..store import open_store

    return open_store(cache_dir)


def _sweep_args(p):
    workspace_args(p)
    p.add_argument("spec", nargs="?", default=None, help="sweep spec, YAML or JSON (not needed with --resume)")
    p.add_argument("--resume", default=None, metavar="RUN_ID", help="finish a stopped sweep (only missing cells run)")
    p.add_argument("--report", default="", metavar="DIR", help="write the report here when the sweep ends")
    p.add_argument("--ray", action="store_true", help="run cells on Ray (local instance unless --address)")
    p.add_argument("--address", default=None, help="Ray cluster address, e.g. auto or ray://head:10001")
    p.add_argument("--ray-cpus", type=int, default=2, help="CPUs of the local Ray instance")
    p.add_argument("--target-text", nargs="*", default=[], metavar="LOCALE=FILE",
                   help="a target's unlabelled text (UTF-8, one sentence per line) for the methods that "
                        "learn on it (adamerging, entropy_min); adds to the spec's target_text")
    p.add_argument("--gpus-per-cell", type=float, default=0.0, help="Ray: GPUs each cell asks for")


def _headline_text(store, run_id: str) -> str:
    from ..report import ReportError, headline_table, load_results

    try:
        head = headline_table(load_results(store, run_id))
    except ReportError as exc:
        return str(exc)
    cols = ["variant", "targets", "mean_accuracy", "win_rate_vs_best_source", "win_rate_vs_equal_merge",
            "mean_gap_closed", "forward_passes"]
    return table_text(head[cols].to_dict(orient="records"))


def with_target_texts(spec_path, items):
    """The spec, with ``--target-text LOCALE=FILE`` pairs added to its target_text mapping."""
    from ..sweep.spec import SweepSpecError, target_text_files, load_spec

    spec = load_spec(spec_path)
    pairs = {}
    for item in items or []:
        locale, sep, path = item.partition("=")
        if not sep or not locale or not path:
            raise SweepSpecError(f"--target-text '{item}' must look like LOCALE=FILE (e.g. da-DK=da.txt)")
        pairs[locale] = path
    spec.target_text.update(target_text_files(pairs))
    return spec


@command("sweep", "run a sweep (targets × methods × grids × sources) as one resumable job", _sweep_args)
def cmd_sweep(args):
    from ..jobs import JobRunner
    from ..progress import Progress
    from ..store import ACTIVE
    from ..sweep import resume_sweep, submit_sweep

    if not args.spec and not args.resume:
        raise ValueError("give a sweep spec file, or --resume RUN_ID")
    ws = open_from_args(args)
    store = _store(args.cache_dir)
    runner = JobRunner(store)
    executor = "ray" if args.ray or args.address else "local"
    options = {"num_gpus": args.gpus_per_cell} if args.gpus_per_cell else None
    if executor == "ray":
        from ..parallel import init_ray

        init_ray(args.address, args.ray_cpus)      # from the main thread, before the job starts
    if args.resume:
        run_id = resume_sweep(runner, ws, args.resume, executor="ray" if executor == "ray" else None,
                              address=args.address)
    else:
        spec = with_target_texts(args.spec, args.target_text)
        run_id = submit_sweep(runner, ws, spec, executor, args.address, args.ray_cpus, options,
                              origin="sweep (CLI)")
    bar = progress_for(args)
    started = time.perf_counter()
    try:
        while True:
            row = store.get(run_id)
            if row["status"] not in ACTIVE:
                break
            if bar is not None:
                bar(Progress(row["progress"], 1.0, row["message"] or "", time.perf_counter() - started))
            time.sleep(0.5)
    except KeyboardInterrupt:
        runner.cancel(run_id)
        runner.wait(run_id, timeout=60)
        runner.shutdown(wait=False)
        raise KeyboardInterrupt from None
    row = runner.wait(run_id)
    runner.shutdown()
    if bar is not None and row["status"] == "done":
        bar(Progress(1, 1, row["message"] or "done", time.perf_counter() - started))
    if row["status"] != "done":
        raise RuntimeError(f"sweep {run_id} {row['status']}: {(row['error'] or row['message']).splitlines()[0]} "
                           f"(resume with --resume {run_id})")
    data = {"run_id": run_id, "status": row["status"], "message": row["message"], "metrics": row["metrics"]}
    text = f"sweep {run_id}: {row['message']}\n\n" + _headline_text(store, run_id)
    if args.report:
        from ..report.write import write_report

        paths = write_report(store, run_id, args.report)
        data["report"] = {k: str(v) for k, v in paths.items()}
        text += f"\n\nreport written to {paths['report']}"
    return data, text


def _report_args(p):
    p.add_argument("run_id", help="the sweep's run id")
    p.add_argument("--out", required=True, help="folder for report.md, results.csv/json and the figures")
    p.add_argument("--cache-dir", default="", help="cache/results folder (default: ./cache)")
    p.add_argument("--alpha", type=float, default=0.05, help="significance level of the paired tests")


@command("report", "write a sweep's report: report.md, results.csv/json, figures (HTML)", _report_args)
def cmd_report(args):
    from ..report.write import write_report

    store = _store(args.cache_dir)
    paths = write_report(store, args.run_id, args.out, alpha=args.alpha)
    text = _headline_text(store, args.run_id) + f"\n\nreport written to {paths['report']}"
    return {"run_id": args.run_id, "files": {k: str(v) for k, v in paths.items()}}, text
