"""The fused numba kernels (engine/merge/fused.py) against the torch kernels they replace on CPU
float32: TIES (exact and fast) and DARE rng='fast' give the same bits; the fast draws follow their
definition and do not depend on the thread count; without numba the torch path runs."""
import os
import subprocess
import sys

import numpy as np
import pytest
import torch

from engine.merge import MERGES, fused
from engine.merge.sparse_drop import fast_keep_mask
from engine.merge.sparse_trim import SAMPLE, trim_cut

from test_merge_kernels import bits

pytestmark = pytest.mark.skipif(not fused.AVAILABLE, reason="numba not importable")


@pytest.fixture(autouse=True)
def warm(monkeypatch):
    """Tests use tensors from 2^17 entries: fused whether or not this process compiled yet."""
    monkeypatch.setattr(fused, "COLD_MIN", fused.MIN_ENTRIES)
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def tensors(k, n, seed=0, grid=None, shape=None):
    """Base + K sources; with ``grid`` the deltas sit on a coarse grid, so many |δ| tie."""
    g = torch.Generator().manual_seed(seed)
    base = torch.randn(n, generator=g)
    deltas = [torch.randn(n, generator=g) * 0.1 for _ in range(k)]
    if grid:
        deltas = [(d * grid).round() / grid for d in deltas]
    sources = [base + d for d in deltas]
    if shape:
        return base.view(shape), [s.view(shape) for s in sources]
    return base, sources


def both(name, sources, weights, base, **params):
    """(fused, torch) results of one merge, each with a fresh generator of the same seed."""
    fn, w = MERGES.get(name).fn, torch.tensor(weights)
    out = []
    for enabled in (True, False):
        fused.ENABLED = enabled
        try:
            out.append(fn(sources, w, base, generator=torch.Generator().manual_seed(3),
                          **params))
        finally:
            fused.ENABLED = fused.AVAILABLE
    return out


N_BIG = 4 * SAMPLE + 4321  # past the size where fast_cut brackets the cut from a sample


