"""Batched inference with a content-addressed logits cache, metrics, and the N×N zero-shot matrix.

Tokenisation happens once per (locale, split) and is sorted by length so batches carry little
padding (length bucketing; ``bucket=False`` keeps the split's order, for comparison). Forward
passes run under ``torch.inference_mode``; on CUDA ``precision`` may ask for bf16/fp16 autocast
(the CPU always stays float32: see ``autocast_dtype``). Logits are cached on disk (diskcache)
under the model's content fingerprint and the data's fingerprint, so re-scoring an ensemble or re-opening the app never repeats a forward pass. Cache
values are raw ``.npy`` bytes + JSON, in a cache that refuses anything else (nothing is unpickled;
engine/logits_cache.py); non-finite logits are never stored.
"""
from __future__ import annotations

import contextlib
import io
import json
import time
import warnings
import weakref
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, List, Optional

import numpy as np
import pandas as pd
import torch

from .data import Dataset
from .device import resolve_device
from .metrics import classification_metrics, softmax
from .progress import ProgressFn, Tracker, sub_progress
from .zoo import Zoo, fingerprint_state

from .paths import default_cache_dir  # noqa: F401  (its home is engine.paths)


PRECISIONS = ("float32", "auto", "bfloat16", "float16")


def autocast_dtype(device: torch.device, precision: str = "float32") -> Optional[torch.dtype]:
    """The half dtype evaluation autocasts to, or None for plain float32.

    Only CUDA gets half precision: there it roughly doubles throughput for a small change in the
    logits; CPUs without fast half kernels would run slower and drift, so a CPU evaluation stays
    float32 whatever is asked. 'auto': bf16 where the GPU supports it, else fp16."""
    if precision not in PRECISIONS:
        raise ValueError(f"unknown evaluation precision '{precision}'; use one of {', '.join(PRECISIONS)}")
    if precision == "float32" or device.type != "cuda":
        return None
    if precision == "auto":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    return torch.bfloat16 if precision == "bfloat16" else torch.float16


@dataclass
class Encoded:
    """A tokenised split, in length order (``order`` maps back to the original order)."""

    input_ids: List[torch.Tensor]
    order: np.ndarray
    labels: np.ndarray
    fingerprint: str

    def __len__(self) -> int:
        return len(self.input_ids)


@dataclass
class Scored:
    logits: np.ndarray          # [N, C] in the split's original order
    seconds: float              # wall time of the forward passes that produced them
    peak_mem_mb: float
    cached: bool = False


def _pack(logits: np.ndarray, meta: dict) -> bytes:
    buf = io.BytesIO()
    np.save(buf, logits.astype(np.float32), allow_pickle=False)
    head = json.dumps(meta).encode()
    return len(head).to_bytes(4, "little") + head + buf.getvalue()


def _unpack(blob: bytes):
    n = int.from_bytes(blob[:4], "little")
    meta = json.loads(blob[4:4 + n])
    return np.load(io.BytesIO(blob[4 + n:]), allow_pickle=False), meta


