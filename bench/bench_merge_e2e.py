"""End-to-end merge of the zoo's 5 sources (load from disk → merge → write safetensors): ours vs
mergekit 0.1.5 on the same models, same config, same run. mergekit runs in-process through its own
API (``run_merge``) from the mergekit.yaml our export writes, so both sides do the same work.

    python bench/bench_merge_e2e.py [--methods linear ties dare_ties] [--device cuda]
"""
import argparse
import shutil
import tempfile
import time
from pathlib import Path

from common import open_bench_workspace, print_table


def main():
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--methods", nargs="*", default=["linear", "task_arithmetic", "ties", "dare_ties"])
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--zoo", default="")
    ap.add_argument("--target", default="")
    args = ap.parse_args()
    import torch
    import yaml
    from mergekit.config import MergeConfiguration
    from mergekit.merge import run_merge
    from mergekit.options import MergeOptions
    from safetensors.torch import save_file

    from engine.experiments import Candidate, build_merge, export_candidate, suggest_sources

    ws = open_bench_workspace(args.device, args.zoo)
    target = args.target or ws.zoo.locales[0]
    weights = suggest_sources(ws, target, top_k=5)
    rows = []
    tmp = Path(tempfile.mkdtemp(prefix="bench_e2e_"))
    try:
        for method in args.methods:
            cand = Candidate("merge", method, target, list(weights), list(weights.values()))
            t0 = time.perf_counter()
            state = build_merge(ws, cand)             # reads 5 sources (+ base) from disk, merges
            save_file({k: v.contiguous() for k, v in state.items()}, str(tmp / f"ours_{method}.safetensors"))
            ours = time.perf_counter() - t0
            folder = export_candidate(ws, cand, state, tmp / f"export_{method}")
            config = MergeConfiguration.model_validate(yaml.safe_load((folder / "mergekit.yaml").read_text()))
            t0 = time.perf_counter()
            run_merge(config, str(tmp / f"theirs_{method}"),
                      MergeOptions(copy_tokenizer=False, cuda=args.device.startswith("cuda"), lazy_unpickle=False))
            theirs = time.perf_counter() - t0
            rows.append({"method": method, "ours s": f"{ours:.2f}", "mergekit s": f"{theirs:.2f}",
                         "speed-up": f"{theirs / ours:.1f}×"})
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    print_table(rows, f"end-to-end merge of 5 sources → {target} on {ws.zoo.name} "
                      f"({ws.zoo.parameter_count() / 1e6:.1f} M params, device {args.device}, "
                      f"{torch.get_num_threads()} threads)")


if __name__ == "__main__":
    main()
