"""Merge-kernel throughput against a raw tensor sum over the same bytes.

For each method the baseline is the cheapest thing that touches the same memory: summing the
tensors the method reads (K sources, plus the base for task-vector methods) into one output with
plain torch adds. ratio = baseline time / method time (1.0 = as fast as a raw sum; goal for
linear / task arithmetic >= 0.5). "kernel" times the per-tensor kernel alone, "loop" the whole
``merge_state_dicts`` (key iteration, NaN/inf checks, dtype handling) on a state dict.

    python bench/bench_merge.py [--mb 128] [--sources 3] [--device cpu|cuda] [--repeat 7]
        [--shape 250002x768] [--threads 1] [--methods ties,dare_ties] [--no-loop] [--torch]

The raw sum is torch.add(t0, t1) and then out.add_(t) for each further input: with K+1 inputs
that is K adds and 3K tensor-sized memory passes (each reads two, writes one), where a one-pass
kernel moves K+2 (the GB/s column counts those). torch.sum(torch.stack(...)) would copy every input
first (slower). The row "one-pass sum" is the ceiling of any one-pass kernel here: a numba loop
that reads every input once and writes the output once (2,048-entry blocks, fused.py's slices and
worker threads), no other work; printed with the fused kernels.

TIES and DARE run twice: mergekit-identical (the default) and in their fast modes
(``selection='fast'`` / ``rng='fast'``, rows marked "/fast"). --no-loop skips the whole-loop
columns (at 250002x768 they double the run time and say the same as the kernel). On CPU float32
TIES and DARE rng=fast run as fused numba kernels (engine/merge/fused.py; a line says which);
--torch runs the torch kernels instead, to compare them side by side.
"""
from __future__ import annotations

import argparse
import os
import statistics
import sys
import time

import numpy as np
import torch

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
from engine.merge import MERGES, merge_state_dicts  # noqa: E402

METHODS = [("linear", {}), ("task_arithmetic", {}), ("ties", {"density": 0.2}),
           ("ties", {"density": 0.2, "selection": "fast"}),
           ("dare_linear", {"density": 0.5}), ("dare_linear", {"density": 0.5, "rng": "fast"}),
           ("dare_ties", {"density": 0.5}), ("dare_ties", {"density": 0.5, "rng": "fast"})]
FAST = {"selection": "fast", "rng": "fast"}  # the fast modes' settings (label suffix "/fast")


def sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize()


def paired(fn, reference, device, repeat, *more):
    """Times fn and reference (and any ``more`` references) back to back, ``repeat`` times;
    medians of each and of the per-round ratio reference/fn (rounds cancel most of the drift from
    processes sharing the machine). With ``more``: (ours, [references], [ratios])."""
    references = (reference,) + more
    fn(), [f() for f in references]  # warm-up (allocator, kernels)
    sync(device)
    ours, theirs = [], [[] for _ in references]
    for _ in range(repeat):
        for bucket, f in ((ours, fn), *zip(theirs, references)):
            start = time.perf_counter()
            f()
            sync(device)
            bucket.append(time.perf_counter() - start)
    ratios = [statistics.median(t / o for o, t in zip(ours, times)) for times in theirs]
    if more:
        return statistics.median(ours), [statistics.median(t) for t in theirs], ratios
    return statistics.median(ours), statistics.median(theirs[0]), ratios[0]


def raw_sum(tensors, out=None):
    """Σ tensors by plain adds; ``out``: into that preallocated tensor (no allocation: a fresh
    torch output of 16.7 M entries costs ~40 ms of 4 KB page faults on this VM, where numpy's
    allocations, which the fused kernels write, get huge pages)."""
    out = torch.add(tensors[0], tensors[1], out=out)
    for t in tensors[2:]:
        out.add_(t)
    return out


