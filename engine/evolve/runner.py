"""The generation loop every registered search shares: evaluate, keep the best-ever champion (tested
on the untouched test split whenever it changes), log the curves, checkpoint, stop on a plateau.

A search (engine/evolve/algorithms.py: EvoMerge, CMA-ES, the Optuna samplers, ...) proposes candidates and selects among evaluated ones; this loop owns
the rest. Everything random comes from one seeded generator (and CMA-ES's own seeded one), every
evaluation is deterministic on a device, so a seed gives the same curves, and a checkpoint (plain
JSON, written after every generation) continues exactly where a run stopped.
"""
from __future__ import annotations

import json
import math
import os
import time
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional

import numpy as np
import torch

from ..progress import Progress
from .build import Sources
from .config import EvolveConfig, EvolveError
from .estimate import candidates_per_generation
from .fitness import Fitness
from .member import Member
from .remote import ray_candidates
from .resident import restricted_rows
from .search import build_and_score, build_candidate, make_search, needs_base, score_candidate

CHECKPOINT = "checkpoint.json"
CHECKPOINT_VERSION = 1


def spare_core() -> bool:
    """Whether torch's intra-op threads leave a CPU core for a second thread."""
    return (os.cpu_count() or 1) > torch.get_num_threads()


def resolve_config(ws, config: EvolveConfig) -> EvolveConfig:
    """A checked copy with the sources and starting weights filled in (URIEL top-k when none are
    given: the target's own model is never a source)."""
    config = EvolveConfig.from_dict(json.loads(json.dumps(config.to_dict()))).check()
    if config.target not in ws.dataset.locales:
        raise EvolveError(f"the dataset has no locale '{config.target}'; it has "
                          f"{', '.join(ws.dataset.locales)}")
    if config.sources is None:
        from ..experiments import suggest_sources

        suggested = suggest_sources(ws, config.target, top_k=config.top_k)
        if not suggested:
            raise EvolveError(f"no source models to merge for {config.target}")
        config.sources = list(suggested)
        config.weights = config.weights or [float(w) for w in suggested.values()]
    for source in config.sources:
        ws.zoo.path(source)  # a clear ZooError for an unknown source
    if config.weights is None:
        config.weights = [1.0] * len(config.sources)
    total = float(sum(config.weights))
    config.weights = [float(w) / total for w in config.weights]
    return config.check()


def read_checkpoint(folder: Path) -> Dict[str, Any]:
    path = Path(folder) / CHECKPOINT
    if not path.is_file():
        raise EvolveError(f"no evolution checkpoint at {path}")
    data = json.loads(path.read_text(encoding="utf-8"))
    if data.get("version") != CHECKPOINT_VERSION:
        raise EvolveError(f"checkpoint {path} has version {data.get('version')}, "
                          f"expected {CHECKPOINT_VERSION}")
    return data


