"""Tables and answers from a sweep's stored runs: what the Compare page shows and ``report.md`` says.

:func:`load_results` reads a sweep once (cells, baselines, per-example correctness). From it:
:func:`accuracy_table` (variant × target), :func:`win_rate_table`, :func:`headline_table`,
:func:`baseline_table`, :func:`paired_tests` (McNemar per target) and :func:`findings` (the seed's
questions answered from the numbers). Figures are in :mod:`engine.report.figures`;
:func:`engine.report.write.write_report` writes everything to a folder.

A *variant* is everything about a cell except its target (method, grid values, number of sources,
feature set, weighting), so each variant has one accuracy per target and can be compared across
targets. Accuracy is on the target's test split throughout.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Dict, List

import numpy as np
import pandas as pd

from .. import formats, stats
from ..runinfo import TARGET_DATA_MARKS, run_target_data
from ..store import Store

BASELINES = ("best_source", "best_zero_shot", "equal_merge", "target_model")
BASELINE_TITLES = {"best_source": "best source", "best_zero_shot": "best zero-shot",
                   "equal_merge": "equal-weight merge", "target_model": "target's own model"}
AXES = ("k", "features", "weighting")
CELL_META = {"k", "features", "weighting", "seed", "data_mode", "data_examples", "cell_key", "role",
             "target_data", "source_data"}


class ReportError(ValueError):
    """A run that is not a sweep, or a sweep with nothing finished to report."""


@dataclass
class SweepResults:
    sweep: Dict[str, Any]                        # the sweep's run row
    frame: pd.DataFrame                          # one row per finished cell
    correct: Dict[str, np.ndarray] = field(default_factory=dict)   # cell run id -> test correctness
    references: Dict[str, Dict[str, Any]] = field(default_factory=dict)  # target -> baselines, labels

    @property
    def name(self) -> str:
        return self.sweep["params"].get("spec", {}).get("name", self.sweep["id"])


# ---- loading ----------------------------------------------------------------------------------------
def _variant_label(row: Dict[str, Any], varying: set) -> str:
    """The variant's name; a variant that saw target data before the test carries its mark first
    (● labelled target dev, ◐ unlabelled target text), so every table and chart shows it."""
    mark = TARGET_DATA_MARKS.get(row["target_data"], "?") if row["target_data"] != "none" else ""
    parts = ([mark] if mark else []) + [f"{row['kind']}:{row['method']}"]
    parts += [f"{k}={v}" for k, v in sorted(row["method_params"].items())]
    if "k" in varying:
        parts.append(f"K={row['k']}")
    if "features" in varying:
        parts.append(row["features"])
    if row["weighting"] == "equal":
        parts.append("(equal weights)")
    elif row["weighting"] == "predicted":
        parts.append("(predicted transfer)")
    return " ".join(parts)


def load_results(store: Store, sweep_run_id: str, n_boot: int = 1000, seed: int = 0) -> SweepResults:
    """Every finished cell of the sweep with its baselines, bootstrap CI and gap closed."""
    from ..sweep import sweep_cells

    sweep = store.get(sweep_run_id)
    if sweep["kind"] != "sweep":
        raise ReportError(f"run {sweep_run_id} is a {sweep['kind']} run, not a sweep")
    refs = sweep["result"].get("targets") or {}
    rows, correct = [], {}
    for run in sweep_cells(store, sweep_run_id):
        p, res, test = run["params"], run["result"], run["metrics"].get("test", {})
        row = {"run_id": run["id"], "target": run["target"], "kind": run["kind"], "method": run["method"],
               "role": p.get("role", "method"), "k": p.get("k", len(run["sources"])),
               "features": p.get("features", ""), "weighting": p.get("weighting", ""),
               "n_sources": len(run["sources"]), "sources": ", ".join(run["sources"]),
               "equal_weights": bool(np.allclose(run["weights"], run["weights"][0])),
               "method_params": res["method_params"] if isinstance(res.get("method_params"), dict)
               else {k: v for k, v in p.items() if k not in CELL_META},
               "target_data": run_target_data(run)["target"],
               "source_data": bool(run_target_data(run)["source_data"]),
               "accuracy": test.get("accuracy", np.nan),
               "val_accuracy": run["metrics"].get("validation", {}).get("accuracy", np.nan),
               "macro_f1": test.get("macro_f1", np.nan), "nll": test.get("nll", np.nan),
               "ece": test.get("ece", np.nan), "latency_ms": test.get("latency_ms", np.nan),
               "forward_passes": res.get("forward_passes", 1 if run["kind"] == "merge" else len(run["sources"])),
               "build_s": res.get("build_seconds", np.nan)}
        ref = refs.get(run["target"])
        preds = res.get("predictions", {}).get("test")
        row["accuracy_lo"] = row["accuracy_hi"] = np.nan
        if ref and preds is not None and len(preds) == len(ref["labels"]):
            ok = np.asarray(preds) == np.asarray(ref["labels"])
            correct[run["id"]] = ok
            _, row["accuracy_lo"], row["accuracy_hi"] = stats.bootstrap_ci(ok, n_boot=n_boot, seed=seed)
        scores = (ref or {}).get("scores") or {}
        cell_base = res.get("baselines", {})
        if scores:
            best = max(run["sources"], key=lambda s: scores.get(s, -1.0))
            row["best_source"], row["best_source_acc"] = best, scores.get(best, np.nan)
        else:
            row["best_source"] = cell_base.get("best_source", {}).get("model")
            row["best_source_acc"] = cell_base.get("best_source", {}).get("accuracy", np.nan)
        for name in ("best_zero_shot", "target_model"):
            found = (ref or {}).get(name) or cell_base.get(name) or {}
            row[name] = found.get("model")
            row[f"{name}_acc"] = found.get("accuracy", np.nan)
        rows.append(row)
    if not rows:
        raise ReportError(f"sweep {sweep_run_id} has no finished cells yet")
    frame = pd.DataFrame(rows)
    varying = {a for a in AXES if frame[a].nunique() > 1}
    frame.insert(3, "variant", [_variant_label(r, varying) for r in rows])
    frame.insert(4, "family", frame["kind"])
    for name in sorted({k for r in rows for k in r["method_params"]}):
        frame[f"p.{name}"] = [r["method_params"].get(name, np.nan) for r in rows]
    frame = frame.drop(columns="method_params")
    # the equal-weight linear merge of the same sources, for every cell
    eq = frame[(frame["kind"] == "merge") & (frame["method"] == "linear") & frame["equal_weights"]
               & frame.filter(like="p.").isna().all(axis=1)]
    eq_acc = {(r.target, r.sources): r.accuracy for r in eq.itertuples()}
    frame["equal_merge_acc"] = [eq_acc.get((t, s), np.nan) for t, s in zip(frame["target"], frame["sources"])]
    frame["gap_closed"] = stats.gap_closed(frame["accuracy"], frame["equal_merge_acc"], frame["target_model_acc"])
    frame["delta_best_source"] = frame["accuracy"] - frame["best_source_acc"]
    return SweepResults(sweep, frame.reset_index(drop=True), correct, refs)


# ---- tables -------------------------------------------------------------------------------------------
def _order(res: SweepResults) -> List[str]:
    """Variants, best mean test accuracy first."""
    return list(res.frame.groupby("variant")["accuracy"].mean().sort_values(ascending=False).index)


def accuracy_table(res: SweepResults, value: str = "accuracy") -> pd.DataFrame:
    """Variant (rows, best first) × target (columns) test accuracy: the heatmap's data."""
    table = res.frame.pivot_table(index="variant", columns="target", values=value, aggfunc="mean")
    return table.reindex(_order(res))


