"""Runs as a flat table (one row per run, the numbers a comparison needs) and its text exports."""
from __future__ import annotations

import json
from typing import Dict, List, Sequence

import pandas as pd

from ..formats import markdown_table
from ..runinfo import TARGET_DATA_MARKS, TRAIN_LABELS, run_origin, run_target_data, target_data_text

CANDIDATE_KINDS = ("merge", "ensemble", "evolve")
# what Compare lists: the candidates and every training run (fine-tune, periodic merge, label curve);
# training runs never compete for "winner" in the summary (a fine-tune on target labels is the
# target's own model in kind, not a fusion of other languages' models)
COMPARE_KINDS = CANDIDATE_KINDS + ("train",)
COLUMNS = ["label", "kind", "method", "target", "status", "target_data", "test_accuracy", "validation_accuracy",
           "test_macro_f1", "gain_vs_best_source", "best_source", "best_zero_shot", "target_model",
           "n_sources", "sources", "weights", "params", "latency_ms", "seconds", "origin", "zoo", "created", "id",
           "cell_key"]
ORIGINS = ("page", "CLI", "sweep", "sweep (CLI)")
# run params that describe the run, not the method (shown apart or not at all)
RUN_META = {"cell_key", "role", "target_data", "source_data", "k", "features", "weighting"}


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
        use = run_target_data(r)
        # no gain over a source for a model fitted on the target's own labels: it is no transfer
        best_source = None if use["target"] == TRAIN_LABELS else _acc(base.get("best_source"), "accuracy")
        mark = "" if use["target"] == "none" else TARGET_DATA_MARKS.get(str(use["target"]), "?") + " "
        rows.append({
            "label": f"{mark}{r.get('method') or r['kind']} · {r['id'][-6:]}",
            "kind": r["kind"], "method": r.get("method"), "target": r.get("target"), "status": r["status"],
            "target_data": target_data_text(use),
            "test_accuracy": test, "validation_accuracy": _acc(metrics.get("validation"), "accuracy"),
            "test_macro_f1": _acc(metrics.get("test"), "macro_f1"),
            "gain_vs_best_source": None if test is None or best_source is None else test - best_source,
            "best_source": best_source, "best_zero_shot": _acc(base.get("best_zero_shot"), "accuracy"),
            "target_model": _acc(base.get("target_model"), "accuracy"),
            "n_sources": len(r.get("sources") or []), "sources": ", ".join(r.get("sources") or []),
            "weights": ", ".join(f"{w:.3f}" for w in r.get("weights") or []),
            "params": json.dumps(r.get("params") or {}, sort_keys=True),
            "latency_ms": _acc(metrics.get("test"), "latency_ms"), "seconds": result.get("seconds"),
            "origin": run_origin(r), "zoo": (result.get("provenance") or {}).get("zoo"),
            "created": pd.Timestamp(r["created"], unit="s", tz="UTC").tz_convert(None).floor("s"),
            "id": r["id"], "cell_key": (r.get("params") or {}).get("cell_key"),
        })
    return pd.DataFrame(rows, columns=COLUMNS)


def one_per_key(frame: pd.DataFrame, keep: Sequence[str] = ()) -> pd.DataFrame:
    """Runs with the same content key are one experiment (from a page and from a sweep, say): one
    row each, the first finished one (a run in ``keep``, e.g. a pinned one, wins), its ``origin``
    naming every place it came from ('page + sweep')."""
    if frame.empty:
        return frame
    rank = frame.assign(_keep=~frame["id"].isin(list(keep)), _done=frame["status"] != "done",
                        _order=range(len(frame)))
    rank = rank.sort_values(["_keep", "_done", "created"])     # else the first computed
    keyed = rank["cell_key"].notna()
    origins = rank[keyed].groupby("cell_key")["origin"].agg(
        lambda o: " + ".join(sorted(set(o), key=lambda x: (ORIGINS.index(x) if x in ORIGINS else 9, x))))
    first = rank[keyed].drop_duplicates("cell_key")
    first = first.assign(origin=first["cell_key"].map(origins))
    out = pd.concat([first, rank[~keyed]]).sort_values("_order")
    return out.drop(columns=["_keep", "_done", "_order"]).reset_index(drop=True)


