"""One-shot TIES merges (no MergeCache) reuse the trim store's tie orders, and change nothing else:

- torch and fused kernels, whole state dicts and disk→disk files: the same bits with the store
  off, cold (orders sorted and written) and warm at another density (read, nothing sorted);
- tensors are hashed only where a cut lands on surplus ties: a merge without ties leaves the
  store untouched and hashes nothing;
- a corrupt store file is one warning and recomputed, an unwritable store one warning: same bits;
- the merge job (experiments.build_merge) uses the workspace's <cache_dir>/trim/.
"""
import warnings
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from engine.experiments import Candidate, build_merge
from engine.merge import fused, merge_state_dicts, trim_store
from engine.merge.files import merge_files
from engine.merge.trim_store import TrimStore
from engine.workspace import Settings, open_workspace
from engine.zoo import Zoo, load_state_dict

NAMES = ["de-DE", "en-US"]
WEIGHTS = [0.6, 0.4]


def tied_inputs(rows, seed=0):
    """'w': quantised task vectors (every cut lands on surplus ties); 'v': continuous ones."""
    g = torch.Generator().manual_seed(seed)
    base = {"w": torch.randn(rows, 64, generator=g), "v": torch.randn(4096, generator=g)}
    sources = [{"w": base["w"] + torch.randint(-2, 3, (rows, 64), generator=g).float() / 8,
                "v": base["v"] + torch.randn(4096, generator=g)} for _ in NAMES]
    return sources, base


def ties(sources, base, density, store=None):
    return merge_state_dicts("ties", sources, WEIGHTS, base=base, params={"density": density},
                             names=NAMES, store=store)


def same(a, b):
    return a.keys() == b.keys() and all(
        torch.equal(a[k].view(torch.int32), b[k].view(torch.int32)) for k in a)


def orders(root):
    return sorted(Path(root).glob("??/*.tie_order.npy"))


@pytest.fixture
def hashed(monkeypatch):
    """Counts tensor_digest calls (the hashing a one-shot merge may add)."""
    calls = []
    real = trim_store.tensor_digest

    def counting(t):
        calls.append(t.numel())
        return real(t)
    monkeypatch.setattr(trim_store, "tensor_digest", counting)
    return calls