class Evaluator:
    """Scores zoo models, merged state dicts and their ensembles on a dataset's splits."""

    def __init__(self, zoo: Zoo, dataset: Dataset, cache_dir: Optional[Path] = None,
                 device: str = "auto", batch_size: int = 64, max_length: int = 64,
                 use_cache: bool = True, precision: str = "float32", bucket: bool = True):
        if set(zoo.labels) and zoo.labels != dataset.labels:
            diff = sorted(set(zoo.labels) ^ set(dataset.labels))
            raise ValueError("the zoo's label set does not match the dataset's"
                             + (f" (differs in: {', '.join(diff[:6])})" if diff else " (same names, other order)"))
        self.zoo, self.dataset = zoo, dataset
        self.device = resolve_device(device)
        self.batch_size, self.max_length = batch_size, max_length
        self.half = autocast_dtype(self.device, precision)  # None: float32
        self.bucket = bucket
        self._tokenizer = None
        self._encoded: Dict[tuple, Encoded] = {}
        self._model = None
        self._loaded: Dict[str, tuple] = {}  # key -> (weak ref, version) of what the model holds
        self._model_targets = None
        self.copied_tensors = 0     # tensors copied into the working model (the bench counts them)
        self.incremental_load = True  # False: every load copies every tensor (the bench's "before")
        self._source: tuple = (None, None)  # (locale, model): the last zoo model loaded, reused
        self.cache = None
        if use_cache:
            from .logits_cache import LogitsCache

            self.cache = LogitsCache(Path(cache_dir or default_cache_dir()) / "logits")

    # ---- tokenisation ----------------------------------------------------------------------
    @property
    def tokenizer(self):
        if self._tokenizer is None:
            self._tokenizer = self.zoo.tokenizer()
        return self._tokenizer

    def encoded(self, locale: str, split: str = "test") -> Encoded:
        key = (locale, split)
        if key not in self._encoded:
            data = self.dataset.get(locale, split)
            ids = self.tokenizer(list(data.texts), truncation=True, max_length=self.max_length)["input_ids"]
            order = (np.argsort([len(x) for x in ids], kind="stable") if self.bucket
                     else np.arange(len(ids)))
            self._encoded[key] = Encoded([torch.tensor(ids[i]) for i in order], order,
                                         np.asarray(data.labels), self.dataset.fingerprint(locale, split))
        return self._encoded[key]

    # ---- forward passes --------------------------------------------------------------------
    def forward(self, model: torch.nn.Module, enc: Encoded, progress: Optional[ProgressFn] = None) -> Scored:
        """Batched inference with dynamic padding; returns logits in the original order."""
        pad = self.tokenizer.pad_token_id or 0
        model = model.to(self.device).eval()
        if self.device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(self.device)
        tracker = Tracker(progress, len(enc), "forward")
        chunks = []
        start = time.perf_counter()
        half = (torch.autocast("cuda", dtype=self.half) if self.half is not None
                else contextlib.nullcontext())
        with torch.inference_mode(), half:
            for lo in range(0, len(enc), self.batch_size):
                batch = enc.input_ids[lo:lo + self.batch_size]
                ids = torch.nn.utils.rnn.pad_sequence(batch, batch_first=True, padding_value=pad)
                mask = (ids != pad).long()
                out = model(input_ids=ids.to(self.device), attention_mask=mask.to(self.device)).logits
                chunks.append(out.float())
                tracker.advance(len(batch))
        logits = torch.cat(chunks).cpu().numpy()
        seconds = time.perf_counter() - start
        restored = np.empty_like(logits)
        restored[enc.order] = logits
        return Scored(restored, seconds, self._peak_mem_mb(model))

    def _peak_mem_mb(self, model: torch.nn.Module) -> float:
        """CUDA: peak allocated; CPU: parameter + buffer bytes (activations are small and transient)."""
        if self.device.type == "cuda":
            return torch.cuda.max_memory_allocated(self.device) / 2 ** 20
        return sum(t.numel() * t.element_size() for t in list(model.parameters()) + list(model.buffers())) / 2 ** 20

    def working_model(self, state: Dict[str, torch.Tensor]) -> torch.nn.Module:
        """One model instance reused for every in-memory candidate (no re-instantiation).

        Only tensors that changed since the last load are copied in: a tensor that is the very
        object loaded last time, not modified in place since (torch's version counter), is
        already there. Searches build candidates that share most tensors with the previous one
        (frankenmerge's one-layer tries, a grouped search's unchanged layer groups), so a load
        costs what changed. Weak references: the evaluator keeps no candidate alive. (A write
        that bypasses the version counter, through ``.data`` or a numpy view, goes unseen: give
        such a tensor as a new object.) A ``RowMerged`` state (engine/merge/rows.py) writes only
        its rows of the tensors it restricts: the other rows keep what they held, unread."""
        rows = getattr(state, "rows", None) or {}  # tensors holding only these rows (rows.py)
        if self._model is None:  # built from a copy: later loads must not write into ``state``
            if rows:
                raise ValueError("the working model is first built from a whole state dict; this "
                                 f"one holds only some rows of {', '.join(sorted(rows))}")
            self._model = self.zoo.build_model({k: v.clone() for k, v in state.items()}).to(self.device)
            self._loaded = {}
            changed = state
        else:
            changed = {k: v for k, v in state.items() if not self._same_as_loaded(k, v)}
            targets = self._targets()
            if any(k in targets and k not in rows and targets[k].shape != v.shape
                   for k, v in changed.items()):
                self._loaded = {}
                self._model.load_state_dict(changed, strict=False)  # its size-mismatch error
            with torch.no_grad():  # as load_state_dict(strict=False): keys the model lacks are skipped
                for k, v in changed.items():
                    if k in rows:  # only the rows evaluation reads; the others are not looked at
                        if targets[k].shape[1:] != v.shape[1:] or len(rows[k]) != len(v):
                            raise ValueError(f"'{k}': {tuple(v.shape)} holds no {len(rows[k])} rows of "
                                             f"the model's {tuple(targets[k].shape)}")
                        targets[k].index_copy_(0, rows[k].to(targets[k].device), v.to(targets[k].device))
                    elif k in targets:
                        targets[k].copy_(v)
        self.copied_tensors += len(changed)
        for k, v in changed.items():
            self._loaded[k] = (weakref.ref(v), v._version)
        return self._model

    def _same_as_loaded(self, key: str, tensor: torch.Tensor) -> bool:
        if not self.incremental_load:
            return False
        ref = self._loaded.get(key)
        return ref is not None and ref[0]() is tensor and tensor._version == ref[1]

    def _targets(self) -> Dict[str, torch.Tensor]:
        """The working model's state-dict tensors (sharing its parameters' storage), kept."""
        if self._model_targets is None or self._model_targets[0] is not self._model:
            self._model_targets = (self._model, dict(self._model.state_dict()))
        return self._model_targets[1]

    def _cached(self, key: str, compute, what: str) -> Scored:
        """The cached logits under ``key``, else ``compute()``'s, stored only when all finite
        (``what`` names the model in the error). An unreadable or non-finite entry is a miss."""
        if self.cache is not None:
            blob = self.cache.get(key)
            if blob is not None:
                try:
                    logits, meta = _unpack(blob)
                    if np.isfinite(logits).all():
                        return Scored(logits, meta["seconds"], meta["peak_mem_mb"], cached=True)
                    problem = "holds non-finite logits"
                except (ValueError, KeyError, TypeError, EOFError) as exc:
                    problem = f"is unreadable ({type(exc).__name__})"
                warnings.warn(f"the logits cache entry for {what} {problem}: recomputed", RuntimeWarning)
        scored = compute()
        bad = int((~np.isfinite(scored.logits)).sum())
        if bad:
            raise FloatingPointError(f"{what} gives {bad} NaN/inf logits of {scored.logits.size}: its weights "
                                     f"or inputs are broken (nothing was cached or scored)")
        if self.cache is not None:
            self.cache.set(key, _pack(scored.logits, {"seconds": scored.seconds,
                                                      "peak_mem_mb": scored.peak_mem_mb}))
        return scored

    def _key(self, model_fp: str, locale: str, split: str) -> str:
        precision = "" if self.half is None else f"|{self.half}"  # half logits differ: own entries
        return (f"logits|{model_fp}|{self.encoded(locale, split).fingerprint}|{self.max_length}|"
                f"{self.zoo.tokenizer_fingerprint()}{precision}")

    def source_logits(self, model_locale: str, locale: str, split: str = "test",
                      progress: Optional[ProgressFn] = None) -> Scored:
        enc = self.encoded(locale, split)
        return self._cached(self._key(self.zoo.fingerprint(model_locale), locale, split),
                            lambda: self.forward(self.source_model(model_locale), enc, progress),
                            f"the {model_locale} model ({self.zoo.path(model_locale)}) on {locale}/{split}")

    def has_source_logits(self, model_locale: str, locale: str, split: str = "test") -> bool:
        """Whether a zoo model's logits on a split are in the on-disk cache (no forward pass needed)."""
        if self.cache is None or not self.dataset.has(locale, split):
            return False
        return self._key(self.zoo.fingerprint(model_locale), locale, split) in self.cache

    def source_model(self, model_locale: str) -> torch.nn.Module:
        """The zoo model for a locale; the last one stays loaded (N×N rows reuse it)."""
        if self._source[0] != model_locale:
            self._source = (model_locale, self.zoo.load_model(model_locale).to(self.device))
        return self._source[1]

    def state_logits(self, state: Dict[str, torch.Tensor], locale: str, split: str = "test",
                     progress: Optional[ProgressFn] = None, cache: bool = True) -> Scored:
        enc = self.encoded(locale, split)
        compute = lambda: self.forward(self.working_model(state), enc, progress)  # noqa: E731
        if not cache:
            return compute()
        return self._cached(self._key("state-" + fingerprint_state(state), locale, split), compute,
                            f"the model being scored (merged or loaded weights) on {locale}/{split}")

    # ---- metrics ---------------------------------------------------------------------------
    def score(self, scored: Scored, locale: str, split: str = "test") -> Dict[str, float]:
        labels = self.encoded(locale, split).labels
        metrics = classification_metrics(softmax(scored.logits), labels)
        metrics["latency_ms"] = 1000 * scored.seconds / max(1, len(labels))  # the scoring pass itself:
        metrics["latency_from_cache"] = bool(scored.cached)  # engine/latency.py measures it properly
        metrics["peak_mem_mb"] = scored.peak_mem_mb
        return metrics

    def evaluate_source(self, model_locale: str, locale: str, split: str = "test",
                        progress: Optional[ProgressFn] = None) -> Dict[str, float]:
        return self.score(self.source_logits(model_locale, locale, split, progress), locale, split)

    def evaluate_state(self, state: Dict[str, torch.Tensor], locale: str, split: str = "test",
                       progress: Optional[ProgressFn] = None) -> Dict[str, float]:
        return self.score(self.state_logits(state, locale, split, progress), locale, split)

    def nxn(self, split: str = "test", metric: str = "accuracy", models: Optional[List[str]] = None,
            locales: Optional[List[str]] = None, progress: Optional[ProgressFn] = None) -> pd.DataFrame:
        """Every source model (rows) × every locale's split (columns)."""
        models = models or self.zoo.locales
        locales = locales or [l for l in self.dataset.locales if self.dataset.has(l, split)]
        table = pd.DataFrame(index=pd.Index(models, name="model"), columns=pd.Index(locales, name="locale"),
                             dtype=float)
        cells = [(m, l) for m in models for l in locales]
        started = time.perf_counter()
        for i, (m, l) in enumerate(cells):
            child = sub_progress(progress, i / len(cells), (i + 1) / len(cells), f"{m} on {l}: ", started)
            table.loc[m, l] = self.evaluate_source(m, l, split, child)[metric]
        return table
