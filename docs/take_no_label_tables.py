"""The tables of docs/results/no_label_methods.md, from the stored runs (no recomputation).

    FUSION_CACHE_DIR=/work/main/cache python docs/take_no_label_tables.py --sweep RUN_ID [--pseudo RUN_ID ...]

Part A: the no-label sweep (examples/no_label_sweep.yaml): per variant mean test accuracy, gap
closed from the equal-weight merge to the target's own model (mean of the per-target values, and
of the means), wins vs the best source, forward passes. Part B: each pseudo-label self-training run
(default: every finished one in the store) against the TIES merge it started from, per target with
95 % bootstrap intervals over the test sentences (engine.stats.bootstrap_ci).
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import pandas as pd

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from engine.formats import markdown_table  # noqa: E402
from engine.paths import default_cache_dir  # noqa: E402
from engine.report.results import headline_table, load_results  # noqa: E402
from engine.stats import bootstrap_ci  # noqa: E402
from engine.store import open_store  # noqa: E402


def part_a(res) -> str:
    head = headline_table(res)
    frame = res.frame
    eq, own = frame.groupby("target")["equal_merge_acc"].first(), frame.groupby("target")["target_model_acc"].first()
    low, high = float(eq.mean()), float(own.mean())
    rows = []
    for r in head.itertuples():
        rows.append({"variant": r.variant, "targets": r.targets, "mean acc.": f"{r.mean_accuracy:.3f}",
                     "gap closed (of means)": f"{(r.mean_accuracy - low) / (high - low):.0%}",
                     "gap closed (mean per target)": f"{r.mean_gap_closed:.0%}",
                     "wins vs best source": f"{r.win_rate_vs_best_source:.0%}",
                     "Δ vs best source": f"{r.mean_delta_vs_best_source:+.3f}",
                     "forward passes": f"{r.forward_passes:.0f}"})
    per_target = frame.pivot_table(index="target", columns="variant", values="accuracy").round(3)
    return (f"equal-weight merge {low:.3f}, target's own model {high:.3f}, best source "
            f"{frame.groupby('target')['best_source_acc'].first().mean():.3f} (means over targets)\n\n"
            + markdown_table(pd.DataFrame(rows)) + "\n\nPer target (test accuracy):\n\n"
            + markdown_table(per_target.reset_index()))


def part_b(store, res, ws, run_ids) -> str:
    from safetensors.torch import load_file

    frame = res.frame
    runs = [store.get(i) for i in run_ids] if run_ids else [
        r for r in store.runs(kind="train") if r.get("method") == "pseudo-label" and r["status"] == "done"]
    rows = []
    for run in runs:
        t, result = run["target"], run["result"]
        cells = frame[frame.target == t]
        ties = cells[cells.method == "ties"]
        scored = ws.evaluator.state_logits(load_file(result["merged"]), t, "test")
        ok = scored.logits.argmax(1) == ws.evaluator.encoded(t, "test").labels  # the final score only
        acc, lo, hi = bootstrap_ci(ok.astype(float))
        eq, own = float(cells["equal_merge_acc"].iloc[0]), float(cells["target_model_acc"].iloc[0])
        tie = ties.iloc[0] if len(ties) else None
        rows.append({"target": t, "labeller": run["params"].get("labeller", ""), "kept / texts": f"{result['kept']} / {result['texts']}",
                     "TIES (start)": "" if tie is None else
                     f"{tie.accuracy:.3f} [{tie.accuracy_lo:.3f}, {tie.accuracy_hi:.3f}]",
                     "self-trained": f"{acc:.3f} [{lo:.3f}, {hi:.3f}]",
                     "best source": f"{float(cells['best_source_acc'].iloc[0]):.3f}",
                     "gap closed": f"{(acc - eq) / (own - eq):.0%}",
                     "TIES gap closed": "" if tie is None else f"{(tie.accuracy - eq) / (own - eq):.0%}",
                     "seconds": f"{result['seconds']:.0f}", "run": run["id"]})
    return markdown_table(pd.DataFrame(rows))


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--sweep", required=True, help="the no-label sweep's run id")
    p.add_argument("--pseudo", nargs="*", default=[], help="pseudo-label run ids (default: every finished one)")
    p.add_argument("--zoo", default=str(default_cache_dir() / "demo_zoo"))
    p.add_argument("--skip-b", action="store_true")
    args = p.parse_args(argv)
    store = open_store(default_cache_dir())
    res = load_results(store, args.sweep)
    print("## A\n\n" + part_a(res))
    if not args.skip_b:
        from engine.workspace import Settings, open_workspace

        ws = open_workspace(Settings(zoo=args.zoo, cache_dir=str(default_cache_dir())))
        print("\n## B\n\n" + part_b(store, res, ws, args.pseudo))
    return 0


if __name__ == "__main__":
    sys.exit(main())
