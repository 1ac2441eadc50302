"""Merging only some rows of a tensor (engine/merge/rows.py): for every method that declares the
``row_local`` trait the rows are bit for bit those of the whole merge, and a wrong claim is caught."""
import pytest
import torch

from engine.merge import MERGES, MergeCache, MergeError, merge_state_dicts
from engine.merge.rows import RowMerged, merge_rows, merge_state_rows, restrictable, row_ids

torch.set_num_threads(1)
SOURCES = ["de-DE", "en-US", "es-ES"]
EMBEDDING = "bert.embeddings.word_embeddings.weight"


@pytest.fixture(scope="module")
def states(tiny_ws):
    return [tiny_ws.zoo.state_dict(n) for n in SOURCES], tiny_ws.zoo.base_state_dict()


def embedding_key(state):
    keys = [k for k in state if k.endswith("word_embeddings.weight")]
    assert len(keys) == 1
    return keys[0]


def some_rows(n):
    """First and last rows, a run of consecutive ones and scattered ones, unsorted and repeated."""
    picked = [n - 1, 0, 5, 6, 7, 8, 3, 3] + torch.randperm(n, generator=torch.Generator().manual_seed(1))[:40].tolist()
    return row_ids(picked)


def bits(t):
    return t.contiguous().view(torch.int32)


def rows_match(method, sources, base, weights, params, key, rows, cache=None):
    """Whether merge_rows gives exactly the whole merge's rows (bits, not values)."""
    full = merge_state_dicts(method, [{key: s[key]} for s in sources], weights,
                             base={key: base[key]} if base is not None else None, params=params,
                             names=SOURCES[:len(sources)], seed=4, cache=cache)[key]
    part = merge_rows(MERGES.get(method), [s[key] for s in sources], base[key] if base is not None else None,
                      weights, params, rows, key=key, names=SOURCES[:len(sources)],
                      device=torch.device("cpu"), seed=4, cache=cache)
    return part.shape == (len(rows), full.shape[1]) and torch.equal(bits(part), bits(full[rows]))


DECLARED = [m.name for m in MERGES if m.traits.row_local]
VARIANTS = {"task_arithmetic": [{}, {"scale": 0.7}],
            "ties": [{}, {"density": [0.1, 0.5, 0.9]}, {"density": 0.3, "normalize": False, "scale": 1.3},
                     {"density": 0.2, "selection": "fast"}, {"density": 1.0}]}


def test_the_trait_is_declared_where_it_holds():
    assert set(DECLARED) >= {"linear", "task_arithmetic", "ties"}
    assert MERGES.get("dare_ties").traits.row_local == ""  # its L1 rescale reads the dropped tensor
    assert MERGES.get("slerp").traits.row_local == ""


@pytest.mark.parametrize("name", DECLARED)
@pytest.mark.parametrize("cached", [False, True])
def test_restricted_rows_equal_the_whole_merge_bit_for_bit(states, name, cached):
    sources, base = states
    key = embedding_key(sources[0])
    method = MERGES.get(name)
    assert restrictable(method, sources[0][key].shape)
    rows = some_rows(sources[0][key].shape[0])
    cache = MergeCache() if cached else None
    for params in VARIANTS.get(name, [{}]):
        for weights in ([0.5, 0.3, 0.2], [0.0, 1.0, 2.0]):
            assert rows_match(name, sources, base if method.traits.needs_base else None, weights,
                              params, key, rows, cache), (params, weights)


def test_ties_rows_where_many_entries_tie_at_the_cut():
    """Quantised deltas: the cut lands inside a run of equal magnitudes, so which tied entries
    TIES keeps (mergekit's sort order) decides entries of the rows; it is taken from the whole."""
    g = torch.Generator().manual_seed(0)
    base = {"w": torch.randn(300, 64, generator=g)}
    sources = [{"w": base["w"] + torch.randint(-2, 3, (300, 64), generator=g).float() / 8}
               for _ in range(3)]
    rows = some_rows(300)
    for cache in (None, MergeCache()):
        for density in (0.3, 0.55):
            assert rows_match("ties", sources, base, [0.2, 0.5, 0.3], {"density": density}, "w", rows,
                              cache)


