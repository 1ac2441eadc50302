"""Sweep reports: tables and answers from a sweep's stored runs (:mod:`.results`), their plotly
figures (:mod:`.figures`), the files ``report.md``/results.csv/json/HTML (:mod:`.write`), and the
flat runs table the Compare page and ``engine runs`` share (:mod:`.tables`). The tables' names are
re-exported here; figures and writing are imported from their modules (they load plotly)."""
from .results import (AXES, BASELINE_TITLES, BASELINES, CELL_META, ReportError, SweepResults, accuracy_table,
                      baseline_table, findings, headline_table, load_results, markdown_table, paired_tests,
                      report_markdown, win_rate_table)

__all__ = ["AXES", "BASELINE_TITLES", "BASELINES", "CELL_META", "ReportError", "SweepResults", "accuracy_table",
           "baseline_table", "findings", "headline_table", "load_results", "markdown_table", "paired_tests",
           "report_markdown", "win_rate_table"]
