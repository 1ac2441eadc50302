"""Reports: tables and answers from hand-made runs (exact numbers), then files from a real sweep and the CLI."""
import json

import numpy as np
import pytest

from engine import report
from engine.report.figures import accuracy_heatmap, cost_scatter, figures, parameter_coordinates, win_rate_bars
from engine.store import Store

LABELS = [0, 1] * 5                                     # 10 test examples per target
# per target: zero-shot scores (sources A, B; C is not a source), and the cells' test accuracies
SCORES = {"T1": {"A": 0.5, "B": 0.6, "C": 0.7, "T1": 0.9}, "T2": {"A": 0.4, "B": 0.3, "C": 0.5, "T2": 0.8}}
ACC = {("T1", "merge", "linear", "uriel"): 0.7, ("T1", "ensemble", "soft", "uriel"): 0.8,
       ("T1", "merge", "linear", "equal"): 0.6,
       ("T2", "merge", "linear", "uriel"): 0.6, ("T2", "ensemble", "soft", "uriel"): 0.4,
       ("T2", "merge", "linear", "equal"): 0.5}
# T1: linear right on examples 0-6, soft on 0-5 and 7-8 -> McNemar b=1, c=2
CORRECT = {("T1", "merge", "linear", "uriel"): [1] * 7 + [0] * 3,
           ("T1", "ensemble", "soft", "uriel"): [1] * 6 + [0, 1, 1, 0]}


def predictions(correct):
    return [y if ok else 1 - y for y, ok in zip(LABELS, correct)]


@pytest.fixture()
def synthetic(tmp_path):
    """A finished sweep written straight into a store: 2 targets × (linear, soft, equal-weight merge)."""
    store = Store(tmp_path / "runs.sqlite")
    refs = {t: {"labels": LABELS, "scores": s, "best_zero_shot": {"model": "C", "accuracy": s["C"]},
                "target_model": {"model": t, "accuracy": s[t]}, "predictions": {}} for t, s in SCORES.items()}
    sweep = store.create("sweep", name="sweep synthetic", params={"spec": {"name": "synthetic"}}, status="done")
    for i, ((target, kind, method, weighting), acc) in enumerate(ACC.items()):
        correct = CORRECT.get((target, kind, method, weighting), [1] * round(acc * 10) + [0] * (10 - round(acc * 10)))
        weights = [0.5, 0.5] if weighting == "equal" else [0.7, 0.3]
        cell = store.create(kind, target=target, method=method, sources=["A", "B"], weights=weights, parent=sweep,
                            params={"k": 2, "features": "syntax_knn", "weighting": weighting, "cell_key": f"k{i}",
                                    "role": "equal_merge" if weighting == "equal" else "method"}, status="done")
        latency = 1.0 if kind == "merge" else 2.0
        store.update(cell, metrics={"test": {"accuracy": acc, "latency_ms": latency, "nll": 1.0},
                                    "validation": {"accuracy": acc - 0.1}},
                     result={"predictions": {"test": predictions(correct)}, "build_seconds": 10.0 * (i + 1),
                             "forward_passes": 1 if kind == "merge" else 2})
    store.update(sweep, result={"targets": refs, "computed": 6, "reused": 0, "failed": {}, "executor": "local"})
    yield store, sweep
    store.close()