@pytest.mark.parametrize("selection", ["exact", "fast"])
@pytest.mark.parametrize("grid", [None, 8.0])
def test_ties_fused_is_the_torch_kernel_bit_for_bit(selection, grid):
    base, sources = tensors(3, N_BIG, seed=1, grid=grid, shape=(N_BIG // 7, 7) if N_BIG % 7 == 0
                            else None)
    for params in ({"density": 0.2}, {"density": [0.3, 1.0, 0.05], "normalize": False,
                                      "scale": 0.7}, {"density": 0.5, "scale": 1.5}):
        got, want = both("ties", sources, [0.5, 0.3, 0.2], base, selection=selection, **params)
        assert torch.equal(bits(got), bits(want)), params


def test_ties_fused_at_surplus_ties_keeps_mergekits_entries_and_fast_keeps_them_all():
    """On a coarse grid many |δ| tie at the cut: exact mode must keep mergekit's k (its fix-up
    list), fast mode all of them; both as the torch kernels do, for 1, 2 and 5 sources."""
    for k in (1, 2, 5):
        base, sources = tensors(k, 3 * SAMPLE + 17, seed=k, grid=4.0)
        for x in sources:
            assert not trim_cut(0.2, x.numel(), (x - base).abs())[2]  # surplus ties at the cut
        weights = [1.0 / k] * k
        for selection in ("exact", "fast"):
            got, want = both("ties", sources, weights, base, density=0.2, selection=selection)
            assert torch.equal(bits(got), bits(want)), (k, selection)


@pytest.mark.parametrize("pool", ["none", "fits", "spills"])
def test_ties_fast_defers_only_bracketed_entries_and_resolves_them(pool, monkeypatch):
    """The merge pass leaves undecided only entries inside a source's bracket (a few %), and
    the cut selected from the collected values is the k-th largest |δ|; the same whether they are
    kept as copies per slice, in one Pool, or in a Pool too small for them (slices spill)."""
    from engine.merge.sparse_trim import bracketed_cut, fast_bracket

    base, sources = tensors(3, N_BIG, seed=4)
    plan = fused.Plan(3)
    brackets, shares = [], []
    for i, x in enumerate(sources):
        kth, lo, hi, share = fast_bracket(x, base, 0.2)
        assert share < 0.05
        brackets.append(kth)
        shares.append(share)
        plan.trim(i, 1 / 3, np.float32(hi), lo=np.float32(lo))
    if pool == "spills":
        monkeypatch.setattr(fused, "POOL_SLACK", 1000)
    shares = {"none": (), "fits": shares, "spills": [1e-9]}[pool]
    out, deferred = fused.merge(sources, base, [1 / 3] * 3, plan, consensus=True,
                                normalize=True, scale=1.0, shares=shares)
    if pool == "spills":  # the Pool held one slice's worth: the rest were copied apart
        assert deferred.index.size > 1000 and deferred.inside[0].size > 1000
    index = deferred.index
    assert 0 < index.size < 0.1 * N_BIG and np.all(np.diff(index) > 0)
    assert np.array_equal(deferred.base, base.numpy()[index])
    for i, x in enumerate(sources):
        assert np.array_equal(deferred.deltas[i], (x - base).numpy()[index])
    for x, kth, values, count in zip(sources, brackets, deferred.inside, deferred.above):
        want = torch.sort((x - base).abs(), descending=True).values[kth - 1]
        assert bracketed_cut(kth, count, torch.from_numpy(values)) == want


@pytest.mark.parametrize("name", ["dare_linear", "dare_ties"])
def test_dare_fast_fused_is_the_torch_kernel(name):
    base, sources = tensors(3, 300_007, seed=5)
    weights = [0.5, 0.3, 0.2]
    for rescale in ("inverse_density", "none"):
        got, want = both(name, sources, weights, base, density=[0.4, 0.7, 1.0], rescale=rescale,
                         rng="fast", scale=1.3)
        assert torch.equal(bits(got), bits(want)), rescale
    got, want = both(name, sources, weights, base, density=0.4, rescale="l1", rng="fast")
    # the same masks; the L1 norms are summed in another order (float64), so the factor may
    # differ in its last bit
    assert torch.equal(got == base, want == base)
    assert torch.allclose(got, want, rtol=1e-6, atol=1e-7)


def test_dare_fast_draws_follow_the_definition_and_not_the_thread_count():
    """Kept iff splitmix64(seed, i) < ⌊p·2⁶⁴⌋: the keep rate is within 5 sigma, survivors are
    rescaled exactly by 1/p, and the merge is the same with 1 and 2 threads."""
    n, p = 1_000_003, 0.3
    base, (x,) = tensors(1, n, seed=6)
    dare = MERGES.get("dare_linear").fn
    threads = torch.get_num_threads()
    outs = []
    try:
        for count in (1, 2):
            torch.set_num_threads(count)
            outs.append(dare([x], torch.tensor([1.0]), base, density=p, rng="fast",
                             rescale="inverse_density", generator=torch.Generator().manual_seed(9)))
    finally:
        torch.set_num_threads(threads)
    assert torch.equal(bits(outs[0]), bits(outs[1]))
    delta = (outs[0] - base)
    kept = delta != 0
    rate = kept.double().mean().item()
    assert abs(rate - p) < 5 * (p * (1 - p) / n) ** 0.5
    want = base + ((x - base) * (1 / p))
    assert torch.equal(outs[0][kept], want[kept])
    seed = int(torch.randint(0, 2 ** 62, (1,), generator=torch.Generator().manual_seed(9)))
    assert torch.equal(kept, fast_keep_mask(n, p, seed).bool())  # the reference stream


def test_without_numba_the_torch_kernels_run():
    """ENABLED off (what a failed import sets): usable() says no and the merge still runs."""
    base, sources = tensors(2, fused.MIN_ENTRIES, seed=7)
    fused.ENABLED = False
    try:
        assert not fused.usable(sources, base)
        out = MERGES.get("ties").fn(sources, torch.tensor([0.5, 0.5]), base, density=0.3)
    finally:
        fused.ENABLED = fused.AVAILABLE
    assert fused.usable(sources, base) and torch.isfinite(out).all()
    assert not fused.usable([s.double() for s in sources], base.double())  # float32 only
    assert not fused.usable([s[:-1] for s in sources], base[:-1])  # small: no compile for it


def test_before_its_first_compile_only_a_large_tensor_starts_the_fused_kernels(monkeypatch):
    monkeypatch.setattr(fused, "COLD_MIN", 1 << 22)
    monkeypatch.setattr(fused, "COMPILED", set())
    base, sources = tensors(2, fused.MIN_ENTRIES, seed=8)
    assert not fused.usable(sources, base)  # cold: the torch kernels, no compile
    big_base, big = tensors(2, 1 << 22, seed=8)
    assert fused.usable(big, big_base)
    MERGES.get("ties").fn(big, torch.tensor([0.5, 0.5]), big_base, density=0.2,
                          selection="fast")
    assert fused.COMPILED == {2} and fused.usable(sources, base)  # warm for 2 sources
    assert not fused.usable(sources + sources[:1], base)  # another count compiles anew


def test_a_python_without_numba_imports_the_engine_and_merges():
    """A real interpreter where ``import numba`` fails: no error, the torch kernels merge."""
    code = ("import sys; sys.modules['numba'] = None\n"
            "import torch\n"
            "from engine.merge import MERGES, fused\n"
            "assert not fused.AVAILABLE and not fused.ENABLED\n"
            "b = torch.randn(1000); s = [b + torch.randn(1000), b - torch.randn(1000)]\n"
            "out = MERGES.get('ties').fn(s, torch.tensor([0.5, 0.5]), b, density=0.3)\n"
            "print('ok', bool(torch.isfinite(out).all()))\n")
    run = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True,
                         timeout=120)
    assert run.returncode == 0, run.stderr
    assert run.stdout.strip() == "ok True"


