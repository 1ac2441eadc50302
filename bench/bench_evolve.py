"""Where an evolutionary generation's time goes, and how many candidates it evaluates per second.

Runs a few generations of EvoMerge and CMA-ES (seed 004's defaults otherwise: population 8,
3 sources) on the demo zoo when it is built (cache/demo_zoo), else on the tiny test zoo, and splits
each generation's wall time into model evaluation (loading a candidate into the working model +
forward passes on the dev data, frankenmerge's own dev passes and the champion's test pass
included), merging (the merge kernels) and the rest (genome operations, bookkeeping, checkpoint).
Goal: outside-evaluation share <= 10 %.

--merge-cache both runs every algorithm with the run's MergeCache on and off (the search is the
same, only merging time changes), and times single merges (linear, TIES, DARE) of the run's
sources: uncached, cached at first use (building the cache) and cached in steady state.

--incremental both runs every algorithm before and after incremental merging, side by side (the
same search and numbers): before = every candidate fully merged, fully loaded into the working
model, merged and evaluated in turn; after = only changed layer groups merged (resident.py), only
changed tensors copied (Evaluator.working_model), the next candidate merged on a second thread
while one is evaluated where a core is free (runner.prefetch; --threads 1 leaves one).

--rows both runs every algorithm with whole merges and with only the embedding rows evaluation
reads merged (engine/merge/rows.py; row-local methods such as TIES), side by side.

--warm both runs every algorithm without and with the fused kernels compiled up front
(engine/merge/fused_warm.py; without: the process is treated as cold, so only tensors of 4 M
entries or more run fused, as before the warm-up existed); "fused" counts the fused merges.

--trim-store all runs every algorithm with the durable store of TIES' sorts (sorted magnitudes,
mergekit's tie orders: engine/merge/trim_store.py) off, cold (an empty store folder) and warm (the
folder the cold run filled), side by side; "gen0 s" is generation 0's time (where the sorts are
made), "store MB" what the folder holds, "peak anon MB" the process's peak anonymous memory
(sampled every 50 ms; mapped store files are page cache, not counted). Default off: runs side by
side never share a store (a search's own default is the workspace's store, <cache_dir>/trim/).

    python bench/bench_evolve.py [--zoo DIR] [--target nl-NL] [--generations 3] [--dev-size 0 16]
                                 [--device auto] [--algorithms evomerge cmaes] [--threads 1]
                                 [--merge-cache on|off|both] [--dev-splits validation train]
                                 [--incremental on|off|both] [--population 8] [--layer-groups 2]
                                 [--rows on|off|both] [--warm on|off|both] [--top-k 3]
                                 [--trim-store off|cold|warm|all] [--trim-store-dir DIR]
"""
from __future__ import annotations

import argparse
import gc
import os
import statistics
import sys
import shutil
import tempfile
import threading
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
from engine.cli import table_text  # noqa: E402
from engine.device import describe_device  # noqa: E402
from engine.evolve import Evolution, EvolveConfig  # noqa: E402
from engine.evolve.search import run_label  # noqa: E402
from engine.workspace import Settings, open_workspace  # noqa: E402


def default_zoo() -> Path:
    demo = ROOT / "cache" / "demo_zoo"
    if (demo / "zoo.json").exists():
        return demo
    tiny = ROOT / "cache" / "test_zoo"
    if not (tiny / "zoo.json").exists():
        from engine.demo.build import build_demo_zoo

        build_demo_zoo(tiny, size="tiny")
    return tiny


class AnonPeak:
    """The process's peak anonymous memory (RssAnon), sampled on a thread while it runs."""

    def __init__(self, every: float = 0.05):
        self.peak, self.every, self._stop = 0, every, threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    @staticmethod
    def now() -> int:
        try:
            with open("/proc/self/status") as f:
                for line in f:
                    if line.startswith("RssAnon:"):
                        return int(line.split()[1]) * 1024
        except OSError:
            pass
        return 0

    def _run(self):
        while not self._stop.is_set():
            self.peak = max(self.peak, self.now())
            self._stop.wait(self.every)

    def __enter__(self):
        self.peak = self.now()
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()


def trim_store_for(mode: str, folder: Path):
    """The run's TrimStore: None (off), an emptied folder (cold) or the folder as it is (warm)."""
    from engine.merge.trim_store import TrimStore

    if mode == "off":
        return None
    if mode == "cold":
        shutil.rmtree(folder, ignore_errors=True)
    return TrimStore(folder, 64 * 10 ** 9)


def measure(ws, config: EvolveConfig, incremental: bool = True, rows: bool = True,
            warm: bool = True, trim_store: str = "off", store_dir: Path = None) -> dict:
    with AnonPeak() as anon:
        out = _measure(ws, config, incremental, rows, warm, trim_store, store_dir)
    out["peak anon MB"] = anon.peak / 2 ** 20
    return out


