"""Inference cost of an ensemble of K sources vs one merged model, on real zoo models:
the first (uncached) ensemble pass as a ratio to the sum of the K single-model evaluations
(goal ≤ 1.1), re-scoring from the logits cache, and the merged model's single forward pass.

    python bench/bench_ensemble_cost.py [--k 5] [--target de-DE] [--device cuda]
"""
import argparse
import tempfile
import time

import numpy as np

from common import open_bench_workspace, print_table


def main():
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--k", type=int, default=5)
    ap.add_argument("--target", default="")
    ap.add_argument("--device", default="auto")
    ap.add_argument("--zoo", default="")
    args = ap.parse_args()
    from engine.ensemble import combine
    from engine.evaluate import Evaluator
    from engine.experiments import Candidate, build_merge, ensemble_logits, suggest_sources

    ws = open_bench_workspace(args.device, args.zoo)
    target = args.target or ws.zoo.locales[0]
    weights = suggest_sources(ws, target, top_k=args.k)
    sources = list(weights)
    n = len(ws.dataset.get(target, "test"))

    def fresh():
        ev = Evaluator(ws.zoo, ws.dataset, cache_dir=tempfile.mkdtemp(), device=args.device)
        ev.encoded(target, "test")  # tokenisation is shared by both sides
        return ev

    ev = fresh()
    t0 = time.perf_counter()
    singles = [ev.source_logits(s, target, "test") for s in sources]  # K separate evaluations
    t_singles = time.perf_counter() - t0
    forward_only = sum(s.seconds for s in singles)

    ev = fresh()
    ws.evaluator = ev
    cand = Candidate("ensemble", "soft", target, sources, list(weights.values()))
    t0 = time.perf_counter()
    logits, _ = ensemble_logits(ws, cand, "test")
    combine("soft", logits, weights=cand.weights)
    t_first = time.perf_counter() - t0

    t0 = time.perf_counter()
    for _ in range(20):
        logits, _ = ensemble_logits(ws, cand, "test")
        combine("soft", logits, weights=cand.weights)
    t_rescore = (time.perf_counter() - t0) / 20

    state = build_merge(ws, Candidate("merge", "linear", target, sources, cand.weights))
    merged = ev.state_logits(state, target, "test", cache=False)
    merged = ev.state_logits(state, target, "test", cache=False)  # warm
    rows = [
        {"what": f"{len(sources)} single-model evaluations (load + forward)", "seconds": f"{t_singles:.3f}",
         "ms / example": f"{1000 * t_singles / n:.2f}"},
        {"what": "ensemble, first pass (uncached)", "seconds": f"{t_first:.3f}", "ms / example": f"{1000 * t_first / n:.2f}"},
        {"what": "ensemble, re-scored from cache", "seconds": f"{t_rescore:.4f}", "ms / example": f"{1000 * t_rescore / n:.3f}"},
        {"what": f"ensemble forward passes only ({len(sources)} models)", "seconds": f"{forward_only:.3f}",
         "ms / example": f"{1000 * forward_only / n:.2f}"},
        {"what": "one merged model, forward pass", "seconds": f"{merged.seconds:.3f}",
         "ms / example": f"{1000 * merged.seconds / n:.2f}"},
    ]
    print_table(rows, f"ensemble vs merge inference cost — {ws.zoo.name}, target {target}, {n} test examples, "
                      f"device {ev.device}")
    print(f"\nfirst ensemble pass / sum of single evaluations = {t_first / t_singles:.2f} (goal ≤ 1.1)")
    print(f"ensemble forward cost / merged forward cost = {forward_only / merged.seconds:.1f}× "
          f"(K = {len(sources)})")


if __name__ == "__main__":
    main()
