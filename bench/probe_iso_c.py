"""Why Iso-C collapses on the demo zoo: spectra, update norms, one layer group at a time, scale.

For each target (URIEL top-K sources, leave-one-out, as the all-methods sweep) it measures, per
2-D tensor Iso-C flattens: the sources' task vectors τ_i and their (weighted, K·w_i) sum M —
Frobenius norms, effective rank (exp of the spectral entropy), σ₁/σ̄, mean pairwise cosine of
the τ_i — and the norm of Iso-C's update σ̄(M)·√r against the linear merge's Σ w_i τ_i. Then it
scores (validation and test accuracy, mean top-class probability):
  * Iso-C at several scales, and Iso-C with each matrix's update rescaled to the linear merge's
    norm ("norm-matched": the flat spectrum's directions at the linear merge's size);
  * the linear merge with Iso-C put into one group of matrices at a time (embeddings, each
    layer, each kind of matrix).

    python bench/probe_iso_c.py --zoo cache/demo_zoo --targets all --json out.json
    python bench/probe_iso_c.py ... --scales-only --scales 0.2 0.5 1.5 2 3 --method task_arithmetic
    python bench/iso_c_summary.py out.json [more.json] --control ta.json

Measured (demo zoo, 12 targets, URIEL top-5; docs/results/iso_c.md): mean test accuracy at α = 1
0.294 (outputs near uniform), at α = 2.5 0.668, with α chosen on dev 0.662; task arithmetic's best
λ 0.592. No single group of matrices breaks the model alone; layers 4–5 and the FFN outputs
halve its confidence each. Run with one torch thread: on 2 shared cores, 2 threads made each SVD
~40x slower.
"""
import argparse
import json
import math
import re
import time

from common import open_bench_workspace

GROUPS_BY_KIND = {"attention q/k/v": r"attention\.self\.(query|key|value)\.weight$",
                  "attention output": r"attention\.output\.dense\.weight$",
                  "FFN in": r"intermediate\.dense\.weight$",
                  "FFN out": r"layer\.\d+\.output\.dense\.weight$",
                  "embeddings": r"embeddings\."}


