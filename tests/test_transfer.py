"""Transfer prediction (issue 16.1): leave-target-out fitting, explicit top-K ties, the 'predicted'
weighting end to end (engine, CLI, sweep spec) and the ``transfer`` report command, on the tiny zoo."""
import json

import numpy as np
import pandas as pd
import pytest

from engine.cli import main


@pytest.fixture(scope="module")
def val_matrix(tiny_ws):
    from engine.transfer import zero_shot_matrix

    return zero_shot_matrix(tiny_ws, "validation")


def _ws_args(ws):
    return ["--zoo", str(ws.settings.zoo), "--cache-dir", str(ws.cache_dir), "--device", "cpu"]


# ---- leave-target-out ------------------------------------------------------------------------------
def test_predictor_never_reads_the_targets_column(tiny_ws, val_matrix):
    from engine.transfer import fit_leave_target_out, train_sizes

    sizes = train_sizes(tiny_ws)
    target, sources = "nl-NL", ["de-DE", "en-US", "es-ES"]
    before = fit_leave_target_out(val_matrix, target, sizes).predict(sources)
    rng = np.random.default_rng(0)
    perturbed = val_matrix.copy()
    perturbed[target] = rng.uniform(0, 1, len(perturbed))           # the target's column
    perturbed.loc[target] = rng.uniform(0, 1, perturbed.shape[1])   # and its own model's row
    after = fit_leave_target_out(perturbed, target, sizes).predict(sources)
    assert after == pytest.approx(before, abs=0)
    # the same perturbation of another target's column does change the prediction: the test can fail
    other = val_matrix.copy()
    other["de-DE"] = rng.uniform(0, 1, len(other))
    changed = fit_leave_target_out(other, target, sizes).predict(sources)
    assert changed != pytest.approx(before)


def test_predictor_serves_a_target_without_a_model(tiny_ws, val_matrix):
    """A locale the zoo has no model for (pt-PT) is predicted from the same kind of matrix."""
    from engine.transfer import fit_leave_target_out, train_sizes

    pred = fit_leave_target_out(val_matrix, "pt-PT", train_sizes(tiny_ws)).predict(list(val_matrix.index))
    assert set(pred) == set(val_matrix.index) and all(np.isfinite(list(pred.values())))


def test_too_small_a_matrix_is_one_clear_error():
    from engine.transfer import TransferError, fit_leave_target_out

    m = pd.DataFrame([[0.9, 0.5], [0.4, 0.8]], index=["de-DE", "nl-NL"], columns=["de-DE", "nl-NL"])
    with pytest.raises(TransferError, match="at least 3 models"):
        fit_leave_target_out(m, "nl-NL", {})


def test_ranking_metrics():
    from engine.transfer import ndcg_at, spearman

    assert ndcg_at([3, 2, 1], [0.9, 0.5, 0.1], 3) == pytest.approx(1.0)
    assert ndcg_at([1, 2, 3], [0.9, 0.5, 0.1], 3) < 0.8
    assert spearman([1, 2, 3], [0.1, 0.5, 0.9]) == pytest.approx(1.0)
    assert np.isnan(spearman([1, 1, 1], [0.1, 0.5, 0.9]))


# ---- ties ------------------------------------------------------------------------------------------
def test_uriel_top_k_ties_are_broken_by_name_then_by_a_given_score():
    """pt-PT's syntax_knn similarity to fr-FR, pl-PL and ru-RU is one exact tie (0.8648)."""
    from engine.languages import target_similarity

    sources = ["ru-RU", "pl-PL", "fr-FR", "es-ES", "it-IT", "de-DE", "en-US", "zh-CN"]
    by_name = target_similarity("pt-PT", sources, top_k=3)
    assert [loc for loc, _ in by_name.neighbours] == ["it-IT", "es-ES", "fr-FR"]
    assert any("fr-FR, pl-PL, ru-RU tie at 0.8648" in n and "kept fr-FR" in n and "locale name" in n
               for n in by_name.notes)
    assert target_similarity("pt-PT", list(reversed(sources)), top_k=3).weights == by_name.weights
    by_score = target_similarity("pt-PT", sources, top_k=3, tie_break={"ru-RU": 0.9, "pl-PL": 0.5})
    assert [loc for loc, _ in by_score.neighbours][-1] == "ru-RU"
    assert any("kept ru-RU" in n and "predicted transfer" in n for n in by_score.notes)


def test_float_noise_is_a_tie_not_an_order():
    """0.8 + 1e-15 does not outrank an earlier locale at 0.8: equal to 12 decimals is a tie."""
    from engine.languages import weigh_sources

    names = ["de-DE", "es-ES", "fr-FR", "it-IT"]
    sim = pd.DataFrame(np.eye(4), index=names, columns=names)
    sim.loc["de-DE", ["es-ES", "fr-FR", "it-IT"]] = [0.8, 0.8 + 1e-15, 0.3]
    sim.loc[["es-ES", "fr-FR", "it-IT"], "de-DE"] = [0.8, 0.8 + 1e-15, 0.3]
    result = weigh_sources(sim, "de-DE", top_k=1, sinkhorn_iters=0)
    assert list(result.weights) == ["es-ES"]
    assert any("es-ES, fr-FR tie" in n for n in result.notes)


