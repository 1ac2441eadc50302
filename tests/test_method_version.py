"""A method's ``version`` trait (issue 14): bumping it when a method's results change (the subspace
merges' head fix) makes its stored runs stale, so a sweep recomputes them, while every other
method's content key stays what it was and its stored runs are still reused."""
import pytest

from engine.experiments import Candidate, suggest_sources
from engine.jobs import JobRunner
from engine.merge import MERGES
from engine.merge.common import weighted_sum
from engine.registry import Traits
from engine.runinfo import candidate_key, recipe_key_fields
from engine.store import Store

TARGET = "de-DE"
TOY = "toy_versioned"


def register_toy(**version):
    MERGES.unregister(TOY)

    @MERGES.register(TOY, family="toy", **version)
    def toy(tensors, weights, base=None, *, key="", generator=None):
        """The weighted average under another name."""
        return weighted_sum(tensors, weights.tolist())


def test_version_one_adds_nothing_to_the_key_and_a_bump_does():
    """Keys stored before versions existed hold no version field; version 1 must add none."""
    cand = Candidate("merge", "ties", TARGET, ["nl-NL", "en-US"], [0.5, 0.5], {})
    assert set(recipe_key_fields(cand)) == {"kind", "method", "target", "sources", "weights", "params"}
    vote = Candidate("ensemble", "soft", TARGET, ["nl-NL", "en-US"], [0.5, 0.5], {})
    assert "version" not in recipe_key_fields(vote)
    for name in ("iso_c", "iso_cts", "tsv_m", "wudi"):  # the head fix changed their results
        assert MERGES.get(name).traits.version == 2
        assert recipe_key_fields(Candidate("merge", name, TARGET, ["nl-NL"], [1.0], {}))["version"] == 2


@pytest.mark.parametrize("bad", [0, -1, 1.5, "2", True])
def test_a_bad_version_is_refused(bad):
    with pytest.raises(ValueError, match="version"):
        Traits(version=bad)


def test_a_bumped_method_is_recomputed_and_the_others_reused(tiny_ws, tmp_path):
    from engine.sweep import submit_sweep

    store = Store(tmp_path / "runs.sqlite")
    runner = JobRunner(store)
    spec = {"name": "versions", "targets": [TARGET], "sources": [2], "equal_merge_baseline": False,
            "methods": [f"merge:{TOY}", "merge:ties", "ensemble:soft"]}
    uriel = suggest_sources(tiny_ws, TARGET, top_k=2)
    toy_cell = Candidate("merge", TOY, TARGET, list(uriel), list(uriel.values()), {})
    try:
        register_toy()  # registered as before versions existed
        first = runner.wait(submit_sweep(runner, tiny_ws, spec), timeout=300)
        assert first["status"] == "done", first.get("error")
        assert first["metrics"]["computed"] == 3
        old_key = candidate_key(tiny_ws, toy_cell)

        register_toy(version=1)  # saying 1 is the same as saying nothing
        assert candidate_key(tiny_ws, toy_cell) == old_key
        same = runner.wait(submit_sweep(runner, tiny_ws, spec), timeout=300)
        assert same["metrics"]["reused"] == 3 and same["metrics"]["computed"] == 0

        register_toy(version=2)  # its results changed: its old run is stale
        assert candidate_key(tiny_ws, toy_cell) != old_key
        bumped = runner.wait(submit_sweep(runner, tiny_ws, spec), timeout=300)
        assert bumped["status"] == "done", bumped.get("error")
        assert bumped["metrics"]["computed"] == 1 and bumped["metrics"]["reused"] == 2
        fresh = [r for r in store.runs(parent=bumped["id"], status=["done"], limit=100)]
        assert [r["method"] for r in fresh] == [TOY]
    finally:
        MERGES.unregister(TOY)
        runner.shutdown()
        store.close()
