"""Optuna's samplers as evolution algorithms over the per-layer-group genome (grouped.py):
``optuna_tpe`` (TPE), ``optuna_cmaes`` (Optuna's CMA-ES sampler, the ``cmaes`` package) and
``optuna_nsga2`` (NSGA-II, multi-objective: dev accuracy up, dev NLL down).

Each genome coordinate is one Optuna float parameter ``x<i>`` in [0, 1]. Generation 0 enqueues
the start point (the starting weights, default parameters) as the study's first trial; every
later generation asks ``population`` trials, the runner merges and scores them, and their values
are told back (a failed merge: a FAIL trial). The study lives in Optuna's in-memory storage —
nothing is written outside the results store and nothing is pickled.

Resume: the checkpoint keeps every trial's x and values (plain JSON); a resumed run rebuilds the
study with the same seeded sampler and replays the asks and tells, checking that each replayed
ask proposes the stored x, so the run continues exactly where it stopped. When it does not
(another Optuna version, or settings changed), the resume is refused with that message rather than
continued as a different search.

NSGA-II's champion is the Pareto-front point with the best dev accuracy (ties: lower NLL); the
run's result records the whole front (``pareto_front``) and each point's fitness is still the
composite one, so the curves read as for every other algorithm.
"""
from __future__ import annotations

import warnings
from typing import Any, Dict, List, Optional, Sequence, Tuple

import numpy as np

from ..registry import Param
from .algorithms import EVOLUTIONS
from .cmaes import SIGMA0
from .config import EvolveConfig, EvolveError
from .grouped import GROUPED_PARAMS, GroupedSearch
from .member import Member

OBJECTIVES = (("accuracy", "maximize"), ("nll", "minimize"))  # NSGA-II's two dev objectives
IMPORTANCE_MIN_TRIALS = 8  # fewer scored trials: no parameter importances reported yet


def _optuna():
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    return optuna


