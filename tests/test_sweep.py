"""Sweeps on the real tiny zoo: one stored run per cell, nothing recomputed, resume after a cancel,
baselines equal to the N×N matrix, and the Ray executor giving the local numbers."""
import json
import time

import numpy as np
import pytest

from engine.experiments import Candidate, evaluate_candidate
from engine.jobs import JobRunner
from engine.store import Store
from engine.sweep import find_cells, resume_sweep, submit_sweep, sweep_cells
from engine.sweep.spec import SweepSpecError, expand_cells, load_spec

SPEC = {"name": "tiny", "targets": ["de-DE", "nl-NL"], "sources": [2],
        "methods": ["merge:linear", {"merge": "ties", "grid": {"density": [0.5]}}, {"ensemble": "soft"}]}


def n_cells_runs(store):
    return len(store.runs(kind="merge", limit=10 ** 6)) + len(store.runs(kind="ensemble", limit=10 ** 6))


@pytest.fixture(scope="module")
def swept(tiny_ws, tmp_path_factory):
    store = Store(tmp_path_factory.mktemp("sweep") / "runs.sqlite")
    runner = JobRunner(store)
    started = time.perf_counter()
    run_id = submit_sweep(runner, tiny_ws, SPEC)
    row = runner.wait(run_id, timeout=300)
    row["wall_s"] = time.perf_counter() - started
    yield store, runner, row
    runner.shutdown()
    store.close()


def test_sweep_stores_one_run_per_cell(tiny_ws, swept):
    store, _, row = swept
    assert row["status"] == "done", row["error"]
    cells = store.runs(parent=row["id"])
    # 2 targets × (linear, ties, soft + the equal-weight linear merge baseline)
    assert len(cells) == 8 and row["metrics"]["computed"] == 8 and row["metrics"]["reused"] == 0
    assert sorted((c["target"], c["kind"], c["method"], c["params"]["weighting"]) for c in cells) == sorted(
        (t, k, m, w) for t in ("de-DE", "nl-NL") for k, m, w in
        [("merge", "linear", "uriel"), ("merge", "ties", "uriel"), ("ensemble", "soft", "uriel"),
         ("merge", "linear", "equal")])
    for c in cells:
        assert c["status"] == "done" and c["parent"] == row["id"]
        assert c["target"] not in c["sources"] and len(c["sources"]) == 2     # leave-one-out, top-2
        assert set(c["metrics"]) == {"validation", "test"}
        assert len(c["params"]["cell_key"]) == 24
        labels = tiny_ws.evaluator.encoded(c["target"], "test").labels
        preds = np.array(c["result"]["predictions"]["test"])
        assert np.mean(preds == labels) == pytest.approx(c["metrics"]["test"]["accuracy"])
        assert c["result"]["forward_passes"] == (1 if c["kind"] == "merge" else 2)
    ties = [c for c in cells if c["method"] == "ties"]
    assert all(c["params"]["density"] == 0.5 for c in ties)
    assert len(store.series(row["id"], "cells")) == 8


def test_cell_metrics_equal_a_direct_evaluation(tiny_ws, swept):
    store, _, row = swept
    cell = next(c for c in store.runs(parent=row["id"]) if c["method"] == "ties" and c["target"] == "nl-NL")
    direct = evaluate_candidate(tiny_ws, Candidate("merge", "ties", "nl-NL", cell["sources"], cell["weights"],
                                                   {"density": 0.5}))
    for split in ("validation", "test"):
        assert cell["metrics"][split]["accuracy"] == pytest.approx(direct["metrics"][split]["accuracy"])
        assert cell["metrics"][split]["nll"] == pytest.approx(direct["metrics"][split]["nll"], abs=1e-6)


def test_resubmitting_recomputes_nothing(tiny_ws, swept):
    store, runner, first = swept
    before = n_cells_runs(store)
    again = runner.wait(submit_sweep(runner, tiny_ws, SPEC), timeout=120)
    assert again["status"] == "done"
    assert again["metrics"]["computed"] == 0 and again["metrics"]["reused"] == 8
    assert n_cells_runs(store) == before                                    # no new cell runs
    assert {c["id"] for c in sweep_cells(store, again["id"])} == {c["id"] for c in sweep_cells(store, first["id"])}