class Evolution:
    """One run: ``run()`` to the end, or ``step()`` one generation at a time (tests, bench).

    log(name, step, value), progress(Progress) and update(result) are the job's callbacks
    (``progress`` raising Cancelled stops the run between two evaluations); ``state`` is a
    checkpoint to continue from. ``prefetch``: merge the next candidate while one is evaluated
    (see _evaluate_local; None: when a core is free).
    """

    prefetch: Optional[bool] = None
    warm_kernels = True  # compile the fused merge kernels up front (see _warm_kernels)
    restrict_rows = True  # merge only the embedding rows evaluation reads, where allowed (rows.py)

    def __init__(self, ws, config: Optional[EvolveConfig] = None, *,
                 checkpoint_dir: Optional[Path] = None,
                 log: Optional[Callable[[str, int, Any], None]] = None,
                 progress: Optional[Callable[[Progress], None]] = None,
                 update: Optional[Callable[[Dict[str, Any]], None]] = None,
                 state: Optional[Dict[str, Any]] = None):
        if state is not None:
            config = EvolveConfig.from_dict(state["config"])
        elif config is None:
            raise EvolveError("an evolution needs a config or a checkpoint")
        else:
            config = resolve_config(ws, config)
        self.ws, self.config = ws, config
        self.checkpoint_dir = Path(checkpoint_dir) if checkpoint_dir else None
        self._log, self._progress, self._update = log, progress, update
        self.sources = Sources(ws, config.sources, needs_base(config), config.merge_cache)
        self.search = make_search(config, self.sources.keys)
        self.fitness = Fitness.for_config(ws, config)
        # The evaluator's first working model adopts the tensors it is built from (assign=True):
        # build it from a private copy so that no candidate's state dict is ever overwritten.
        ws.evaluator.working_model({k: v.clone() for k, v in self.sources.states[0].items()})
        if self.restrict_rows and config.executor != "ray":
            self.sources.rows = restricted_rows(ws, self.search.row_method(), self.fitness)
        self.warming = self._warm_kernels() if self.warm_kernels else None
        if state is None:  # a resumed run keeps its own latency / memory reference
            self.fitness.set_reference(self.sources.states[0])
            self.fitness.evaluations, self.fitness.seconds = 0, 0.0  # count the search's work
        self.rng = np.random.default_rng(config.seed)
        self.generation = -1
        self.champion: Optional[Member] = None
        self.champion_state = None
        self.champion_generation = -1
        self.champion_test: Optional[Dict[str, float]] = None
        self.history: List[Dict[str, Any]] = []
        self.stale, self.reference = 0, -math.inf
        self.stopped: Optional[str] = None
        self.evaluations, self.seconds, self.merge_seconds = 0, 0.0, 0.0
        self.baselines: Optional[Dict[str, Any]] = None
        self.dev_subset: Optional[Dict[str, Any]] = None  # the subset's fitness error, at the end
        if state is not None:
            self._restore(state)
        self._clock = time.perf_counter()
        self._done_at_start = self.generation + 1

    def _warm_kernels(self):
        """Compiles the fused CPU kernels the search's merges run (engine/merge/fused_warm.py) on a
        background thread, overlapping the first candidates: without it no tensor a search merges
        (rows-only embeddings, encoder layers under 4 M entries) would ever leave the torch path.
        The thread, or None where nothing runs fused here (Ray workers, a GPU)."""
        from ..merge.fused_warm import kernels_for, warm_in_background

        if self.config.executor == "ray" or torch.device(self.sources.device).type != "cpu":
            return None
        k = len(self.sources.names)
        return warm_in_background([(k, kernels_for(m, p)) for m, p in self.search.merge_methods()])

    # ---- the loop ----------------------------------------------------------------------------
    @property
    def finished(self) -> bool:
        return self.stopped is not None or self.generation >= self.config.generations

    def run(self) -> Dict[str, Any]:
        """Every remaining generation; returns the final result."""
        if self.baselines is None:
            from ..experiments import baselines

            self._report(self.generation + 1, "baselines: the zoo's models on the target's test split")
            self.baselines = baselines(self.ws, self.config.target, self.config.sources, "test")
        while self.step():
            pass
        if self.config.dev_size and self.champion is not None and self.dev_subset is None:
            self.dev_subset = self._dev_subset_error()
            self.save()
        self._report(self.config.generations + 1, f"finished: {self.stopped or 'all generations'}")
        return self.result()

    def _dev_subset_error(self) -> Optional[Dict[str, Any]]:
        """What searching on a dev subset (``dev_size``, the cheaper fitness MERGE³ argues for) cost
        in accuracy of the estimate: the champion re-scored once on the whole dev split. None when
        the subset is the whole split."""
        c = self.config
        full = Fitness.for_config(self.ws, c, whole=True)
        if len(self.fitness.dev) >= len(full.dev):
            return None
        full.reference = self.fitness.reference
        metrics = full.metrics(self.champion_model())
        fitness = full.combine(metrics)
        out = {"examples": len(self.fitness.dev), "of": len(full.dev), "subset": c.dev_subset,
               "fitness": self.champion.fitness, "fitness_full": fitness,
               "error": self.champion.fitness - fitness,
               "accuracy": self.champion.metrics["accuracy"], "accuracy_full": metrics["accuracy"]}
        shift = self.fitness.source_shift()   # the subset's bias on the sources: an estimate without a pass
        if shift:
            out.update(fitness_anchored=out["fitness"] - shift["fitness"],
                       error_anchored=out["fitness"] - shift["fitness"] - fitness,
                       accuracy_anchored=out["accuracy"] - shift["accuracy"])
        return out

    def step(self) -> bool:
        """Runs the next generation; returns whether another one follows."""
        if self.finished:
            return False
        g = self.generation + 1
        started = time.perf_counter()
        eval_before, merge_before = self.fitness.seconds, self.merge_seconds
        cands = self.search.initial(self.rng) if g == 0 else self.search.propose(g, self.rng)
        changed = False
        members = []
        evaluated = self._evaluate_remote(cands, g) if self.config.executor == "ray" else \
            self._evaluate_local(cands, g)
        for member, state in evaluated:  # in candidate order, so ties resolve as they do locally
            members.append(member)
            if not member.error and self.search.better(member, self.champion):
                # state is None from Ray: champion_model() rebuilds it here
                self.champion, self.champion_state, self.champion_generation = member, state, g
                changed = True
            del state
        if self.champion is None:
            raise EvolveError(f"every candidate of generation {g} failed: {members[0].error}")
        self.search.accept(g, members)
        if changed:  # the champion's merged rows cover the test split's ids: no full merge here
            self.champion_test = self.fitness.test(self._champion_built())
        wall = time.perf_counter() - started
        self.generation = g
        self.evaluations += len(members)
        self.seconds += wall
        self._plateau()
        self._record(g, members, wall, self.fitness.seconds - eval_before,
                     self.merge_seconds - merge_before, changed)
        self._report(g + 1, f"generation {g} done: champion {self.champion.fitness:.4f}")
        return not self.finished

    def _evaluate_local(self, cands: List[Dict[str, Any]], g: int):
        """(member, state) per candidate, in order. Where the search's builds evaluate nothing
        (grouped searches), the next candidate is merged on a second thread while this one is
        evaluated, so a generation costs about max(merge, evaluation) per candidate instead of
        their sum when a core is free; the same merges, so the same results. Holds one more
        candidate's state meanwhile. ``prefetch``: None (default) only when torch's threads leave
        a CPU core free (with no free core both slow down: measured 6-10 % slower overall on the
        busy 2-core machine); True / False force it."""
        prefetch = self.prefetch if self.prefetch is not None else spare_core()
        if not (prefetch and self.search.builds_without_scoring and len(cands) > 1):
            for i, cand in enumerate(cands):
                yield self._evaluate(cand, g, i, len(cands))
            return
        from concurrent.futures import ThreadPoolExecutor

        threads = torch.get_num_threads()

        def build(cand):
            torch.set_num_threads(threads)  # a new thread does not inherit the setting everywhere
            return build_candidate(self.search, self.sources, self.fitness, cand, self.config.seed,
                                   scores_inside=False)

        with ThreadPoolExecutor(1, thread_name_prefix="merge-prefetch") as pool:
            pending = pool.submit(build, cands[0])
            for i, cand in enumerate(cands):
                self._report(g + i / len(cands), f"generation {g}: candidate {i + 1}/{len(cands)}")
                built = pending.result()
                if i + 1 < len(cands):
                    pending = pool.submit(build, cands[i + 1])
                state, outcome = score_candidate(self.search, self.sources, self.fitness, *built)
                del built
                yield self._member(self.search.plain(cand), cand, g, outcome), state

    def _evaluate(self, cand: Dict[str, Any], g: int, i: int, count: int):
        self._report(g + i / count, f"generation {g}: candidate {i + 1}/{count}")
        plain = self.search.plain(cand)
        state, outcome = build_and_score(self.search, self.sources, self.fitness, cand, self.config.seed)
        return self._member(plain, cand, g, outcome), state

    def _evaluate_remote(self, cands: List[Dict[str, Any]], g: int):
        """The generation's candidates as parallel Ray tasks (engine/evolve/remote.py); the same
        (member, state=None) pairs as the local path, in candidate order."""
        plains = [self.search.plain(c) for c in cands]
        outcomes: Dict[int, Dict[str, Any]] = {}
        tick = lambda done: self._report(  # noqa: E731
            g + done / len(cands), f"generation {g}: {done}/{len(cands)} candidates scored on Ray")
        for i, out in ray_candidates(self.ws, self.config, plains, self.fitness.reference, tick):
            outcomes[i] = out
        for out in outcomes.values():  # the workers' evaluation work, counted as if done here
            self.fitness.seconds += out.get("eval_s", 0.0)
            self.fitness.evaluations += out.get("passes", 0)
        return [(self._member(plains[i], cand, g, outcomes[i]), None) for i, cand in enumerate(cands)]

    def _member(self, plain: Dict[str, Any], cand: Dict[str, Any], g: int, outcome: Dict[str, Any]) -> Member:
        """A scored candidate from build_and_score's outcome (a failed merge scores lowest)."""
        self.merge_seconds += outcome.get("merge_s", 0.0)
        if "error" in outcome:  # seed 004: a merge can fail; it scores lowest and the run goes on
            return Member(plain, 0.0, {}, cand["origin"], g, outcome["error"])
        metrics = outcome["metrics"]
        return Member(plain, self.fitness.combine(metrics), metrics, cand["origin"], g)

    def _plateau(self) -> None:
        if self.champion.fitness > self.reference + self.config.min_delta:
            self.stale, self.reference = 0, self.champion.fitness
        else:
            self.stale += 1
        if self.config.patience and self.stale >= self.config.patience:
            self.stopped = f"plateau: no gain above {self.config.min_delta} for {self.stale} generations"
        if not self.stopped:
            self.stopped = self.search.stop_reason()

    def _record(self, g: int, members: List[Member], wall: float, eval_s: float, merge_s: float,
                changed: bool) -> None:
        values = [m.fitness for m in self.search.population]
        row = {"generation": g, "best": max(values), "mean": float(np.mean(values)),
               "worst": min(values), "diversity": self.search.diversity(),
               "champion": self.champion.fitness, "evaluations": len(members),
               "seconds": wall, "eval_seconds": eval_s, "merge_seconds": merge_s,
               "evals_per_s": len(members) / max(wall, 1e-9),
               "failed": sum(1 for m in members if m.error)}
        if hasattr(self.search, "reseeded"):
            row["reseeded"] = self.search.reseeded
        self.history.append(row)
        if self._log is not None:
            for name in ("best", "mean", "worst", "champion", "diversity", "evals_per_s"):
                self._log(name, g, row[name])
            if changed:
                self._log("champion_test_accuracy", g, self.champion_test["accuracy"])
                self._log("champion_dev_accuracy", g, self.champion.metrics["accuracy"])
        self.save()
        if self._update is not None:
            self._update(self.result())

    def _candidates_before(self, done: float) -> float:
        """``done`` generations (a fraction: part of one) in candidates, as the estimate counts
        them: generation 0 is bigger than the later ones, so generations are not equal steps."""
        est = candidates_per_generation(self.config)
        g = min(int(done), est.generations + 1)
        before = 0 if g == 0 else est.first + (g - 1) * est.later
        return before + (done - g) * (est.first if g == 0 else est.later)

    def _report(self, done: float, message: str) -> None:
        if self._progress is None:
            return
        total = float(candidates_per_generation(self.config).total)
        done_c = min(self._candidates_before(done), total)
        elapsed = time.perf_counter() - self._clock
        fresh = done_c - self._candidates_before(self._done_at_start)  # after a resume, the ETA
        scaled = elapsed * done_c / fresh if fresh > 0 else 0.0         # extrapolates this session
        self._progress(Progress(done_c, total, message, scaled))

    # ---- results -----------------------------------------------------------------------------
    def champion_recipe(self) -> Optional[Dict[str, Any]]:
        return self.search.recipe(self.champion.candidate) if self.champion else None

    def _champion_built(self):
        """The champion as built (rebuilt from its recipe after a resume): possibly only the
        embedding rows evaluation reads (a RowMerged)."""
        if self.champion is None:
            raise EvolveError("no champion yet: the run has not evaluated anything")
        if self.champion_state is None:
            self.champion_state = self.search.build(self.champion.candidate, self.sources,
                                                    self.fitness.score, self.config.seed)
        return self.champion_state

    def champion_model(self):
        """The champion's whole merged state dict (an export, a re-score on other data): a
        candidate built with only some embedding rows is completed here, by a full merge."""
        state = self._champion_built()
        if getattr(state, "rows", None):
            self.champion_state = state = state.complete()
        return state

    def result(self) -> Dict[str, Any]:
        """Plain data for the run row: the champion's recipe and scores, curves, counts."""
        c = self.config
        champion = None
        if self.champion is not None:
            champion = {"fitness": self.champion.fitness, "generation": self.champion_generation,
                        "origin": self.champion.origin, "recipe": self.champion_recipe(),
                        "candidate": self.champion.candidate, "dev": self.champion.metrics,
                        "test": self.champion_test,
                        "export_method": self.search.export_method(self.champion.candidate)}
        total_s = max(self.seconds, 1e-9)
        eval_s = self.fitness.seconds
        out = {"algorithm": c.algorithm, "target": c.target, "sources": c.sources,
               "weights": c.weights, "generation": self.generation, "generations": c.generations,
               "stopped": self.stopped, "champion": champion,
               "start_fitness": self.history[0]["best"] if self.history else None,
               "evaluations": self.evaluations, "forward_passes": self.fitness.evaluations,
               "seconds": self.seconds, "eval_seconds": eval_s, "merge_seconds": self.merge_seconds,
               "outside_eval_share": max(0.0, 1 - eval_s / total_s) if self.seconds else None,
               "overhead_share": max(0.0, 1 - (eval_s + self.merge_seconds) / total_s)
               if self.seconds else None,
               "evals_per_s": self.evaluations / total_s, "history": self.history,
               "baselines": self.baselines, "config": c.to_dict(), "dev_subset": self.dev_subset,
               "checkpoint": str(self.checkpoint_dir / CHECKPOINT) if self.checkpoint_dir else None}
        out.update(self.search.extra())
        return out

    # ---- checkpoint --------------------------------------------------------------------------
    def save(self) -> Optional[Path]:
        """Writes the checkpoint (JSON, atomically) after a generation; None without a folder."""
        if self.checkpoint_dir is None:
            return None
        data = {"version": CHECKPOINT_VERSION, "config": self.config.to_dict(),
                "generation": self.generation, "search": self.search.state(),
                "rng": self.rng.bit_generator.state,
                "champion": self.champion.to_dict() if self.champion else None,
                "champion_generation": self.champion_generation,
                "champion_test": self.champion_test, "history": self.history,
                "stale": self.stale, "reference": self.reference, "stopped": self.stopped,
                "evaluations": self.evaluations, "forward_passes": self.fitness.evaluations,
                "eval_seconds": self.fitness.seconds, "seconds": self.seconds,
                "merge_seconds": self.merge_seconds, "baselines": self.baselines,
                "dev_subset": self.dev_subset,
                "fitness_reference": self.fitness.reference}
        self.checkpoint_dir.mkdir(parents=True, exist_ok=True)
        path = self.checkpoint_dir / CHECKPOINT
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps(data), encoding="utf-8")
        os.replace(tmp, path)
        return path

    def _restore(self, data: Dict[str, Any]) -> None:
        self.generation = int(data["generation"])
        self.search.load(data["search"])
        self.rng.bit_generator.state = data["rng"]
        self.champion = Member.from_dict(data["champion"]) if data["champion"] else None
        self.champion_generation = int(data["champion_generation"])
        self.champion_test = data["champion_test"]
        self.history = list(data["history"])
        self.stale, self.reference = int(data["stale"]), float(data["reference"])
        self.stopped = data["stopped"]
        self.evaluations, self.seconds = int(data["evaluations"]), float(data["seconds"])
        self.fitness.evaluations = int(data["forward_passes"])
        self.fitness.seconds = float(data["eval_seconds"])
        self.merge_seconds = float(data.get("merge_seconds", 0.0))
        self.baselines = data.get("baselines")
        self.dev_subset = data.get("dev_subset")
        self.fitness.reference = data.get("fitness_reference")  # the run's own latency reference
