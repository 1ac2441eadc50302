"""Honest run records (issue 12, items 6-11, engine side): every run says what target data it used,
pages and sweeps share one content key (a sweep reuses a page's run, found by an index lookup), the
sweep text says 'not run' instead of 'nan', and exported mergekit weights carry no float noise."""
import re

import numpy as np
import pytest

from engine.experiments import Candidate, suggest_sources
from engine.candidate_runs import submit_candidate
from engine.runinfo import candidate_key, run_origin, run_target_data, target_data_use
from engine.jobs import JobRunner
from engine.store import Store

TARGET = "de-DE"


@pytest.mark.parametrize("kind,method,mode,params,target,source", [
    ("merge", "ties", "sources", {}, "none", False),
    ("merge", "ties", "target", {}, "none", False),                 # data_mode is irrelevant to TIES
    ("merge", "regmean", "target", {}, "unlabelled target text", False),   # Gram matrices: inputs only
    ("merge", "regmean", "both", {}, "unlabelled target text", True),
    ("merge", "fisher", "target", {}, "labelled target dev", False),     # empirical Fisher: the labels
    ("merge", "fisher", "target", {"labels": "sampled"}, "unlabelled target text", False),
    ("merge", "fisher", "sources", {}, "none", True),
    ("merge", "frankenmerge", "sources", {}, "labelled target dev", False),  # picks by dev accuracy
    ("ensemble", "soft", "target", {}, "none", False),
    ("ensemble", "learned_weights", "target", {}, "labelled target dev", False),
    ("ensemble", "fusion_mlp", "sources", {}, "none", True),
])
def test_target_data_use_follows_the_registry(kind, method, mode, params, target, source):
    cand = Candidate(kind, method, TARGET, ["nl-NL", "en-US"], [0.5, 0.5], params, data_mode=mode)
    assert target_data_use(cand) == {"target": target, "source_data": source}


def test_older_runs_are_backfilled_from_their_recipe():
    old_fusion = {"kind": "ensemble", "method": "learned_weights", "target": TARGET, "sources": ["nl-NL"],
                  "weights": [1.0], "params": {"seed": 0, "data_mode": "target"}, "result": {}}
    old_vote = {**old_fusion, "method": "soft", "params": {"seed": 0, "data_mode": "target"}}
    old_merge = {**old_fusion, "kind": "merge", "method": "ties", "params": {"density": 0.5}}
    old_evolve = {"kind": "evolve", "method": "evomerge", "params": {}, "result": {}}
    assert run_target_data(old_fusion)["target"] == "labelled target dev"
    assert run_target_data(old_vote)["target"] == "none"
    assert run_target_data(old_merge)["target"] == "none"
    assert run_target_data(old_evolve)["target"] == "labelled target dev"
    assert run_origin(old_merge) == "page" and run_origin({"result": {"sweep": "x"}}) == "sweep"


def test_the_key_ignores_what_the_method_does_not_read(tiny_ws):
    """A page sends every parameter (defaults filled in), 4-decimal weights and its own data mode;
    a sweep sends only its grid: the same experiment, the same key."""
    uriel = suggest_sources(tiny_ws, TARGET, top_k=2)
    sources, exact = list(uriel), list(uriel.values())
    sweep_cell = Candidate("merge", "ties", TARGET, sources, exact, {})
    from engine.merge import MERGES

    page = Candidate("merge", "ties", TARGET, sources, [round(w, 4) for w in exact],
                     MERGES.get("ties").resolve({}), data_mode="target", data_examples=32)
    assert candidate_key(tiny_ws, page) == candidate_key(tiny_ws, sweep_cell)
    other = Candidate("merge", "ties", TARGET, sources, exact, {"density": 0.3})
    assert candidate_key(tiny_ws, other) != candidate_key(tiny_ws, sweep_cell)
    vote = Candidate("ensemble", "soft", TARGET, sources, exact, {}, data_mode="sources")
    assert candidate_key(tiny_ws, vote) == candidate_key(
        tiny_ws, Candidate("ensemble", "soft", TARGET, sources, exact, {}, data_mode="target"))


def test_half_precision_is_another_experiment(tiny_ws):
    """bf16/fp16 evaluation on CUDA gives other numbers, so it must not reuse float32 runs; float32
    (every CPU run) keeps the key it always had."""
    import torch

    cand = Candidate("merge", "ties", TARGET, list(suggest_sources(tiny_ws, TARGET, top_k=2)), [0.5, 0.5])
    plain = candidate_key(tiny_ws, cand)
    was = tiny_ws.evaluator.half
    try:
        tiny_ws.evaluator.half = torch.bfloat16
        assert candidate_key(tiny_ws, cand) != plain
    finally:
        tiny_ws.evaluator.half = was
    assert candidate_key(tiny_ws, cand) == plain


