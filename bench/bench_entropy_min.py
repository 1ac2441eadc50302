"""entropy_min against the URIEL-weighted rules it starts from, on every target of a zoo: test
accuracy with the top-K URIEL sources, the fused entropy before/after (nats) and the fit time.
entropy_min fits on the target's validation texts with no labels; learned_weights (fitted on the
labelled validation split) is shown as the labelled reference.

    python bench/bench_entropy_min.py [--zoo cache/demo_zoo] [--k 5] [--device cpu]
"""
import argparse
import time

import numpy as np

from common import open_bench_workspace, print_table


def main():
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--k", type=int, default=5)
    ap.add_argument("--device", default="auto")
    ap.add_argument("--zoo", default="")
    args = ap.parse_args()
    from engine.ensemble import combine, fit
    from engine.experiments import source_weights

    ws = open_bench_workspace(args.device, args.zoo)
    rows = []
    for target in ws.zoo.locales:
        sources, weights = source_weights(ws, target, top_k=args.k)
        x = {s: np.stack([ws.evaluator.source_logits(m, target, s).logits for m in sources])
             for s in ("validation", "test")}
        yv, yt = (np.asarray(ws.evaluator.encoded(target, s).labels) for s in ("validation", "test"))
        t0 = time.perf_counter()
        em = fit("entropy_min", x["validation"], None, weights=weights)
        fit_ms = 1000 * (time.perf_counter() - t0)
        lw = fit("learned_weights", x["validation"], yv, weights=weights)
        acc = lambda p: float((p.argmax(1) == yt).mean())  # noqa: E731
        rows.append({"target": target, "weighted_logits": acc(combine("weighted_logits", x["test"], weights=weights)),
                     "soft": acc(combine("soft", x["test"], weights=weights)), "entropy_min": acc(em.predict(x["test"])),
                     "learned_weights (labels)": acc(lw.predict(x["test"])), "H start": em.info["entropy_start"],
                     "H end": em.info["entropy_end"], "fit ms": fit_ms})
    rows.append({"target": "mean", **{k: float(np.mean([r[k] for r in rows])) for k in rows[0] if k != "target"}})
    print_table(rows, "entropy_min vs URIEL-weighted rules (test accuracy)")


if __name__ == "__main__":
    main()
