"""Job factories the pages submit that are not candidates (those go through engine.experiments):
building the demo zoo, the N×N matrix, the sources' logits, the URIEL cache, a champion's export.

Plain engine calls with a progress callback, run by :class:`engine.jobs.JobRunner` in worker threads.
"""
from __future__ import annotations

from pathlib import Path
from typing import Iterable, List, Tuple

from .candidate_runs import zoo_signature  # shared with the CLI, so its N×N runs match
from .jobs import JobRunner
from .progress import Tracker
from .workspace import Workspace

Pair = Tuple[str, str, str]  # (model locale, data locale, split)


def submit_demo_build(runner: JobRunner, out: Path, size: str = "default") -> str:
    def job(ctx):
        from .demo.build import build_demo_zoo
        from .paths import default_cache_dir

        manifest = build_demo_zoo(out, size=size, progress=ctx.progress, warm_cache=default_cache_dir())
        return {"result": {"manifest": str(manifest), "size": size}, "message": f"demo zoo ready at {out}"}

    return runner.submit("demo", job, lane="compute", name=f"build demo zoo ({size})", params={"size": size})


def submit_nxn(runner: JobRunner, ws: Workspace, split: str = "test", metric: str = "accuracy") -> str:
    def job(ctx):
        table = ws.evaluator.nxn(split, metric, progress=ctx.progress)
        return {"result": {"matrix": {m: {l: float(v) for l, v in row.items()} for m, row in table.iterrows()},
                           "split": split, "metric": metric},
                "message": f"{len(table.index)}×{len(table.columns)} matrix ready"}

    return runner.submit("nxn", job, lane="compute", name=f"zero-shot matrix ({split} {metric})",
                         method=metric, params={"split": split, **zoo_signature(ws)})


def has_logits(ws: Workspace, model: str, locale: str, split: str) -> bool:
    """Whether a source model's logits on a split are in the on-disk cache (no forward pass)."""
    return ws.evaluator.has_source_logits(model, locale, split)


def ensemble_pairs(ws: Workspace, target: str, sources: Iterable[str], fit_on: str = "") -> List[Pair]:
    """Every (model, locale, split) an ensemble evaluation reads: the sources on the target's
    validation/test, every zoo model on the target's test (baselines), and the fitting data."""
    sources = list(sources)
    pairs: List[Pair] = []
    for split in ("validation", "test"):
        pairs += [(s, target, split) for s in sources]
    pairs += [(m, target, "test") for m in ws.zoo.locales]
    if fit_on == "sources":
        pairs += [(s, loc, "validation") for loc in sources for s in sources]
    return [p for p in dict.fromkeys(pairs) if ws.dataset.has(p[1], p[2])]


def describe_pairs(pairs: Iterable[Pair], missing: Iterable[Pair], target: str) -> str:
    """What the model outputs an ensemble needs are, grouped by the data they run on, and which of
    them are missing: '4 on es-ES test (the baselines: every zoo model), 2 not cached: de-DE, nl-NL'."""
    groups: dict = {}
    for model, locale, split in pairs:
        groups.setdefault((locale, split), []).append(model)
    gone = set(missing)
    parts = []
    for (locale, split), models in groups.items():
        if locale == target and split == "test":
            why = "the test score, and the baselines: every zoo model"
        elif locale == target:
            why = f"the sources, {split} score"
        else:
            why = f"fitting data: the sources on {locale}'s {split} split"
        absent = [m for m in models if (m, locale, split) in gone]
        parts.append(f"{len(models)} on {locale} {split} ({why})"
                     + (f", {len(absent)} not cached: {', '.join(absent)}" if absent else ", all cached"))
    return "The outputs needed: " + "; ".join(parts) + "."


def missing_logits(ws: Workspace, pairs: Iterable[Pair]) -> List[Pair]:
    return [p for p in pairs if not has_logits(ws, *p)]


def submit_logits(runner: JobRunner, ws: Workspace, pairs: List[Pair], target: str = "") -> str:
    def job(ctx):
        tracker = Tracker(ctx.progress, len(pairs), "scoring sources")
        for model, locale, split in pairs:
            ws.evaluator.source_logits(model, locale, split)
            tracker.advance(1, f"{model} on {locale}/{split}")
        return {"result": {"pairs": [list(p) for p in pairs]}, "message": f"{len(pairs)} logits cached"}

    return runner.submit("logits", job, lane="compute", name=f"cache logits ({len(pairs)})",
                         target=target or None)


def uriel_ready() -> bool:
    from .languages import CACHE_FILE
    from .paths import default_cache_dir

    return (default_cache_dir() / CACHE_FILE).is_file()


def _submit_cache(runner: JobRunner, kind: str, build, working: str, done: str, name: str) -> str:
    """A light job that builds one typology cache (``build()`` returns its path)."""
    def job(ctx):
        tracker = Tracker(ctx.progress, 1, working)
        path = build()
        tracker.advance(1, done)
        return {"result": {"path": str(path)}, "message": done}

    return runner.submit(kind, job, lane="light", name=name)


def submit_uriel(runner: JobRunner) -> str:
    from .languages import build_cache

    return _submit_cache(runner, "uriel", build_cache, "reading URIEL vectors (lang2vec, about 6 s)",
                         "URIEL vectors cached", "URIEL vector cache")


def uriel_plus_ready() -> bool:
    from .uriel_plus import cache_ready

    return cache_ready()


def submit_uriel_plus(runner: JobRunner) -> str:
    from .uriel_plus import build_cache

    return _submit_cache(runner, "urielplus", build_cache,
                         "computing URIEL+ distances for the 52 locales (about 15 s)",
                         "URIEL+ distances cached", "URIEL+ distance cache")


def submit_champion_export(runner: JobRunner, ws: Workspace, run_id: str, out_root: Path) -> str:
    """Rebuilds an evolution's champion and writes it as an HF folder (a merge: a job)."""
    def job(ctx):
        from .evolve import export_champion

        tracker = Tracker(ctx.progress, 1, "rebuilding the champion")
        # the app's own folder for this champion: exporting it again replaces it (atomically)
        path = export_champion(ws, ctx.store, run_id, Path(out_root) / f"champion-{run_id}",
                               overwrite=True)
        tracker.advance(1, "exported")
        return {"result": {"export": str(path)}, "message": f"exported to {path}"}

    return runner.submit("export", job, lane="compute", name=f"export champion of {run_id}",
                         params={"run": run_id})
