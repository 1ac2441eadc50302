"""Before an evolution starts: roughly how long and how much memory it will take, and a refusal when
that is far beyond the machine (a typo like ``--generations 1000000000`` should fail in a second,
not after a week).

Time = candidates × seconds per candidate: measured, when the store holds earlier evolutions of
this zoo with the same algorithm (their seconds / candidates); else approximated from rates measured
on this project's 2-core CPU machine: ~1 s of fixed work per candidate (model build, tokenisation,
frankenmerge's own passes; the demo's EvoMerge runs at ~1.7 s per candidate) plus the merge (a
5-source TIES merge of 12.3 M parameters in 0.09 s) and the dev evaluation (72 sentences in 0.13 s),
taken as 20× faster on a GPU. It is an order of magnitude, meant to catch jobs of months, not to
replace the live ETA.
Memory = the sources and the base (resident), the merge cache (~3× the sources), the candidate, the
champion and the working model; on Ray, every parallel task holds its own sources and candidate.
"""
from __future__ import annotations

import os
from dataclasses import asdict, dataclass
from typing import Dict, List

from .config import EvolveConfig, EvolveError
from .estimate import candidates_per_generation
from .objectives import dev_passes

MERGE_S_PER_PARAM_SOURCE = 0.09 / (5 * 12.3e6)
EVAL_S_PER_PARAM_EXAMPLE = 0.13 / (72 * 12.3e6)
FIXED_S_PER_CANDIDATE = 1.0
GPU_SPEEDUP = 20.0
MAX_HOURS_ENV = "ENGINE_MAX_JOB_HOURS"
DEFAULT_MAX_HOURS = 7 * 24.0    # a week: beyond it a run is refused unless forced
WARN_HOURS = 12.0


@dataclass
class Budget:
    candidates: int
    seconds_per_candidate: float
    seconds: float
    memory_bytes: int
    machine_bytes: int
    notes: List[str]

    def to_dict(self) -> Dict[str, object]:
        return asdict(self)

    def summary(self) -> str:
        return (f"estimate: {self.candidates:,} candidates × ~{self.seconds_per_candidate:.2g} s ≈ "
                f"{_duration(self.seconds)}, ~{_gib(self.memory_bytes)} of memory "
                f"(machine: {_gib(self.machine_bytes)})")


def candidates_per_run(config: EvolveConfig) -> int:
    """Merges + evaluations the whole run does at most (no early stop, re-seeding every time)."""
    return candidates_per_generation(config).most


def machine_memory(device: str) -> int:
    """Bytes of the memory the run lives in: the GPU's when it runs on one, else physical RAM."""
    if str(device).startswith("cuda"):
        import torch

        return int(torch.cuda.get_device_properties(torch.device(device)).total_memory)
    return int(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES"))


def measured_seconds(store, zoo_root: str, algorithm: str):
    """Median seconds per candidate of this zoo's earlier evolutions with the same algorithm."""
    rates = []
    for row in store.runs(kind="evolve", limit=50):
        settings = (row.get("params") or {}).get("settings") or {}
        result = row.get("result") or {}
        if (settings.get("zoo") == zoo_root and result.get("algorithm") == algorithm
                and result.get("evaluations") and result.get("seconds")):
            rates.append(float(result["seconds"]) / int(result["evaluations"]))
    return sorted(rates)[len(rates) // 2] if rates else None


def estimate(ws, config: EvolveConfig, store=None) -> Budget:
    """The budget of a resolved config (sources filled in) on this workspace; ``store`` lends the
    measured speed of earlier runs on the same zoo."""
    model_bytes = sum(f.stat().st_size for f in ws.zoo.path(config.sources[0]).glob("*.safetensors"))
    params = ws.zoo.parameter_count()
    dev = config.dev_size or len(ws.dataset.get(config.target, config.dev_split))
    dev = min(dev, len(ws.dataset.get(config.target, config.dev_split)))
    device = str(ws.evaluator.device)
    on_gpu = device.startswith("cuda")
    n = len(config.sources)
    speedup = GPU_SPEEDUP if on_gpu else 1.0
    per = (FIXED_S_PER_CANDIDATE / speedup + n * params * MERGE_S_PER_PARAM_SOURCE
           + dev_passes(config) * dev * params * EVAL_S_PER_PARAM_EXAMPLE / speedup)
    if store is not None:
        from ..candidate_runs import workspace_record  # the zoo as job.recorded_settings writes it

        per = measured_seconds(store, workspace_record(ws)["zoo"], config.algorithm) or per
    candidates = candidates_per_run(config)
    held = n + 1 + (3 * n if config.merge_cache else 0) + 3   # sources, base, cache, 3 working models
    if config.executor == "ray":
        held += min(config.population, config.ray_cpus) * (n + 2)
    notes = []
    seconds = candidates * per
    if seconds > WARN_HOURS * 3600:
        notes.append(f"this run may take {_duration(seconds)}; patience "
                     f"{config.patience or 'off'} may stop it earlier")
    return Budget(candidates, per, seconds, held * model_bytes, machine_memory(device), notes)


def check_budget(ws, config: EvolveConfig, force: bool = False, store=None) -> Budget:
    """The estimate, or EvolveError when it is far beyond the machine (unless ``force``)."""
    budget = estimate(ws, config, store)
    max_hours = float(os.environ.get(MAX_HOURS_ENV, DEFAULT_MAX_HOURS))
    if force:
        return budget
    if budget.memory_bytes > budget.machine_bytes:
        raise EvolveError(
            f"evolve: this run needs ~{_gib(budget.memory_bytes)} of memory but the machine has "
            f"{_gib(budget.machine_bytes)}; use --no-merge-cache, fewer sources or fewer Ray CPUs "
            f"(or --force to try anyway)")
    if budget.seconds > max_hours * 3600:
        raise EvolveError(
            f"evolve: {budget.candidates:,} candidates would take about {_duration(budget.seconds)} "
            f"(over the {max_hours:g} h limit, {MAX_HOURS_ENV}); lower --generations, --population "
            f"or --dev-size, or pass --force")
    return budget


def _duration(seconds: float) -> str:
    if seconds < 120:
        return f"{seconds:.0f} s"
    if seconds < 2 * 3600:
        return f"{seconds / 60:.0f} min"
    if seconds < 3 * 86400:
        return f"{seconds / 3600:.1f} h"
    return f"{seconds / 86400:,.0f} days"


def _gib(n: float) -> str:
    return f"{n / 2 ** 30:.1f} GiB" if n >= 2 ** 30 else f"{n / 2 ** 20:.0f} MiB"
