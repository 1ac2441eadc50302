"""How well a dev subset stands in for the whole dev split as an evolution's fitness.

For each target: its URIEL top-k sources, ``--candidates`` random merges of them (linear and TIES,
random weights and densities: the kind of recipes a search visits), each scored once on the whole
split. A subset's fitness is then read off those logits (no extra forward pass), for every subset
kind, size and seed, and compared with the whole split's: Spearman ρ of the candidates' rankings,
mean |Δ accuracy|, mean |Δ fitness| and the regret of picking the subset's best (whole-split fitness
of the true best minus that of the subset's pick). Fitness is the evolution's default
(0.5 accuracy + 0.5 exp(−NLL)). Subset kinds: random (what ``dev_size`` did), random stratified by
label, informative (``engine.evolve.fitness.informative_rows``) and disagreement only (the spread
of the sources' right-label probability, without their shared uncertainty). The anchored columns
subtract the sources' own subset − whole shift (``Fitness.source_shift``) from each estimate.

    FUSION_CACHE_DIR=/work/main/cache nice -n 5 python bench/bench_dev_subset.py --json out.json
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common  # noqa: F401,E402  (offline hub settings)
from engine.evolve.fitness import informative_rows, sample_rows, stratified_top  # noqa: E402
from engine.metrics import classification_metrics, softmax  # noqa: E402


def candidate_logits(ws, target, sources, n, seed, splits, keep_dir=""):
    """[n candidates] of {split: logits} for random linear / TIES merges of ``sources`` (kept in
    ``keep_dir`` as .npy files when given, and read back from there on a rerun)."""
    from engine.merge import merge_state_dicts

    kept = Path(keep_dir) / f"{target}_{n}_{seed}.npz" if keep_dir else None
    if kept is not None and kept.is_file():
        data = np.load(kept, allow_pickle=False)
        recipes = json.loads(str(data["recipes"]))
        return [{split: data[f"{i}_{split}"] for split in splits} for i in range(n)], recipes

    rng = np.random.default_rng([seed, 7])
    states = [ws.zoo.state_dict(s) for s in sources]
    base = ws.zoo.base_state_dict()
    out, recipes = [], []
    for i in range(n):
        method = "linear" if i % 2 == 0 else "ties"
        weights = list(rng.dirichlet(np.ones(len(sources))))
        params = {} if method == "linear" else {"density": float(rng.uniform(0.2, 0.9))}
        state = merge_state_dicts(method, states, weights, base=base if method == "ties" else None, params=params,
                                  names=list(sources), device=ws.evaluator.device, seed=seed + i)
        out.append({split: ws.evaluator.state_logits(state, target, split, cache=False).logits for split in splits})
        recipes.append({"method": method, "weights": [round(w, 3) for w in weights], **params})
        print(f"  {target} candidate {i + 1}/{n}", file=sys.stderr, flush=True)
    if kept is not None:
        np.savez(kept, recipes=json.dumps(recipes), **{f"{i}_{sp}": c[sp] for i, c in enumerate(out) for sp in splits})
    return out, recipes


def fitness(logits, labels):
    m = classification_metrics(softmax(logits), labels)
    return 0.5 * m["accuracy"] + 0.5 * float(np.exp(-m["nll"])), m["accuracy"]


def subset_rows(kind, source_logits, labels, n, seed):
    if kind == "random":
        return sample_rows(n, len(labels), seed)
    if kind == "stratified":
        return stratified_top(np.zeros(len(labels)), labels, n, seed)
    if kind == "informative":
        return informative_rows(source_logits, labels, n, seed)
    if kind == "disagreement":
        right = np.stack([softmax(lg)[np.arange(len(labels)), labels] for lg in source_logits])
        return stratified_top(right.std(axis=0), labels, n, seed)
    raise ValueError(kind)


def spearman(a, b):
    from scipy.stats import spearmanr

    rho = spearmanr(a, b).statistic
    return float(rho) if np.isfinite(rho) else 0.0


def measure(cands, source_logits, labels, kinds, sizes, seeds):
    full = [fitness(c, labels) for c in cands]
    f_full = np.array([f for f, _ in full])
    a_full = np.array([a for _, a in full])
    src_full = np.array([fitness(lg, labels) for lg in source_logits])     # [S, (fitness, accuracy)]
    rows = []
    for kind in kinds:
        for n in sizes:
            if n >= len(labels):
                continue
            for seed in seeds if kind in ("random", "stratified") else seeds[:3]:
                keep = subset_rows(kind, source_logits, labels, n, seed)
                sub = [fitness(c[keep], labels[keep]) for c in cands]
                f_sub = np.array([f for f, _ in sub])
                a_sub = np.array([a for _, a in sub])
                # the subset's bias, known for the sources (their whole-split logits are cached): the
                # mean source shift, subtracted from every candidate (a shift: rankings unchanged)
                src_sub = np.array([fitness(lg[keep], labels[keep]) for lg in source_logits])
                off_f, off_a = (src_sub - src_full).mean(axis=0)
                rows.append({"kind": kind, "size": n, "seed": seed, "spearman": spearman(f_sub, f_full),
                             "abs_dacc": float(np.mean(np.abs(a_sub - a_full))),
                             "abs_dfit": float(np.mean(np.abs(f_sub - f_full))),
                             "abs_dacc_anchored": float(np.mean(np.abs(a_sub - off_a - a_full))),
                             "abs_dfit_anchored": float(np.mean(np.abs(f_sub - off_f - f_full))),
                             "regret": float(f_full.max() - f_full[int(np.argmax(f_sub))])})
    return rows, {"fitness_spread": float(f_full.max() - f_full.min()), "acc_spread": float(a_full.max() - a_full.min())}


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--targets", nargs="*", default=["de-DE", "es-ES", "it-IT", "nl-NL", "pl-PL", "pt-PT"])
    p.add_argument("--top-k", type=int, default=3)
    p.add_argument("--candidates", type=int, default=16)
    p.add_argument("--splits", nargs="*", default=["validation", "train"])
    p.add_argument("--sizes", nargs="*", type=int, default=[8, 16, 32, 64, 128])
    p.add_argument("--seeds", type=int, default=10)
    p.add_argument("--device", default="cpu")
    p.add_argument("--json", default="", help="write every measured row here")
    p.add_argument("--keep", default="", help="folder keeping each target's candidate logits (a rerun reads them)")
    args = p.parse_args()

    from engine.experiments import suggest_sources
    from engine.workspace import Settings, default_demo_dir, open_workspace
    from engine.paths import default_cache_dir

    ws = open_workspace(Settings(zoo=str(default_demo_dir()), device=args.device, cache_dir=str(default_cache_dir())))
    kinds = ["random", "stratified", "informative", "disagreement"]
    seeds = list(range(args.seeds))
    every, spreads = [], {}
    t0 = time.perf_counter()
    for target in args.targets:
        sources = list(suggest_sources(ws, target, top_k=args.top_k))
        cands, recipes = candidate_logits(ws, target, sources, args.candidates, 0, args.splits, args.keep)
        for split in args.splits:
            labels = np.asarray(ws.evaluator.encoded(target, split).labels)
            src = [ws.evaluator.source_logits(s, target, split).logits for s in sources]
            rows, spread = measure([c[split] for c in cands], src, labels, kinds, args.sizes, seeds)
            spreads[f"{target}/{split}"] = {**spread, "examples": len(labels), "sources": sources}
            every += [{"target": target, "split": split, "of": len(labels), **r} for r in rows]
        print(f"{target}: {sources} done at {time.perf_counter() - t0:.0f} s", file=sys.stderr)

    print(f"{len(args.targets)} targets × {args.candidates} random merges; mean over targets and seeds\n")
    keys = ("spearman", "abs_dacc", "abs_dfit", "abs_dacc_anchored", "abs_dfit_anchored", "regret")
    print("| split | size | subset | Spearman ρ | mean abs Δacc | mean abs Δfitness | anchored abs Δacc "
          "| anchored abs Δfitness | regret |")
    print("|---|---|---|---|---|---|---|---|---|")
    for split in args.splits:
        for n in args.sizes:
            for kind in kinds:
                sel = [r for r in every if r["split"] == split and r["size"] == n and r["kind"] == kind]
                if sel:
                    mean = {k: np.mean([r[k] for r in sel]) for k in keys}
                    cells = [f"{mean[k]:.4f}" if k == "regret" else f"{mean[k]:.3f}" for k in keys]
                    print(f"| {split} | {n} of ~{sel[0]['of']} | {kind} | " + " | ".join(cells) + " |")
    if args.json:
        Path(args.json).write_text(json.dumps({"rows": every, "spreads": spreads, "args": vars(args),
                                               "seconds": time.perf_counter() - t0}, indent=1))


if __name__ == "__main__":
    main()
