"""Evolutionary merge search: EvoMerge (seed 004), CMA-ES and Optuna's samplers (TPE, CMA-ES,
NSGA-II) over per-layer-group recipes — each a registered algorithm (``EVOLUTIONS``,
engine/evolve/algorithms.py) whose Params are its settings.

Both optimise a composite fitness on the TARGET's dev data (its validation split, or a seeded
sample of ``dev_size`` examples) and test the champion on the untouched test split whenever it
changes, so overfitting shows as a dev/test gap. Leave-one-out: the target's own model is never a
source. Deterministic for a seed; resumable from a JSON checkpoint after every generation.

Public API (for the CLI and the Evolve page)
--------------------------------------------
``EvolveConfig`` (dataclass; defaults): target (required), algorithm="evomerge" (any name in
    ``EVOLUTIONS``; an algorithm's settings without a field of their own go in ``options``),
    sources=None (URIEL top_k neighbours), weights=None (URIEL, else equal), top_k=3,
    generations=50, population=8, seed=0,
    fitness_weights={"accuracy": .5, "loss": .5, "latency": 0, "memory": 0}
    (``SEED_FITNESS`` = seed 004's .3/.4/.2/.1), dev_split="validation", dev_size=0 (whole split),
    patience=5, min_delta=0.001;
    EvoMerge: elites=None (a quarter of the population, at least 1: 2 of 8), mutants_per_elite=3,
    group_size=3, mutation_sigma=0.05 (× each parameter's
    range), mutation_rate=0.25, diversity_threshold=0.02, reseed=2;
    CMA-ES: method="ties", layer_groups=2 (layers per group; 0 = global), sigma0=0.2, tune=None
    (per-model float params of the method), method_params={}.
``submit_evolution(runner, ws, config, name="", force=False) -> run_id``: an "evolve" run on the
    compute lane; refused up front when its estimate (engine/evolve/budget.py) is far beyond the
    machine, unless ``force``. The row's params record the workspace (``settings``) and its content
    fingerprint (``inputs``), so a resume reopens it and refuses another zoo before starting.
``resume_evolution(runner, ws, run_id, name="") -> run_id``: continues an interrupted / cancelled /
    failed run from its last generation as a NEW run with ``parent=run_id`` (curves copied over);
    a finished or already-resumed run, or another workspace, is refused before any row is made.
``resumable_runs(ws, store) -> [run row]``: stopped-early evolutions that can be resumed.
``export_champion(ws, store, run_id, out_dir) -> Path``: the champion as an HF folder + recipe.json.
``Evolution(ws, config)``: the synchronous loop (``run()``, or ``step()`` per generation).
``parse_fitness_weights("accuracy=.3,loss=.4,latency=.2,memory=.1")``; ``MERGES`` schemas drive
    the mutation ranges.

Series logged per generation g (``store.series(run_id, name)``, step = g, generation 0 = the
initial population): "best", "mean", "worst" (population fitness), "champion" (best-ever fitness),
"diversity" (mean pairwise gene distance, 0..1), "evals_per_s"; and only in generations where the
champion changed: "champion_test_accuracy", "champion_dev_accuracy".

Run row: kind "evolve", method "evomerge" | "<algorithm>:<method>" (grouped searches), params = the resolved config,
sources / weights = the starting ones. ``row["result"]`` (updated after every generation):
algorithm, target, sources, weights, generation (last completed), generations, stopped (None, or
"plateau: …" / "cma-es: …"), champion {fitness, generation, origin, recipe, candidate, dev (dev
metrics), test (test metrics), export_method}, start_fitness, evaluations (candidates),
forward_passes (dev passes, frankenmerge's included), seconds, eval_seconds, merge_seconds,
outside_eval_share, overhead_share, evals_per_s, history [{generation, best, mean, worst,
diversity, champion, evaluations, seconds, eval_seconds, merge_seconds, evals_per_s, failed,
reseeded (EvoMerge)}], baselines (best_source / best_zero_shot / target_model test accuracy),
config, checkpoint (path), dev_subset (with dev_size > 0, once the run ends: {examples, of,
fitness, fitness_full, error, accuracy, accuracy_full} — the champion re-scored on the whole dev
split, the subset fitness's measured error); EvoMerge adds combo_counts {"000": n, …} (bit 0 first:
linear|SLERP, DARE|TIES, frankenmerge|inverse variance) and reseeded; CMA-ES adds sigma,
dimensions, groups; the Optuna algorithms add dimensions, groups, trials, importances,
coordinates (what each genome coordinate sets), storage {journal, study, worker, trials} (a journal
study), and NSGA-II objectives ["<metric> (<direction>)", ...] and pareto_front [{trial,
generation, <metric> per objective, x}] (best on the first objective first), plus balanced (the
front point with the best mean) for objectives "targets". At the end ``row["metrics"]`` =
{dev_split: champion dev metrics, "test": champion test metrics}.
"""
from .algorithms import EVOLUTIONS
from .config import (DEFAULT_FITNESS, FITNESS_TERMS, SEED_FITNESS, EvolveConfig, EvolveError,
                     parse_fitness_weights)
from . import cmaes, evomerge, optuna_search  # noqa: F401  (each registers its algorithms)
from .budget import Budget, check_budget
from .job import (check_resumable, checkpoint_dir, evolve_job, export_champion, export_evolution,
                  recorded_settings, resumable_runs, resume_evolution, run_fields, submit_evolution)
from .runner import Evolution, resolve_config

SERIES = ("best", "mean", "worst", "champion", "diversity", "evals_per_s",
          "champion_test_accuracy", "champion_dev_accuracy")

__all__ = ["EVOLUTIONS", "Budget", "DEFAULT_FITNESS", "check_budget", "check_resumable",
           "recorded_settings", "run_fields", "FITNESS_TERMS", "SEED_FITNESS", "SERIES", "Evolution",
           "EvolveConfig", "EvolveError", "checkpoint_dir", "evolve_job", "export_champion",
           "export_evolution", "parse_fitness_weights", "resolve_config", "resumable_runs",
           "resume_evolution", "submit_evolution"]
