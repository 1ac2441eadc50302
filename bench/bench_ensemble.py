"""Benchmark: re-scoring cached logits with every voting rule, and fitting the learned fusions.

    python bench/bench_ensemble.py [--models 10] [--examples 3000] [--classes 60] [--threads 1]

Synthetic logits with a planted structure (models of different strength, each better on its own
subset of classes) stand in for a cached [K, N, C] array. Goal: each rule < 50 ms at 10 x 3000 x 60.
"""
from __future__ import annotations

import argparse
import os
import sys
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import torch  # noqa: E402

from engine.ensemble import ENSEMBLES, combine, fit  # noqa: E402


def synthetic(k: int, n: int, c: int, seed: int):
    """Noise logits plus a per-model signal on the true class, stronger on that model's classes.
    The models (their strengths) are the same for every seed; the examples differ."""
    good = np.random.default_rng(1234).random((k, c)) < 0.3
    strength = np.linspace(0.5, 3.0, k)[:, None] * np.where(good, 1.5, 0.6)  # [K, C]
    rng = np.random.default_rng(seed)
    y = rng.integers(0, c, n)
    x = rng.normal(size=(k, n, c)).astype(np.float32)
    x[:, np.arange(n), y] += strength[:, y]
    return x, y


def timed_ms(fn, repeats: int):
    """(median, min) wall time in ms; on a shared machine the min is the uncontended cost."""
    fn()  # warm-up
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return 1000 * float(np.median(times)), 1000 * float(np.min(times))


def scores(probs: np.ndarray, y: np.ndarray):
    acc = float((probs.argmax(1) == y).mean())
    nll = float(-np.log(np.maximum(probs[np.arange(len(y)), y], 1e-12)).mean())
    return acc, nll


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--models", type=int, default=10)
    ap.add_argument("--examples", type=int, default=3000)
    ap.add_argument("--classes", type=int, default=60)
    ap.add_argument("--repeats", type=int, default=20)
    ap.add_argument("--threads", type=int, default=1, help="torch threads (numpy BLAS untouched)")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    k, n, c = args.models, args.examples, args.classes
    val_x, val_y = synthetic(k, n, c, seed=0)
    test_x, test_y = synthetic(k, n, c, seed=1)
    weights = np.linspace(1, 2, k)
    singles = [scores(combine("soft", test_x[i:i + 1]), test_y)[0] for i in range(k)]
    print(f"logits {k} models x {n} examples x {c} classes; best single model accuracy "
          f"{max(singles):.3f}, torch threads {args.threads}\n")

    print(f"{'voting rule':<20}{'median ms':>10}{'min ms':>8}{'accuracy':>10}{'NLL':>8}"
          f"  goal < 50 ms")
    for m in ENSEMBLES:
        if m.traits.needs_fit:
            continue
        x = test_x[-2:] if m.name == "fixed_pair" else test_x  # the two strongest models
        w = None if m.name == "fixed_pair" else weights
        ms, best = timed_ms(lambda: combine(m.name, x, weights=w), args.repeats)
        acc, nll = scores(combine(m.name, x, weights=w), test_y)
        print(f"{m.name:<20}{ms:>10.1f}{best:>8.1f}{acc:>10.3f}{nll:>8.3f}"
              f"  {'ok' if ms < 50 else 'SLOW'}")

    print(f"\n{'learned fusion':<34}{'fit s':>8}{'steps':>7}{'predict ms':>12}{'accuracy':>10}"
          f"{'NLL':>8}")
    runs = [("learned_weights", {"space": "probabilities"}, False),
            ("learned_weights", {"space": "logits"}, False),
            ("fusion_mlp", {"hidden_size": 64}, False),
            ("fusion_mlp", {"hidden_size": 0}, False),
            ("soft", {}, True),
            ("weighted_logits", {}, True)]
    for name, params, calibrate in runs:
        t = time.perf_counter()
        f = fit(name, val_x, val_y, weights=weights,
                params=params, calibrate=calibrate)
        fit_s = time.perf_counter() - t
        ms, _ = timed_ms(lambda: f.predict(test_x), max(3, args.repeats // 4))
        acc, nll = scores(f.predict(test_x), test_y)
        inner = getattr(f, "inner", None) or f
        steps = inner.info.get("steps", "-")
        label = f"{name} {params}" + (" +T" if calibrate else "")
        print(f"{label[:34]:<34}{fit_s:>8.2f}{steps!s:>7}{ms:>12.1f}{acc:>10.3f}{nll:>8.3f}")


if __name__ == "__main__":
    main()