def _measure(ws, config: EvolveConfig, incremental: bool, rows: bool, warm: bool,
             trim_store: str, store_dir) -> dict:
    from engine.merge import fused

    if not warm:
        fused.COMPILED.clear()  # cold: only tensors from COLD_MIN entries start the kernels
    fused_before = fused.RUNS["ties"] + fused.RUNS["dare"]
    started = time.perf_counter()
    ws.evaluator.incremental_load = incremental
    evo = (Evolution if warm else type("Cold", (Evolution,), {"warm_kernels": False}))(ws, config)
    evo.prefetch = None if incremental else False  # None: when a core is free (the default)
    if not incremental:
        evo.sources.resident = None
    if not rows:
        evo.sources.rows = {}  # whole merges (nothing is built before the first step)
    if evo.sources.cache is not None:
        evo.sources.cache.store = trim_store_for(trim_store, store_dir)
    store = evo.sources.cache.store if evo.sources.cache is not None else None
    restricted = sum(len(r) for r in evo.sources.rows.values())
    setup = time.perf_counter() - started
    copied = ws.evaluator.copied_tensors
    tested = evo.fitness.test_seconds
    while evo.step():
        pass
    r = evo.result()
    total = r["seconds"]
    steady = [h for h in r["history"] if h["generation"] > 0]
    steady_s = sum(h["seconds"] for h in steady) or float("nan")
    steady_eval = sum(h["eval_seconds"] for h in steady)
    cache = evo.sources.cache
    resident = evo.sources.resident
    return {"algorithm": run_label(config), "dev": f"{config.dev_split} ({len(evo.fitness.dev)})",
            "cache": "on" if cache is not None else "off",
            "incremental": "on" if incremental else "off",
            "rows only": "on" if rows else "off", "rows merged": restricted or "all",
            "warm": "on" if warm else "off",
            "trim store": trim_store if store is not None else "off",
            "store hits/writes": f"{store.hits}/{store.writes}" if store is not None else "-",
            "store MB": store.nbytes() / 2 ** 20 if store is not None else 0.0,
            "gen0 s": r["history"][0]["seconds"] if r["history"] else float("nan"),
            "fused": fused.RUNS["ties"] + fused.RUNS["dare"] - fused_before,
            "groups merged/reused": (f"{resident.merged_groups}/{resident.reused_groups}"
                                     if resident is not None else "-"),
            "tensors loaded": ws.evaluator.copied_tensors - copied,
            "cache MB": cache.nbytes() / 2 ** 20 if cache is not None else 0.0,
            "gens": r["generation"] + 1, "evals": r["evaluations"],
            "forwards": r["forward_passes"], "setup_s": setup, "gen_s": total / (r["generation"] + 1),
            "evals/s": r["evals_per_s"], "eval %": 100 * r["eval_seconds"] / total,
            "merge %": 100 * r["merge_seconds"] / total,
            "other %": 100 * r["overhead_share"],
            "outside %": 100 * r["outside_eval_share"],
            "outside % (gen>=1)": 100 * (1 - steady_eval / steady_s) if steady else float("nan"),
            "test %": 100 * (evo.fitness.test_seconds - tested) / total,
            "merge s/cand": r["merge_seconds"] / max(r["evaluations"], 1),
            "eval s/cand": r["eval_seconds"] / max(r["evaluations"], 1),
            "load avg": os.getloadavg()[0]}


def merge_times(ws, names, repeat: int = 3) -> list:
    """Seconds per whole-model merge of ``names`` (weights .5/.3/.2…, TIES density .2, DARE .5):
    without a cache, with a fresh one (its first use builds it), and with a warm one (median)."""
    from engine.evolve.build import Sources
    from engine.merge import MergeCache, merge_state_dicts

    src = Sources(ws, names, need_base=True, cache=False)
    w = [0.5, 0.3, 0.2][:len(names)] + [0.1] * max(0, len(names) - 3)
    rows = []
    for method, params in (("linear", {}), ("ties", {"density": 0.2}),
                           ("dare_linear", {"density": 0.5})):
        base = src.base if method != "linear" else None

        def once(cache=None):
            start = time.perf_counter()
            merge_state_dicts(method, src.states, w, base=base, params=params, names=names,
                              device=src.device, cache=cache)
            return time.perf_counter() - start

        plain = statistics.median(once() for _ in range(repeat))
        cache = MergeCache()
        first = once(cache)
        warm = statistics.median(once(cache) for _ in range(repeat))
        rows.append({"merge": method, "uncached s": plain, "cache build s": first,
                     "cached s": warm, "speed-up": plain / warm,
                     "cache MB": cache.nbytes() / 2 ** 20})
    return rows