def test_ties_rows_clear_of_the_tied_entries_skip_the_tie_order():
    """Where no entry of the rows ties at the cut, mergekit's choice among the ties changes none of
    them: the rows come out the same without the whole tensor's argsort (which the cache keeps)."""
    g = torch.Generator().manual_seed(3)
    base = {"w": torch.randn(300, 64, generator=g)}
    sources = [{"w": base["w"] + torch.randint(-2, 3, (300, 64), generator=g).float() / 8}
               for _ in range(2)]
    for s in sources:
        s["w"][:10] = base["w"][:10] + 5.0  # rows 0-9: far above the cut, no ties there
    for cache in (MergeCache(), None):
        assert rows_match("ties", sources, base, [0.5, 0.5], {"density": 0.3}, "w", row_ids(range(10)),
                          cache)
        assert rows_match("ties", sources, base, [0.5, 0.5], {"density": 0.3}, "w", row_ids([0, 50]),
                          cache)  # row 50 holds tied entries: the tie order decides

    def kept_bytes(rows):
        cache = MergeCache()
        merge_rows(MERGES.get("ties"), [s["w"] for s in sources], base["w"], [0.5, 0.5],
                   {"density": 0.3}, row_ids(rows), key="w", names=SOURCES[:2],
                   device=torch.device("cpu"), cache=cache)
        return cache.nbytes()
    assert kept_bytes([0, 50]) - kept_bytes(range(10)) == 2 * 300 * 64 * 4  # two int32 argsorts


def test_a_wrong_claim_is_caught(states):
    """A kernel normalised over the whole tensor is not row-local: claiming it is gives other
    rows than the whole merge, which the same check reports."""
    @MERGES.register("toy_unit_norm", params=[], row_local="entrywise")
    def toy(tensors, weights, base=None, *, key="", generator=None):
        out = sum(t * w for t, w in zip(tensors, weights.tolist()))
        return out / out.norm()
    try:
        sources, _ = states
        key = embedding_key(sources[0])
        assert not rows_match("toy_unit_norm", sources, None, [0.5, 0.3, 0.2], {}, key,
                              some_rows(sources[0][key].shape[0]))
    finally:
        MERGES.unregister("toy_unit_norm")


def test_methods_without_the_trait_are_merged_whole(states):
    sources, base = states
    key = embedding_key(sources[0])
    with pytest.raises(MergeError, match="merge it whole"):
        merge_rows(MERGES.get("dare_ties"), [s[key] for s in sources], base[key], [1, 1, 1], {},
                   row_ids([0, 1]), key=key, names=SOURCES, device=torch.device("cpu"))
    out = merge_state_rows("dare_ties", sources, [1, 1, 1], base, {}, {key: row_ids([0, 1])},
                           names=SOURCES, device="cpu")
    assert not out.rows and out[key].shape == sources[0][key].shape


def test_state_rows_and_complete(states):
    sources, base = states
    key = embedding_key(sources[0])
    rows = some_rows(sources[0][key].shape[0])
    whole = merge_state_dicts("ties", sources, [0.5, 0.3, 0.2], base=base, params={"density": 0.4},
                              names=SOURCES)
    part = merge_state_rows("ties", sources, [0.5, 0.3, 0.2], base, {"density": 0.4}, {key: rows},
                            names=SOURCES, device="cpu")
    assert isinstance(part, RowMerged) and list(part) == list(whole)
    assert set(part.rows) == {key} and torch.equal(part[key], whole[key][rows])
    for k in whole:
        if k != key:
            assert torch.equal(part[k], whole[k]), k
    assert part.covers(rows[:3]) and not part.covers(torch.tensor([int(rows.max()) + 1]))
    done = part.complete()
    assert all(torch.equal(done[k], whole[k]) for k in whole)


def test_a_row_width_off_the_simd_lanes_is_merged_whole():
    assert not restrictable(MERGES.get("linear"), (10, 100))
    assert restrictable(MERGES.get("linear"), (10, 128))
    assert not restrictable(MERGES.get("linear"), (128,))