def test_an_rng_fast_run_gets_a_new_key_and_default_keys_stay_as_they_were():
    """rng='fast' draws stream 2 now: its runs must not reuse stream-1 runs (key value
    'fast@2'); the default (mergekit) recipe's key fields are exactly the old ones, and TIES'
    selection='fast' (same value as before) keeps its key."""
    from engine.experiments import Candidate
    from engine.runinfo import recipe_key_fields

    def fields(method, **params):
        return recipe_key_fields(Candidate("merge", method, "xx", ["a", "b"], [1.0, 1.0],
                                           params=params))

    for method in ("dare_ties", "dare_linear"):
        plain = fields(method)
        resolved = MERGES.get(method).resolve({})
        assert plain["params"] == {k: v for k, v in resolved.items() if k != "rng"}
        assert fields(method, rng="mergekit") == plain
        fast = fields(method, rng="fast")
        assert fast["params"]["rng"] == "fast@2" and fast != plain
    assert fields("ties", selection="fast")["params"]["selection"] == "fast"
    assert "selection" not in fields("ties")["params"]


def missed_bracket_sources(n, seed=12):
    """Base + 3 sources; source 0's |δ| is large (10-11) exactly at the entries fast_bracket
    samples (its positions are torch.randint seeded by n) and small elsewhere, so the sample puts
    the cut among the large values while ~20 % of all entries sit below them: its bracket
    misses. Sources 1-2 are ordinary (their brackets hold)."""
    base, sources = tensors(3, n, seed=seed)
    where = torch.randint(0, n, (SAMPLE,), generator=torch.Generator().manual_seed(n))
    delta = sources[0] - base
    delta[where] = 10 + torch.rand(SAMPLE, generator=torch.Generator().manual_seed(seed))
    sources[0] = base + delta
    return base, sources


@pytest.mark.parametrize("normalize", [True, False])
def test_ties_fast_with_a_missed_bracket_falls_back_to_the_exact_cut(normalize):
    from engine.merge.sparse_trim import below, fast_bracket, fast_cut

    base, sources = missed_bracket_sources(N_BIG)
    size = (sources[0] - base).abs()
    kth, lo, hi, share = fast_bracket(sources[0], base, 0.2)
    above, inside = int((size > hi).sum()), int(((size >= lo) & (size <= hi)).sum())
    assert share < 0.1 and not above < kth <= above + inside  # the bracket misses the cut
    cut = trim_cut(0.2, N_BIG, size)[0]
    assert fast_cut(sources[0], base, 0.2) == cut
    weights = [0.5, 0.3, 0.2]
    missed = fused.RUNS["missed"]
    got, want = both("ties", sources, weights, base, density=0.2, selection="fast",
                     normalize=normalize, scale=0.9)
    assert fused.RUNS["missed"] == missed + 1  # the fused merge took its fallback
    assert torch.equal(bits(got), bits(want))
    # and the merge keeps exactly |δ_0| >= cut of source 0 (hardshrink at the float below it)
    alone, alone_torch = both("ties", sources[:1], [1.0], base, density=0.2, selection="fast",
                              normalize=normalize)
    assert torch.equal(bits(alone), bits(alone_torch))
    kept = torch.nn.functional.hardshrink(sources[0] - base, below(cut))
    assert torch.equal(alone != base, kept != 0)


def test_dare_l1_norms_follow_their_fixed_order_whatever_the_thread_count():
    """fused.l1_sums: per SLICE-entry slice, entry j into lane j mod LANES (float64), lanes added
    in order, slices added in order: numpy's sequential row sums give the same float64 bits, with
    1 and 2 threads (the order that lets LLVM vectorise the pass with its draws)."""
    from engine.merge.fused_kernels import LANES, splitmix

    n = fused.SLICE + 3 * LANES + 77  # a partial last slice, and a partial row in it
    base, sources = tensors(2, n, seed=12)
    g = torch.Generator().manual_seed(13)  # magnitudes 2^-40..2^40: float64 sums then round,
    sources = [base + (x - base) * torch.exp2(torch.randint(-40, 40, (n,), generator=g).float())
               for x in sources]  # so their order shows in the bits
    plan = fused.Plan(2)
    for i in range(2):
        plan.drop(i, 1.0, seed=40 + i, keep_prob=0.3)
    threads = torch.get_num_threads()
    got = []
    try:
        for count in (1, 2):
            torch.set_num_threads(count)
            got.append(fused.l1_sums(sources, base, plan))
    finally:
        torch.set_num_threads(threads)
    assert np.array_equal(got[0], got[1])
    for i, x in enumerate(sources):
        size = np.abs(x.numpy() - base.numpy()).astype(np.float64)
        kept = splitmix(int(plan.seed[i]), np.arange(n)) < np.uint64(plan.bound[i])
        for column, values in enumerate((size, np.where(kept, size, 0.0))):
            total = 0.0
            for start in range(0, n, fused.SLICE):
                part = values[start:start + fused.SLICE]
                rows = np.zeros((-(-part.size // LANES), LANES))
                rows.reshape(-1)[:part.size] = part
                lanes = np.zeros(LANES)
                for row in rows:  # row by row: each lane's adds in entry order
                    lanes += row
                slice_total = 0.0
                for lane in lanes:
                    slice_total += lane
                total += slice_total
            assert got[0][i, column] == total, (i, column)
