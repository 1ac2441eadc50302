"""NSGA-II's objective choices on the real tiny zoo (objectives.py): accuracy vs the merged model's
sparsity (recomputed here from the champion and the base), and one model for several targets
(each target's fitness recomputed on its own dev split); bad combinations refused in one line."""
import pytest
import torch

from engine.evolve import EvolveError
from engine.evolve.fitness import Fitness
from test_evolve_optuna import SOURCES, TARGET, optuna_config, run
from test_evolve_optuna_journal import journal_lines

torch.set_num_threads(1)
OTHER = "es-ES"


def non_dominated(front, names):
    def dominates(p, q):
        return all(p[n] >= q[n] for n in names) and any(p[n] > q[n] for n in names)
    return not any(dominates(p, q) for p in front for q in front)


def test_accuracy_vs_sparsity_measures_zero_deltas_from_the_base(tiny_ws, tmp_path):
    journal = tmp_path / "nsga2.journal"  # NSGA-II's study in a journal: JSON only, no pickles
    evo = run(tiny_ws, optuna_config("optuna_nsga2", objectives="accuracy+sparsity", population=3,
                                     generations=2, storage=str(journal)))
    journal_lines(journal)
    result = evo.result()
    assert result["objectives"] == ["accuracy (maximize)", "sparsity (maximize)"]
    front = result["pareto_front"]
    assert front and non_dominated(front, ["accuracy", "sparsity"])
    merged, base = evo.champion_model(), tiny_ws.zoo.base_state_dict()
    same = sum(int((merged[k] == base[k]).sum()) for k in base if k in merged)
    total = sum(merged[k].numel() for k in base if k in merged)
    assert evo.champion.metrics["sparsity"] == pytest.approx(same / total)
    assert 0.0 < evo.champion.metrics["sparsity"] < 1.0  # TIES trims part of every delta
    best = max(front, key=lambda p: (p["accuracy"], p["sparsity"]))
    assert (evo.champion.metrics["accuracy"], evo.champion.metrics["sparsity"]) == \
        (best["accuracy"], pytest.approx(best["sparsity"]))

    linear = run(tiny_ws, optuna_config("optuna_nsga2", objectives="accuracy+sparsity",
                                        method="linear", population=2, generations=0))
    assert linear.sources.base is not None  # loaded for the sparsity although linear reads none
    assert linear.champion.metrics["sparsity"] < 0.01  # an average of fine-tuned models moves ~all


def test_one_model_for_several_targets_scores_each_on_its_own_dev_split(tiny_ws):
    evo = run(tiny_ws, optuna_config("optuna_nsga2", objectives="targets", targets=OTHER,
                                     population=3, generations=1))
    result = evo.result()
    assert result["objectives"] == [f"fitness[{TARGET}] (maximize)", f"fitness[{OTHER}] (maximize)"]
    c = evo.config
    other = Fitness(tiny_ws, OTHER, c.fitness_weights, c.dev_split, c.dev_size, c.seed)
    expected = other.combine(other.metrics(evo.champion_model()))
    assert evo.champion.metrics[f"fitness[{OTHER}]"] == pytest.approx(expected)
    assert evo.champion.metrics[f"fitness[{TARGET}]"] == pytest.approx(evo.champion.fitness)
    names = [f"fitness[{TARGET}]", f"fitness[{OTHER}]"]
    assert non_dominated(result["pareto_front"], names)
    balanced = result["balanced"]
    assert sum(balanced[n] for n in names) == pytest.approx(
        max(sum(p[n] for n in names) for p in result["pareto_front"]))
    assert result["forward_passes"] == 2 * result["evaluations"]  # each candidate: both dev splits


@pytest.mark.parametrize("settings, message", [
    (dict(targets=OTHER), "targets \\['es-ES'\\] are read only with objectives 'targets'"),
    (dict(objectives="targets"), "needs at least one other target locale"),
    (dict(objectives="targets", targets=f"{OTHER},{TARGET}"), "repeat the run's target"),
    (dict(objectives="targets", targets=SOURCES[0]), "are also sources"),
    (dict(objectives="speed"), "objectives must be one of"),
])
def test_bad_objective_settings_are_refused_in_one_line(settings, message):
    with pytest.raises(EvolveError, match=message) as info:
        optuna_config("optuna_nsga2", **settings).check()
    assert "\n" not in str(info.value)


def test_an_unknown_other_target_is_named(tiny_ws):
    with pytest.raises(EvolveError, match="targets \\['xx-XX'\\] are not locales of the dataset"):
        run(tiny_ws, optuna_config("optuna_nsga2", objectives="targets", targets="xx-XX",
                                   generations=0, population=2))


def test_the_time_estimate_counts_one_dev_pass_per_target(tiny_ws):
    from engine.evolve import resolve_config
    from engine.evolve.budget import EVAL_S_PER_PARAM_EXAMPLE, estimate

    one = estimate(tiny_ws, resolve_config(tiny_ws, optuna_config("optuna_nsga2")))
    two = estimate(tiny_ws, resolve_config(tiny_ws, optuna_config(
        "optuna_nsga2", objectives="targets", targets=OTHER)))
    dev = len(tiny_ws.dataset.get(TARGET, "validation"))
    eval_s = min(12, dev) * tiny_ws.zoo.parameter_count() * EVAL_S_PER_PARAM_EXAMPLE  # one pass
    assert two.seconds_per_candidate - one.seconds_per_candidate == pytest.approx(eval_s)


def test_the_evolve_page_offers_the_objectives_and_counts_each_targets_pass(app_cache):
    from app_support import goto, open_app, rerun

    at = goto(open_app(), "Evolve")
    at.segmented_control(key="evo_algorithm").set_value("optuna_nsga2")
    rerun(at)
    assert list(at.selectbox(key="evo_objectives").options) == \
        ["accuracy+nll", "accuracy+sparsity", "targets"]
    at.selectbox(key="evo_objectives").set_value("targets")
    at.text_input(key="evo_targets").set_value("es-ES, nl-NL")
    rerun(at)
    target = at.session_state["evo_target"]
    captions = " ".join(c.value for c in at.caption)
    assert f"one pass over {target}, es-ES, nl-NL's dev data" in captions, captions