def param_rows(run: dict) -> pd.DataFrame:
    """A run's settings as a small readable table (setting, value, what it does), from the method's
    declared parameters; seed and data settings only where the method reads them."""
    from ..runinfo import method_of

    params = {k: v for k, v in (run.get("params") or {}).items() if k not in RUN_META}
    try:
        method = method_of(run["kind"], run["method"])
    except (KeyError, ValueError):
        return pd.DataFrame({"setting": list(params), "value": [_value(v) for v in params.values()],
                             "what it does": ""})
    rows = [{"setting": p.name.replace("_", " "), "value": _value(params.get(p.name, p.default)),
             "what it does": p.help} for p in method.params]
    traits = method.traits
    reads_data = "batches" in traits.context or traits.needs_fit
    if reads_data and "data_mode" in params:
        rows.append({"setting": "fit on" if traits.needs_fit else "statistics from",
                     "value": str(params["data_mode"]), "what it does": "whose data the method reads"})
    if traits.random or traits.needs_fit:
        rows.append({"setting": "seed", "value": str(params.get("seed", 0)), "what it does": "random draws"})
    return pd.DataFrame(rows, columns=["setting", "value", "what it does"])


def _value(v) -> str:
    if isinstance(v, (list, tuple)):
        return " · ".join(_value(x) for x in v) + " (per source)"
    if isinstance(v, float):
        return f"{v:.4g}"
    return str(v)


def baselines_by_target(runs: Sequence[dict]) -> Dict[str, dict]:
    """The most recent baselines recorded for each target (they depend only on the zoo and data)."""
    out: Dict[str, dict] = {}
    for r in sorted(runs, key=lambda r: r["created"]):
        base = (r.get("result") or {}).get("baselines")
        if base and r.get("target"):
            out[r["target"]] = base
    return out


def summary(frame: pd.DataFrame) -> pd.DataFrame:
    """Per target: the best merge, the best ensemble, the best evolved champion (a cancelled search's
    best-so-far included: it was scored on test), the best training run, the baselines, and who wins
    among the fusions (a training run is shown, never the winner)."""
    done = frame[frame["test_accuracy"].notna()]
    rows = []
    for target, part in done.groupby("target"):
        row = {"target": target}
        for kind in COMPARE_KINDS:
            sub = part[part["kind"] == kind]
            if not sub.empty:
                best = sub.loc[sub["test_accuracy"].idxmax()]
                row[f"best {kind}"] = best["test_accuracy"]
                row[f"best {kind} method"] = best["method"]
                row[f"best {kind} target data"] = best["target_data"]
                row[f"{kind} runs"] = len(sub)
                if kind in CANDIDATE_KINDS:
                    row[f"{kind} beats best source"] = f"{int((sub['gain_vs_best_source'] > 0).sum())}/{len(sub)}"
        last = part.iloc[0]
        row.update({"best source": last["best_source"], "best zero-shot": last["best_zero_shot"],
                    "target's own model": last["target_model"]})
        scored = {k: row.get(f"best {k}") for k in CANDIDATE_KINDS if row.get(f"best {k}") is not None}
        row["winner"] = max(scored, key=scored.get) if scored else None
        rows.append(row)
    return pd.DataFrame(rows)


def markdown(frame: pd.DataFrame, digits: int = 3) -> str:
    """The Compare page's download: a Markdown table file, empty cells where a value is missing."""
    return markdown_table(frame, f"{{:.{digits}f}}") + "\n"


def to_json(frame: pd.DataFrame) -> str:
    return frame.to_json(orient="records", date_format="iso", indent=2)