@pytest.mark.parametrize("path", ["torch", "fused"])
def test_off_cold_and_warm_at_another_density_are_the_same_bits(path, tmp_path, monkeypatch,
                                                                hashed):
    if path == "fused":
        if not fused.AVAILABLE:
            pytest.skip("numba not importable")
        monkeypatch.setattr(fused, "COLD_MIN", fused.MIN_ENTRIES)
    else:
        monkeypatch.setattr(fused, "ENABLED", False)
    sources, base = tied_inputs(rows=fused.MIN_ENTRIES // 64)
    expected = {d: ties(sources, base, d) for d in (0.3, 0.55)}
    assert not hashed  # no store: no hashing
    runs = fused.RUNS["ties"]
    cold = TrimStore(tmp_path, 10 ** 9)
    assert same(ties(sources, base, 0.3, cold), expected[0.3])
    assert cold.writes == len(NAMES) == len(orders(tmp_path)) and cold.hits == 0
    assert len(hashed) == len(NAMES) + 1  # both sources of 'w' and its base, 'v' never
    warm = TrimStore(tmp_path, 10 ** 9)
    assert same(ties(sources, base, 0.55, warm), expected[0.55])
    assert warm.writes == 0 and warm.hits == len(NAMES) and warm.rejected == 0
    assert (fused.RUNS["ties"] > runs) == (path == "fused")


def test_a_merge_without_surplus_ties_hashes_nothing_and_stores_nothing(tmp_path, hashed):
    sources, base = tied_inputs(rows=64)
    only_v = [{"v": s["v"]} for s in sources]
    store = TrimStore(tmp_path, 10 ** 9)
    assert same(ties(only_v, {"v": base["v"]}, 0.3, store), ties(only_v, {"v": base["v"]}, 0.3))
    assert not hashed and store.writes == store.hits == 0 and not list(tmp_path.iterdir())


def test_a_corrupt_file_is_one_warning_and_recomputed(tmp_path):
    sources, base = tied_inputs(rows=300)
    expected = ties(sources, base, 0.3)
    ties(sources, base, 0.55, TrimStore(tmp_path, 10 ** 9))
    bad = orders(tmp_path)[0]
    bad.write_bytes(bad.read_bytes()[:-4000])  # cut short (a crash mid-copy, a full disk)
    store = TrimStore(tmp_path, 10 ** 9)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        assert same(ties(sources, base, 0.3, store), expected)
    said = [str(w.message) for w in caught if "trim store" in str(w.message)]
    assert len(said) == 1 and bad.name in said[0], said
    assert store.rejected == 1 and store.writes == 1 and store.hits == len(NAMES) - 1


def test_an_unwritable_store_is_one_warning_and_the_merge_goes_on(tmp_path):
    sources, base = tied_inputs(rows=300)
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    store = TrimStore(blocker / "trim", 10 ** 9)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        assert same(ties(sources, base, 0.3, store), ties(sources, base, 0.3))
    said = [str(w.message) for w in caught if "trim store" in str(w.message)]
    assert len(said) == 1 and "could not write" in said[0], said


def test_disk_to_disk_files_are_identical_bytes_off_cold_and_warm(tiny_zoo_dir, tmp_path):
    zoo = Zoo.open(tiny_zoo_dir)
    dirs = [zoo.path(n) for n in NAMES]
    store_root = tmp_path / "trim"
    outs, cold_writes = {}, 0
    for label, density, store in (("off", 0.3, None), ("off55", 0.55, None),
                                  ("cold", 0.3, TrimStore(store_root, 10 ** 9)),
                                  ("warm", 0.55, TrimStore(store_root, 10 ** 9))):
        out = tmp_path / f"{label}.safetensors"
        merge_files("ties", dirs, out, WEIGHTS, base_dir=zoo.base, params={"density": density},
                    names=NAMES, store=store)
        outs[label] = out.read_bytes()
        if label == "cold":
            cold_writes = store.writes
            assert cold_writes and orders(store_root)  # the tiny zoo ties at the cut
        if label == "warm":  # orders sorted at 0.3 are read; tensors first tied at 0.55 sorted
            assert store.hits and store.writes < cold_writes
    assert outs["cold"] == outs["off"] and outs["warm"] == outs["off55"]
    expected = ties([load_state_dict(d) for d in dirs], zoo.base_state_dict(), 0.3)
    got = load_file(str(tmp_path / "cold.safetensors"))
    assert all(torch.equal(got[k], expected[k]) for k in expected)


def test_the_merge_job_uses_the_workspace_store(tiny_zoo_dir, tmp_path):
    cand = Candidate("merge", "ties", "fr-FR", NAMES, WEIGHTS, {"density": 0.3})
    on = open_workspace(Settings(zoo=str(tiny_zoo_dir), cache_dir=str(tmp_path / "on"),
                                 device="cpu"))
    off = open_workspace(Settings(zoo=str(tiny_zoo_dir), cache_dir=str(tmp_path / "off"),
                                  device="cpu", trim_store_gb=0))
    assert same(build_merge(on, cand), build_merge(off, cand))
    assert orders(tmp_path / "on" / "trim") and not (tmp_path / "off" / "trim").exists()


def test_orders_sorted_off_the_cpu_get_their_own_keys():
    """A CUDA argsort orders ties its own way: its tie order must never answer a CPU merge (whose
    keys stay as they were), while sorted magnitudes (the same values anywhere) are shared."""
    from engine.merge.trim_store import entry_digest

    a, b = b"s" * 16, b"b" * 16
    assert entry_digest("tie_order", a, b, 10) == entry_digest("tie_order", a, b, 10, "cpu")
    assert entry_digest("tie_order", a, b, 10, "cuda") != entry_digest("tie_order", a, b, 10)
    assert entry_digest("order", a, b, 10, "cuda") != entry_digest("order", a, b, 10)
    assert entry_digest("sorted", a, b, 10, "cuda") == entry_digest("sorted", a, b, 10)


@pytest.mark.parametrize("fused_on", [True, False])
def test_the_sources_plans_made_side_by_side_give_the_same_bits(monkeypatch, tmp_path, fused_on):
    """trim_plans runs the sources' selections and tie sorts on torch's threads for large
    tensors (here: every tensor, 3 sources): the same merge as one plan after another, with and
    without a store, on both kernels."""
    from engine.merge import sparse_trim

    monkeypatch.setattr(fused, "ENABLED", fused_on and fused.ENABLED)
    names = ["a", "b", "c"]
    sources, base = tied_inputs(600, seed=3)
    sources.append({k: v + 0.125 * torch.sign(v - base[k]) for k, v in sources[0].items()})
    sources = sources[1:] + sources[:1]
    threads = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        merge = lambda store=None: merge_state_dicts(  # noqa: E731
            "ties", sources, [0.5, 0.3, 0.2], base=base, params={"density": 0.3},
            names=names, store=store)
        serial = merge()
        seen = []
        real = sparse_trim.trim_plan

        def where(*args, **kwargs):
            import threading
            seen.append(threading.current_thread().name)
            return real(*args, **kwargs)
        monkeypatch.setattr(sparse_trim, "trim_plan", where)
        monkeypatch.setattr(sparse_trim, "PARALLEL_MIN", 0)
        assert same(merge(), serial)
        assert same(merge(TrimStore(tmp_path, 10 ** 9)), serial)
        assert any(name.startswith("trim-plan") for name in seen)
    finally:
        torch.set_num_threads(threads)


def test_plans_run_one_after_another_when_memory_is_short(monkeypatch):
    """Side by side only while twice each running plan's memory is available."""
    import threading

    from engine.merge import sparse_trim

    sources, base = tied_inputs(600, seed=4)
    seen = []
    real = sparse_trim.trim_plan
    monkeypatch.setattr(sparse_trim, "trim_plan", lambda *a, **kw: (
        seen.append(threading.current_thread().name), real(*a, **kw))[1])
    monkeypatch.setattr(sparse_trim, "PARALLEL_MIN", 0)
    threads = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        n = base["w"].numel()
        monkeypatch.setattr(sparse_trim, "available_bytes", lambda: 3 * sparse_trim.PLAN_BYTES * n)
        sparse_trim.trim_plans([s["w"] for s in sources], base["w"], [0.3, 0.3])
        assert seen and not any(name.startswith("trim-plan") for name in seen)
        monkeypatch.setattr(sparse_trim, "available_bytes", lambda: 4 * sparse_trim.PLAN_BYTES * n)
        sparse_trim.trim_plans([s["w"] for s in sources], base["w"], [0.3, 0.3])
        assert any(name.startswith("trim-plan") for name in seen)
    finally:
        torch.set_num_threads(threads)
    assert sparse_trim.available_bytes() > 0
