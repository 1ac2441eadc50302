"""Long jobs compile the fused kernels up front (engine/merge/fused_warm.py): the warm-up compiles
the very signatures real merges run, and after it a search's merges take the fused path (fused.RUNS
counts them) with the torch path's bits, where a cold process would keep them on the torch path."""
import pytest
import torch

from engine.evolve import EvolveConfig
from engine.merge import MERGES, fused
from engine.merge import fused_kernels as kernels
from engine.merge.fused_warm import DROP, L1, TIES, kernels_for, warm
from engine.merge.sparse_trim import SAMPLE

from test_evolve_rows import Recording
from test_fused import tensors
from test_merge_kernels import bits

pytestmark = pytest.mark.skipif(not fused.AVAILABLE, reason="numba not importable")
torch.set_num_threads(1)


def signatures():
    return {f.__name__: len(f.signatures) for f in (kernels.merge_slice, kernels.fix_entries,
                                                     kernels.l1_slice)}


def test_warm_compiles_what_real_merges_run():
    """After warm(3) nothing a 3-source TIES (exact with surplus ties, fast with brackets) or
    DARE rng='fast' merge runs compiles anew: the warm-up used the same argument types."""
    assert warm(3, (TIES, DROP, L1))
    compiled = signatures()
    assert all(compiled.values()) and 3 in fused.COMPILED
    base, sources = tensors(3, 4 * SAMPLE + 99, seed=11, grid=4.0)
    w = torch.tensor([0.5, 0.3, 0.2])
    for selection in ("exact", "fast"):
        MERGES.get("ties").fn(sources, w, base, density=0.2, selection=selection)
    for name in ("dare_linear", "dare_ties"):
        MERGES.get(name).fn(sources, w, base, density=0.4, rng="fast",
                            generator=torch.Generator().manual_seed(1))
    assert signatures() == compiled


def test_kernels_for_follows_the_dispatch():
    assert kernels_for("ties", {"selection": "fast"}) == (TIES,)
    assert kernels_for("dare_ties", {}) == ()  # mergekit's draws: the torch path
    assert kernels_for("dare_linear", {"rng": "fast"}) == (DROP, L1)
    assert kernels_for("dare_linear", {"rng": "fast", "rescale": "none"}) == (DROP,)
    assert kernels_for("linear", {}) == ()


def search(ws, warm_up):
    """A CMA-ES TIES run on the tiny zoo (its tensors: 2^17-2^20 entries, under COLD_MIN);
    returns (evolution, fused TIES merges it ran)."""
    config = EvolveConfig(target="nl-NL", sources=["de-DE", "en-US"], algorithm="cmaes",
                          method="ties", generations=1, population=3, dev_size=16,
                          layer_groups=1, patience=0, seed=2)
    evo = Recording(ws, config, switches={"warm_kernels": warm_up})
    if evo.warming is not None:
        evo.warming.join()  # the runner does not wait; the test does, to know the path taken
    before = fused.RUNS["ties"]
    while evo.step():
        pass
    return evo, fused.RUNS["ties"] - before


def test_after_warm_up_a_search_merges_fused_with_the_torch_paths_bits(tiny_ws, monkeypatch):
    monkeypatch.setattr(fused, "COMPILED", set())  # a process that has not compiled yet
    cold, cold_runs = search(tiny_ws, warm_up=False)
    assert cold_runs == 0 and fused.COMPILED == set()  # no tensor reaches COLD_MIN
    warmed, runs = search(tiny_ws, warm_up=True)
    assert warmed.warming is not None and fused.COMPILED == {2}
    assert runs >= len(warmed.scored) >= 4  # every candidate's TIES groups ran fused
    assert warmed.scored == cold.scored  # the same floats, every candidate
    got, want = warmed.champion_model(), cold.champion_model()
    assert list(got) == list(want)
    for key in want:
        assert torch.equal(bits(got[key]), bits(want[key])), key


def test_a_search_on_a_gpu_or_with_the_kernels_off_warms_nothing(tiny_ws, monkeypatch):
    monkeypatch.setattr(fused, "ENABLED", False)
    evo, runs = search(tiny_ws, warm_up=True)
    assert evo.warming is None and runs == 0


def test_a_sweep_with_several_merge_cells_compiles_the_kernels_it_runs(tiny_ws, tmp_path,
                                                                      monkeypatch):
    import threading

    from engine.jobs import JobRunner
    from engine.store import Store
    from engine.sweep import submit_sweep

    monkeypatch.setattr(fused, "COMPILED", set())
    spec = {"name": "warm", "targets": ["de-DE", "nl-NL"], "sources": [2],
            "methods": [{"merge": "ties", "grid": {"density": [0.4]}}],
            "equal_merge_baseline": False}
    store = Store(tmp_path / "runs.sqlite")
    runner = JobRunner(store)
    try:
        row = runner.wait(submit_sweep(runner, tiny_ws, spec), timeout=300)
    finally:
        runner.shutdown()
        store.close()
    assert row["status"] == "done", row["error"]
    for thread in threading.enumerate():
        if thread.name == "fused-warm":
            thread.join()
    assert fused.COMPILED == {2}  # later cells' tensors (from 2^17 entries) run fused
