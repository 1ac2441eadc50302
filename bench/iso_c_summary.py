"""Markdown tables from probe_iso_c.py's JSON files (docs/results/iso_c.md is built from them).

    python bench/iso_c_summary.py MAIN.json [MORE_SCALES.json ...] [--control TA.json]
"""
import argparse
import json
import re
from collections import defaultdict
from statistics import mean


def load(paths):
    merged = {}
    for path in paths:
        for target, rec in json.load(open(path))["targets"].items():
            into = merged.setdefault(target, {"scales": {}})
            for k, v in rec.items():
                if k == "scales":
                    into["scales"].update(v)
                else:
                    into.setdefault(k, v)
    return merged


def dev_choice(scales):
    """The scale with the best validation accuracy (ties: the one nearest 1)."""
    return max(scales, key=lambda s: (scales[s]["validation"], -abs(float(s) - 1.0)))


def table(rows, cols):
    out = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    out += ["| " + " | ".join(str(r[c]) for c in cols) + " |" for r in rows]
    return "\n".join(out)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("files", nargs="+")
    ap.add_argument("--control", default="")
    args = ap.parse_args()
    data = load(args.files)
    control = load([args.control]) if args.control else {}
    targets = sorted(data)
    scales = sorted({s for t in targets for s in data[t]["scales"]}, key=float)

    rows = []
    for t in targets:
        r = data[t]
        pick = dev_choice(r["scales"])
        row = {"target": t, "own": f"{r['own']:.3f}", "best source": f"{r['best_source']:.3f}",
               "linear": f"{r['linear']['test']:.3f}", "Iso-C α=1": f"{r['scales']['1.0']['test']:.3f}",
               "α on dev": pick, "Iso-C at α (test)": f"{r['scales'][pick]['test']:.3f}"}
        if t in control:
            cpick = dev_choice({**control[t]["scales"], "1.0": control[t]["linear"]})
            cval = control[t]["linear"] if cpick == "1.0" else control[t]["scales"][cpick]
            row["TA λ on dev"], row["TA at λ (test)"] = cpick, f"{cval['test']:.3f}"
        rows.append(row)
    print("## Per target\n")
    print(table(rows, list(rows[0])))
    print("\nmeans: " + ", ".join(f"{c} {mean(float(r[c]) for r in rows):.3f}" for c in rows[0]
                                  if c not in ("target", "α on dev", "TA λ on dev")))

    print("\n## Mean over targets by scale\n")
    srows = []
    for s in scales:
        have = [t for t in targets if s in data[t]["scales"]]
        srow = {"scale": s, "targets": len(have),
                "Iso-C val": f"{mean(data[t]['scales'][s]['validation'] for t in have):.3f}",
                "Iso-C test": f"{mean(data[t]['scales'][s]['test'] for t in have):.3f}",
                "confidence": f"{mean(data[t]['scales'][s]['confidence'] for t in have):.3f}",
                "classes predicted": f"{mean(data[t]['scales'][s]['classes_predicted'] for t in have):.1f}"}
        cs = [t for t in targets if t in control and (s in control[t]["scales"] or s == "1.0")]
        if cs:
            pick = lambda t: control[t]["linear"] if s == "1.0" else control[t]["scales"][s]  # noqa: E731
            srow["TA test"] = f"{mean(pick(t)['test'] for t in cs):.3f}"
        else:
            srow["TA test"] = ""
        srows.append(srow)
    print(table(srows, list(srows[0])))

    groups = [t for t in targets if "one_group" in data[t]]
    if groups:
        print(f"\n## Iso-C in one group of matrices, the linear merge elsewhere ({len(groups)} targets)\n")
        names = list(data[groups[0]]["one_group"])
        grows = [{"group": "none (linear merge)", "matrices": 0,
                  "test": f"{mean(data[t]['linear']['test'] for t in groups):.3f}",
                  "confidence": f"{mean(data[t]['linear']['confidence'] for t in groups):.3f}"}]
        grows += [{"group": n, "matrices": data[groups[0]]["one_group"][n]["matrices"],
                   "test": f"{mean(data[t]['one_group'][n]['test'] for t in groups):.3f}",
                   "confidence": f"{mean(data[t]['one_group'][n]['confidence'] for t in groups):.3f}"}
                  for n in names]
        grows.append({"group": "all (Iso-C, α=1)", "matrices": "all",
                      "test": f"{mean(data[t]['scales']['1.0']['test'] for t in groups):.3f}",
                      "confidence": f"{mean(data[t]['scales']['1.0']['confidence'] for t in groups):.3f}"})
        grows.append({"group": "all, each matrix rescaled to the linear merge's norm", "matrices": "all",
                      "test": f"{mean(data[t]['norm_matched']['test'] for t in groups):.3f}",
                      "confidence": f"{mean(data[t]['norm_matched']['confidence'] for t in groups):.3f}"})
        print(table(grows, list(grows[0])))

    spectra = [t for t in targets if "spectra" in data[t]]
    if spectra:
        print(f"\n## Spectra per layer (mean over matrices and {len(spectra)} targets: {', '.join(spectra)})\n")
        by = defaultdict(list)
        for t in spectra:
            for key, st in data[t]["spectra"].items():
                m = re.search(r"layer\.(\d+)\.", key)
                if "embeddings" in key and "word" not in key:
                    continue  # position / type tables: a handful of rows ever trained
                by["word embeddings" if "embeddings" in key else f"layer {m.group(1)}"].append(st)
        srows = []
        for name, sts in by.items():
            srows.append({"matrices": name,
                          "‖τ‖/‖θ_base‖": f"{mean(s['tau_norm'] / s['base_norm'] for s in sts):.3f}",
                          "cos(τ_i, τ_j)": f"{mean(s['mean_cos'] for s in sts):.2f}",
                          "eff. rank τ_i": f"{mean(s['erank_tau'] for s in sts):.0f}",
                          "eff. rank Σ": f"{mean(s['erank_sum'] for s in sts):.0f}",
                          "σ₁/σ̄ of Σ": f"{mean(s['s1_over_mean_sum'] for s in sts):.1f}",
                          "top-10 % energy of Σ": f"{mean(s['top10pct_energy_sum'] for s in sts):.2f}",
                          "‖Iso-C‖/‖Σ‖": f"{mean(s['iso_norm'] / s['sum_norm'] for s in sts):.2f}",
                          "‖Iso-C‖/‖linear‖": f"{mean(s['iso_norm'] / s['linear_norm'] for s in sts):.2f}"})
        print(table(srows, list(srows[0])))


if __name__ == "__main__":
    main()
