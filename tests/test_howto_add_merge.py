"""How to add a merge method: one decorated kernel, nothing else touched.

The toy 'midpoint' below is registered from this test alone, and shows up where every merge does:
the CLI's ``methods`` list, ``MERGES.schema()`` (what the Merge page draws its controls from), a
real merge of the tiny zoo with export, and every conformance check of tests/merge_checks.py.
It is registered inside a fixture and unregistered afterwards, so other test files never see it.
"""
import json

import pytest
import torch

from engine.merge import MERGES
from engine.merge.common import weighted_sum
from engine.registry import Param
from merge_checks import CHECKS, build_zoo

TOY = "midpoint"


def register_midpoint():
    """The whole addition. A real method goes in engine/merge/<family>.py the same way; traits
    (needs_base, random, data_use, …) and hooks (prepare, to_mergekit) are keywords of the same call."""

    @MERGES.register(TOY, family="toy", params=[
        Param("blend", "float", 0.5, 0.0, 1.0,
              help="0: the weighted average; 1: halfway between the smallest and largest entry")])
    def midpoint(tensors, weights, base=None, *, key="", generator=None, blend=0.5):
        """Midpoint: per entry, halfway between the weighted sources' extremes, blended with the
        weighted average (sources with weight 0 are left out)."""
        w = weights.tolist()
        used = [t for t, wi in zip(tensors, w) if wi > 0]
        low, high = used[0].clone(), used[0].clone()
        for t in used[1:]:
            torch.minimum(low, t, out=low)
            torch.maximum(high, t, out=high)
        middle = low.add_(high).mul_(0.5)
        return middle.mul_(blend).add_(weighted_sum(tensors, w), alpha=1.0 - blend)

    return MERGES.get(TOY)


@pytest.fixture(scope="module")
def toy():
    assert TOY not in MERGES
    method = register_midpoint()
    yield method
    MERGES.unregister(TOY)
    assert TOY not in MERGES


@pytest.fixture(scope="module")
def zoo(tmp_path_factory):
    return build_zoo(tmp_path_factory.mktemp("howto_zoo"))


def test_the_cli_lists_it(toy, capsys):
    from engine.cli import main

    assert main(["methods", "--json"]) == 0
    listed = json.loads(capsys.readouterr().out)
    assert listed[TOY]["params"][0]["name"] == "blend" and listed[TOY]["family"] == "toy"
    assert main(["methods"]) == 0
    row = next(line for line in capsys.readouterr().out.splitlines() if line.startswith(TOY))
    assert "blend=0.5 [0.0, 1.0]" in row and "Midpoint" in row


def test_the_schema_the_merge_page_draws_from_has_it(toy):
    entry = MERGES.schema()[TOY]
    json.dumps(entry)
    assert [p["name"] for p in entry["params"]] == ["blend"]
    assert entry["needs_base"] is False and entry["data_use"] == "none" and entry["mergekit"] is None
    assert toy.title == "Midpoint" and toy.defaults() == {"blend": 0.5}


def test_it_merges_the_tiny_zoo_and_exports(toy, tiny_ws, tmp_path):
    """Through the same path as a page or CLI run: load the zoo's models, merge, export."""
    from engine.candidate_runs import export_candidate
    from engine.experiments import Candidate, build_merge

    sources = ["de-DE", "en-US", "es-ES"]
    cand = Candidate("merge", TOY, "nl-NL", sources, [0.5, 0.3, 0.2], {"blend": 0.25})
    state = build_merge(tiny_ws, cand)
    assert state.report.counts()[TOY] > 10
    states = [tiny_ws.zoo.state_dict(s) for s in sources]
    key = next(k for k, t in states[0].items() if t.is_floating_point() and t.numel() > 100)
    stacked = torch.stack([s[key].float() for s in states])
    expected = 0.25 * (stacked.amin(0) + stacked.amax(0)) / 2 + 0.75 * (
        0.5 * stacked[0] + 0.3 * stacked[1] + 0.2 * stacked[2])
    torch.testing.assert_close(state[key].float(), expected, rtol=1e-5, atol=1e-6)
    folder = export_candidate(tiny_ws, cand, state, tmp_path / "export")
    recipe = json.loads((folder / "recipe.json").read_text())
    assert recipe["method"] == TOY and recipe["mergekit_note"] == f"mergekit has no '{TOY}' method"


@pytest.mark.parametrize("check", CHECKS, ids=[c.__name__ for c in CHECKS])
def test_it_passes_every_conformance_check(toy, zoo, check):
    check(toy, zoo)


def register_pair_average():
    """Traits and hooks ride on the same call: at most two sources, a weighted sum (so a NaN/inf
    input always reaches the output and the run checks the output only), and a to_mergekit hook
    that exports it as mergekit's linear merge."""
    from engine.merge.linear import linear_to_mergekit

    @MERGES.register(PAIR, family="toy", max_sources=2, propagates_nonfinite=True,
                     mergekit="linear", to_mergekit=linear_to_mergekit)
    def pair_average(tensors, weights, base=None, *, key="", generator=None):
        """Pair average: the weighted mean of at most two models."""
        return weighted_sum(tensors, weights.tolist())

    return MERGES.get(PAIR)


PAIR = "pair_average"


@pytest.fixture(scope="module")
def pair():
    method = register_pair_average()
    yield method
    MERGES.unregister(PAIR)


@pytest.mark.parametrize("check", CHECKS, ids=[c.__name__ for c in CHECKS])
def test_traits_and_hooks_pass_the_same_checks(pair, zoo, check):
    check(pair, zoo)


def test_the_hook_writes_its_mergekit_yaml(pair, zoo, tmp_path):
    from engine.merge import export_merge, merge_state_dicts

    merged = merge_state_dicts(PAIR, zoo["sources"][:2], [3, 1])
    folder = export_merge(merged, zoo["root"] / "src0", tmp_path / "out",
                          {"method": PAIR, "sources": ["a", "b"], "weights": [3, 1]})
    text = (folder / "mergekit.yaml").read_text()
    assert "merge_method: linear" in text and "weight: 0.75" in text


def test_a_wrong_declaration_is_refused_at_registration():
    with pytest.raises(TypeError, match="unknown trait"):
        MERGES.register("typo", needs_bas=True)
    assert "typo" not in MERGES
