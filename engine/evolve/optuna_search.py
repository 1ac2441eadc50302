"""Optuna's samplers as evolution algorithms over the per-layer-group genome (grouped.py):
``optuna_tpe`` (TPE), ``optuna_cmaes`` (Optuna's CMA-ES sampler, the ``cmaes`` package) and
``optuna_nsga2`` (NSGA-II, multi-objective: ``objectives`` chooses dev accuracy vs NLL, accuracy vs
the merged model's sparsity, or several targets' fitness at once; engine/evolve/objectives.py).

Each genome coordinate is one Optuna float parameter ``x<i>`` in [0, 1]. Generation 0 enqueues
the start point (the starting weights, default parameters) as the study's first trial; every
later generation asks ``population`` trials, the runner merges and scores them, and their values
are told back (a failed merge: a FAIL trial). The study lives in Optuna's in-memory storage, or,
with ``storage`` (a file path), in Optuna's JSON journal shared by every worker process that names
it (engine/evolve/optuna_storage.py); nothing is pickled either way.

Resume: the checkpoint keeps every trial's x and values (plain JSON); a resumed run rebuilds the
study with the same seeded sampler and replays the asks and tells, checking that each replayed
ask proposes the stored x, so the run continues exactly where it stopped. When it does not
(another Optuna version, or settings changed), the resume is refused with that message rather than
continued as a different search. A journal study needs no replay: the resumed worker reloads it
(every worker's trials), checks it still holds this run's trials, and marks the trials it left
running when it stopped as failed.

NSGA-II's champion is the Pareto-front point best on the first objective (ties: the next); the
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
from .objectives import OBJECTIVE_SETS, ObjectiveMeter, check_objectives, objective_specs
from .optuna_storage import (WORKER_ATTR, check_storage_path, fail_stale, join, journal, meaning,
                             new_worker, study_name)

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
        self.history: List[List[Dict[str, Any]]] = []  # per generation: [{trial, x, values|None}]
        self.specs = objective_specs(config) if self.multi_objective else [("fitness", "maximize")]
        self.meter = ObjectiveMeter(config) if self.multi_objective else None
        self.storage = self._storage(config)
        self.worker: Optional[str] = None  # a journal study: this run's id among its workers
        self.study_name: Optional[str] = None
        self.study = None
        self._pending: list = []
        self._importances: Tuple[int, Dict[str, float]] = (0, {})

    @staticmethod
    def _storage(config: EvolveConfig) -> str:
        """The journal path, '' for in memory (always so for an algorithm without the setting:
        Optuna's CMA-ES sampler pickles its state into the study)."""
        if not any(p.name == "storage" for p in EVOLUTIONS.get(config.algorithm).params):
            return ""
        return str(config.setting("storage") or "")

    @classmethod
    def check(cls, config: EvolveConfig) -> None:
        super().check(config)
        path = check_storage_path(cls._storage(config), config.algorithm)
        if path:  # absolute, so a resume from another folder finds the same journal
            config.set("storage", path)
        if cls.multi_objective:
            check_objectives(config)

    def sampler(self, optuna, seed: int):
        raise NotImplementedError

    def _new_study(self, worker: Optional[str] = None):
        """The in-memory study, or this worker's view of the journal study (joined or rejoined)."""
        optuna = _optuna()
        directions = [d for _, d in self.specs]
        start = {f"x{i}": float(v) for i, v in enumerate(self.x0)}
        with warnings.catch_warnings():  # experimental-feature notes of some sampler options
            warnings.simplefilter("ignore")
            if not self.storage:
                study = optuna.create_study(storage=optuna.storages.InMemoryStorage(),
                                            sampler=self.sampler(optuna, self.config.seed),
                                            directions=directions)
                study.enqueue_trial(start)
                return study
            self.worker = worker or new_worker()
            meant = meaning(self.config, self.coordinate_names(), [n for n, _ in self.specs])
            self.study_name = study_name(self.config, meant)
            index = join(optuna, self.storage, self.study_name, meant, directions, self.worker)
            study = optuna.load_study(study_name=self.study_name, storage=journal(self.storage),
                                      sampler=self.sampler(optuna, self.config.seed + index))
            if index == 0 and not study.trials:  # the study's first worker starts from x0
                study.enqueue_trial(start)
        return study

    def _ask(self, n: int):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            trials = [self.study.ask() for _ in range(n)]
            if self.worker:
                for t in trials:
                    t.set_user_attr(WORKER_ATTR, self.worker)
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
            return [float(member.metrics[name]) for name, _ in self.specs]
        return [float(member.fitness)]

    def measure(self, state, sources, fitness, metrics: Dict[str, float]) -> Dict[str, float]:
        return self.meter.measure(state, sources, fitness, metrics) if self.meter else {}

    def row_method(self):
        return None if self.meter else super().row_method()  # objectives read the whole state

    @classmethod
    def reads_base(cls, config: EvolveConfig) -> bool:
        return super().reads_base(config) or (cls.multi_objective and
                                              config.setting("objectives") == "accuracy+sparsity")

    # ---- the search --------------------------------------------------------------------------
    def initial(self, rng) -> List[Dict[str, Any]]:
        self.study = self._new_study()
        self._pending, xs = self._ask(1)  # the enqueued start point (a later worker: a sample)
        return [{"x": xs[0], "origin": "start" if np.allclose(xs[0], self.x0) else "optuna"}]

    def propose(self, generation: int, rng) -> List[Dict[str, Any]]:
        self._pending, xs = self._ask(self.config.population)
        return [{"x": x, "origin": "optuna"} for x in xs]

    def accept(self, generation: int, members: List[Member]) -> None:
        self.population = sorted(members, key=lambda m: -m.fitness)
        values = [self.objectives(m) for m in members]
        self._tell(self._pending, values)
        self.history.append([{"trial": t.number, "x": [float(v) for v in m.candidate["x"]],
                              "values": v} for t, m, v in zip(self._pending, members, values)])
        self._pending = []

    def better(self, member: Member, champion: Optional[Member]) -> bool:
        if not self.multi_objective or champion is None:
            return super().better(member, champion)
        def key(m: Member):
            return tuple(m.metrics[n] if d == "maximize" else -m.metrics[n] for n, d in self.specs)
        return key(member) > key(champion)

    def extra(self) -> Dict[str, Any]:
        out = {**super().extra(), "trials": sum(len(step) for step in self.history),
               "importances": self.importances(), "coordinates": self.coordinate_names()}
        if self.storage and self.study is not None:
            out["storage"] = {"journal": self.storage, "study": self.study_name,
                              "worker": self.worker, "trials": len(self.study.trials)}
        if self.multi_objective:
            out["objectives"] = [f"{name} ({direction})" for name, direction in self.specs]
            out["pareto_front"] = self.pareto_front()
            if self.config.setting("objectives") == "targets" and out["pareto_front"]:
                names = [n for n, _ in self.specs]
                out["balanced"] = max(out["pareto_front"],
                                      key=lambda p: sum(p[n] for n in names) / len(names))
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
        born = {s["trial"]: g for g, step in enumerate(self.history) for s in step}
        sign = [1.0 if d == "maximize" else -1.0 for _, d in self.specs]
        front = sorted(self.study.best_trials,
                       key=lambda t: tuple(-s * v for s, v in zip(sign, t.values)))
        return [{"trial": t.number, "generation": born.get(t.number),  # None: another worker's
                 **{name: float(v) for (name, _), v in zip(self.specs, t.values)},
                 "x": [float(t.params[f"x{i}"]) for i in range(self.dim)]} for t in front]

    # ---- checkpoint: every trial's x and values, replayed ------------------------------------
    def state(self) -> Dict[str, Any]:
        return {"population": [m.to_dict() for m in self.population], "history": self.history,
                "worker": self.worker, "study": self.study_name}

    def load(self, state: Dict[str, Any]) -> None:
        self.population = [Member.from_dict(m) for m in state["population"]]
        if self.storage:
            return self._rejoin(state)
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
            self.history.append([{**s, "trial": t.number} for s, t in zip(step, trials)])

    def _rejoin(self, state: Dict[str, Any]) -> None:
        """A journal run resumes on the study as it is now: its own trials still there (else it
        is refused), the trials it left running marked failed."""
        self.study = self._new_study(worker=state.get("worker"))
        fail_stale(_optuna(), self.study, self.worker)
        held = {t.number: t for t in self.study.get_trials(deepcopy=False)}
        for step in state["history"]:
            for s in step:
                t = held.get(s.get("trial"))
                if t is None or not np.allclose([t.params.get(f"x{i}", np.nan) for i in range(self.dim)],
                                                s["x"], rtol=0, atol=1e-12):
                    raise EvolveError(f"the journal {self.storage} (study '{self.study_name}') no longer "
                                      f"holds this run's trial {s.get('trial')}; was it replaced? Start "
                                      f"a new run")
        self.history = [list(step) for step in state["history"]]


SUMMARY = "Optuna's {} over per-layer-group weights and parameters of one merge method"
STORAGE_PARAMS = (
    Param("storage", "text", "",
          help="an Optuna journal file (JSON lines) to keep the study in, shared by every run that "
               "names it (several workers, restarts); empty: in memory"),
    Param("study", "text", "",
          help="the study's name in the journal; empty: named after the run's settings, so runs "
               "with the same settings share it"),
)


@EVOLUTIONS.register("optuna_tpe", title="Optuna TPE", random=True, summary=SUMMARY.format("TPE"),
                     params=[*GROUPED_PARAMS, *STORAGE_PARAMS,
                             Param("startup_trials", "int", 10, 1, 10_000,
                                   help="random trials before TPE models the history")])
class OptunaTPESearch(OptunaSearch):
    def sampler(self, optuna, seed: int):
        return optuna.samplers.TPESampler(seed=seed,
                                          n_startup_trials=int(self.config.setting("startup_trials")))


@EVOLUTIONS.register("optuna_cmaes", title="Optuna CMA-ES", random=True,
                     summary=SUMMARY.format("CMA-ES sampler") + " (in memory only: its sampler "
                             "keeps its state pickled in the study, never written to a journal here)",
                     params=[*GROUPED_PARAMS, SIGMA0])
class OptunaCmaSearch(OptunaSearch):
    def sampler(self, optuna, seed: int):
        return optuna.samplers.CmaEsSampler(
            x0={f"x{i}": float(v) for i, v in enumerate(self.x0)}, sigma0=self.config.sigma0,
            seed=seed, popsize=self.config.population, n_startup_trials=0,
            warn_independent_sampling=False)


@EVOLUTIONS.register("optuna_nsga2", title="Optuna NSGA-II", random=True,
                     summary=SUMMARY.format("NSGA-II") + ", several objectives (accuracy vs NLL, "
                             "accuracy vs sparsity, or several targets); champion: the front's best "
                             "on the first",
                     params=[*GROUPED_PARAMS, *STORAGE_PARAMS,
                             Param("objectives", "choice", OBJECTIVE_SETS[0], choices=OBJECTIVE_SETS,
                                   help="accuracy+nll: dev accuracy up, NLL down; accuracy+sparsity: "
                                        "accuracy up, share of zero deltas from the base up; targets: "
                                        "the fitness on the run's target and on each of 'targets'"),
                             Param("targets", "text", "",
                                   help="objectives 'targets': the other target locales, e.g. "
                                        "'fr-FR,es-ES' (each scored on its own dev split)")])
class OptunaNSGA2Search(OptunaSearch):
    multi_objective = True

    def sampler(self, optuna, seed: int):
        return optuna.samplers.NSGAIISampler(seed=seed,
                                             population_size=self.config.population)
