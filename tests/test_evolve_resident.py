"""Incremental merging in per-layer-group searches: only the groups a candidate changes are merged
and copied into the working model, and the model then holds exactly what a full merge and load
gives (bit for bit), whatever else was loaded in between."""
import os

import torch

from engine.evolve import Evolution, EvolveConfig
from engine.evolve.build import Sources, build_grouped, layer_partition
from engine.evolve.fitness import Fitness
from engine.evolve.resident import ResidentMerge
from engine.evolve.runner import spare_core

torch.set_num_threads(1)
SOURCES = ["de-DE", "en-US"]


def model_tensors(ev):
    return {k: v.clone() for k, v in ev._model.state_dict().items()}


def test_changed_groups_only_and_bit_identical_to_a_full_merge(tiny_ws):
    ev = tiny_ws.evaluator
    full = Sources(tiny_ws, SOURCES, need_base=True, resident=False)
    inc = Sources(tiny_ws, SOURCES, need_base=True)
    groups = layer_partition(full.keys, 1)
    assert len(groups) == 3
    fitness = Fitness(tiny_ws, "nl-NL", {"accuracy": 1.0, "loss": 1.0}, dev_size=16)
    a = ([0.6, 0.4], {"density": [0.3, 0.5]})
    b = ([0.2, 0.8], {"density": [0.7, 0.4]})
    steps = [(a, a, a), (a, b, a), (a, b, b), (b, b, b), (b, a, a)]
    merged_counts = []
    for settings in steps:
        expected = build_grouped("ties", groups, settings, full, seed=3)
        ev.working_model(expected)
        want_model, want = model_tensors(ev), fitness.metrics(expected)
        if len(merged_counts) % 2:  # someone else's load between, on every other step
            ev.working_model({k: v + 1 for k, v in expected.items()})
        before = inc.resident.merged_groups
        state = build_grouped("ties", groups, settings, inc, seed=3)
        merged_counts.append(inc.resident.merged_groups - before)
        ev.working_model(state)
        for k, v in model_tensors(ev).items():
            assert torch.equal(v, want_model[k]), k
        for k in expected:
            assert torch.equal(state[k], expected[k]), k
        got = fitness.metrics(state)
        assert got["accuracy"] == want["accuracy"] and got["nll"] == want["nll"]
    assert merged_counts == [3, 1, 1, 1, 2]


def test_unchanged_groups_keep_their_tensors_and_are_not_copied(tiny_ws):
    ev = tiny_ws.evaluator
    inc = Sources(tiny_ws, SOURCES, need_base=False)
    groups = layer_partition(inc.keys, 1)
    first = build_grouped("linear", groups, [([0.5, 0.5], {})] * 3, inc)
    ev.working_model(first)
    copied = ev.copied_tensors
    second = build_grouped("linear", groups, [([0.5, 0.5], {}), ([0.9, 0.1], {}), ([0.5, 0.5], {})],
                           inc)
    head, layer = groups[2][1], groups[1][1]
    assert all(second[k] is first[k] for k in head)
    assert not any(second[k] is first[k] for k in layer)
    ev.working_model(second)
    assert ev.copied_tensors - copied == len(layer)


def test_a_tensor_changed_in_place_is_loaded_again(tiny_ws):
    ev = tiny_ws.evaluator
    state = {k: v.clone() for k, v in tiny_ws.zoo.state_dict("de-DE").items()}
    key = "classifier.out_proj.bias"
    ev.working_model(state)
    state[key].add_(1.0)  # the same object, modified: its version counter moved
    model = ev.working_model(state)
    assert torch.equal(model.state_dict()[key], state[key])
    copied = ev.copied_tensors
    ev.working_model(state)
    assert ev.copied_tensors == copied


def test_a_search_gives_the_same_run_with_incremental_merging_and_prefetch(tiny_ws):
    """Full merges merged and evaluated in turn; only changed groups; and the next candidate
    merged on a second thread while this one is evaluated: one run, three ways."""
    config = dict(target="nl-NL", sources=SOURCES, algorithm="cmaes", method="ties",
                  generations=2, population=3, layer_groups=1, dev_size=12, patience=0, seed=5)
    runs = []
    for resident, prefetch in ((False, False), (True, False), (True, True)):
        evo = Evolution(tiny_ws, EvolveConfig(**config))
        evo.prefetch = prefetch
        if not resident:
            evo.sources.resident = None
        while evo.step():
            pass
        runs.append(evo)
    timing = ("latency_ms", "peak_mem_mb")
    plain = runs[0]
    for other in runs[1:]:
        assert [h["best"] for h in plain.history] == [h["best"] for h in other.history]
        assert [h["mean"] for h in plain.history] == [h["mean"] for h in other.history]
        assert plain.champion.candidate == other.champion.candidate
        assert ({k: v for k, v in plain.champion_test.items() if k not in timing}
                == {k: v for k, v in other.champion_test.items() if k not in timing})
    assert isinstance(runs[2].sources.resident, ResidentMerge)
    assert runs[2].sources.resident.merged_groups


def test_prefetch_by_default_only_when_torch_leaves_a_core_free():
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(os.cpu_count())
        assert not spare_core()
        if os.cpu_count() > 1:
            torch.set_num_threads(1)
            assert spare_core()
    finally:
        torch.set_num_threads(threads)
    assert Evolution.prefetch is None