def one_pass_sum():
    """fn(inputs) -> Σ inputs, each read once and the output written once (numba, per 2,048-entry
    block on fused.py's slices and threads); None without numba."""
    from engine.merge import fused
    from engine.merge.combine import run_slices

    if not fused.AVAILABLE:  # with --torch too: the ceiling does not depend on the kernels
        return None
    numba = fused.kernels.numba

    @numba.njit(nogil=True, cache=False)
    def sum_slice(xs, out, start, stop):
        for at in range(start, stop, 2048):
            m = min(2048, stop - at)
            o, x = out[at:at + m], xs[0][at:at + m]
            for j in range(m):
                o[j] = x[j]
            for i in range(1, len(xs)):
                x = xs[i][at:at + m]
                for j in range(m):
                    o[j] = o[j] + x[j]

    def total(inputs):
        xs = tuple(t.reshape(-1).numpy() for t in inputs)
        flat = np.empty(xs[0].size, np.float32)  # allocated as fused.merge does
        run_slices(flat.size, lambda start, stop: sum_slice(xs, flat, start, stop),
                   chunk=fused.SLICE, workers=fused._workers())
        return torch.from_numpy(flat).view(inputs[0].shape)
    return total


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--mb", type=float, default=128.0, help="size of one model in MB (fp32)")
    parser.add_argument("--sources", type=int, default=3)
    parser.add_argument("--tensors", type=int, default=2, help="tensors per model")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--repeat", type=int, default=7)
    parser.add_argument("--shape", default="", help="one tensor shape ROWSxCOLS instead of --mb "
                        "(e.g. 250002x768, XLM-R-base's embedding)")
    parser.add_argument("--threads", type=int, default=0, help="torch threads (default: all)")
    parser.add_argument("--methods", default="", help="comma-separated subset of the methods")
    parser.add_argument("--no-loop", action="store_true", help="time the kernels only")
    parser.add_argument("--torch", action="store_true", help="the torch kernels, not the fused "
                        "numba ones (engine/merge/fused.py)")
    parser.add_argument("--modes", default="exact,fast", help="TIES/DARE modes to run: exact "
                        "(mergekit-identical), fast, or both (exact TIES sorts: minutes at "
                        "250002x768 on 2 loaded cores)")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.torch:
        from engine.merge import fused
        fused.ENABLED = False
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        parser.error("--device cuda: no CUDA device here")
    per_tensor = int(args.mb * 2 ** 20 / 4 / args.tensors)
    side = int(per_tensor ** 0.5)
    shape = (side, per_tensor // side)
    if args.shape:
        shape, args.tensors = tuple(int(x) for x in args.shape.lower().split("x")), 1
    gen = torch.Generator().manual_seed(0)
    base = {f"layer.{i}.weight": torch.randn(shape, generator=gen).to(device)
            for i in range(args.tensors)}
    sources = [{k: v + 0.01 * torch.randn(shape, generator=gen).to(device)
                for k, v in base.items()} for _ in range(args.sources)]
    weights = torch.full((args.sources,), 1.0 / args.sources, device=device)
    key = "layer.0.weight"
    one = [s[key] for s in sources]
    model_mb = 4 * shape[0] * shape[1] * args.tensors / 2 ** 20
    where = (torch.cuda.get_device_name(device) if device.type == "cuda"
             else f"{torch.get_num_threads()} threads")
    print(f"device {device} ({where}), {args.sources} sources + base, {args.tensors} tensors "
          f"of {shape} per model ({model_mb:.0f} MB/model, {model_mb * (args.sources + 1):.0f} MB in total)")
    print(f"load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs")
    from engine.merge import fused
    from engine.merge.fused_warm import DROP, L1, TIES, warm
    warm(args.sources, (TIES, DROP, L1))  # as a search does: compiled before timing, from 2^17 entries
    print("TIES / DARE rng=fast kernels: " + (
        "fused (numba " + fused.kernels.numba.__version__ + ")" if fused.usable(one, base[key])
        else "torch (" + ("numba not importable" if not fused.AVAILABLE else
                          "under fused.MIN_ENTRIES or not CPU float32" if fused.ENABLED else "fused kernels off") + ")"))
    if args.no_loop:  # "raw→buf": the same adds into a preallocated output (the adds alone)
        print(f"{'method':<16}{'kernel ms':>10}{'raw ms':>9}{'ratio':>7}{'GB/s':>7}"
              f"{'raw→buf ms':>11}{'ratio':>7}")
    else:
        print(f"{'method':<16}{'kernel ms':>10}{'raw ms':>9}{'ratio':>7}{'GB/s':>7}"
              f"{'loop ms':>10}{'raw ms':>9}{'ratio':>7}")
    buffer = torch.empty_like(one[0])

    def row(label, fn, inputs):
        kernel, raws, ratios = paired(fn, lambda: raw_sum(inputs), device, args.repeat,
                                      lambda: raw_sum(inputs, buffer))
        moved = (len(inputs) + 1) * one[0].numel() * 4 / 1e9
        print(f"{label:<16}{kernel * 1e3:>10.1f}{raws[0] * 1e3:>9.1f}{ratios[0]:>7.2f}"
              f"{moved / kernel:>7.1f}{raws[1] * 1e3:>11.1f}{ratios[1]:>7.2f}", flush=True)
    ceiling = one_pass_sum() if device.type == "cpu" else None
    if ceiling is not None and args.no_loop:
        inputs = one + [base[key]]
        assert torch.equal(ceiling(inputs), raw_sum(inputs))  # the same adds, in the same order
        row("one-pass sum", lambda: ceiling(inputs), inputs)
    for name, params in METHODS:
        if args.methods and name not in args.methods.split(","):
            continue
        fast = any(params.get(k) == v for k, v in FAST.items())
        label = name + ("/fast" if fast else "")
        if name in ("ties", "dare_linear", "dare_ties") and \
                ("fast" if fast else "exact") not in args.modes.split(","):
            continue
        method = MERGES.get(name)
        resolved = method.resolve(params)
        uses_base = method.traits.needs_base
        inputs = one + ([base[key]] if uses_base else [])
        gen_k = torch.Generator(device=device).manual_seed(1)
        def merge(method=method, resolved=resolved, uses_base=uses_base, gen_k=gen_k):
            return method.fn(one, weights, base[key] if uses_base else None, key=key,
                             generator=gen_k, **resolved)
        if args.no_loop:
            row(label, merge, inputs)
            continue
        kernel, raw, ratio = paired(merge, lambda: raw_sum(inputs), device, args.repeat)
        loop, raw_loop, loop_ratio = paired(
            lambda: merge_state_dicts(name, sources, weights.tolist(),
                                      base=base if uses_base else None, params=params,
                                      device=device),
            lambda: [raw_sum([s[k] for s in sources] + ([base[k]] if uses_base else []))
                     for k in base], device, args.repeat)
        moved = (len(inputs) + 1) * one[0].numel() * 4 / 1e9
        print(f"{label:<16}{kernel * 1e3:>10.1f}{raw * 1e3:>9.1f}{ratio:>7.2f}"
              f"{moved / kernel:>7.1f}{loop * 1e3:>10.1f}{raw_loop * 1e3:>9.1f}"
              f"{loop_ratio:>7.2f}", flush=True)


if __name__ == "__main__":
    main()
