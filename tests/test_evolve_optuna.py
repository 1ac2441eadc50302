"""The Optuna backend on the real tiny zoo: a TPE run never ends below its first trial, a seed
repeats a run, a checkpoint resumes it exactly (and a checkpoint that no longer replays is refused),
NSGA-II's recorded front is non-dominated with the champion at its best accuracy, and the CLI
refuses a setting the chosen algorithm does not read."""
import json

import pytest
import torch

from engine.evolve import EvolveConfig, EvolveError, Evolution
from engine.evolve.runner import CHECKPOINT, read_checkpoint

torch.set_num_threads(1)
TARGET, SOURCES = "nl-NL", ["de-DE", "en-US"]


def optuna_config(algorithm, **overrides):
    settings = dict(target=TARGET, sources=SOURCES, algorithm=algorithm, method="ties",
                    generations=3, population=3, layer_groups=1, dev_size=12, patience=0, seed=5)
    settings.update(overrides)
    return EvolveConfig.with_settings(**settings)


def run(ws, config, **kw):
    evo = Evolution(ws, config, **kw)
    while evo.step():
        pass
    return evo


def curves(evo):
    return [(h["generation"], h["best"], h["mean"], h["worst"], h["champion"]) for h in evo.history]


def test_tpe_is_seeded_resumable_and_never_below_its_first_trial(tiny_ws, tmp_path):
    config = optuna_config("optuna_tpe", startup_trials=3)
    a = run(tiny_ws, config)
    assert a.champion.fitness >= a.history[0]["best"]  # generation 0 = the first trial, the start
    assert a.result()["trials"] == 1 + 3 * 3
    importances = a.result()["importances"]  # Optuna's own, named by what each coordinate sets
    assert set(importances) <= set(a.search.coordinate_names()) and "head · de-DE weight" in importances
    assert sum(importances.values()) == pytest.approx(1.0)
    assert curves(run(tiny_ws, config)) == curves(a)  # the seed repeats the run
    different = run(tiny_ws, optuna_config("optuna_tpe", startup_trials=3, seed=6))
    assert [m.candidate for m in different.search.population] != [m.candidate for m in a.search.population]

    interrupted = Evolution(tiny_ws, config, checkpoint_dir=tmp_path)
    interrupted.step()
    interrupted.step()  # generations 0 and 1, then "the app stops"
    resumed = run(tiny_ws, None, state=read_checkpoint(tmp_path))
    assert curves(resumed) == curves(a) and resumed.champion.candidate == a.champion.candidate

    path = tmp_path / CHECKPOINT
    data = json.loads(path.read_text())
    data["search"]["history"][1][0]["x"][0] += 0.01  # not what the seeded sampler proposes
    path.write_text(json.dumps(data))
    with pytest.raises(EvolveError, match="optuna_tpe checkpoint does not replay"):
        Evolution(tiny_ws, state=read_checkpoint(tmp_path))


def dominates(p, q):
    return (p["accuracy"] >= q["accuracy"] and p["nll"] <= q["nll"]
            and (p["accuracy"] > q["accuracy"] or p["nll"] < q["nll"]))


def test_nsga2_records_a_non_dominated_front_and_its_best_accuracy_wins(tiny_ws):
    evo = run(tiny_ws, optuna_config("optuna_nsga2", population=4, generations=2))
    result = evo.result()
    front = result["pareto_front"]
    assert front and result["objectives"] == ["accuracy (maximize)", "nll (minimize)"]
    assert not any(dominates(p, q) for p in front for q in front)
    trials = [{"accuracy": t["values"][0], "nll": t["values"][1]}
              for step in evo.search.history for t in step if t["values"]]
    assert len(trials) == result["trials"] == 1 + 4 * 2
    for t in trials:  # every trial is on the front or dominated by a point of it
        assert any(dominates(p, t) or (p["accuracy"], p["nll"]) == (t["accuracy"], t["nll"])
                   for p in front)
    best = max(front, key=lambda p: (p["accuracy"], -p["nll"]))
    assert evo.champion.metrics["accuracy"] == best["accuracy"]
    assert evo.champion.metrics["nll"] == pytest.approx(best["nll"])
    assert evo.champion.candidate["x"] == pytest.approx(best["x"])