def test_baselines_match_the_nxn_matrix(tiny_ws, swept):
    store, _, row = swept
    nxn = tiny_ws.evaluator.nxn("test")
    refs = row["result"]["targets"]
    for target, ref in refs.items():
        column = nxn[target]
        assert ref["scores"] == pytest.approx(column.to_dict())
        others = column.drop(target)
        assert ref["best_zero_shot"] == {"model": others.idxmax(), "accuracy": pytest.approx(others.max())}
        assert ref["target_model"]["accuracy"] == pytest.approx(column[target])
        assert len(ref["labels"]) == len(tiny_ws.dataset.get(target, "test"))
    from engine.report import load_results

    frame = load_results(store, row["id"]).frame
    for r in frame.itertuples():
        sources = r.sources.split(", ")
        assert r.best_source_acc == pytest.approx(max(nxn.loc[s, r.target] for s in sources))
        assert r.target_model_acc == pytest.approx(nxn.loc[r.target, r.target])
    # every cell run carries its baselines like a candidate run (the Compare page reads them)
    for cell in store.runs(parent=row["id"], status=["done"]):
        base = cell["result"]["baselines"]
        best = max(cell["sources"], key=lambda s: nxn.loc[s, cell["target"]])
        assert base["best_source"] == {"model": best, "accuracy": pytest.approx(nxn.loc[best, cell["target"]])}
        assert base["target_model"]["accuracy"] == pytest.approx(nxn.loc[cell["target"], cell["target"]])
    # the equal-weight merge baseline is the linear merge of the same sources with equal weights
    eq = frame[frame.role == "equal_merge"].iloc[0]
    direct = evaluate_candidate(tiny_ws, Candidate("merge", "linear", eq.target, eq.sources.split(", "), [0.5, 0.5]))
    assert eq.accuracy == pytest.approx(direct["metrics"]["test"]["accuracy"])
    assert (frame[frame.target == eq.target].equal_merge_acc == eq.accuracy).all()


def test_interrupted_sweep_resumes_and_finishes_the_rest(tiny_ws, tmp_path):
    store = Store(tmp_path / "runs.sqlite")
    runner = JobRunner(store)
    spec = {"name": "cancel-me", "targets": ["es-ES", "en-US"], "sources": [2],
            "methods": [{"merge": "task_arithmetic", "grid": {"scale": [0.5, 1.0]}}, "ensemble:majority",
                        "ensemble:weighted_logits", {"merge": "ties", "grid": {"density": [0.3]}}]}
    total = len(expand_cells(tiny_ws, load_spec(spec)))
    assert total == 12
    first = submit_sweep(runner, tiny_ws, spec)
    deadline = time.time() + 120
    while len(store.runs(parent=first)) < 2 and time.time() < deadline:
        time.sleep(0.01)
    runner.cancel(first)
    stopped = runner.wait(first, timeout=60)
    assert stopped["status"] == "cancelled"
    done_before = len(store.runs(parent=first, status=["done"]))
    assert 2 <= done_before < total
    resumed = runner.wait(resume_sweep(runner, tiny_ws, first), timeout=300)
    assert resumed["status"] == "done" and resumed["params"]["resumed_from"] == first
    assert resumed["metrics"]["reused"] == done_before
    assert resumed["metrics"]["computed"] == total - done_before
    assert len(sweep_cells(store, resumed["id"])) == total
    keys = [c.key for c in expand_cells(tiny_ws, load_spec(spec))]
    assert len(find_cells(store, keys)) == total
    runner.shutdown()
    store.close()


