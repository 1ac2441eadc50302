"""End-to-end merge of the zoo's 5 sources: ours vs mergekit 0.1.5 on the same models, same config,
same run. mergekit runs in-process through its own API (``run_merge``) from the mergekit.yaml our
export writes. Two paths, each timed ``--repeat`` times with the two tools alternating (median):

* disk → disk, the same work on both sides: read the sources (and base) from safetensors, merge,
  write one safetensors file. Our resident-weights cache is emptied before each of our runs.
* merge → a model ready to evaluate, the product path: our sources stay resident in memory between
  merges (engine/resident.py) and the merged tensors go straight into the evaluator's working model;
  mergekit reads its inputs, writes a folder, and that folder is loaded with ``from_pretrained``.

    python bench/bench_merge_e2e.py [--methods linear ties dare_ties] [--device cuda] [--repeat 3]
"""
import argparse
import shutil
import statistics
import tempfile
import time
from pathlib import Path

from common import open_bench_workspace, print_table


def timed(fn) -> float:
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--methods", nargs="*", default=["linear", "task_arithmetic", "ties", "dare_ties"])
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--zoo", default="")
    ap.add_argument("--target", default="")
    ap.add_argument("--repeat", type=int, default=3)
    args = ap.parse_args()
    import torch
    import yaml
    from mergekit.config import MergeConfiguration
    from mergekit.merge import run_merge
    from mergekit.options import MergeOptions
    from safetensors.torch import save_file
    from transformers import AutoModelForSequenceClassification

    from engine.experiments import Candidate, build_merge, suggest_sources
    from engine.candidate_runs import export_candidate
    from engine.resident import RESIDENT

    ws = open_bench_workspace(args.device, args.zoo)
    target = args.target or ws.zoo.locales[0]
    weights = suggest_sources(ws, target, top_k=5)
    options = MergeOptions(copy_tokenizer=False, cuda=args.device.startswith("cuda"), lazy_unpickle=False,
                           quiet=True)
    rows = []
    tmp = Path(tempfile.mkdtemp(prefix="bench_e2e_"))
    try:
        for method in args.methods:
            cand = Candidate("merge", method, target, list(weights), list(weights.values()))
            config = MergeConfiguration.model_validate(yaml.safe_load(
                (export_candidate(ws, cand, build_merge(ws, cand), tmp / f"export_{method}")
                 / "mergekit.yaml").read_text()))
            out_file, out_dir = tmp / f"ours_{method}.safetensors", str(tmp / f"theirs_{method}")

            def ours_disk():
                RESIDENT.clear()
                state = build_merge(ws, cand)
                save_file({k: v.contiguous() for k, v in state.items()}, str(out_file))

            def ours_model():  # sources already resident (the previous call loaded them)
                ws.evaluator.working_model(build_merge(ws, cand))

            def theirs_disk():
                run_merge(config, out_dir, options)

            def theirs_model():
                run_merge(config, out_dir, options)
                AutoModelForSequenceClassification.from_pretrained(out_dir).to(args.device)

            ours_model(), theirs_model()  # warm-up: imports, page cache, the working model
            times = {"od": [], "td": [], "om": [], "tm": []}
            for _ in range(args.repeat):
                times["od"].append(timed(ours_disk))
                times["td"].append(timed(theirs_disk))
                ours_model()
                times["om"].append(timed(ours_model))
                times["tm"].append(timed(theirs_model))
            med = {k: statistics.median(v) for k, v in times.items()}
            rows.append({"method": method,
                         "disk→disk ours s": f"{med['od']:.3f}", "mergekit s": f"{med['td']:.3f}",
                         "speed-up": f"{med['td'] / med['od']:.1f}×",
                         "→model ours s": f"{med['om']:.3f}", "mergekit+load s": f"{med['tm']:.3f}",
                         "speed-up ": f"{med['tm'] / med['om']:.1f}×"})
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    print_table(rows, f"end-to-end merge of 5 sources → {target} on {ws.zoo.name} "
                      f"({ws.zoo.parameter_count() / 1e6:.1f} M params, device {args.device}, "
                      f"{torch.get_num_threads()} threads, median of {args.repeat}, alternating)")


if __name__ == "__main__":
    main()
