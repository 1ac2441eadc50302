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
from collections import OrderedDict
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np
import torch

from ..evaluate import Encoded
from ..merge.rows import row_ids
from ..metrics import classification_metrics, softmax
from .config import DEV_SUBSETS, EvolveError

StateDict = Dict[str, torch.Tensor]


def _take(enc: Encoded, keep: np.ndarray, tag: str) -> Encoded:
    """The examples ``keep`` (original indices) of a tokenised split, still in length order,
    reusing the split's token tensors."""
    keep = np.sort(np.asarray(keep, dtype=int))
    rank = np.full(len(enc), -1)
    rank[keep] = np.arange(len(keep))
    positions = [j for j in range(len(enc)) if rank[enc.order[j]] >= 0]
    return Encoded([enc.input_ids[j] for j in positions], rank[enc.order[positions]],
                   np.asarray(enc.labels)[keep], f"{enc.fingerprint}|{tag}")


def sample_rows(n: int, of: int, seed: int) -> np.ndarray:
    """A seeded sample of ``n`` of ``of`` example indices (the random dev subset)."""
    return np.sort(np.random.default_rng([seed, 404]).choice(of, n, replace=False))


def subsample(enc: Encoded, n: int, seed: int) -> Encoded:
    """A seeded sample of ``n`` examples of a tokenised split (0 or ≥ its size: the whole split)."""
    if n <= 0 or n >= len(enc):
        return enc
    return _take(enc, sample_rows(n, len(enc), seed), f"sample{n}:{seed}")


def informativeness(source_logits, labels: np.ndarray) -> np.ndarray:
    """Per example, how much it can tell merges of these sources apart: the variance p̄(1 − p̄) of
    the sources' mean probability of the right label, which is their disagreement (the variance of
    that probability across sources) plus their mean uncertainty p(1 − p) — IRT's item information
    at the sources' average ability. Examples every source gets confidently right or wrong score ~0."""
    labels = np.asarray(labels, dtype=int)
    right = np.stack([softmax(np.asarray(lg, dtype=np.float64))[np.arange(len(labels)), labels]
                      for lg in source_logits])
    mean = right.mean(axis=0)
    return mean * (1.0 - mean)


def stratified_top(score: np.ndarray, labels: np.ndarray, n: int, seed: int) -> np.ndarray:
    """``n`` indices: each label gets its share of ``n`` (largest remainder, so the subset keeps the
    split's label mix) filled by that label's highest scores; equal scores are ordered by a seeded
    shuffle, so the choice is deterministic for a seed."""
    labels = np.asarray(labels)
    classes, counts = np.unique(labels, return_counts=True)
    exact = n * counts / len(labels)
    quota = np.floor(exact).astype(int)
    for i in np.lexsort((classes, -(exact - quota)))[: n - quota.sum()]:
        quota[i] += 1
    tiebreak = np.random.default_rng([seed, 405]).permutation(len(labels))
    keep = []
    for label, q in zip(classes, quota):
        rows = np.flatnonzero(labels == label)
        keep += list(rows[np.lexsort((tiebreak[rows], -score[rows]))][:q])
    return np.sort(np.asarray(keep, dtype=int))


def informative_rows(source_logits, labels: np.ndarray, n: int, seed: int) -> np.ndarray:
    """The ``n`` examples that best tell merges of the sources apart (MERGE³'s reduced, informative
    dev set; scored by :func:`informativeness` from the sources' own dev logits, no test data),
    stratified by label."""
    return stratified_top(informativeness(source_logits, labels), labels, n, seed)