def win_rate_table(res: SweepResults) -> pd.DataFrame:
    """Long table: per variant and baseline, wins/ties/losses over targets and the win rate."""
    rows = []
    for variant in _order(res):
        part = res.frame[res.frame["variant"] == variant]
        for base in BASELINES:
            w = stats.win_rate(part["accuracy"], part[f"{base}_acc"])
            rows.append({"variant": variant, "family": part["family"].iloc[0], "baseline": base, **w})
    return pd.DataFrame(rows)


def headline_table(res: SweepResults) -> pd.DataFrame:
    """One row per variant: mean accuracy, win rates vs each baseline, mean gap closed, inference cost
    and the cost of building it (``build_s``)."""
    wins = win_rate_table(res)
    rows = []
    for variant in _order(res):
        part = res.frame[res.frame["variant"] == variant]
        row = {"variant": variant, "family": part["family"].iloc[0], "target_data": part["target_data"].iloc[0],
               "source_data": bool(part["source_data"].any()),  # RegMean on the sources' text is not zero-data
               "targets": int(part["target"].nunique()),
               "mean_accuracy": float(part["accuracy"].mean()),
               "mean_val_accuracy": float(part["val_accuracy"].mean())}
        for base in BASELINES:
            row[f"win_rate_vs_{base}"] = float(wins[(wins.variant == variant) & (wins.baseline == base)]["rate"].iloc[0])
        row["mean_gap_closed"] = stats.mean_or_nan(part["gap_closed"])
        row["mean_delta_vs_best_source"] = float(part["delta_best_source"].mean())
        row["forward_passes"] = float(part["forward_passes"].mean())
        row["latency_ms"] = float(part["latency_ms"].mean())
        # the one-off cost: seconds to merge (with any data pass) or fit, median over targets since
        # cells share a busy machine with other work
        row["build_s"] = float(part["build_s"].median())
        rows.append(row)
    return pd.DataFrame(rows)


