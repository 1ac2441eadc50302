"""The durable store of TIES' sorts (engine/merge/trim_store.py) changes speed, never results:

- whole and rows merges (ties at the cut) and a CMA-ES search are bit for bit the same with the
  store off, cold and warm; a warm store sorts nothing;
- a truncated, garbled, object-dtype (never unpickled), mistyped, misshaped or foreign file is one
  warning naming it, removed and recomputed; an unwritable folder is one warning;
- the budget evicts the least recently used files; two processes writing one entry both succeed.
"""
import os
import subprocess
import sys
import threading
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch

from engine.merge import MERGES, MergeCache, merge_state_dicts
from engine.merge.rows import merge_rows, row_ids
from engine.merge.trim_store import TrimStore

torch.set_num_threads(1)
NAMES = ["de-DE", "en-US"]
ROOT = Path(__file__).resolve().parent.parent


def tied_inputs(seed=0, rows=300):
    """Quantised task vectors: every cut lands inside a run of equal magnitudes (surplus ties),
    so mergekit's tie order decides, and two continuous-valued keys beside them."""
    g = torch.Generator().manual_seed(seed)
    base = {"w": torch.randn(rows, 64, generator=g), "v": torch.randn(4096, generator=g)}
    sources = [{"w": base["w"] + torch.randint(-2, 3, (rows, 64), generator=g).float() / 8,
                "v": base["v"] + torch.randn(4096, generator=g)} for _ in NAMES]
    return sources, base


def ties(sources, base, cache=None, density=0.3):
    return merge_state_dicts("ties", sources, [0.6, 0.4], base=base, params={"density": density},
                             names=NAMES, cache=cache)


def same(a, b):
    return a.keys() == b.keys() and all(
        torch.equal(a[k].view(torch.int32), b[k].view(torch.int32)) for k in a)


def no_background_compiles():
    """Waits for searches' kernel warm-up threads: numba compiles inside warnings.catch_warnings,
    whose exit on another thread would restore the filters mid-test and lose a recorded warning."""
    for thread in threading.enumerate():
        if thread.name == "fused-warm":
            thread.join()


def files(root, kind=None):
    return sorted(p for p in Path(root).glob("??/*.npy") if kind is None or p.name.endswith(
        f".{kind}.npy"))


def test_whole_merges_are_identical_off_cold_and_warm_and_warm_sorts_nothing(tiny_ws, tmp_path):
    for sources, base in (tied_inputs(), ([tiny_ws.zoo.state_dict(n) for n in NAMES],
                                          tiny_ws.zoo.base_state_dict())):
        root = tmp_path / str(len(base))
        expected = {d: ties(sources, base, density=d) for d in (0.3, 0.55)}
        cold = TrimStore(root, 10 ** 9)
        cache = MergeCache(cold)
        for d in (0.3, 0.55):
            assert same(ties(sources, base, cache, d), expected[d])
        assert cold.writes == len(files(root)) and files(root, "tie_order")  # ties were settled
        filled = MergeCache(None)  # what the uncached arrays cost in memory ...
        for d in (0.3, 0.55):
            ties(sources, base, filled, d)
        held = sum(t.numel() * t.element_size() for e in cache._entries.values()
                   for slot, t in e._derived.items() if slot[0] in ("sorted", "tie_order"))
        assert held > 0 and cache.nbytes() < filled.nbytes() - held // 2  # ... the cold store maps
        warm = TrimStore(root, 10 ** 9)
        cache = MergeCache(warm)
        for d in (0.55, 0.3):
            assert same(ties(sources, base, cache, d), expected[d])
        assert warm.writes == 0 and warm.hits == cold.writes and warm.rejected == 0
        assert cache.nbytes() < MergeCache(None).nbytes() + 10 ** 6  # mapped, not held


def test_breadcrumbs_order_is_stored_and_merges_are_identical(tmp_path):
    sources, base = tied_inputs(5)

    def run(cache=None):
        return merge_state_dicts("breadcrumbs_ties", sources, [0.6, 0.4], base=base,
                                 params={"density": 0.6, "gamma": 0.05}, names=NAMES, cache=cache)
    expected = run()
    for label in ("cold", "warm"):
        store = TrimStore(tmp_path, 10 ** 9)
        assert same(run(MergeCache(store)), expected), label
    # sorted magnitudes for every tensor and source; the sort order only where a band edge
    # of breadcrumbs split equal magnitudes
    sorted_files, orders = files(tmp_path, "sorted"), files(tmp_path, "order")
    assert len(sorted_files) == 4 and 1 <= len(orders) <= 4
    assert store.hits == len(sorted_files) + len(orders) and store.writes == 0
    assert np.load(files(tmp_path, "order")[0], mmap_mode="r").dtype == np.int64