class PrefixReuse:
    """Dev passes that start at the first transformer layer whose weights changed.

    Frankenmerge scores 1 + 2 × layers candidates per individual (13 dev passes on the demo's
    6 layers: two thirds of an EvoMerge run's time), and each try differs from the current choice
    in one layer only, everything before it being the *same tensor objects*. So every pass keeps
    each layer's input per batch, keyed by the identity of the tensors before that layer (held
    here, so an id cannot be reused); a state whose first k layers and embeddings are those
    objects starts at layer k from the kept input. Same operations on the same inputs: the logits
    are bit-identical to a full pass (tests/test_speed_honesty.py). Models without a
    ``base_model.embeddings`` + ``base_model.encoder.layer`` stack always run whole.
    """

    def __init__(self, keep: int = 24):
        self.keep = keep
        self.entries: "OrderedDict[tuple, tuple]" = OrderedDict()  # (start, ids) -> (tensors, inputs)
        self.layer_keys: Optional[List[List[str]]] = None
        self.reused_layers = 0

    @staticmethod
    def stack(model):
        base = getattr(model, "base_model", None)
        encoder = getattr(base, "encoder", None)
        layers = getattr(encoder, "layer", None)
        if getattr(base, "embeddings", None) is None or not isinstance(layers, torch.nn.ModuleList):
            return None, None
        return encoder, layers

    def _layer_keys(self, model, state: StateDict) -> List[List[str]]:
        if self.layer_keys is None:
            names = {id(m): n for n, m in model.named_modules()}
            _, layers = self.stack(model)
            prefixes = [names[id(layer)] + "." for layer in layers]
            self.layer_keys = [[k for k in state if k.startswith(p)] for p in prefixes]
            self.keep = max(self.keep, 4 * len(layers))
        return self.layer_keys

    def _prefix(self, state: StateDict, per_layer: List[List[str]], start: int) -> tuple:
        later = {k for keys in per_layer[start:] for k in keys}
        return tuple(state[k] for k in sorted(state) if k not in later)

    def _find(self, state: StateDict, per_layer: List[List[str]]):
        for start in range(len(per_layer) - 1, 0, -1):
            tensors = self._prefix(state, per_layer, start)
            hit = self.entries.get((start, tuple(map(id, tensors))))
            if hit is not None and all(a is b for a, b in zip(hit[0], tensors)):
                self.entries.move_to_end((start, tuple(map(id, tensors))))
                return start, hit[1]
        return 0, None

    def forward(self, ev, model, enc: Encoded, state: StateDict):
        encoder, layers = self.stack(model)
        if encoder is None or not isinstance(state, dict):
            return ev.forward(model, enc)
        per_layer = self._layer_keys(model, state)
        start, kept = self._find(state, per_layer)
        seen: Dict[int, list] = {i: [] for i in range(start + 1, len(layers))}
        batch = [0]

        def capture(i):
            def hook(module, args):
                if i in seen:
                    seen[i].append(args[0])
            return hook

        def replace(module, args):  # the first layer run gets the kept input of its batch
            return (kept[batch[0]],) + tuple(args[1:])

        def next_batch(module, args, output):
            batch[0] += 1

        handles = [layers[i].register_forward_pre_hook(capture(i)) for i in seen]
        if kept is not None:
            handles.append(layers[start].register_forward_pre_hook(replace))
            encoder.layer = torch.nn.ModuleList(list(layers)[start:])
        handles.append(model.register_forward_hook(next_batch))
        try:
            scored = ev.forward(model, enc)
        finally:
            encoder.layer = layers
            for h in handles:
                h.remove()
        self.reused_layers += start
        for i, inputs in seen.items():
            tensors = self._prefix(state, per_layer, i)
            self.entries[(i, tuple(map(id, tensors)))] = (tensors, inputs)
            self.entries.move_to_end((i, tuple(map(id, tensors))))
        while len(self.entries) > self.keep:
            self.entries.popitem(last=False)
        return scored