def test_tables_match_hand_computed_numbers(synthetic):
    store, sweep = synthetic
    res = report.load_results(store, sweep)
    assert len(res.frame) == 6
    acc = report.accuracy_table(res)
    assert list(acc.index) == ["merge:linear", "ensemble:soft", "merge:linear (equal weights)"]
    assert acc.loc["ensemble:soft", "T1"] == pytest.approx(0.8)
    head = report.headline_table(res).set_index("variant")
    lin, soft, eq = head.loc["merge:linear"], head.loc["ensemble:soft"], head.loc["merge:linear (equal weights)"]
    assert lin.mean_accuracy == pytest.approx(0.65) and soft.mean_accuracy == pytest.approx(0.6)
    # best source: T1 max(A .5, B .6) = .6, T2 max(.4, .3) = .4; best zero-shot: C (.7, .5)
    assert lin.win_rate_vs_best_source == 1.0 and soft.win_rate_vs_best_source == 0.5   # soft ties on T2
    assert lin.win_rate_vs_best_zero_shot == 0.5 and soft.win_rate_vs_best_zero_shot == 0.5
    assert lin.win_rate_vs_equal_merge == 1.0 and soft.win_rate_vs_equal_merge == 0.5
    assert lin.win_rate_vs_target_model == 0.0
    # gap closed: linear (.7-.6)/(.9-.6)=1/3, (.6-.5)/(.8-.5)=1/3; soft 2/3 and -1/3; the equal merge 0
    assert lin.mean_gap_closed == pytest.approx(1 / 3)
    assert soft.mean_gap_closed == pytest.approx(1 / 6)
    assert eq.mean_gap_closed == pytest.approx(0.0)
    assert (lin.forward_passes, soft.forward_passes) == (1.0, 2.0)
    assert (lin.latency_ms, soft.latency_ms) == (1.0, 2.0)
    # build seconds: cells 0 and 3 (linear, 10 and 40 s) and 1 and 4 (soft, 20 and 50 s): the median
    assert (lin.build_s, soft.build_s) == (25.0, 35.0)
    assert soft.mean_delta_vs_best_source == pytest.approx(0.1)
    base = report.baseline_table(res).set_index("baseline").mean_accuracy
    assert base["best_source"] == pytest.approx(0.5) and base["best_zero_shot"] == pytest.approx(0.6)
    assert base["equal_merge"] == pytest.approx(0.55) and base["target_model"] == pytest.approx(0.85)
    wins = report.win_rate_table(res)
    row = wins[(wins.variant == "ensemble:soft") & (wins.baseline == "best_source")].iloc[0]
    assert (row.wins, row.ties, row.losses, row.n) == (1, 1, 0, 2)
    # bootstrap interval around each cell's accuracy
    assert (res.frame.accuracy_lo <= res.frame.accuracy).all() and (res.frame.accuracy <= res.frame.accuracy_hi).all()


def test_paired_tests_and_findings(synthetic):
    store, sweep = synthetic
    res = report.load_results(store, sweep)
    tests = report.paired_tests(res, "merge:linear", "ensemble:soft").set_index("target")
    assert (tests.loc["T1", "b"], tests.loc["T1", "c"]) == (1, 2)
    assert tests.loc["T1", "p_value"] == pytest.approx(1.0)            # 2·P(X≤1), X~Bin(3, ½) = 1
    found = report.findings(res)
    mve = found["merge_vs_ensemble"]
    assert mve["best_merge"] == "merge:linear" and mve["best_ensemble"] == "ensemble:soft"
    assert mve["difference"] == pytest.approx(0.05)
    assert (mve["merge_ahead"], mve["ensemble_ahead"]) == (1, 1)
    assert found["merge_vs_ensemble_text"].startswith("Yes")
    assert found["recommendation"] == "merge:linear"
    assert "65.0%" in found["best_text"] and "33.3%" in found["best_text"]
    text = report.report_markdown(res)
    for needle in ("Does merging beat ensembling here?", "+5.0 points", "Use merge:linear", "| merge:linear |"):
        assert needle in text


def test_figure_builders(synthetic):
    store, sweep = synthetic
    res = report.load_results(store, sweep)
    heat = accuracy_heatmap(report.accuracy_table(res))
    assert np.allclose(np.asarray(heat.data[0].z, dtype=float), report.accuracy_table(res).to_numpy())
    bars = win_rate_bars(report.win_rate_table(res))
    assert len(bars.data) == len(report.BASELINES)
    par = parameter_coordinates(res.frame)
    assert par.data[0].dimensions[-1].label == "accuracy"
    scatter = cost_scatter(report.headline_table(res), cost="forward_passes")
    assert {t.name for t in scatter.data} == {"merge", "ensemble"}
    assert set(figures(res)) == {"accuracy_heatmap", "win_rates", "parameters", "accuracy_vs_cost"}
    with pytest.raises(report.ReportError, match="not a sweep"):
        report.load_results(store, res.frame.run_id[0])


