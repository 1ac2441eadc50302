"""Merge time of the subspace merges (TSV-M, Iso-C, Iso-CTS, WUDI) against TIES, one run, same inputs.

Each method merges the same K sources of a zoo with ``merge_state_dicts`` (CPU unless --device),
in memory, sources already loaded: the time is the merge alone. ``--keys`` keeps the tensors whose
name matches a regex, so an XLM-R-base zoo (250k-word embeddings, 1.1 GB a model) can be timed a
part at a time (one encoder layer; the embeddings) and the parts added up.

    python bench/bench_subspace.py [--zoo DIR] [--sources 3] [--keys REGEX] [--device cpu]
        [--methods ties tsv_m iso_c iso_cts wudi] [--repeat 1] [--iterations N]
"""
from __future__ import annotations

import argparse
import json
import re
import time
from pathlib import Path

import torch
from safetensors import safe_open

from common import ROOT, print_table  # noqa: F401  (ROOT: puts the engine on the path)

from engine.merge import merge_state_dicts  # noqa: E402
from engine.merge.run import match_base  # noqa: E402

METHODS = {"ties": {}, "tsv_m": {}, "iso_c": {}, "iso_cts": {}, "wudi": {},
           "wudi (no embeddings)": {"embeddings": False}}


def load(path: Path, pattern) -> dict:
    with safe_open(str(path), framework="pt") as f:
        return {k: f.get_tensor(k) for k in f.keys() if pattern is None or pattern.search(k)}


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--zoo", default=str(ROOT / "cache" / "demo_zoo"))
    parser.add_argument("--sources", type=int, default=3)
    parser.add_argument("--keys", default="", help="regex: only tensors whose name matches")
    parser.add_argument("--methods", nargs="*", default=list(METHODS))
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--repeat", type=int, default=1)
    parser.add_argument("--iterations", type=int, default=None,
                        help="WUDI's Adam steps (default: its 400); its time grows linearly in them")
    args = parser.parse_args(argv)
    zoo = Path(args.zoo)
    manifest = json.loads((zoo / "zoo.json").read_text(encoding="utf-8"))
    pattern = re.compile(args.keys) if args.keys else None
    names = sorted(manifest["models"])[: args.sources]
    sources = [load(zoo / manifest["models"][n] / "model.safetensors", pattern) for n in names]
    base_all = load(zoo / manifest["base"] / "model.safetensors", pattern)
    found = match_base(base_all, list(sources[0]))
    base = {k: base_all[b] for k, b in found.items()}
    del base_all
    size = sum(t.numel() for t in sources[0].values()) * 4 / 2 ** 20
    print(f"zoo {zoo.name}: {len(sources[0])} tensors ({size:.0f} MB fp32 a model), "
          f"{len(sources)} sources {names}, device {args.device}, "
          f"{torch.get_num_threads()} threads")
    rows, ties = [], None
    for label in args.methods:
        method = label.split(" ")[0]
        times = []
        for _ in range(args.repeat):
            started = time.perf_counter()
            params = dict(METHODS.get(label, {}))
            if method == "wudi" and args.iterations is not None:
                params["iterations"] = args.iterations
            out = merge_state_dicts(method, sources, base=base, params=params, device=args.device)
            times.append(time.perf_counter() - started)
        seconds = min(times)
        ties = seconds if method == "ties" else ties
        rows.append({"method": label, "seconds": f"{seconds:.2f}",
                     "x TIES": f"{seconds / ties:.1f}" if ties else "-"})
        print(f"  {label}: {seconds:.2f} s", flush=True)
        del out
    print_table(rows, "merge time, same sources and base (best of --repeat)")


if __name__ == "__main__":
    main()