def test_rows_merges_are_identical_off_cold_and_warm(tmp_path):
    sources, base = tied_inputs(1)
    rows = row_ids([0, 7, 50, 51, 299] + list(range(100, 140)))

    def part(cache):
        return merge_rows(MERGES.get("ties"), [s["w"] for s in sources], base["w"], [0.6, 0.4],
                          {"density": 0.3}, rows, key="w", names=NAMES,
                          device=torch.device("cpu"), cache=cache)
    full = ties(sources, base)["w"][rows]
    assert torch.equal(part(None), full)
    for label in ("cold", "warm"):
        store = TrimStore(tmp_path, 10 ** 9)
        assert torch.equal(part(MergeCache(store)), full), label
    assert store.hits == 4 and store.writes == 0  # two sources' magnitudes and tie orders


def test_a_search_scores_the_same_with_a_warm_store(tiny_ws, tmp_path):
    from tests.test_evolve_rows import Recording, config

    def run(store):
        evo = Recording(tiny_ws, config("cmaes"))
        evo.sources.cache.store = store
        while evo.step():
            pass
        return evo.scored
    plain = run(None)
    cold, warm = TrimStore(tmp_path, 10 ** 9), TrimStore(tmp_path, 10 ** 9)
    assert run(cold) == plain and cold.writes > 0
    assert run(warm) == plain and warm.writes == 0 and warm.hits == cold.writes


def test_searches_get_the_workspace_store(tiny_ws):
    from engine.evolve.build import Sources

    src = Sources(tiny_ws, NAMES, need_base=True)
    assert src.cache.store.root == tiny_ws.cache_dir / "trim"
    assert src.cache.store.budget == int(tiny_ws.settings.trim_store_gb * 1e9) > 0


class Marker:
    """Unpickling this makes a folder: proof that a file was unpickled."""

    def __init__(self, path):
        self.path = path

    def __reduce__(self):
        return os.mkdir, (self.path,)


def corrupt(how, path, tmp_path):
    n = np.load(path, mmap_mode="r").shape[0]
    if how == "truncated":
        path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    elif how == "garbage":
        path.write_bytes(np.random.default_rng(5).bytes(path.stat().st_size))
    elif how == "object":
        with open(path, "wb") as f:
            np.save(f, np.array([Marker(str(tmp_path / "unpickled"))] * n, dtype=object),
                    allow_pickle=True)
    elif how == "dtype":
        np.save(path, np.zeros(n, dtype=np.float64))
    elif how == "shape":
        np.save(path, np.zeros((n, 1), dtype=np.load(path).dtype))
    elif how == "foreign":  # another tensor's (valid) array under this name
        size = torch.randn(n, generator=torch.Generator().manual_seed(9)).abs()
        np.save(path, (torch.sort(size).values if path.name.endswith(".sorted.npy") else
                       torch.argsort(size, descending=True).to(torch.int32)).numpy())


@pytest.mark.parametrize("kind", ["sorted", "tie_order"])
@pytest.mark.parametrize("how", ["truncated", "garbage", "object", "dtype", "shape", "foreign"])
def test_a_bad_file_is_one_warning_removed_and_recomputed(tmp_path, kind, how):
    sources, base = tied_inputs(2)
    expected = ties(sources, base)
    root = tmp_path / "store"
    ties(sources, base, MergeCache(TrimStore(root, 10 ** 9)))
    store = TrimStore(root, 10 ** 9)
    shape_of = {p: np.load(p, mmap_mode="r").shape for p in files(root, kind)}
    target = next(p for p in files(root, kind) if shape_of[p] == (300 * 64,))
    corrupt(how, target, tmp_path)
    no_background_compiles()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        assert same(ties(sources, base, MergeCache(store)), expected)
    named = [w for w in caught if str(target) in str(w.message)]
    assert len(named) == 1 and len(caught) == 1, ([str(w.message) for w in caught], store.hits,
                                                  store.rejected, store.writes, target.exists())
    assert not (tmp_path / "unpickled").exists()  # never unpickled
    assert store.rejected == 1 and store.writes == 1  # rewritten
    again = TrimStore(root, 10 ** 9)
    assert same(ties(sources, base, MergeCache(again)), expected)
    assert again.rejected == 0 and again.writes == 0


def test_an_unwritable_folder_is_one_warning_and_merges_still_work(tmp_path):
    sources, base = tied_inputs(4)
    blocker = tmp_path / "a file"
    blocker.write_text("not a folder")
    store = TrimStore(blocker / "trim", 10 ** 9)
    no_background_compiles()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        assert same(ties(sources, base, MergeCache(store)), ties(sources, base))
    assert len(caught) == 1 and str(blocker / "trim") in str(caught[0].message)
    assert store.writes == 0