def baseline_table(res: SweepResults) -> pd.DataFrame:
    """Mean accuracy of each baseline over targets (best source: over the sweep's distinct source sets)."""
    f = res.frame
    per_target = f.drop_duplicates("target")
    sets = f.drop_duplicates(["target", "sources"])
    rows = [{"baseline": "best_source", "mean_accuracy": float(sets["best_source_acc"].mean()), "n": len(sets)},
            {"baseline": "best_zero_shot", "mean_accuracy": float(per_target["best_zero_shot_acc"].mean()),
             "n": len(per_target)},
            {"baseline": "equal_merge", "mean_accuracy": float(sets["equal_merge_acc"].mean()), "n": len(sets)},
            {"baseline": "target_model", "mean_accuracy": float(per_target["target_model_acc"].mean()),
             "n": len(per_target)}]
    return pd.DataFrame(rows)


def paired_tests(res: SweepResults, variant_a: str, variant_b: str, alpha: float = 0.05) -> pd.DataFrame:
    """McNemar's test of variant A vs B on each target both were run on (same test examples).

    b = A right where B is wrong, c = the reverse; ``winner`` is set only where p < alpha.
    """
    f = res.frame
    a = f[f["variant"] == variant_a].set_index("target")
    b = f[f["variant"] == variant_b].set_index("target")
    if a.empty or b.empty:
        raise ReportError(f"unknown variant {variant_a!r} or {variant_b!r}")
    rows = []
    for target in sorted(set(a.index) & set(b.index)):
        ra, rb = a.loc[target], b.loc[target]
        ca, cb = res.correct.get(ra["run_id"]), res.correct.get(rb["run_id"])
        row = {"target": target, "accuracy_a": float(ra["accuracy"]), "accuracy_b": float(rb["accuracy"])}
        if ca is None or cb is None:
            rows.append({**row, "b": np.nan, "c": np.nan, "p_value": np.nan, "test": "", "winner": ""})
            continue
        t = stats.mcnemar(ca, cb)
        winner = "" if t.p_value >= alpha else ("A" if t.b > t.c else "B")
        rows.append({**row, "b": t.b, "c": t.c, "p_value": t.p_value, "test": t.method, "winner": winner})
    return pd.DataFrame(rows)


