"""Light-lane jobs the pages start instead of working in their own thread: fitting a learned fusion
to preview it (seconds to minutes: the page would freeze) and writing a sweep's report.

Each is a stored run with progress, so the page polls it like any other job and the Overview lists
it; the preview is not a candidate run (Compare shows it only once the user saves it).
"""
from __future__ import annotations

import json
from pathlib import Path

from .experiments import Candidate, check_candidate, evaluate_candidate, source_scores
from .jobs import JobRunner
from .progress import Tracker
from .store import Store
from .workspace import Workspace

FIT_KIND = "fit"
REPORT_KIND = "report"


def recipe_text(cand: Candidate) -> str:
    """The recipe as one string: a fit preview is found again by it (same recipe, same numbers)."""
    return json.dumps(cand.to_dict(), sort_keys=True, default=str)


def submit_fit_preview(runner: JobRunner, ws: Workspace, cand: Candidate) -> str:
    """Fits and scores an ensemble (a learned fusion) in the light lane: the run's metrics and its
    result (baselines, learned weights, each source's score) are what the page's result card shows."""
    check_candidate(ws, cand)

    def job(ctx):
        out = evaluate_candidate(ws, cand, ctx.progress)
        scores = source_scores(ws, cand.target, cand.sources)
        acc = out["test_accuracy"]
        return {"metrics": out["metrics"],
                "result": {"baselines": out["baselines"], "seconds": out["seconds"],
                           "learned_weights": out.get("learned_weights"), "scores": scores},
                "message": f"test accuracy {acc:.3f}" if acc is not None else "fitted"}

    return runner.submit(FIT_KIND, job, lane="light", name=f"fit {cand.method} → {cand.target}",
                         target=cand.target, method=cand.method, sources=cand.sources, weights=cand.weights,
                         params={"recipe": recipe_text(cand)})


def find_fit_preview(store: Store, cand: Candidate):
    """The newest preview of exactly this recipe, whatever its status (a failed or cancelled one is
    shown, not silently started again), or None."""
    recipe = recipe_text(cand)
    for row in store.runs(kind=FIT_KIND, target=cand.target, limit=50):
        if row["params"].get("recipe") == recipe:
            return row
    return None


def submit_report(runner: JobRunner, store: Store, sweep_run_id: str, folder: Path) -> str:
    """Writes a sweep's report (Markdown, CSV, JSON, figures) into ``folder`` in the light lane."""
    def job(ctx):
        from .report.write import write_report

        tracker = Tracker(ctx.progress, 1, f"writing the report of sweep {sweep_run_id}")
        paths = write_report(store, sweep_run_id, folder)
        tracker.advance(1, "report written")
        return {"result": {"folder": str(folder), "files": sorted(str(p) for p in paths.values())},
                "message": f"report written to {folder}"}

    return runner.submit(REPORT_KIND, job, lane="light", name=f"report of sweep {sweep_run_id}",
                         params={"sweep": sweep_run_id, "folder": str(folder)})
