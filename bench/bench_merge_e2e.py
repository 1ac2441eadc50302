"""End-to-end merge of 5 sources, disk → disk: ours vs mergekit 0.1.5, same models, same config.

Each measurement runs in its own child process (imports excluded from the time), the tools
alternating, so peak memory is each tool's own: VmHWM (peak resident, page cache of mapped files
included) and the peak of RssAnon above the child's idle baseline (sampled every 2 ms; the memory
a merge really allocates). Tools:

* ``ours``: engine.merge.files.merge_files — sources memory-mapped, output streamed to one file.
* ``ours-whole`` (with --whole): the old path — load every source whole (load_file + NaN check),
  merge in memory, save_file — kept to show where the time went.
* ``ours-torch`` (with --torch): ``ours`` with the fused numba kernels off (engine/merge/fused.py),
  the torch kernels instead; ``ours`` pays the kernels' compile (first call in its process).
* ``ours-cold`` / ``ours-warm`` (with --trim-store DIR): ``ours`` with a TrimStore there (TIES'
  tie orders, engine/merge/trim_store.py): cold = the folder emptied first (a first merge sorts
  and writes them); warm = the next merge at --warm-density (a second merge of the same sources at
  another density reads them), beside ``ours-nostore-warm``: ``ours`` at --warm-density without a
  store (the warm merge's own baseline). The folder's size is printed; put it on disk, not /dev/shm (it
  would count as memory).
* ``mergekit``: mergekit.merge.run_merge from the config our export writes (mergekit_config).

Each method's time is also given as a fraction of the machine's copy bandwidth: (bytes of the
sources + base read once + output written once) / time, over torch.add's bandwidth measured in
the same run.

    python bench/bench_merge_e2e.py [--zoo DIR] [--methods linear ties] [--repeat 3] [--whole]
        [--trim-store DIR [--warm-density 0.5]]
"""
import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

from common import ROOT, open_bench_workspace, print_table


def _status(field: str) -> int:
    """A /proc/self/status field in bytes."""
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1]) * 1024
    return 0


def child(tool: str, job: dict) -> dict:
    """One merge in this process; returns its time and memory."""
    import torch

    if tool == "mergekit":
        from mergekit.config import MergeConfiguration
        from mergekit.merge import run_merge
        from mergekit.options import MergeOptions

        config = MergeConfiguration.model_validate(job["mergekit"])
        options = MergeOptions(copy_tokenizer=False, lazy_unpickle=False, quiet=True)
        run = lambda: run_merge(config, job["out"], options)  # noqa: E731
    elif tool in ("ours", "ours-torch", "ours-cold", "ours-warm", "ours-nostore-warm", "ours-serial"):
        from engine.merge import fused, sparse_trim
        from engine.merge.files import merge_files
        from engine.merge.trim_store import TrimStore

        fused.ENABLED = fused.ENABLED and tool != "ours-torch"
        if tool == "ours-serial":  # TIES' per-source plans one after another, as before they ran side by side
            sparse_trim.PARALLEL_MIN = 1 << 62
        store = TrimStore(job["store"], 64 * 10 ** 9) if tool in ("ours-cold", "ours-warm") else None
        if tool == "ours-cold":
            shutil.rmtree(job["store"], ignore_errors=True)
        params = ({**job["params"], "density": job["warm_density"]} if tool in ("ours-warm", "ours-nostore-warm")
                  else job["params"])

        run = lambda: merge_files(job["method"], job["sources"], Path(job["out"]) / "model.safetensors",  # noqa: E731
                                  job["weights"], base_dir=job["base"], params=params, store=store)
    else:
        from safetensors.torch import save_file

        from engine.merge import MERGES, merge_state_dicts
        from engine.zoo import load_state_dict

        def run():
            states = [load_state_dict(Path(s)) for s in job["sources"]]
            base = load_state_dict(Path(job["base"])) if MERGES.get(job["method"]).traits.needs_base else None
            out = merge_state_dicts(job["method"], states, job["weights"], base=base, params=job["params"])
            save_file({k: v.contiguous() for k, v in out.items()}, str(Path(job["out"]) / "model.safetensors"))
    Path(job["out"]).mkdir(parents=True, exist_ok=True)
    torch.set_num_threads(torch.get_num_threads())
    baseline = _status("RssAnon")
    peak = [baseline]
    done = threading.Event()

    def sample():
        while not done.is_set():
            peak[0] = max(peak[0], _status("RssAnon"))
            time.sleep(0.002)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    t0 = time.perf_counter()
    run()
    seconds = time.perf_counter() - t0
    done.set()
    sampler.join()
    written = sum(f.stat().st_size for f in Path(job["out"]).glob("*.safetensors"))
    out = {"seconds": seconds, "hwm": _status("VmHWM"), "anon": peak[0] - baseline, "written": written}
    if tool in ("ours-cold", "ours-warm"):
        out.update(store_bytes=store.nbytes(), store_writes=store.writes, store_hits=store.hits)
    return out