def test_write_report_from_a_real_sweep_via_the_cli(tiny_ws, tiny_zoo_dir, tmp_path):
    from engine.cli import main

    cache = tiny_ws.settings.cache_dir                    # reuse the session's logits cache
    spec = tmp_path / "spec.yaml"
    spec.write_text("name: cli\ntargets: [de-DE]\nsources: [2]\nmethods: [merge:linear, ensemble:soft]\n")
    out = tmp_path / "report"
    assert main(["sweep", str(spec), "--zoo", str(tiny_zoo_dir), "--cache-dir", cache, "--device", "cpu",
                 "--report", str(out), "--quiet"]) == 0
    store = Store(f"{cache}/runs.sqlite")
    sweep_id = store.runs(kind="sweep", limit=1)[0]["id"]
    for name in ("report.md", "results.csv", "results.json", "accuracy_heatmap.html", "win_rates.html",
                 "parameters.html", "accuracy_vs_cost.html", "plotly.min.js"):
        assert (out / name).is_file(), name
    html = (out / "accuracy_heatmap.html").read_text()
    assert "cdn.plot.ly" not in html and "plotly.min.js" in html       # offline: the script sits beside it
    data = json.loads((out / "results.json").read_text())
    cells = {(c["method"], c["role"]): c["accuracy"] for c in data["cells"]}
    runs = {(r["method"], r["params"]["role"]): r["metrics"]["test"]["accuracy"] for r in store.runs(parent=sweep_id)}
    assert cells == pytest.approx(runs)
    head = {h["variant"]: h["mean_accuracy"] for h in data["headline"]}
    assert head["ensemble:soft"] == pytest.approx(runs[("soft", "method")])
    assert head["merge:linear"] == pytest.approx(runs[("linear", "method")])
    md = (out / "report.md").read_text()
    assert f"{100 * runs[('soft', 'method')]:.1f}%" in md
    # the report command rewrites the same files from the store
    again = tmp_path / "again"
    assert main(["report", sweep_id, "--out", str(again), "--cache-dir", cache, "--quiet"]) == 0
    assert (again / "report.md").read_text() == md
    store.close()


def test_the_headline_says_which_variants_read_source_data(synthetic):
    """A merge fitted on the sources' own-language data (RegMean's Gram matrices) saw no target data
    but is not a zero-data recipe either: the headline says so beside its target data."""
    store, sweep = synthetic
    for row in store.runs(parent=sweep, limit=100):
        if row["method"] == "linear" and row["params"]["weighting"] == "uriel":
            store.update(row["id"], result={**row["result"], "target_data": {"target": "none", "source_data": True}})
    head = report.headline_table(report.load_results(store, sweep)).set_index("variant")
    assert head.loc["merge:linear", "target_data"] == "none" and head.loc["merge:linear", "source_data"]
    assert not head.loc["ensemble:soft", "source_data"]
    assert not head.loc["merge:linear (equal weights)", "source_data"]


def test_the_answers_leave_out_variants_run_on_fewer_targets(synthetic):
    """A variant with one target left (a failed cell, a sweep still running) has a mean over other
    targets than the rest: it stays in the tables but is not named best."""
    store, sweep = synthetic
    lost = next(r for r in store.runs(parent=sweep, limit=100) if r["target"] == "T2"
                and r["method"] == "linear" and r["params"]["weighting"] == "uriel")
    store.update(lost["id"], status="failed")
    res = report.load_results(store, sweep)
    head = report.headline_table(res).set_index("variant")
    assert head.loc["merge:linear", "targets"] == 1 and head.loc["merge:linear", "mean_accuracy"] == pytest.approx(0.7)
    found = report.findings(res)
    assert found["best"]["variant"] == "ensemble:soft" and found["fewer_targets"] == ["merge:linear"]
    assert found["merge_vs_ensemble"]["best_merge"] == "merge:linear (equal weights)"
    assert "fewer than 2 targets: merge:linear (1)" in found["best_text"]


def test_the_parameter_chart_takes_a_text_parameter_some_cells_lack(synthetic):
    """AdaMerging's granularity ("task"/"layer") is missing for the equal-weight merge's cells: the
    chart names it n/a (it raised comparing str with float, and the sweep's report was not written)."""
    store, sweep = synthetic
    res = report.load_results(store, sweep)
    frame = res.frame.assign(**{"p.granularity": ["task", np.nan, np.nan, "layer", np.nan, np.nan]})
    axis = next(d for d in parameter_coordinates(frame).data[0].dimensions if d.label == "p.granularity")
    assert list(axis.ticktext) == ["layer", "n/a", "task"]


def test_parameter_axes_with_a_choice_only_some_methods_have():
    """A choice parameter (prior_shift's mode) that other methods lack is NaN there: its axis shows
    'n/a' instead of failing to sort strings against NaN (pandas 3 keeps NaN through astype(str))."""
    import pandas as pd

    frame = pd.DataFrame({"target": ["a", "a", "b", "b"], "method": ["ties", "prior_shift"] * 2,
                          "p.mode": [np.nan, "em", np.nan, "recenter"], "accuracy": [0.5, 0.6, 0.7, 0.8]})
    axis = {d.label: d for d in parameter_coordinates(frame).data[0].dimensions}["p.mode"]
    assert list(axis.ticktext) == ["em", "n/a", "recenter"]
    assert list(axis.values) == [1, 0, 1, 2]