def spectrum_stats(torch, tvs, weights, base_w):
    """Per-matrix numbers: norms, effective ranks, alignment, Iso-C's update size."""
    k = len(tvs)
    scaled = [t * (k * w) for t, w in zip(tvs, weights)]
    total = sum(scaled)
    linear = sum(t * w for t, w in zip(tvs, weights))
    s_sum = torch.linalg.svdvals(total)
    s_one = [torch.linalg.svdvals(t) for t in tvs]

    def erank(s):
        p = s / s.sum()
        p = p[p > 0]
        return float(torch.exp(-(p * p.log()).sum()))

    flat = tvs[0].flatten()
    cos = [float(torch.nn.functional.cosine_similarity(a.flatten(), b.flatten(), dim=0))
           for i, a in enumerate(tvs) for b in tvs[i + 1:]]
    iso_norm = float(s_sum.mean() * math.sqrt(s_sum.numel()))
    top = max(1, s_sum.numel() // 10)
    return {"rank": s_sum.numel(), "base_norm": float(base_w.norm()),
            "tau_norm": sum(float(t.norm()) for t in tvs) / k, "sum_norm": float(total.norm()),
            "linear_norm": float(linear.norm()), "iso_norm": iso_norm,
            "erank_tau": sum(erank(s) for s in s_one) / k, "erank_sum": erank(s_sum),
            "s1_over_mean_sum": float(s_sum[0] / s_sum.mean()),
            "top10pct_energy_sum": float((s_sum[:top] ** 2).sum() / (s_sum ** 2).sum()),
            "mean_cos": sum(cos) / len(cos) if cos else 1.0, "numel": flat.numel()}


def main():
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--zoo", default="")
    ap.add_argument("--targets", nargs="*", default=["all"])
    ap.add_argument("--k", type=int, default=5)
    ap.add_argument("--weighting", default="uriel", choices=["uriel", "equal"])
    ap.add_argument("--scales", nargs="*", type=float,
                    default=[0.05, 0.1, 0.2, 0.3, 0.5, 0.7, 1.0, 1.5])
    ap.add_argument("--spectra", type=int, default=3, help="targets whose spectra are printed")
    ap.add_argument("--json", default="")
    ap.add_argument("--scales-only", action="store_true", help="no norm-matched, no layer groups")
    ap.add_argument("--method", default="iso_c", help="the scaled merge (task_arithmetic: the control)")
    args = ap.parse_args()
    import torch

    from engine.experiments import source_scores, source_weights
    from engine.merge import merge_state_dicts
    from engine.merge.run import match_base
    from engine.merge.subspace import is_matrix

    torch.set_num_threads(1)  # 2 threads on shared, overloaded cores: OpenMP waits cost 40x
    ws = open_bench_workspace("cpu", args.zoo)
    targets = ws.zoo.locales if args.targets == ["all"] else args.targets
    base = {k: v.float() for k, v in ws.zoo.base_state_dict().items()}
    out = {"targets": {}, "settings": vars(args)}

    def score(state, target):
        row = {}
        for split in ("validation", "test"):
            scored = ws.evaluator.state_logits(state, target, split, cache=False)
            m = ws.evaluator.score(scored, target, split)
            row[split] = round(float(m["accuracy"]), 4)
            if split == "test":
                p = torch.softmax(torch.as_tensor(scored.logits), -1)
                row["confidence"] = round(float(p.max(-1).values.mean()), 3)
                row["classes_predicted"] = int(len(set(p.argmax(-1).tolist())))
        return row

    for n, target in enumerate(targets):
        t0 = time.perf_counter()
        sources, weights = source_weights(ws, target, top_k=args.k, weighting=args.weighting)
        total = sum(weights)
        weights = [w / total for w in weights]
        states = [{k: v.float() for k, v in ws.zoo.state_dict(s).items()} for s in sources]
        keys = list(states[0])
        bmap = match_base(base, keys)
        mats = [k for k in keys if k in bmap and is_matrix(base[bmap[k]], k, True)]
        rec = {"sources": sources, "weights": [round(w, 4) for w in weights]}
        zs = source_scores(ws, target, [target, *sources])
        rec["own"], rec["best_source"] = zs[target], max(zs[s] for s in sources)
        print(target, "sources loaded", round(time.perf_counter() - t0, 1), flush=True)
        linear = merge_state_dicts("linear", states, weights)
        rec["linear"] = score(linear, target)
        iso = merge_state_dicts("iso_c", states, weights, base=base) if args.method == "iso_c" else None
        print(target, "linear scored, iso merged", round(time.perf_counter() - t0, 1), flush=True)
        if n < args.spectra:
            stats = {}
            for k in mats:
                b = base[bmap[k]]
                stats[k] = spectrum_stats(torch, [s[k] - b for s in states], weights, b)
            rec["spectra"] = stats
        print(target, "spectra done", round(time.perf_counter() - t0, 1), flush=True)
        rec["scales"] = {}
        unit = iso if args.method == "iso_c" else merge_state_dicts(args.method, states, weights, base=base)
        for scale in args.scales:  # both merges are θ_base + scale·τ_merged in every tensor the base has
            st = {k: base[bmap[k]] + scale * (v - base[bmap[k]]) if k in bmap and v.is_floating_point()
                  else v for k, v in unit.items()}
            if n == 0 and scale == args.scales[0]:  # checked once against the method's own scale
                direct = merge_state_dicts(args.method, states, weights, base=base, params={"scale": scale})
                assert all(torch.allclose(st[k], direct[k], atol=1e-5) for k in direct), "scale is not linear"
            rec["scales"][str(scale)] = score(st, target)
        if args.scales_only:
            rec["seconds"] = round(time.perf_counter() - t0, 1)
            out["targets"][target] = rec
            print(json.dumps({target: rec}), flush=True)
            if args.json:
                with open(args.json, "w") as fh:
                    json.dump(out, fh, indent=1)
            continue
        matched = dict(iso)  # each matrix's Iso-C update rescaled to the linear merge's norm
        for k in mats:
            b = base[bmap[k]]
            upd, lin = iso[k] - b, linear[k] - b
            matched[k] = b + upd * (lin.norm() / upd.norm().clamp_min(1e-12))
        rec["norm_matched"] = score(matched, target)
        groups = {name: [k for k in mats if re.search(rx, k)] for name, rx in GROUPS_BY_KIND.items()}
        layers = sorted({int(m.group(1)) for k in mats for m in [re.search(r"layer\.(\d+)\.", k)] if m})
        for i in layers:
            groups[f"layer {i}"] = [k for k in mats if f"layer.{i}." in k]
        rec["one_group"] = {}
        for name, ks in groups.items():
            hybrid = dict(linear)
            for k in ks:
                hybrid[k] = iso[k]
            rec["one_group"][name] = {"matrices": len(ks), **score(hybrid, target)}
        rec["seconds"] = round(time.perf_counter() - t0, 1)
        out["targets"][target] = rec
        print(json.dumps({target: {k: v for k, v in rec.items() if k != "spectra"}}), flush=True)
        if args.json:
            with open(args.json, "w") as fh:
                json.dump(out, fh, indent=1)


if __name__ == "__main__":
    main()