# ---- answers -----------------------------------------------------------------------------------------
def findings(res: SweepResults, alpha: float = 0.05) -> Dict[str, Any]:
    """The seed's questions answered from the numbers: does merging beat ensembling, which strategy is
    best, at what inference cost, and what to use. Every sentence is built from the tables."""
    everything = headline_table(res)
    # a mean over fewer targets (a cell failed, or the sweep is still running) is not comparable:
    # the answers rank only the variants run on the most targets
    head = everything[everything["targets"] == everything["targets"].max()].reset_index(drop=True)
    fewer = everything[everything["targets"] < everything["targets"].max()]
    base = baseline_table(res).set_index("baseline")["mean_accuracy"]
    best = head.iloc[0]
    out: Dict[str, Any] = {"best": best.to_dict(), "baselines": base.to_dict(), "alpha": alpha,
                           "fewer_targets": list(fewer["variant"])}
    merges, ensembles = head[head.family == "merge"], head[head.family == "ensemble"]
    pct = lambda x: f"{100 * x:.1f}%"  # noqa: E731
    pts = lambda x: f"{100 * x:+.1f} points"  # noqa: E731

    if merges.empty or ensembles.empty:
        only = "merges" if ensembles.empty else "ensembles"
        out["merge_vs_ensemble"] = None
        out["merge_vs_ensemble_text"] = (f"This sweep has only {only}, so it cannot say whether merging beats "
                                         f"ensembling; add the other family to the spec.")
    else:
        bm, be = merges.iloc[0], ensembles.iloc[0]
        tests = paired_tests(res, bm["variant"], be["variant"], alpha)
        diff = bm["mean_accuracy"] - be["mean_accuracy"]
        sig_m, sig_e = int((tests.winner == "A").sum()), int((tests.winner == "B").sum())
        ahead = int((tests.accuracy_a > tests.accuracy_b).sum())
        behind = int((tests.accuracy_a < tests.accuracy_b).sum())
        out["merge_vs_ensemble"] = {"best_merge": bm["variant"], "best_ensemble": be["variant"], "difference": diff,
                                    "targets": len(tests), "merge_ahead": ahead, "ensemble_ahead": behind,
                                    "merge_significant": sig_m, "ensemble_significant": sig_e,
                                    "tests": tests.to_dict(orient="records")}
        verdict = ("Yes" if diff > 0 else "No" if diff < 0 else "They tie") + ", on average"
        out["merge_vs_ensemble_text"] = (
            f"{verdict}: the best merge ({bm['variant']}, {pct(bm['mean_accuracy'])} mean test accuracy) vs the "
            f"best ensemble ({be['variant']}, {pct(be['mean_accuracy'])}) is {pts(diff)}. The merge is ahead on "
            f"{ahead} and behind on {behind} of {len(tests)} targets; McNemar's test (p < {alpha}) finds the "
            f"merge significantly better on {sig_m} and the ensemble on {sig_e}.")
    equal_run = not np.isnan(base.get("equal_merge", np.nan))
    if not equal_run:
        gap = "; the equal-weight merge was not run, so the gap closed is not measured."
    elif np.isnan(best["mean_gap_closed"]):
        gap = "; the gap closed is undefined (no target model better than the equal-weight merge)."
    else:
        gap = (f", and closes {pct(best['mean_gap_closed'])} of the gap from the equal-weight merge to the "
               f"target's own model.")
    out["best_text"] = (
        f"{best['variant']} has the best mean test accuracy ({pct(best['mean_accuracy'])} over "
        f"{best['targets']} target(s)). It beats the best of its sources on {pct(best['win_rate_vs_best_source'])} "
        f"of targets ({pts(best['mean_delta_vs_best_source'])} on average), the best zero-shot model on "
        f"{pct(best['win_rate_vs_best_zero_shot'])}"
        + (f", the equal-weight merge on {pct(best['win_rate_vs_equal_merge'])}" if equal_run else "")
        + gap
        + ("" if best["target_data"] == "none" else
           f" It used {best['target_data']} before the test, unlike a zero-shot recipe.")
        + ("" if fewer.empty else
           f" Left out of these answers, run on fewer than {best['targets']} targets: "
           + ", ".join(f"{v} ({n})" for v, n in zip(fewer["variant"], fewer["targets"])) + "."))
    cost = head.groupby("family")[["forward_passes", "latency_ms"]].mean()
    out["cost"] = cost.to_dict(orient="index")
    out["cost_text"] = " ".join(
        f"{fam.capitalize()}s need {row.forward_passes:.1f} forward pass(es) per input ({row.latency_ms:.2f} ms "
        f"per example measured)." for fam, row in cost.iterrows())
    out["recommendation"], out["recommendation_text"] = _recommend(res, head, out, base, alpha)
    return out


def _recommend(res, head, out, base, alpha):
    """Pick by accuracy, then by cost when the accuracy difference is not significant."""
    best = head.iloc[0]
    mve = out.get("merge_vs_ensemble")
    if mve is None:
        choice, why = best["variant"], "it has the best mean accuracy in this sweep"
    else:
        bm = head[head.variant == mve["best_merge"]].iloc[0]
        be = head[head.variant == mve["best_ensemble"]].iloc[0]
        if mve["difference"] >= 0:
            choice, why = bm["variant"], (f"it is at least as accurate as the best ensemble and needs one forward "
                                          f"pass instead of {be['forward_passes']:.0f}")
        elif mve["ensemble_significant"] == 0:
            choice, why = bm["variant"], (f"the best ensemble is {100 * -mve['difference']:.1f} points ahead on "
                                          f"average but on no target significantly, and costs "
                                          f"{be['forward_passes']:.0f}× the forward passes")
        else:
            choice, why = be["variant"], (f"it is significantly better on {mve['ensemble_significant']} of "
                                          f"{mve['targets']} targets; if latency matters more than "
                                          f"{100 * -mve['difference']:.1f} points, use {bm['variant']} instead")
    text = f"Use {choice}: {why}."
    if best["mean_accuracy"] <= base.get("best_zero_shot", np.nan):
        text += (f" Caution: no fused model beats simply using the best zero-shot model on average "
                 f"({100 * base['best_zero_shot']:.1f}%) here.")
    return choice, text