class OptunaSearch(GroupedSearch):
    """The study, its asks and tells; subclasses choose the sampler (and the objectives)."""

    multi_objective = False

    def __init__(self, config: EvolveConfig, names: Sequence[str], weights: Sequence[float],
                 keys: Sequence[str]):
        super().__init__(config, names, weights, keys)
        self.history: List[List[Dict[str, Any]]] = []  # per generation: [{x, values|None}]
        self.study = None
        self._pending: list = []
        self._importances: Tuple[int, Dict[str, float]] = (0, {})

    def sampler(self, optuna):
        raise NotImplementedError

    def _new_study(self):
        optuna = _optuna()
        directions = [d for _, d in OBJECTIVES] if self.multi_objective else ["maximize"]
        with warnings.catch_warnings():  # experimental-feature notes of some sampler options
            warnings.simplefilter("ignore")
            study = optuna.create_study(storage=optuna.storages.InMemoryStorage(),
                                        sampler=self.sampler(optuna), directions=directions)
        study.enqueue_trial({f"x{i}": float(v) for i, v in enumerate(self.x0)})
        return study

    def _ask(self, n: int):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            trials = [self.study.ask() for _ in range(n)]
            xs = [np.asarray([t.suggest_float(f"x{i}", 0.0, 1.0) for i in range(self.dim)])
                  for t in trials]
        return trials, xs

    def _tell(self, trials, values: List[Optional[List[float]]]) -> None:
        optuna = _optuna()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            for trial, v in zip(trials, values):
                if v is None:
                    self.study.tell(trial, state=optuna.trial.TrialState.FAIL)
                else:
                    self.study.tell(trial, v if self.multi_objective else v[0])

    def objectives(self, member: Member) -> Optional[List[float]]:
        if member.error:
            return None
        if self.multi_objective:
            return [float(member.metrics[name]) for name, _ in OBJECTIVES]
        return [float(member.fitness)]

    # ---- the search --------------------------------------------------------------------------
    def initial(self, rng) -> List[Dict[str, Any]]:
        self.study = self._new_study()
        self._pending, xs = self._ask(1)  # the enqueued start point
        return [{"x": xs[0], "origin": "start"}]

    def propose(self, generation: int, rng) -> List[Dict[str, Any]]:
        self._pending, xs = self._ask(self.config.population)
        return [{"x": x, "origin": "optuna"} for x in xs]

    def accept(self, generation: int, members: List[Member]) -> None:
        self.population = sorted(members, key=lambda m: -m.fitness)
        values = [self.objectives(m) for m in members]
        self._tell(self._pending, values)
        self.history.append([{"x": [float(v) for v in m.candidate["x"]], "values": v}
                             for m, v in zip(members, values)])
        self._pending = []

    def better(self, member: Member, champion: Optional[Member]) -> bool:
        if not self.multi_objective or champion is None:
            return super().better(member, champion)
        key = lambda m: (m.metrics["accuracy"], -m.metrics["nll"])  # noqa: E731
        return key(member) > key(champion)

    def extra(self) -> Dict[str, Any]:
        out = {**super().extra(), "trials": sum(len(step) for step in self.history),
               "importances": self.importances()}
        if self.multi_objective:
            out["objectives"] = [f"{name} ({direction})" for name, direction in OBJECTIVES]
            out["pareto_front"] = self.pareto_front()
        return out

    def importances(self) -> Dict[str, float]:
        """Optuna's own parameter importances (PED-ANOVA, which needs no scikit-learn) over the
        scored trials, keyed by what each coordinate sets (NSGA-II: for dev accuracy); computed
        once per new trial count."""
        scored = [t for t in self.study.trials if t.values] if self.study is not None else []
        if len(scored) < IMPORTANCE_MIN_TRIALS or self._importances[0] == len(scored):
            return self._importances[1]
        optuna = _optuna()
        target = (lambda t: t.values[0]) if self.multi_objective else None
        with warnings.catch_warnings():  # PED-ANOVA is marked experimental
            warnings.simplefilter("ignore")
            evaluator = optuna.importance.PedAnovaImportanceEvaluator()
            raw = optuna.importance.get_param_importances(self.study, evaluator=evaluator,
                                                          target=target)
        names = self.coordinate_names()
        self._importances = (len(scored), {names[int(k[1:])]: float(v) for k, v in raw.items()})
        return self._importances[1]

    def pareto_front(self) -> List[Dict[str, Any]]:
        """The study's non-dominated trials: number, generation, objective values, x."""
        if self.study is None:
            return []
        born = [g for g, step in enumerate(self.history) for _ in step]
        front = sorted(self.study.best_trials, key=lambda t: (-t.values[0], t.values[1]))
        return [{"trial": t.number, "generation": born[t.number] if t.number < len(born) else None,
                 **{name: float(v) for (name, _), v in zip(OBJECTIVES, t.values)},
                 "x": [float(t.params[f"x{i}"]) for i in range(self.dim)]} for t in front]

    # ---- checkpoint: every trial's x and values, replayed ------------------------------------
    def state(self) -> Dict[str, Any]:
        return {"population": [m.to_dict() for m in self.population], "history": self.history}

    def load(self, state: Dict[str, Any]) -> None:
        self.population = [Member.from_dict(m) for m in state["population"]]
        self.history = []
        self.study = self._new_study()
        for step in state["history"]:
            trials, xs = self._ask(len(step))
            stored = np.asarray([s["x"] for s in step])
            if not np.allclose(np.asarray(xs), stored, rtol=0, atol=1e-12):
                raise EvolveError(f"the {self.config.algorithm} checkpoint does not replay: Optuna "
                                  f"proposes other trials than the stored ones (another optuna "
                                  f"version, or changed settings?); start a new run")
            self._tell(trials, [s["values"] for s in step])
            self.history.append(step)


SUMMARY = "Optuna's {} over per-layer-group weights and parameters of one merge method"


@EVOLUTIONS.register("optuna_tpe", title="Optuna TPE", random=True, summary=SUMMARY.format("TPE"),
                     params=[*GROUPED_PARAMS,
                             Param("startup_trials", "int", 10, 1, 10_000,
                                   help="random trials before TPE models the history")])
class OptunaTPESearch(OptunaSearch):
    def sampler(self, optuna):
        return optuna.samplers.TPESampler(seed=self.config.seed,
                                          n_startup_trials=int(self.config.setting("startup_trials")))


@EVOLUTIONS.register("optuna_cmaes", title="Optuna CMA-ES", random=True,
                     summary=SUMMARY.format("CMA-ES sampler"), params=[*GROUPED_PARAMS, SIGMA0])
class OptunaCmaSearch(OptunaSearch):
    def sampler(self, optuna):
        return optuna.samplers.CmaEsSampler(
            x0={f"x{i}": float(v) for i, v in enumerate(self.x0)}, sigma0=self.config.sigma0,
            seed=self.config.seed, popsize=self.config.population, n_startup_trials=0,
            warn_independent_sampling=False)


@EVOLUTIONS.register("optuna_nsga2", title="Optuna NSGA-II", random=True,
                     summary=SUMMARY.format("NSGA-II") + ", two objectives: dev accuracy up, dev "
                                                         "NLL down; champion: the front's best accuracy",
                     params=GROUPED_PARAMS)
class OptunaNSGA2Search(OptunaSearch):
    multi_objective = True

    def sampler(self, optuna):
        return optuna.samplers.NSGAIISampler(seed=self.config.seed,
                                             population_size=self.config.population)
