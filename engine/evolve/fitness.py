"""Composite fitness of a merged state dict on the target's dev data, through the evaluator's one
working model and its cached tokenisation.

fitness = Σ_t c_t · term_t / Σ_t c_t over the user's weights c_t, every term in [0, 1], higher better:
- accuracy: dev accuracy.
- loss: exp(−NLL) of the true labels = 1 / perplexity, the geometric mean of the probability the
  model gives the right intent (seed 004's "1 / perplexity" term).
- latency: min(1, reference / latency) with latency in ms per example and the reference measured
  on the first source model at the start (seed 004's "1 / inference time", made scale-free).
- memory: min(1, reference / peak memory), likewise (CPU: parameter bytes; CUDA: peak allocated).
Latency is wall-clock: a non-zero latency weight makes a run depend on machine load.
"""
from __future__ import annotations

import math
import time
from typing import Dict, Optional, Tuple

import numpy as np
import torch

from ..evaluate import Encoded
from ..metrics import classification_metrics, softmax
from .config import EvolveError

StateDict = Dict[str, torch.Tensor]


def subsample(enc: Encoded, n: int, seed: int) -> Encoded:
    """A seeded sample of ``n`` examples of a tokenised split (0 or ≥ its size: the whole split),
    still in length order, reusing the split's token tensors."""
    if n <= 0 or n >= len(enc):
        return enc
    keep = np.sort(np.random.default_rng([seed, 404]).choice(len(enc), n, replace=False))
    rank = np.full(len(enc), -1)
    rank[keep] = np.arange(n)
    positions = [j for j in range(len(enc)) if rank[enc.order[j]] >= 0]
    return Encoded([enc.input_ids[j] for j in positions], rank[enc.order[positions]],
                   np.asarray(enc.labels)[keep], f"{enc.fingerprint}|sample{n}:{seed}")


class Fitness:
    """Scores candidates on the target's dev data; counts evaluations and the time they take."""

    def __init__(self, ws, target: str, weights: Dict[str, float], dev_split: str = "validation",
                 dev_size: int = 0, seed: int = 0):
        if not ws.dataset.has(target, dev_split):
            raise EvolveError(f"the target {target} has no '{dev_split}' split to search on; "
                              f"choose another dev split or target")
        if not ws.dataset.has(target, "test"):
            raise EvolveError(f"the target {target} has no test split to report the champion on")
        self.ws, self.target, self.weights = ws, target, dict(weights)
        self.dev_split = dev_split
        self.dev = subsample(ws.evaluator.encoded(target, dev_split), dev_size, seed)
        self.reference: Optional[Dict[str, float]] = None
        self.evaluations = 0        # dev forward passes, the ones inside frankenmerge included
        self.seconds = 0.0          # time in model evaluation (load into the working model + forward)

    def _timed(self, fn):
        start = time.perf_counter()
        try:
            return fn()
        finally:
            self.seconds += time.perf_counter() - start

    def metrics(self, state: StateDict) -> Dict[str, float]:
        """Dev metrics of one candidate (accuracy, nll, ..., latency_ms, peak_mem_mb)."""
        def run():
            ev = self.ws.evaluator
            scored = ev.forward(ev.working_model(state), self.dev)
            out = classification_metrics(softmax(scored.logits), self.dev.labels)
            out["latency_ms"] = 1000 * scored.seconds / len(self.dev)
            out["peak_mem_mb"] = scored.peak_mem_mb
            return out

        self.evaluations += 1
        return self._timed(run)

    def set_reference(self, state: StateDict) -> None:
        """Latency / memory reference (a source model), measured only when those terms count."""
        if self.weights.get("latency", 0) > 0 or self.weights.get("memory", 0) > 0:
            m = self.metrics(state)
            self.reference = {"latency_ms": m["latency_ms"], "peak_mem_mb": m["peak_mem_mb"]}

    def terms(self, m: Dict[str, float]) -> Dict[str, float]:
        ref = self.reference or {}

        def ratio(key: str) -> float:
            return min(1.0, ref[key] / m[key]) if ref.get(key) and m.get(key) else 1.0

        return {"accuracy": float(m["accuracy"]), "loss": float(math.exp(-m["nll"])),
                "latency": ratio("latency_ms"), "memory": ratio("peak_mem_mb")}

    def combine(self, m: Dict[str, float]) -> float:
        terms = self.terms(m)
        total = sum(self.weights.values())
        return float(sum(self.weights[t] * terms[t] for t in self.weights) / total)

    def __call__(self, state: StateDict) -> Tuple[float, Dict[str, float]]:
        m = self.metrics(state)
        return self.combine(m), m

    def score(self, state: StateDict) -> float:
        """The fitness alone: what frankenmerge picks layers by (MergeContext.score)."""
        return self(state)[0]

    def test(self, state: StateDict) -> Dict[str, float]:
        """The champion on the target's untouched test split (never used for selection)."""
        ev = self.ws.evaluator
        scored = self._timed(lambda: ev.state_logits(state, self.target, "test", cache=False))
        return ev.score(scored, self.target, "test")
