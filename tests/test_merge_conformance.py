"""Every registered merge method on tiny real models: a pretrained XLM-R encoder (saved without
a classification head, as a real zoo's base is) and three classifiers fine-tuned from it by a few
real SGD steps, all written and read as safetensors HF folders."""
import pytest
import torch

from engine.merge import MERGES, MergeContext, MergeError, merge_state_dicts
from engine.progress import Cancelled
import merge_checks as checks
from merge_checks import build_zoo, merge, merge_checks

torch.set_num_threads(1)
METHODS = MERGES.names()


@pytest.fixture(scope="module")
def zoo(tmp_path_factory):
    return build_zoo(tmp_path_factory.mktemp("zoo"))


def test_the_fixture_is_realistic(zoo):
    """The base lacks the head and the 'roberta.' prefix; fine-tuning moved every tensor."""
    assert not any(k.startswith("classifier") for k in zoo["base"])
    assert "embeddings.word_embeddings.weight" in zoo["base"]
    a, b = zoo["sources"][0], zoo["sources"][1]
    moved = [k for k in a if k.startswith("roberta.") and
             not torch.equal(a[k], zoo["base"][k.split(".", 1)[1]])]
    assert len(moved) > 30 and not torch.equal(a["classifier.out_proj.weight"],
                                               b["classifier.out_proj.weight"])


@pytest.mark.parametrize("method,check", **merge_checks(list(MERGES)))
def test_conformance(zoo, method, check):
    """Every check in tests/merge_checks.py on every registered merge (exemptions from traits)."""
    check(method, zoo)


def test_exemptions_come_from_traits_and_leave_most_methods_checked(zoo):
    """Each check that can exempt a method runs on some: exemptions are what the traits say, not a
    blanket skip. (The full checks run above; these two need no merging.)"""
    light = [checks.check_to_mergekit_is_valid_mergekit, checks.check_source_count_limits]
    outcomes = {m.name: {c.__name__: c(m, zoo) or "passed" for c in light} for m in MERGES}
    assert outcomes["ties"]["check_to_mergekit_is_valid_mergekit"] == "passed"
    assert "no to_mergekit hook" in outcomes["fisher"]["check_to_mergekit_is_valid_mergekit"]
    assert "no max_sources" in outcomes["linear"]["check_source_count_limits"]


def test_random_masks_do_not_depend_on_key_order(zoo):
    reordered = [dict(reversed(list(s.items()))) for s in zoo["sources"]]
    a = merge(zoo, "dare_ties", params={"density": 0.5})
    b = merge(zoo, "dare_ties", sources=reordered, params={"density": 0.5})
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_half_precision_in_half_precision_out(zoo):
    halves = [{k: v.half() for k, v in s.items()} for s in zoo["sources"]]
    out = merge(zoo, "ties", sources=halves, params={"density": 0.5})
    assert all(v.dtype == torch.float16 for v in out.values())
    full = merge(zoo, "ties", sources=halves, params={"density": 0.5}, dtype=torch.float32)
    assert all(v.dtype == torch.float32 for v in full.values())
    torch.testing.assert_close(out["classifier.dense.weight"],
                               full["classifier.dense.weight"].half())


def test_progress_and_cancel(zoo):
    seen = []
    merge(zoo, "linear", progress=seen.append)
    assert seen[-1].fraction == 1.0 and len(seen) > 10

    def cancel(p):
        if 0.1 < p.fraction < 0.9:  # while the Fisher pre-pass runs
            raise Cancelled()
    with pytest.raises(Cancelled):
        merge(zoo, "fisher", progress=cancel)


# ---- bad input: clear MergeError naming what is wrong ------------------------------------------

def _broken(zoo, fn):
    sources = [dict(s) for s in zoo["sources"]]
    fn(sources)
    return sources


def test_errors(zoo):
    key = "roberta.encoder.layer.1.output.dense.weight"
    missing = _broken(zoo, lambda s: s[2].pop(key))
    with pytest.raises(MergeError, match=f"model 'de'.*{key}"):
        merge(zoo, "linear", sources=missing, names=["en", "fr", "de"])
    shapes = _broken(zoo, lambda s: s[1].__setitem__(key, torch.zeros(3, 3)))
    with pytest.raises(MergeError, match=f"'{key}'.*model 'fr'"):
        merge(zoo, "linear", sources=shapes, names=["en", "fr", "de"])
    nan = _broken(zoo, lambda s: s[0].__setitem__(key, s[0][key].clone().fill_(float("nan"))))
    with pytest.raises(MergeError, match=f"model 'en' tensor '{key}' contains NaN"):
        merge(zoo, "ties", sources=nan, names=["en", "fr", "de"])
    with pytest.raises(MergeError, match="needs the pretrained base"):
        merge_state_dicts("ties", zoo["sources"], [1, 1, 1])
    with pytest.raises(MergeError, match="density"):
        merge(zoo, "ties", params={"density": 0.0})
    with pytest.raises(MergeError, match="density"):
        merge(zoo, "dare_linear", params={"density": 1.5})
    with pytest.raises(MergeError, match="3 weights for 2"):
        merge_state_dicts("linear", zoo["sources"][:2], [1, 1, 1])
    with pytest.raises(MergeError, match="all weights are zero"):
        merge(zoo, "linear", weights=(0, 0, 0))
    with pytest.raises(MergeError, match="negative"):
        merge(zoo, "linear", weights=(1, -1, 1))
    with pytest.raises(MergeError, match="unknown merge method 'avg'"):
        merge(zoo, "avg")
    with pytest.raises(MergeError, match="no parameter"):
        merge(zoo, "ties", params={"densty": 0.5})
    with pytest.raises(MergeError, match="2 values but there are 3"):
        merge(zoo, "ties", params={"density": [0.5, 0.5]})
    with pytest.raises(MergeError, match="needs a MergeContext with score"):
        merge_state_dicts("frankenmerge", zoo["sources"], context=MergeContext())
    with pytest.raises(MergeError, match="needs data"):
        merge_state_dicts("fisher", zoo["sources"])
    bad_base = dict(zoo["base"])
    bad_base["encoder.layer.0.output.dense.bias"] = torch.zeros(5)
    with pytest.raises(MergeError, match="in the base model"):
        merge(zoo, "task_arithmetic", base=bad_base)


def test_schema_is_plain_data_and_complete():
    import json
    schema = MERGES.schema()
    json.dumps(schema)
    for name, entry in schema.items():
        for field in ("needs_base", "needs_data", "mergekit", "family", "min_sources", "random"):
            assert field in entry, (name, field)
    assert {n for n, e in schema.items() if e["needs_data"]} == {"fisher", "regmean", "adamerging",
                                                                 "regmean_plusplus", "frankenmerge", "prior_shift"}
