"""Should a one-shot TIES merge (no MergeCache) use the trim store's sorted magnitudes too?

On one real tensor pair (default: the scale zoo's 250,002 x 768 word embedding, one source and
the base), times side by side, each the median of --repeat:

* ``cut by selection``: |δ| and trim_cut over it (select_kth, numpy's introselect), as trim_plan
  does in a one-shot merge today;
* ``hash both``: tensor_digest of the source and the base: the price of any store lookup;
* ``cut from stored sorted``: trim_cut's index lookup in the sorted magnitudes (memory-mapped);
* ``make sorted``: |δ| sorted (numpy): what a miss would cost before writing them;
* ``tie order``: mergekit's argsort (what the store saves where the cut ties).

    python bench/probe_oneshot_sorted.py [--zoo /work/scale_zoo] [--key ...] [--repeat 3]
"""
import argparse
import os
import statistics
import time
from pathlib import Path

import numpy as np
import common  # noqa: F401  (puts the repository on sys.path)
import torch


def timed(fn, repeat):
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--zoo", default="/work/scale_zoo")
    ap.add_argument("--source", default="e5small_massive_k_de-DE")
    ap.add_argument("--key", default="roberta.embeddings.word_embeddings.weight")
    ap.add_argument("--density", type=float, default=0.2)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--argsort", action="store_true", help="also time the tie order's argsort")
    args = ap.parse_args()
    from safetensors import safe_open

    from engine.merge.sparse_trim import trim_cut
    from engine.merge.trim_store import tensor_digest

    def tensor(folder):
        with safe_open(str(Path(args.zoo) / folder / "model.safetensors"), "pt") as f:
            return f.get_tensor(args.key).float().contiguous()
    x, b = tensor(args.source), tensor("base")
    n = x.numel()
    size = torch.sub(x.reshape(-1), b.reshape(-1)).abs_()
    sorted_size = torch.from_numpy(np.sort(size.numpy()))
    rows = {
        "cut by selection": timed(lambda: trim_cut(args.density, n, torch.sub(  # as trim_plan
            x.reshape(-1), b.reshape(-1)).abs_()), args.repeat),
        "hash both": timed(lambda: (tensor_digest(x), tensor_digest(b)), args.repeat),
        "cut from stored sorted": timed(lambda: trim_cut(args.density, n, sorted_size=sorted_size),
                                        args.repeat),
        "make sorted": timed(lambda: np.sort(size.numpy()), args.repeat),
    }
    if args.argsort:
        rows["tie order (argsort)"] = timed(lambda: torch.argsort(size, descending=True), 1)
    exact = trim_cut(args.density, n, size)[2]
    print(f"{args.key} {tuple(x.shape)} ({n / 1e6:.0f} M entries), density {args.density}, "
          f"surplus ties at the cut: {not exact}; {torch.get_num_threads()} torch threads, "
          f"load average {os.getloadavg()[0]:.1f}")
    for name, seconds in rows.items():
        print(f"  {name:24s} {seconds:8.3f} s   ({seconds / rows['cut by selection']:.2f}x the selection)")


if __name__ == "__main__":
    main()
