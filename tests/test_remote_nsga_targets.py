"""NSGA-II with objectives 'targets' (one merged model, each target's dev fitness an objective) on
the Ray executor: a real local Ray instance scores the candidates on the real tiny zoo, and the run
records the same objectives, metrics, Pareto front and dev-pass count as the local executor; an
unknown other target is named from the worker."""
import pytest
import torch

from engine.evolve import EvolveError
from engine.evolve.fitness import Fitness
from test_evolve_objectives import OTHER, non_dominated
from test_evolve_optuna import TARGET, optuna_config, run

torch.set_num_threads(1)
NAMES = [f"fitness[{TARGET}]", f"fitness[{OTHER}]"]


def targets_config(**overrides):
    settings = dict(objectives="targets", targets=OTHER, population=3, generations=1)
    return optuna_config("optuna_nsga2", **{**settings, **overrides})


def test_ray_nsga2_targets_records_one_objective_per_target(tiny_ws):
    ray = pytest.importorskip("ray", reason="ray is not installed: the Ray executor is not tested")
    local = run(tiny_ws, targets_config())
    try:
        remote = run(tiny_ws, targets_config(executor="ray", ray_cpus=2))
        with pytest.raises(EvolveError, match="targets \\['xx-XX'\\] are not locales of the dataset"):
            run(tiny_ws, targets_config(executor="ray", ray_cpus=2, targets="xx-XX", generations=0))
    finally:
        ray.shutdown()
    result = remote.result()
    assert result["objectives"] == [f"{n} (maximize)" for n in NAMES]
    front = result["pareto_front"]
    assert front and all(set(NAMES) <= set(point) for point in front)
    assert non_dominated(front, NAMES)
    assert [{n: p[n] for n in NAMES} for p in front] == \
        [pytest.approx({n: p[n] for n in NAMES}, abs=1e-6) for p in local.result()["pareto_front"]]
    assert result["balanced"]["trial"] == local.result()["balanced"]["trial"]

    for member in remote.search.population:  # every worker-scored candidate carries each objective
        assert not member.error
        assert member.metrics[f"fitness[{TARGET}]"] == pytest.approx(member.fitness)
        assert {f"accuracy[{OTHER}]", f"nll[{OTHER}]", *NAMES} <= set(member.metrics)
    c = remote.config  # the champion's other-target fitness, recomputed on the driver
    other = Fitness(tiny_ws, OTHER, c.fitness_weights, c.dev_split, c.dev_size, c.seed)
    other.reference = remote.fitness.reference
    assert remote.champion.metrics[f"fitness[{OTHER}]"] == \
        pytest.approx(other.combine(other.metrics(remote.champion_model())), abs=1e-6)
    assert result["forward_passes"] == 2 * result["evaluations"] == local.result()["forward_passes"]
