"""AdaMerging (task- and layer-wise) against TIES, the equal-weight linear merge and the target's own
model, with the top-K URIEL sources: test accuracy and gap closed = (method − equal merge) /
(own model − equal merge). AdaMerging learns on the target's train texts with the labels withheld.

    python bench/bench_adamerging.py --zoo cache/demo_zoo --targets de-DE fr-FR [--k 3] [--steps 100]

Measured (demo zoo, 2 shared cores, --steps 50 --examples 128, top-3 URIEL sources; test accuracy,
gap closed in brackets):
    target  own    equal  TIES         Ada task      Ada layer     Ada s/run
    de-DE   0.933  0.533  0.675 (.35)  0.592 (.15)   0.583 (.13)   240-320
    fr-FR   0.958  0.583  0.733 (.40)  0.683 (.27)   0.683 (.27)   150-265
    pl-PL   0.940  0.491  0.491 (.00)  0.448 (-.10)  0.448 (-.10)  200-320
    mean    0.944  0.536  0.633 (.25)  0.574 (.105)  0.572 (.099)
On pl-PL the entropy minimum is a collapse onto the most confident source (λ ru-RU 0.98, nb-NO 0):
confident is not correct. From its own start (task arithmetic, URIEL weights) on de-DE: 0.517 → 0.592.
"""
import argparse
import time

import numpy as np

from common import open_bench_workspace, print_table


def main():
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--k", type=int, default=3)
    ap.add_argument("--device", default="auto")
    ap.add_argument("--zoo", default="")
    ap.add_argument("--targets", nargs="*", default=[])
    ap.add_argument("--steps", type=int, default=100)
    ap.add_argument("--examples", type=int, default=256)
    ap.add_argument("--skip", nargs="*", default=["task_arithmetic"], help="recipes left out")
    args = ap.parse_args()
    import torch

    from engine.experiments import Candidate, evaluate_candidate, source_scores, source_weights

    torch.set_num_threads(min(2, torch.get_num_threads()))
    ws = open_bench_workspace(args.device, args.zoo)
    ada = {"steps": args.steps, "examples": args.examples}
    recipes = {"equal": ("linear", "equal", {}), "ties": ("ties", "uriel", {}),
               "task_arithmetic": ("task_arithmetic", "uriel", {}),
               "ada task": ("adamerging", "uriel", {**ada, "granularity": "task"}),
               "ada layer": ("adamerging", "uriel", {**ada, "granularity": "layer"})}
    recipes = {k: v for k, v in recipes.items() if k not in args.skip}
    rows = []
    for target in args.targets or ws.zoo.locales:
        sources, uriel = source_weights(ws, target, top_k=args.k)
        print(target, sources, uriel, flush=True)
        own = source_scores(ws, target, [target, *sources])
        print(target, "zero-shot", own, flush=True)
        row = {"target": target, "sources": " ".join(sources), "own": own[target],
               "best source": max(own[s] for s in sources)}
        for label, (method, weighting, params) in recipes.items():
            weights = [1.0 / len(sources)] * len(sources) if weighting == "equal" else uriel
            t0 = time.perf_counter()
            def show(p, seen=set()):
                if "step" in p.message and p.message not in seen and p.message.split("/")[0].endswith("0"):
                    seen.add(p.message)
                    print(f"  {time.perf_counter() - t0:.0f} s {p.message}", flush=True)
            out = evaluate_candidate(ws, Candidate("merge", method, target, sources, weights, params=params),
                                     progress=show, with_baselines=False)
            row[label] = out["test_accuracy"]
            print(f"{target} {label}: {row[label]:.3f} in {time.perf_counter() - t0:.0f} s", flush=True)
            if method == "adamerging":
                row[f"{label} s"] = time.perf_counter() - t0
                print(target, label, out["merge_report"]["notes"][-2], flush=True)
        gap = row["own"] - row["equal"]
        for label in ("ties", "ada task", "ada layer"):
            row[f"gap {label}"] = (row[label] - row["equal"]) / gap if gap > 0 else float("nan")
        rows.append(row)
        print(row, flush=True)
    numeric = [k for k in rows[0] if k not in ("target", "sources")]
    rows.append({"target": "mean", "sources": "",
                 **{k: float(np.nanmean([r[k] for r in rows])) for k in numeric}})
    rows = [{k: round(v, 3) if isinstance(v, float) else v for k, v in r.items()} for r in rows]
    print_table(rows, f"AdaMerging vs TIES vs equal merge (test accuracy, top-{args.k} URIEL sources)")


if __name__ == "__main__":
    main()
