"""Fitness evaluations on Ray: a generation's candidates merged and scored as parallel Ray tasks.

Each worker opens the workspace from the driver's Settings once, and once per run loads the sources
(with their merge cache), the search (only its stateless ``build``) and the dev sample; a task then
builds one candidate from its plain recipe and returns its dev metrics. The driver combines them
into fitness with its own reference, so selection, curves and checkpoints are exactly the local
ones (tests/test_evolve.py checks a run against the local executor); the champion is rebuilt on
the driver for its test-split score. Worker time is summed into the run's merge / eval seconds.
Ray setup (local instance or cluster) is engine/parallel.py's, shared with sweeps.
"""
from __future__ import annotations

import json
from typing import Any, Callable, Dict, Iterator, List, Optional, Tuple

from .build import Sources
from .config import EvolveConfig
from .fitness import Fitness
from .search import build_and_score, make_search, needs_base

_CONTEXTS: Dict[str, Tuple[Any, Any, Any, Any]] = {}   # per worker: run key -> (config, sources, search, fitness)


def _context(settings: Dict[str, Any], config_data: Dict[str, Any]):
    from ..parallel import worker_workspace

    key = json.dumps([settings, config_data], sort_keys=True, default=str)
    if key not in _CONTEXTS:
        ws = worker_workspace(settings)
        config = EvolveConfig.from_dict(config_data)
        sources = Sources(ws, config.sources, needs_base(config), config.merge_cache)
        fitness = Fitness.for_config(ws, config)
        _CONTEXTS.clear()  # one run per worker at a time: free the previous run's sources
        _CONTEXTS[key] = (config, sources, make_search(config, sources.keys), fitness)
    return _CONTEXTS[key]


def remote_candidate(settings: Dict[str, Any], config_data: Dict[str, Any], candidate: Dict[str, Any],
                     reference: Optional[Dict[str, float]]) -> Dict[str, Any]:
    """The task body: build_and_score one candidate here; plain data back, with this worker's
    evaluation time and dev passes (frankenmerge's included)."""
    config, sources, search, fitness = _context(settings, config_data)
    fitness.reference = reference  # frankenmerge's layer choices score with the driver's reference
    eval_before, passes_before = fitness.seconds, fitness.evaluations
    _, outcome = build_and_score(search, sources, fitness, candidate, config.seed)
    return {**outcome, "eval_s": fitness.seconds - eval_before, "passes": fitness.evaluations - passes_before}


def ray_candidates(ws, config, candidates: List[Dict[str, Any]], reference: Optional[Dict[str, float]],
                   tick: Callable[[int], None]) -> Iterator[Tuple[int, Dict[str, Any]]]:
    """Yields (index, outcome) as the candidates' tasks finish; ``tick(done)`` runs between waits
    (it may raise Cancelled: the tasks still pending are then cancelled)."""
    from ..parallel import ray_tasks

    data = config.to_dict()
    done = [0]
    for i, outcome in ray_tasks(ws, remote_candidate, list(range(len(candidates))),
                                lambda i: (data, candidates[i], reference), lambda: tick(done[0]),
                                config.address, config.ray_cpus, max_in_flight=len(candidates)):
        if isinstance(outcome, BaseException):  # the worker failed: the candidate scores lowest
            outcome = {"error": f"evaluation failed on the Ray worker: {outcome}"}
        done[0] += 1
        yield i, outcome