def test_the_store_finds_runs_by_key_through_an_index(tmp_path):
    store = Store(tmp_path / "runs.sqlite")
    for i in range(3):
        store.create("merge", params={"cell_key": f"k{i}"}, status="done")
    assert [r["params"]["cell_key"] for r in store.runs_with_keys(["k1", "k2", "nope"])] == ["k2", "k1"]
    plan = " ".join(str(tuple(r)) for r in store._conn().execute(
        "EXPLAIN QUERY PLAN SELECT * FROM runs WHERE json_extract(params, '$.cell_key') IN (?)", ("k1",)))
    assert "runs_cell_key" in plan
    store.close()


@pytest.fixture(scope="module")
def page_then_sweep(tiny_ws, tmp_path_factory):
    """A TIES merge run from 'the Merge page' (submit_candidate, as the page does), then a sweep
    whose cells include the same merge, a soft vote and a fusion fitted on the target's dev."""
    from engine.merge import MERGES
    from engine.sweep import submit_sweep

    store = Store(tmp_path_factory.mktemp("keys") / "runs.sqlite")
    runner = JobRunner(store)
    uriel = suggest_sources(tiny_ws, TARGET, top_k=2)
    page = Candidate("merge", "ties", TARGET, list(uriel), [round(w, 4) for w in uriel.values()],
                     MERGES.get("ties").resolve({}))
    page_id = submit_candidate(runner, tiny_ws, page)
    page_row = runner.wait(page_id, timeout=300)
    spec = {"name": "keys", "targets": [TARGET], "sources": [2], "data_mode": "target",
            "equal_merge_baseline": False,
            "methods": ["merge:ties", "ensemble:soft", "ensemble:learned_weights"]}
    sweep = runner.wait(submit_sweep(runner, tiny_ws, spec), timeout=300)
    yield store, page_row, sweep
    runner.shutdown()
    store.close()


def test_a_sweep_reuses_the_page_run(page_then_sweep):
    from engine.sweep import sweep_cells

    store, page_row, sweep = page_then_sweep
    assert page_row["status"] == "done", page_row.get("error")
    assert sweep["status"] == "done", sweep.get("error")
    assert sweep["metrics"]["reused"] == 1 and sweep["metrics"]["computed"] == 2
    cells = sweep_cells(store, sweep["id"])
    assert page_row["id"] in {c["id"] for c in cells}
    reused = next(c for c in cells if c["id"] == page_row["id"])
    assert reused["params"]["k"] == 2 and reused["params"]["role"] == "method"   # the sweep's axes
    assert page_row["result"]["origin"] == "page"
    assert {run_origin(c) for c in cells if c["id"] != page_row["id"]} == {"sweep"}


def test_every_run_records_its_target_data(page_then_sweep):
    from engine.sweep import sweep_cells

    store, page_row, sweep = page_then_sweep
    assert page_row["result"]["target_data"] == {"target": "none", "source_data": False}
    by_method = {c["method"]: c for c in sweep_cells(store, sweep["id"])}
    assert by_method["learned_weights"]["result"]["target_data"]["target"] == "labelled target dev"
    assert by_method["learned_weights"]["params"]["target_data"] == "labelled target dev"
    assert by_method["soft"]["result"]["target_data"]["target"] == "none"


def test_the_report_marks_target_data_and_says_not_run(page_then_sweep):
    from engine.report import findings, headline_table, load_results, report_markdown
    from engine.report.figures import cost_scatter, parameter_coordinates

    store, _, sweep = page_then_sweep
    res = load_results(store, sweep["id"], n_boot=50)
    head = headline_table(res).set_index("variant")
    fused = [v for v in head.index if "learned_weights" in v]
    assert fused and fused[0].startswith("●") and head.loc[fused[0], "target_data"] == "labelled target dev"
    assert head.loc["merge:ties", "target_data"] == "none"
    found = findings(res)
    text = " ".join(str(v) for k, v in found.items() if k.endswith("_text"))
    assert "nan" not in text
    if found["best"]["variant"] != fused[0]:
        assert "equal-weight merge was not run" in found["best_text"]
    assert "nan%" not in report_markdown(res)
    symbols = {tr.marker.symbol for tr in cost_scatter(headline_table(res)).data}
    assert {"circle", "circle-open"} <= symbols
    fig = parameter_coordinates(res.frame)
    assert fig.layout.margin.l >= 80 and fig.layout.margin.r >= 80


def test_mergekit_yaml_weights_have_no_float_noise(tmp_path):
    import yaml

    from engine.merge.export import mergekit_config, yaml_ready

    recipe = {"method": "linear", "sources": ["a", "b", "c"], "weights": [0.157, 0.2715, 0.29]}
    config, _ = mergekit_config(recipe)
    raw = [m["parameters"]["weight"] for m in config["models"]]
    assert any(len(repr(w)) > 12 for w in raw)       # the noise is there before writing
    text = yaml.safe_dump(yaml_ready(config))
    assert not re.search(r"\d\.\d{8,}", text), text
    assert [m["parameters"]["weight"] for m in yaml.safe_load(text)["models"]] == pytest.approx(raw, rel=1e-6)
    assert np.isclose(sum(m["parameters"]["weight"] for m in yaml.safe_load(text)["models"]), 1.0, atol=1e-5)