# ---- the weighting option --------------------------------------------------------------------------
def test_source_weights_predicted_equal_and_uriel(tiny_ws):
    from engine.experiments import CandidateError, source_weights
    from engine.transfer import predicted_transfer

    predicted = predicted_transfer(tiny_ws, "nl-NL")
    sources, weights = source_weights(tiny_ws, "nl-NL", top_k=2, weighting="predicted")
    assert sources == sorted(predicted, key=lambda s: (-predicted[s], s))[:2]
    assert sum(weights) == pytest.approx(1.0) and weights == sorted(weights, reverse=True)
    named, w_named = source_weights(tiny_ws, "nl-NL", ["en-US", "de-DE"], weighting="predicted")
    assert named == ["en-US", "de-DE"] and (w_named[1] > w_named[0]) == (predicted["de-DE"] > predicted["en-US"])
    _, equal = source_weights(tiny_ws, "nl-NL", top_k=3, weighting="equal")
    assert equal == pytest.approx([1 / 3] * 3)
    with pytest.raises(CandidateError, match="unknown weighting 'random'"):
        source_weights(tiny_ws, "nl-NL", weighting="random")


def test_ensemble_cli_with_predicted_weighting(tiny_ws, capsys):
    from engine.transfer import predicted_weights

    assert main(["ensemble", *_ws_args(tiny_ws), "--target", "nl-NL", "--method", "soft", "--top-k", "2",
                 "--weighting", "predicted", "--json", "--quiet"]) == 0
    out = json.loads(capsys.readouterr().out)
    cand = out["candidate"]
    from engine.store import Store

    assert Store(tiny_ws.cache_dir / "runs.sqlite").get(out["run_id"])["params"]["weighting"] == "predicted"
    expected = predicted_weights(tiny_ws, "nl-NL", top_k=2)
    assert cand["sources"] == list(expected)
    assert cand["weights"] == pytest.approx(list(expected.values()))
    assert main(["ensemble", *_ws_args(tiny_ws), "--target", "nl-NL", "--method", "soft",
                 "--weighting", "predicted", "--equal"]) == 2
    assert "--equal contradicts --weighting predicted" in capsys.readouterr().err


def test_sweep_spec_weighting_axis_has_predicted(tiny_ws):
    from engine.sweep.spec import expand_cells, load_spec

    spec = load_spec({"methods": ["merge:linear"], "targets": ["nl-NL"], "sources": [2],
                      "weighting": ["uriel", "equal", "predicted"]})
    cells = expand_cells(tiny_ws, spec)
    by_weighting = {c.axes["weighting"]: c.candidate for c in cells if c.role == "method"}
    assert set(by_weighting) == {"uriel", "equal", "predicted"}
    assert sum(by_weighting["predicted"].weights) == pytest.approx(1.0)
    # every source set gets its equal-weight linear merge (the 'equal' cell is the URIEL set's one)
    equal_merges = {tuple(sorted(c.candidate.sources)) for c in cells
                    if c.candidate.method == "linear" and len(set(c.candidate.weights)) == 1}
    assert equal_merges == {tuple(sorted(c.sources)) for c in by_weighting.values()}


# ---- the report command ----------------------------------------------------------------------------
def test_transfer_command_reports_every_ranker(tiny_ws, capsys):
    assert main(["transfer", *_ws_args(tiny_ws), "--json", "--quiet", "--target", "nl-NL"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert [r["ranker"] for r in report["table"]] == ["syntactic", "phonological", "inventory", "genetic",
                                                      "geographic", "featural", "source_quality", "predictor"]
    assert report["targets"] == 4 and report["fit_split"] == "validation" and report["truth_split"] == "test"
    assert all(0 < r["ndcg@3"] <= 1 for r in report["table"])
    assert sum(report["target"]["weights"].values()) == pytest.approx(1.0)
    assert main(["transfer", *_ws_args(tiny_ws), "--split", "validation", "--quiet"]) == 0
    text = capsys.readouterr().out
    assert "truth: validation split" in text and "predictor" in text and "spearman" in text


def test_sweep_report_tells_predicted_from_uriel_weights(tiny_ws, tmp_path, capsys):
    """Predicted-weight cells are their own variant in the headline, not pooled with URIEL's."""
    spec = tmp_path / "weighting.yaml"
    spec.write_text("targets: [nl-NL]\nsources: [2]\nweighting: [uriel, predicted]\n"
                    "methods: [ensemble: soft]\nequal_merge_baseline: false\n")
    assert main(["sweep", str(spec), *_ws_args(tiny_ws), "--quiet"]) == 0
    text = capsys.readouterr().out
    assert "ensemble:soft (predicted transfer)" in text
    assert any(line.split()[:1] == ["ensemble:soft"] and "(" not in line for line in text.splitlines())
