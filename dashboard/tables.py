"""Runs as a flat table (one row per run, the numbers a comparison needs) and its text exports."""
from __future__ import annotations

import json
import math
from typing import Dict, List, Sequence

import pandas as pd

CANDIDATE_KINDS = ("merge", "ensemble", "evolve")
COLUMNS = ["label", "kind", "method", "target", "status", "test_accuracy", "validation_accuracy",
           "test_macro_f1", "gain_vs_best_source", "best_source", "best_zero_shot", "target_model",
           "n_sources", "sources", "weights", "params", "latency_ms", "seconds", "zoo", "created", "id"]


def _acc(block: Dict[str, object], key: str):
    value = (block or {}).get(key)
    return float(value) if isinstance(value, (int, float)) else None


def runs_frame(runs: Sequence[dict]) -> pd.DataFrame:
    rows: List[dict] = []
    for r in runs:
        metrics, result = r.get("metrics") or {}, r.get("result") or {}
        champion = result.get("champion") if r["kind"] == "evolve" else None
        if champion and not metrics:  # a cancelled/interrupted evolution: its best-so-far champion
            metrics = {"test": champion.get("test") or {}, "validation": champion.get("dev") or {}}
        base = result.get("baselines") or {}
        test = _acc(metrics.get("test"), "accuracy")
        best_source = _acc(base.get("best_source"), "accuracy")
        rows.append({
            "label": f"{r.get('method') or r['kind']} · {r['id'][-6:]}",
            "kind": r["kind"], "method": r.get("method"), "target": r.get("target"), "status": r["status"],
            "test_accuracy": test, "validation_accuracy": _acc(metrics.get("validation"), "accuracy"),
            "test_macro_f1": _acc(metrics.get("test"), "macro_f1"),
            "gain_vs_best_source": None if test is None or best_source is None else test - best_source,
            "best_source": best_source, "best_zero_shot": _acc(base.get("best_zero_shot"), "accuracy"),
            "target_model": _acc(base.get("target_model"), "accuracy"),
            "n_sources": len(r.get("sources") or []), "sources": ", ".join(r.get("sources") or []),
            "weights": ", ".join(f"{w:.3f}" for w in r.get("weights") or []),
            "params": json.dumps(r.get("params") or {}, sort_keys=True),
            "latency_ms": _acc(metrics.get("test"), "latency_ms"), "seconds": result.get("seconds"),
            "zoo": (result.get("provenance") or {}).get("zoo"),
            "created": pd.Timestamp(r["created"], unit="s", tz="UTC").tz_convert(None).floor("s"),
            "id": r["id"],
        })
    return pd.DataFrame(rows, columns=COLUMNS)


def baselines_by_target(runs: Sequence[dict]) -> Dict[str, dict]:
    """The most recent baselines recorded for each target (they depend only on the zoo and data)."""
    out: Dict[str, dict] = {}
    for r in sorted(runs, key=lambda r: r["created"]):
        base = (r.get("result") or {}).get("baselines")
        if base and r.get("target"):
            out[r["target"]] = base
    return out


def summary(frame: pd.DataFrame) -> pd.DataFrame:
    """Per target: the best merge, the best ensemble and the baselines, and who wins."""
    done = frame[(frame["status"] == "done") & frame["test_accuracy"].notna()]
    rows = []
    for target, part in done.groupby("target"):
        row = {"target": target}
        for kind in CANDIDATE_KINDS:
            sub = part[part["kind"] == kind]
            if not sub.empty:
                best = sub.loc[sub["test_accuracy"].idxmax()]
                row[f"best {kind}"] = best["test_accuracy"]
                row[f"best {kind} method"] = best["method"]
                row[f"{kind} runs"] = len(sub)
                row[f"{kind} beats best source"] = f"{int((sub['gain_vs_best_source'] > 0).sum())}/{len(sub)}"
        last = part.iloc[0]
        row.update({"best source": last["best_source"], "best zero-shot": last["best_zero_shot"],
                    "target's own model": last["target_model"]})
        scored = {k: row.get(f"best {k}") for k in CANDIDATE_KINDS if row.get(f"best {k}") is not None}
        row["winner"] = max(scored, key=scored.get) if scored else None
        rows.append(row)
    return pd.DataFrame(rows)


def markdown(frame: pd.DataFrame, digits: int = 3) -> str:
    """A GitHub-flavoured Markdown table (no extra dependency)."""
    def cell(v) -> str:
        if v is None or (isinstance(v, float) and math.isnan(v)):
            return ""
        if isinstance(v, float):
            return f"{v:.{digits}f}"
        return str(v).replace("|", "\\|").replace("\n", " ")

    head = "| " + " | ".join(map(str, frame.columns)) + " |"
    rule = "| " + " | ".join("---" for _ in frame.columns) + " |"
    body = ["| " + " | ".join(cell(v) for v in row) + " |" for row in frame.itertuples(index=False)]
    return "\n".join([head, rule, *body]) + "\n"


def to_json(frame: pd.DataFrame) -> str:
    return frame.to_json(orient="records", date_format="iso", indent=2)