class Fitness:
    """Scores candidates on the target's dev data; counts evaluations and the time they take."""

    def __init__(self, ws, target: str, weights: Dict[str, float], dev_split: str = "validation",
                 dev_size: int = 0, seed: int = 0, dev_subset: str = "random", sources: Sequence[str] = ()):
        if not ws.dataset.has(target, dev_split):
            raise EvolveError(f"the target {target} has no '{dev_split}' split to search on; "
                              f"choose another dev split or target")
        if not ws.dataset.has(target, "test"):
            raise EvolveError(f"the target {target} has no test split to report the champion on")
        self.ws, self.target, self.weights = ws, target, dict(weights)
        self.dev_split = dev_split
        if dev_subset not in DEV_SUBSETS:
            raise EvolveError(f"dev_subset must be one of {', '.join(DEV_SUBSETS)}, got {dev_subset!r}")
        enc = ws.evaluator.encoded(target, dev_split)
        self.dev_subset, self.sources = dev_subset, list(sources)
        self.rows: Optional[np.ndarray] = None           # the subset's examples (None: the whole split)
        if 0 < dev_size < len(enc):
            if dev_subset == "informative" and not sources:
                raise EvolveError("an informative dev subset is chosen from the source models' dev logits: "
                                  "name the run's sources")
            self.rows = (informative_rows(self._source_logits(), enc.labels, dev_size, seed)
                         if dev_subset == "informative" else sample_rows(dev_size, len(enc), seed))
        tag = f"{'sample' if dev_subset == 'random' else dev_subset}{dev_size}:{seed}"
        self.dev = enc if self.rows is None else _take(enc, self.rows, tag)
        self.reference: Optional[Dict[str, float]] = None
        self.prefix = PrefixReuse()
        self._ids: Dict[str, torch.Tensor] = {}  # split fingerprint -> the token ids it reads
        self.evaluations = 0        # dev forward passes, the ones inside frankenmerge included
        self.seconds = 0.0          # time in model evaluation (load into the working model + forward)
        self.test_seconds = 0.0     # of which the champion's test passes (not dev selection)

    @classmethod
    def for_config(cls, ws, config, whole: bool = False) -> "Fitness":
        """The fitness a run's config asks for (``whole``: on the whole dev split)."""
        return cls(ws, config.target, config.fitness_weights, config.dev_split, 0 if whole else config.dev_size,
                   config.seed, getattr(config, "dev_subset", "random"), config.sources or ())

    def _source_logits(self) -> List[np.ndarray]:
        """The sources' logits on the whole dev split (cached once computed: the N×N's, a baseline's)."""
        return [self.ws.evaluator.source_logits(s, self.target, self.dev_split).logits for s in self.sources]

    def source_shift(self) -> Optional[Dict[str, float]]:
        """How far the subset's fitness and accuracy sit from the whole split's for the sources
        themselves (mean over sources, subset − whole): known without scoring any merge, and
        subtracted it gives a source-anchored estimate of a candidate's whole-split value.
        docs/results/dev_subset.md measures it; None without a subset or sources."""
        if self.rows is None or not self.sources:
            return None
        labels = np.asarray(self.ws.evaluator.encoded(self.target, self.dev_split).labels)
        shifts = []
        for logits in self._source_logits():
            sub = classification_metrics(softmax(logits[self.rows]), labels[self.rows])
            whole = classification_metrics(softmax(logits), labels)
            shifts.append((self.combine(sub) - self.combine(whole), sub["accuracy"] - whole["accuracy"]))
        fitness, accuracy = np.mean(shifts, axis=0)
        return {"fitness": float(fitness), "accuracy": float(accuracy)}

    def _timed(self, fn):
        start = time.perf_counter()
        try:
            return fn()
        finally:
            self.seconds += time.perf_counter() - start

    def readable(self, state: StateDict, enc: Encoded) -> StateDict:
        """``state``, or its full merge where it holds only some embedding rows (a RowMerged,
        engine/merge/rows.py) and ``enc`` reads others: checked before every evaluation."""
        if not getattr(state, "rows", None):
            return state
        ids = self._ids.get(enc.fingerprint)
        if ids is None:
            pad = self.ws.evaluator.tokenizer.pad_token_id or 0
            ids = self._ids[enc.fingerprint] = row_ids(list(enc.input_ids) + [torch.tensor([pad])])
        return state if state.covers(ids) else state.complete()

    def metrics(self, state: StateDict) -> Dict[str, float]:
        """Dev metrics of one candidate (accuracy, nll, ..., latency_ms, peak_mem_mb)."""
        state = self.readable(state, self.dev)

        def run():
            ev = self.ws.evaluator
            scored = self.prefix.forward(ev, ev.working_model(state), self.dev, state)
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
        state = self.readable(state, ev.encoded(self.target, "test"))
        before = self.seconds
        scored = self._timed(lambda: ev.state_logits(state, self.target, "test", cache=False))
        self.test_seconds += self.seconds - before
        return ev.score(scored, self.target, "test")