def test_optuna_cmaes_runs_from_its_start_point(tiny_ws):
    evo = run(tiny_ws, optuna_config("optuna_cmaes", generations=1, sigma0=0.1))
    assert evo.history[0]["evaluations"] == 1 and evo.history[1]["evaluations"] == 3
    assert evo.search.population  # the generation's trials, scored
    assert evo.result()["champion"]["recipe"]["algorithm"] == "optuna_cmaes"
    assert evo.result()["champion"]["export_method"] == "ties"


def test_cli_refuses_a_setting_the_algorithm_does_not_read(capsys):
    from engine.cli import main

    assert main(["evolve", "--target", TARGET, "--algorithm", "evomerge", "--sigma0", "0.3"]) == 2
    err = capsys.readouterr().err.strip()
    assert "--sigma0: not a setting of evomerge" in err and len(err.splitlines()) == 1


def test_a_dev_subset_run_measures_its_fitness_error_on_the_whole_split(tiny_ws):
    """MERGE³'s cheaper fitness: searching on dev_size examples; at the end the champion is
    re-scored once on the whole dev split and the difference recorded."""
    from engine.evolve.fitness import Fitness

    evo = Evolution(tiny_ws, optuna_config("optuna_tpe", generations=1, population=2, dev_size=8))
    result = evo.run()
    subset = result["dev_subset"]
    full = Fitness(tiny_ws, TARGET, evo.config.fitness_weights, "validation", 0, evo.config.seed)
    expected = full.combine(full.metrics(evo.champion_model()))
    assert (subset["examples"], subset["of"]) == (8, len(full.dev)) and len(full.dev) > 8
    assert subset["fitness_full"] == pytest.approx(expected)
    assert subset["error"] == pytest.approx(evo.champion.fitness - expected)
    whole = Evolution(tiny_ws, optuna_config("optuna_tpe", generations=0, population=2, dev_size=0)).run()
    assert whole["dev_subset"] is None  # the whole split: nothing to measure


def test_the_evolve_page_draws_optunas_study_views_for_a_journal_nsga2_run(app_cache):
    """A real NSGA-II run (accuracy vs sparsity) started from the page with its study in a
    journal: the page shows Optuna Dashboard's views of it, drawn from the stored trials."""
    from app_support import goto, open_app, rerun, run_evolution

    journal = app_cache / "study.journal"
    at = goto(open_app(), "Evolve")
    at.segmented_control(key="evo_algorithm").set_value("optuna_nsga2")
    rerun(at)
    at.selectbox(key="evo_method").set_value("ties")
    at.selectbox(key="evo_objectives").set_value("accuracy+sparsity")
    at.text_input(key="evo_storage").set_value(str(journal))
    row = run_evolution(at, app_cache, generations=2, population=4, layer_groups=0)
    assert not at.error and row["status"] == "done" and row["method"] == "optuna_nsga2:ties"
    result = row["result"]
    assert result["storage"]["journal"] == str(journal) and journal.stat().st_size > 0
    front = result["pareto_front"]
    shown = [d.value for d in at.dataframe if "sparsity" in d.value.columns]
    assert len(shown) == 1 and list(shown[0]["trial"]) == [p["trial"] for p in front]
    assert any(f"study '{result['storage']['study']}' in the journal" in m.value for m in at.markdown)
    specs = [json.loads(c.proto.spec) for c in at.get("plotly_chart")]
    titles = {(s["layout"].get("title") or {}).get("text") for s in specs}
    assert {"Optimisation history", "Parameter importances", "Slice", "Contour",
            "Pareto front"} <= titles
    pareto = next(s for s in specs if (s["layout"].get("title") or {}).get("text") == "Pareto front")
    drawn = sum(len(trace.get("x") or []) for trace in pareto["data"])
    assert drawn == result["trials"] == 1 + 4 * 2  # every trial, front and dominated