# ---- report.md and the files ---------------------------------------------------------------------------
def markdown_table(df: pd.DataFrame, floatfmt: str = "{:.3f}") -> str:
    """report.md's tables: a missing number shows as a dash."""
    return formats.markdown_table(df, floatfmt, missing="–")


def report_markdown(res: SweepResults, alpha: float = 0.05) -> str:
    """report.md: the answers first, then the tables they come from, then the definitions."""
    found = findings(res, alpha)
    s = res.sweep
    summary = s["result"]
    head = headline_table(res)
    acc = accuracy_table(res).reset_index()
    lines = [f"# Sweep report: {res.name}", "",
             f"Sweep run `{s['id']}` ({s['status']}); {len(res.frame)} finished cells "
             f"({summary.get('computed', '?')} computed, {summary.get('reused', '?')} reused from earlier runs, "
             f"{len(summary.get('failed', {}))} failed) over {res.frame['target'].nunique()} target(s): "
             f"{', '.join(sorted(res.frame['target'].unique()))}. Executor: {summary.get('executor', '?')}. "
             f"Accuracy is on each target's test split; the target's own model is never a source.", "",
             "## Answers", "",
             f"**Does merging beat ensembling here?** {found['merge_vs_ensemble_text']}", "",
             f"**Which strategy is best?** {found['best_text']}", "",
             f"**At what inference cost?** {found['cost_text']}", "",
             f"**Recommendation.** {found['recommendation_text']}", "",
             "## Headline (one row per variant, best first)", "", markdown_table(head), "",
             "## Baselines (mean test accuracy over targets)", "",
             markdown_table(baseline_table(res).assign(baseline=lambda d: d["baseline"].map(BASELINE_TITLES))), "",
             "## Test accuracy per target", "", markdown_table(acc), ""]
    mve = found.get("merge_vs_ensemble")
    if mve:
        tests = pd.DataFrame(mve["tests"])
        lines += [f"## Paired tests: A = {mve['best_merge']} vs B = {mve['best_ensemble']}", "",
                  markdown_table(tests, "{:.4g}"), ""]
    lines += ["## Definitions", "",
              "- *Variant*: a method with its grid values, number of sources (K), URIEL feature set and weighting; "
              "it has one result per target.",
              "- *Best source*: the best single model among the cell's own sources on the target's test split; "
              "*best zero-shot*: the best model of the whole zoo other than the target's own; *target's own "
              "model*: the upper bound; *equal-weight merge*: the linear merge of the same sources with equal "
              "weights (computed as a cell).",
              "- *Target data*: what the variant saw of the target language before the test: none (zero-shot), "
              "◐ unlabelled target text or ● labelled target dev (the mark leads the variant's name); a variant "
              "fit on labelled target data is not a zero-shot recipe. *Source data*: it also read the sources' "
              "own-language data (RegMean's Gram matrices, Fisher information, a fusion fitted on the sources).",
              "- *Win rate*: share of targets where the variant is strictly more accurate than the baseline "
              "(ties are not wins).",
              "- *Gap closed* = (variant − equal-weight merge) / (target model − equal-weight merge) per target, "
              "averaged over the targets where the target model is better than the equal-weight merge: 0 = no "
              "better than averaging the sources, 1 = as good as the target's own model.",
              f"- *McNemar*: paired test on per-example correctness; exact binomial when fewer than "
              f"{stats.EXACT_BELOW} examples differ, continuity-corrected chi-square otherwise; p < {alpha}, "
              f"no correction for testing several targets.",
              "- *CI*: 95% percentile bootstrap interval of each cell's accuracy over test examples "
              "(`accuracy_lo`, `accuracy_hi` in results.csv).",
              "- *Inference cost*: forward passes per input (1 for a merge, K for an ensemble) and the measured "
              "latency per example on the machine that ran the cell.",
              "- *build_s*: seconds to build the variant once (a merge with any data pass, e.g. Gram matrices or "
              "AdaMerging's steps; an ensemble's fit), median over its targets; a reused cell keeps the time of "
              "the run that computed it.", ""]
    return "\n".join(lines)