def test_the_budget_evicts_the_least_recently_used(tmp_path):
    arrays = {d: torch.arange(1000, dtype=torch.float32) + i
              for i, d in enumerate(["aa01", "bb02", "cc03"])}
    size = 1000 * 4 + 128  # each .npy: data + header
    store = TrimStore(tmp_path, 2 * size)
    for at, d in enumerate(["aa01", "bb02"]):
        store.put("sorted", d, arrays[d])
        os.utime(store.path(d, "sorted"), (1000 + at, 1000 + at))
    hit = store.get("sorted", "aa01", 1000, lambda: pytest.fail("a hit was recomputed"),
                    lambda a: None)  # a hit touches aa01: bb02 is now the oldest
    assert torch.equal(hit, arrays["aa01"]) and store.hits == 1
    store.put("sorted", "cc03", arrays["cc03"])
    assert [p.name for p in files(tmp_path)] == ["aa01.sorted.npy", "cc03.sorted.npy"]
    assert store.evicted == 1 and store.nbytes() <= 2 * size
    off = TrimStore(tmp_path / "off", 0)
    off.put("sorted", "dd04", arrays["aa01"])
    assert not files(tmp_path / "off")


def test_two_processes_writing_one_entry_both_succeed(tmp_path):
    script = (
        "import sys, torch\n"
        "from engine.merge.trim_store import TrimStore\n"
        "store = TrimStore(sys.argv[1], 10 ** 10)\n"
        "value = torch.arange(2_000_000, dtype=torch.float32)\n"
        "for _ in range(15):\n"
        "    store.put('sorted', 'ab' + '0' * 38, value)\n")
    procs = [subprocess.Popen([sys.executable, "-c", script, str(tmp_path)], cwd=ROOT,
                              stderr=subprocess.PIPE, text=True) for _ in range(2)]
    for p in procs:
        assert p.wait(timeout=120) == 0, p.stderr.read()
    assert [p.name for p in tmp_path.glob("ab/*")] == ["ab" + "0" * 38 + ".sorted.npy"]
    loaded = np.load(files(tmp_path)[0], allow_pickle=False)
    assert loaded.dtype == np.float32 and np.array_equal(loaded, np.arange(2_000_000,
                                                                           dtype=np.float32))


def test_an_object_file_is_never_unpickled_even_by_name(tmp_path):
    """np.load with allow_pickle=True would run the marker; the store's load refuses it."""
    path = tmp_path / "x.npy"
    with open(path, "wb") as f:
        np.save(f, np.array([Marker(str(tmp_path / "ran"))], dtype=object), allow_pickle=True)
    store = TrimStore(tmp_path, 10 ** 9)
    no_background_compiles()
    with pytest.warns(RuntimeWarning, match="x.npy holds object"):
        assert store._load(path, "sorted", 1, lambda a: None) is None
    assert not (tmp_path / "ran").exists() and not path.exists()


def test_mapped_arrays_hold_no_file_descriptors(tmp_path):
    """A search maps hundreds of arrays (521 at XLM-R size): one descriptor each (numpy's memmap)
    would run into the usual limit of 1,024 (256 on macOS) on bigger models."""
    store = TrimStore(tmp_path, 10 ** 9)
    digests = [f"{i:02x}" + "0" * 38 for i in range(40)]
    for i, d in enumerate(digests):
        store.put("sorted", d, torch.arange(5000, dtype=torch.float32) + i)
    before = len(os.listdir("/proc/self/fd"))
    held = [store.get("sorted", d, 5000, lambda: pytest.fail("recomputed"), lambda a: None)
            for d in digests]
    assert store.hits == 40 and len(os.listdir("/proc/self/fd")) < before + 5
    assert all(float(t[0]) == i for i, t in enumerate(held))


# ---- the budget as a setting: CLI, workspace, Setup page ------------------------------------------

def test_the_budget_is_a_checked_setting_on_the_cli_and_in_the_workspace(tiny_zoo_dir, tmp_path):
    from engine.cli import UsageError, build_parser
    from engine.limits import SettingError
    from engine.workspace import Settings, open_workspace

    with pytest.raises(UsageError, match=r"trim_store_gb must be in \[0.0, 100000.0\], got -1"):
        build_parser().parse_args(["evolve", "--target", "nl-NL", "--trim-store-gb", "-1"])
    args = build_parser().parse_args(["evolve", "--target", "nl-NL", "--trim-store-gb", "0.5"])
    assert args.trim_store_gb == 0.5
    with pytest.raises(SettingError, match="trim_store_gb must be in"):
        open_workspace(Settings(zoo=str(tiny_zoo_dir), trim_store_gb=-3))


def test_the_cli_budget_reaches_the_search(tiny_zoo_dir, tmp_path):
    """--trim-store-gb 0 turns the store off (no folder); the default fills <cache-dir>/trim/."""
    from engine.cli import main

    def evolve(cache, *extra):
        argv = ["evolve", "--zoo", str(tiny_zoo_dir), "--cache-dir", str(cache), "--target", "nl-NL",
                "--algorithm", "cmaes", "--generations", "1", "--population", "2", "--top-k", "2",
                "--quiet", *extra]
        assert main(argv) in (0, None)
    evolve(tmp_path / "off", "--trim-store-gb", "0")
    assert not (tmp_path / "off" / "trim").exists()
    evolve(tmp_path / "on")
    assert files(tmp_path / "on" / "trim")
