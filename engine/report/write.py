"""A sweep's report as files: the tables and answers of :mod:`.results` with the figures of
:mod:`.figures` (kept apart so the tables never import plotly, and neither imports the other's user)."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Dict

from ..store import Store
from .figures import figures
from ..formats import jsonable
from .results import (baseline_table, findings, headline_table, load_results, report_markdown,
                      win_rate_table)


def write_report(store: Store, sweep_run_id: str, out_dir, alpha: float = 0.05) -> Dict[str, Any]:
    """Writes report.md, results.csv, results.json and the figures as offline HTML (plotly.js saved
    once beside them as plotly.min.js); returns the paths by name."""
    res = load_results(store, sweep_run_id)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths: Dict[str, Any] = {"report": out / "report.md", "results_csv": out / "results.csv",
                             "results_json": out / "results.json"}
    paths["report"].write_text(report_markdown(res, alpha), encoding="utf-8")
    res.frame.to_csv(paths["results_csv"], index=False)
    found = findings(res, alpha)
    data = {"sweep": {k: res.sweep[k] for k in ("id", "name", "status", "created", "finished")},
            "spec": res.sweep["params"].get("spec"), "headline": headline_table(res).to_dict(orient="records"),
            "baselines": baseline_table(res).to_dict(orient="records"),
            "win_rates": win_rate_table(res).to_dict(orient="records"),
            "findings": found, "cells": res.frame.to_dict(orient="records")}
    paths["results_json"].write_text(json.dumps(jsonable(data, nan_to_none=True), indent=2, allow_nan=False, default=str),
                                     encoding="utf-8")
    for stem, fig in figures(res).items():
        paths[stem] = out / f"{stem}.html"
        fig.write_html(str(paths[stem]), include_plotlyjs="directory", full_html=True)
    return paths