def resolved_sources(ws, config: EvolveConfig) -> list:
    from engine.evolve.runner import resolve_config

    return resolve_config(ws, config).sources


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--zoo", default="", help="zoo folder (default: demo zoo, else tiny)")
    parser.add_argument("--target", default="nl-NL")
    parser.add_argument("--generations", type=int, default=3)
    parser.add_argument("--dev-size", type=int, nargs="+", default=[0],
                        help="dev examples per candidate, each run side by side (0: the whole split)")
    parser.add_argument("--dev-splits", nargs="*", default=["validation"],
                        help="the split(s) fitness is measured on, each run side by side: the share "
                             "outside evaluation shrinks as the dev set grows (MASSIVE: ~2k per locale)")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--top-k", type=int, default=3)
    parser.add_argument("--algorithms", nargs="*", default=["evomerge", "cmaes", "optuna_tpe"])
    parser.add_argument("--population", type=int, default=8)
    parser.add_argument("--layer-groups", type=int, default=2)
    parser.add_argument("--incremental", choices=("on", "off", "both"), default="on",
                        help="incremental merging, loading and prefetch (both: before and after, "
                             "side by side)")
    parser.add_argument("--rows", choices=("on", "off", "both"), default="on",
                        help="merge only the embedding rows evaluation reads (both: whole merges "
                             "and rows only, side by side)")
    parser.add_argument("--warm", choices=("on", "off", "both"), default="on",
                        help="compile the fused kernels up front (both: cold and warm, side by "
                             "side)")
    parser.add_argument("--selection", choices=("exact", "fast"), default="exact",
                        help="TIES selection of the grouped searches (fast: no mergekit tie order, "
                             "whose one full argsort per tensor and source a run builds)")
    parser.add_argument("--threads", type=int, default=1,
                        help="torch threads (1: steady figures on a shared machine; 0: torch's)")
    parser.add_argument("--merge-cache", choices=("on", "off", "both"), default="on",
                        help="the search's MergeCache (both: each algorithm twice, side by side, "
                             "plus single-merge timings)")
    parser.add_argument("--trim-store", choices=("off", "cold", "warm", "all"), default="off",
                        help="the durable store of TIES' sorts (all: off, cold and warm side by "
                             "side; default off, so that runs side by side never share one and "
                             "the README's earlier figures keep their meaning)")
    parser.add_argument("--trim-store-dir", default="",
                        help="the store folder for cold/warm (default: in the bench's cache "
                             "folder; warm alone needs one a previous run filled)")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    from engine.evolve.cmaes import _cma
    from engine.evolve.optuna_search import _optuna

    _cma(), _optuna()  # imported before any timing: the first run must not pay them alone
    zoo = Path(args.zoo) if args.zoo else default_zoo()
    with tempfile.TemporaryDirectory() as cache:
        ws = open_workspace(Settings(zoo=str(zoo), cache_dir=cache, device=args.device))
        dev = ws.dataset.get(args.target, "validation")
        n_dev = ", ".join(str(n or len(dev)) for n in args.dev_size)
        params = ws.zoo.parameter_count()
        print(f"zoo {ws.zoo.name} ({zoo}): {len(ws.zoo.locales)} models, {params / 1e6:.1f} M "
              f"parameters, {ws.zoo.config().get('num_hidden_layers')} layers; target "
              f"{args.target}, {n_dev} dev examples; {describe_device(ws.evaluator.device)}")
        rows = []
        caches = {"on": [True], "off": [False], "both": [False, True]}[args.merge_cache]
        sources = None
        both = {"on": [True], "off": [False], "both": [False, True]}
        stores = {"all": ["off", "cold", "warm"]}.get(args.trim_store, [args.trim_store])
        store_dir = Path(args.trim_store_dir or Path(cache) / "trim_bench")
        settings = [(a, split, size, cache, inc, whole, warm, store)
                    for a in args.algorithms for split in args.dev_splits for size in args.dev_size
                    for cache in caches for inc in both[args.incremental] for whole in both[args.rows]
                    for warm in both[args.warm] for store in stores]
        for algorithm, dev_split, dev_size, cache, incremental, restricted, warm, store in settings:
            config = EvolveConfig(
                target=args.target, algorithm=algorithm, top_k=args.top_k,
                generations=args.generations, dev_size=dev_size,
                dev_split=dev_split, patience=0, seed=0, merge_cache=cache,
                population=args.population, **({} if algorithm == "evomerge" else
                                               {"layer_groups": args.layer_groups,
                                                "method_params": {} if args.selection == "exact"
                                                else {"selection": args.selection}}))
            rows.append(measure(ws, config, incremental, restricted, warm, store, store_dir))
            gc.collect()  # the run's sources and merge cache (GBs at XLM-R size) go before the next
            print(table_text(rows[-1:], "{:.2f}"), flush=True)  # as they come
            sources = sources or resolved_sources(ws, config)
        print(table_text(rows, "{:.2f}"))
        judged = [r for r in rows if r["cache"] == "on" and r["incremental"] == "on"
                  and r["dev"].startswith("validation")
                  and r["rows only"] == ("off" if args.rows == "off" else "on")
                  and r["warm"] == ("off" if args.warm == "off" else "on")] or rows
        worst = max(r["outside %"] for r in judged)
        print(f"goal: outside-evaluation share <= 10 %: {'met' if worst <= 10 else 'not met'} "
              f"(worst {worst:.1f} %)")
        if args.merge_cache == "both" and sources:
            print(f"\nsingle merges of {', '.join(sources)} "
                  f"({torch.get_num_threads()} threads):")
            print(table_text(merge_times(ws, sources), "{:.3f}"))


if __name__ == "__main__":
    main()