def test_spec_files_and_errors(tiny_ws, tmp_path):
    yaml_file = tmp_path / "spec.yaml"
    yaml_file.write_text("name: y\ntargets: all\nsources: [1, 2]\nmethods:\n  - merge: ties\n"
                         "    grid: {density: [0.2, 0.4]}\n  - ensemble:soft\n")
    spec = load_spec(yaml_file)
    assert spec.targets == "all" and spec.methods[0].variants() == [{"density": 0.2}, {"density": 0.4}]
    cells = expand_cells(tiny_ws, spec)
    # 4 targets × 2 K × (2 ties + soft + equal merge); K=1: the equal merge is the linear merge of one model
    assert len(cells) == 4 * 2 * 4
    json_file = tmp_path / "spec.json"
    json_file.write_text(json.dumps(SPEC))
    assert load_spec(json_file).methods[1].grid == {"density": [0.5]}
    with pytest.raises(SweepSpecError, match="unknown merge method 'tie'"):
        load_spec({"methods": ["merge:tie"]})
    with pytest.raises(SweepSpecError, match="density"):
        load_spec({"methods": [{"merge": "ties", "grid": {"density": [1.5]}}]})
    with pytest.raises(SweepSpecError, match="no parameter"):
        load_spec({"methods": [{"merge": "linear", "grid": {"alpha": [1]}}]})
    with pytest.raises(SweepSpecError, match="weighting"):
        load_spec({"methods": ["merge:linear"], "weighting": ["uriel", "random"]})
    with pytest.raises(SweepSpecError, match="xx-XX"):
        expand_cells(tiny_ws, load_spec({"methods": ["merge:linear"], "targets": ["xx-XX"]}))
    with pytest.raises(SweepSpecError, match="not found"):
        load_spec(tmp_path / "missing.yaml")


def test_ray_executor_gives_the_local_metrics(tiny_ws, swept, tmp_path):
    ray = pytest.importorskip("ray", reason="ray is not installed: the Ray executor is not tested")
    _, _, local_row = swept
    local_store = swept[0]
    store = Store(tmp_path / "runs.sqlite")
    runner = JobRunner(store)
    spec = {**SPEC, "targets": ["de-DE"], "methods": ["merge:linear", "ensemble:soft"]}
    try:
        from engine.parallel import init_ray

        init_ray(num_cpus=2)
        started = time.perf_counter()
        row = runner.wait(submit_sweep(runner, tiny_ws, spec, executor="ray"), timeout=300)
        print(f"ray sweep of 3 cells: {time.perf_counter() - started:.1f} s (local 8 cells: {local_row['wall_s']:.1f} s)")
        assert row["status"] == "done", row["error"]
        assert row["metrics"]["computed"] == 3
        remote = {c["params"]["cell_key"]: c for c in store.runs(parent=row["id"])}
        local = {c["params"]["cell_key"]: c for c in local_store.runs(parent=local_row["id"])}
        assert set(remote) <= set(local)
        for key, cell in remote.items():
            for split in ("validation", "test"):
                assert cell["metrics"][split]["accuracy"] == pytest.approx(local[key]["metrics"][split]["accuracy"])
                assert cell["metrics"][split]["nll"] == pytest.approx(local[key]["metrics"][split]["nll"], abs=1e-5)
            assert cell["result"]["predictions"] == local[key]["result"]["predictions"]
    finally:
        runner.shutdown()
        store.close()
        ray.shutdown()


def test_a_failing_cell_is_recorded_and_the_sweep_goes_on(tiny_ws, tmp_path):
    store = Store(tmp_path / "runs.sqlite")
    runner = JobRunner(store)
    spec = {"name": "one-source", "targets": ["de-DE"], "sources": [1], "methods": ["merge:model_stock"]}
    row = runner.wait(submit_sweep(runner, tiny_ws, spec), timeout=120)
    assert row["status"] == "done" and row["metrics"]["failed"] == 1 and row["metrics"]["computed"] == 1
    failed = store.get(next(iter(row["result"]["failed"].values())))
    assert failed["status"] == "failed" and "model_stock" in failed["error"]
    assert [c["method"] for c in sweep_cells(store, row["id"])] == ["linear"]      # the equal-merge baseline
    runner.shutdown()
    store.close()
