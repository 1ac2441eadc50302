"""The MERGE³-style informative dev subset: examples the sources disagree on, stratified by label,
chosen from the sources' own dev logits and deterministic by seed; an evolution searching on it
records which subset it used and its error against the whole split, and the Evolve page says so."""
import json

import numpy as np
import pytest
import torch

from engine.evolve import EvolveConfig, EvolveError, Evolution
from engine.evolve.fitness import Fitness, informativeness, stratified_top

torch.set_num_threads(1)
TARGET, SOURCES = "nl-NL", ["de-DE", "en-US"]


def test_stratified_top_keeps_the_label_mix_and_takes_the_highest_scores():
    labels = np.array([0] * 6 + [1] * 3 + [2] * 3)
    score = np.array([3, 3, 1, 1, 0, 0, 2, 2, 2, 0, 0, 0], dtype=float)   # ties in labels 1 and 2
    keep = stratified_top(score, labels, 4, seed=0)
    assert np.bincount(labels[keep], minlength=3).tolist() == [2, 1, 1]   # 6:3:3 of 4, largest remainder
    for label in range(3):
        rows = np.flatnonzero(labels == label)
        chosen = sorted(score[keep][labels[keep] == label])
        assert chosen == sorted(score[rows])[::-1][:len(chosen)][::-1]    # the label's best scores
    assert stratified_top(score, labels, 4, seed=0).tolist() == keep.tolist()
    assert {tuple(stratified_top(score, labels, 4, seed=s)) for s in range(8)} != {tuple(keep)}  # ties by seed


def test_informativeness_is_high_where_sources_disagree_or_hesitate():
    labels = np.array([0, 0, 0, 0])
    sure = np.log(np.array([[0.98, 0.02]] * 4))
    a = sure.copy()
    b = sure.copy()
    b[1] = np.log([0.02, 0.98])         # example 1: the sources disagree
    a[2] = b[2] = np.log([0.5, 0.5])    # example 2: both hesitate
    a[3] = b[3] = np.log([0.02, 0.98])  # example 3: both confidently wrong
    score = informativeness([a, b], labels)
    assert score[1] > score[0] and score[2] > score[0] and score[3] < score[1]
    assert score[1] == pytest.approx(0.25, abs=1e-3) and score[0] < 0.03


def test_the_informative_fitness_subset_comes_from_the_sources_dev_logits(tiny_ws):
    weights = {"accuracy": 0.5, "loss": 0.5}
    fit = Fitness(tiny_ws, TARGET, weights, "validation", 8, 3, "informative", SOURCES)
    whole = tiny_ws.evaluator.encoded(TARGET, "validation")
    logits = [tiny_ws.evaluator.source_logits(s, TARGET, "validation").logits for s in SOURCES]
    expected = stratified_top(informativeness(logits, whole.labels), whole.labels, 8, 3)
    assert sorted(fit.dev.labels.tolist()) == sorted(whole.labels[expected].tolist())
    assert len(fit.dev) == 8 and fit.dev.fingerprint.endswith("informative8:3")
    assert np.bincount(fit.dev.labels).tolist() == [2, 2, 2, 2]          # 6 of each label: 2 of each kept
    score = informativeness(logits, whole.labels)
    assert score[expected].mean() > score.mean()                          # the informative ones
    again = Fitness(tiny_ws, TARGET, weights, "validation", 8, 3, "informative", SOURCES)
    assert [t.tolist() for t in again.dev.input_ids] == [t.tolist() for t in fit.dev.input_ids]
    random = Fitness(tiny_ws, TARGET, weights, "validation", 8, 3, "random", SOURCES)
    assert random.dev.fingerprint.endswith("sample8:3")

    with pytest.raises(EvolveError, match="dev_subset must be"):
        Fitness(tiny_ws, TARGET, weights, "validation", 8, 3, "clever", SOURCES)
    with pytest.raises(EvolveError, match="dev_subset must be random or informative, got 'clever'"):
        EvolveConfig(target=TARGET, sources=SOURCES, dev_subset="clever").check()


def test_an_informative_run_records_its_subset_and_error(tiny_ws):
    config = EvolveConfig.with_settings(target=TARGET, sources=SOURCES, algorithm="cmaes", method="linear",
                                        generations=1, population=2, layer_groups=0, dev_size=8,
                                        dev_subset="informative", patience=0, seed=1)
    evo = Evolution(tiny_ws, config)
    result = evo.run()
    subset = result["dev_subset"]
    assert subset["subset"] == "informative" and (subset["examples"], subset["of"]) == (8, 24)
    full = Fitness(tiny_ws, TARGET, evo.config.fitness_weights, "validation", 0, 1)
    expected = full.combine(full.metrics(evo.champion_model()))
    assert subset["fitness_full"] == pytest.approx(expected)
    assert subset["error"] == pytest.approx(evo.champion.fitness - expected)
    assert result["config"]["dev_subset"] == "informative"
    shift = evo.fitness.source_shift()
    assert subset["fitness_anchored"] == pytest.approx(evo.champion.fitness - shift["fitness"])
    assert subset["error_anchored"] == pytest.approx(subset["fitness_anchored"] - expected)


def test_the_source_anchored_estimate_is_exact_for_a_source_itself(tiny_ws):
    """The anchor is each source's own subset − whole shift: a candidate that *is* the source gets
    its whole-split fitness back from its subset fitness."""
    weights = {"accuracy": 0.5, "loss": 0.5}
    for kind in ("random", "informative"):
        fit = Fitness(tiny_ws, TARGET, weights, "validation", 8, 2, kind, ["de-DE"])
        whole = Fitness(tiny_ws, TARGET, weights, "validation", 0, 2, kind, ["de-DE"])
        state = tiny_ws.zoo.state_dict("de-DE")
        on_subset, on_whole = fit(state)[0], whole(state)[0]
        shift = fit.source_shift()
        assert on_subset - shift["fitness"] == pytest.approx(on_whole, abs=1e-4)
        assert abs(on_subset - on_whole) > 1e-3 or kind == "random"    # the informative subset is biased
        assert whole.source_shift() is None


def test_cli_and_evolve_page_show_the_subset_kind(app_cache, tiny_zoo_dir, capsys):
    from app_support import goto, open_app, rerun, runner

    from engine.cli import main

    assert main(["evolve", "--zoo", str(tiny_zoo_dir), "--cache-dir", str(app_cache), "--device", "cpu",
                 "--target", TARGET, "--sources", *SOURCES, "--algorithm", "cmaes", "--method", "linear",
                 "--generations", "1", "--population", "2", "--layer-groups", "0", "--dev-size", "8",
                 "--dev-subset", "informative", "--no-merge-cache", "--quiet"]) == 0
    out = capsys.readouterr().out
    assert "dev subset (informative): 8 of 24 examples" in out and "anchored on the sources' shift" in out
    assert main(["evolve", "--target", TARGET, "--dev-subset", "clever", "--zoo", str(tiny_zoo_dir)]) == 2
    assert "clever" in capsys.readouterr().err

    at = open_app()
    at.session_state["evo_run"] = runner(app_cache).store.runs(kind="evolve", limit=1)[0]["id"]
    at = goto(at, "Evolve")
    assert at.selectbox(key="evo_dev_subset").options == ["random", "informative"]
    at.toggle(key="evo_every_target").set_value(True)
    rerun(at)
    captions = [c.value for c in at.caption if c.value.startswith("Searched on")]
    assert captions and "8 of 24 dev examples (informative)" in captions[0], [c.value for c in at.caption]
    assert "anchored on the sources' own shift, error" in captions[0]