def add_bandwidth(gib: float = 0.5) -> float:
    """Bytes/s of torch.add(a, b, out=c) over float32 tensors (2 reads + 1 write), median of 5."""
    import torch

    n = int(gib * 2 ** 30 / 4)
    a, b, c = torch.rand(n), torch.rand(n), torch.empty(n)
    times = []
    for _ in range(6):
        t0 = time.perf_counter()
        torch.add(a, b, out=c)
        times.append(time.perf_counter() - t0)
    return 3 * 4 * n / statistics.median(times[1:])


def load() -> str:
    return os.getloadavg()[0].__format__(".1f")


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--methods", nargs="*", default=["linear", "task_arithmetic", "ties", "dare_ties"])
    ap.add_argument("--zoo", default="")
    ap.add_argument("--target", default="")
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--whole", action="store_true", help="also time the old load-whole path")
    ap.add_argument("--torch", action="store_true", help="also time ours with the torch kernels "
                    "instead of the fused numba ones")
    ap.add_argument("--out-dir", default=None, help="where the merged files go (default: the system's temp "
                    "folder; /dev/shm takes a slow disk out of the comparison)")
    ap.add_argument("--trim-store", default="", help="also time ours with a TIES trim store in this "
                    "folder (emptied first): a cold first merge, then a warm one at --warm-density")
    ap.add_argument("--warm-density", type=float, default=0.5)
    ap.add_argument("--serial-plans", action="store_true", help="also time ours with TIES' per-source "
                    "plans (selection, tie sort) one after another instead of on torch's threads")
    ap.add_argument("--child", nargs=2, metavar=("TOOL", "JOB_JSON"), help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        print("RESULT " + json.dumps(child(args.child[0], json.loads(Path(args.child[1]).read_text()))))
        return
    from engine.experiments import suggest_sources
    from engine.merge import MERGES
    from engine.merge.export import mergekit_config

    ws = open_bench_workspace("cpu", args.zoo)
    target = args.target or ws.zoo.locales[0]
    weights = suggest_sources(ws, target, top_k=5)
    sources = [str(ws.zoo.path(s)) for s in weights]
    source_bytes = sum(f.stat().st_size for s in sources for f in Path(s).glob("*.safetensors"))
    base_bytes = sum(f.stat().st_size for f in Path(ws.zoo.base).glob("*.safetensors"))
    tools = ["ours", "mergekit"] + (["ours-whole"] if args.whole else []) + \
        (["ours-torch"] if args.torch else []) + (["ours-cold", "ours-nostore-warm"] if args.trim_store else []) + \
        (["ours-serial"] if args.serial_plans else [])
    bandwidth = add_bandwidth()
    rows = []
    tmp = Path(tempfile.mkdtemp(prefix="bench_e2e_", dir=args.out_dir))
    try:
        for method in args.methods:
            params = {}
            most = min(len(sources), MERGES.get(method).traits.max_sources or len(sources))
            # what mergekit can run: all sources, else equal weights (karcher, model stock, SCE),
            # else two (SLERP)
            for k, equal in [(most, False), (most, True), (2, False), (2, True)]:
                w = [1.0 / k] * k if equal else list(weights.values())[:k]
                kit, why = mergekit_config({"method": method, "sources": sources[:k], "weights": w,
                                            "params": params, "base": str(ws.zoo.base)})
                if kit is not None:
                    break
            if kit is None:
                print(f"skipping {method}: {why}")
                continue
            job = {"method": method, "sources": sources[:k], "weights": w,
                   "params": params, "base": str(ws.zoo.base), "mergekit": kit, "store": args.trim_store,
                   "warm_density": args.warm_density}
            results = {t: [] for t in tools + (["ours-warm"] if args.trim_store else [])}
            loads = []
            for rep in range(args.repeat):
                order = tools[rep % len(tools):] + tools[:rep % len(tools)]
                order = [t for tool in order for t in ([tool, "ours-warm"] if tool == "ours-cold" else [tool])]
                for tool in order:
                    out = tmp / f"{tool}_{method}"
                    shutil.rmtree(out, ignore_errors=True)
                    spec = tmp / "job.json"
                    spec.write_text(json.dumps({**job, "out": str(out)}))
                    loads.append(os.getloadavg()[0])
                    proc = subprocess.run([sys.executable, __file__, "--child", tool, str(spec)],
                                          capture_output=True, text=True, cwd=str(ROOT))
                    line = [ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT ")]
                    if proc.returncode or not line:
                        raise SystemExit(f"{tool} {method} failed:\n{proc.stderr[-3000:]}")
                    results[tool].append(json.loads(line[0][7:]))
                    shutil.rmtree(out, ignore_errors=True)
            med = {t: {k: statistics.median(r[k] for r in rs) for k in rs[0]} for t, rs in results.items()}
            needs_base = MERGES.get(method).traits.needs_base
            moved = source_bytes * k / len(sources) + (base_bytes if needs_base else 0) + med["ours"]["written"]
            row = {"method": method, "sources": f"{k}{' equal' if equal else ''}", "ours s": f"{med['ours']['seconds']:.2f}",
                   "mergekit s": f"{med['mergekit']['seconds']:.2f}",
                   "speed-up": f"{med['mergekit']['seconds'] / med['ours']['seconds']:.2f}×"}
            if args.whole:
                row["ours-whole s"] = f"{med['ours-whole']['seconds']:.2f}"
            if args.torch:
                row["ours-torch s"] = f"{med['ours-torch']['seconds']:.2f}"
            if args.serial_plans:
                row["ours-serial s"] = f"{med['ours-serial']['seconds']:.2f}"
            if args.trim_store:
                for t in ("ours-cold", "ours-warm"):
                    row[f"{t} s"] = f"{med[t]['seconds']:.2f}"
                    row[f"{t} store MB"] = f"{med[t]['store_bytes'] / 1e6:.0f}"
                    row[f"{t} writes/hits"] = f"{med[t]['store_writes']:.0f}/{med[t]['store_hits']:.0f}"
                row["ours-nostore-warm s"] = f"{med['ours-nostore-warm']['seconds']:.2f}"
                row["warm density"] = args.warm_density
            for t in results:
                row[f"{t} anon GB"] = f"{med[t]['anon'] / 1e9:.2f}"
            for t in results:
                row[f"{t} HWM GB"] = f"{med[t]['hwm'] / 1e9:.2f}"
            for t in ("ours", "mergekit"):
                row[f"{t} / add bw"] = f"{moved / med[t]['seconds'] / bandwidth:.3f}"
            row["load"] = f"{statistics.median(loads):.1f}"
            rows.append(row)
            print(json.dumps(row, ensure_ascii=False), flush=True)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    print_table(rows, f"disk→disk merge of up to {len(sources)} sources → {target} on {ws.zoo.name} "
                      f"({ws.zoo.parameter_count() / 1e6:.1f} M params; {len(tools)} tools alternating, "
                      f"each run in its own process, median of {args.repeat}; torch.add bandwidth "
                      f"{bandwidth / 1e9:.1f} GB/s; load average {load()} on {os.cpu_count()} CPUs; output to {tmp.parent})")


if __name__ == "__main__":
    main()
