"""Latency per example, measured one way for every model: merges, ensemble members and sources.

A forward pass over a whole split is a bad clock: the first one in a process pays for lazy
initialisation (79 ms/example for one merge, 4.9 ms for the next of the same architecture), and a
number read back from the logits cache was measured whenever and wherever that cache was filled.
So latency is its own measurement: a fixed sample of the split (``SAMPLE`` examples spread over
its length order), one warm-up batch, then ``REPEATS`` timed passes over the sample in batches of
``BATCH``; the median, in ms per example. Ensembles add their members' latencies and the fusion
time (their members run one after another). A zoo model's measurement is kept in the logits cache
under the model's content, the sample, and this machine (host, device, threads), as JSON bytes,
so another machine's number is never reused; ``measured_at`` says when it was taken.
"""
from __future__ import annotations

import json
import platform
import statistics
import time
from typing import Dict, Optional

import numpy as np
import torch

SAMPLE = 16
BATCH = 16
REPEATS = 3


def machine_key(device: torch.device) -> str:
    """What a latency depends on besides the model: host, device (and GPU name), CPU threads."""
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor() or "cpu"
    return f"{platform.node()}|{device}|{name}|{torch.get_num_threads()}"


def describe(m: Dict[str, object]) -> str:
    """The method in words, for result cards and reports."""
    if not m.get("latency_repeats"):
        return ""
    text = (f"median of {m['latency_repeats']} warm runs, batch {m['latency_batch']}, "
            f"{m['latency_sample']} examples")
    if m.get("latency_members"):
        text = f"sum of {m['latency_members']} members' latencies ({text} each) + fusion"
    return text


def sample_batches(evaluator, locale: str, split: str, sample: int = SAMPLE, batch: int = BATCH):
    """The fixed sample as padded batches: every k-th example of the split in length order."""
    enc = evaluator.encoded(locale, split)
    n = min(sample, len(enc))
    positions = np.unique(np.linspace(0, len(enc) - 1, n).round().astype(int))
    ids = [enc.input_ids[i] for i in positions]
    pad = evaluator.tokenizer.pad_token_id or 0
    batches = []
    for lo in range(0, len(ids), batch):
        padded = torch.nn.utils.rnn.pad_sequence(ids[lo:lo + batch], batch_first=True, padding_value=pad)
        batches.append((padded.to(evaluator.device), (padded != pad).long().to(evaluator.device)))
    return batches, len(ids)


def measure_model(evaluator, model: torch.nn.Module, locale: str, split: str = "test",
                  sample: int = SAMPLE, batch: int = BATCH, repeats: int = REPEATS) -> Dict[str, object]:
    """Warm, repeated, median latency of one model on the split's fixed sample (ms per example)."""
    batches, n = sample_batches(evaluator, locale, split, sample, batch)
    model = model.to(evaluator.device).eval()
    sync = (lambda: torch.cuda.synchronize(evaluator.device)) if evaluator.device.type == "cuda" else (lambda: None)
    times = []
    with torch.inference_mode():
        model(input_ids=batches[0][0], attention_mask=batches[0][1])  # warm-up batch
        sync()
        for _ in range(repeats):
            start = time.perf_counter()
            for ids, mask in batches:
                model(input_ids=ids, attention_mask=mask)
            sync()
            times.append(time.perf_counter() - start)
    return {"latency_ms": 1000 * statistics.median(times) / n, "latency_batch": min(batch, n),
            "latency_sample": n, "latency_repeats": repeats, "latency_device": str(evaluator.device),
            "latency_measured_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}


def _source_key(evaluator, model_locale: str, locale: str, split: str) -> str:
    enc = evaluator.encoded(locale, split)
    return (f"latency|{evaluator.zoo.fingerprint(model_locale)}|{enc.fingerprint}|{SAMPLE}|{BATCH}|"
            f"{REPEATS}|{machine_key(evaluator.device)}")


def has_source_latency(evaluator, model_locale: str, locale: str, split: str = "test") -> bool:
    return evaluator.cache is not None and _source_key(evaluator, model_locale, locale, split) in evaluator.cache


def source_latency(evaluator, model_locale: str, locale: str, split: str = "test") -> Dict[str, object]:
    """A zoo model's latency on the split's sample: measured once per machine, then read back."""
    key = _source_key(evaluator, model_locale, locale, split)
    cache = evaluator.cache
    if cache is not None:
        blob = cache.get(key)
        if isinstance(blob, bytes):
            try:
                return {**json.loads(blob.decode()), "latency_cached": True}
            except ValueError:
                pass  # a damaged entry is measured again
    out = measure_model(evaluator, evaluator.source_model(model_locale), locale, split)
    if cache is not None:
        cache.set(key, json.dumps(out).encode())
    return {**out, "latency_cached": False}


def ensemble_latency(evaluator, members, locale: str, split: str, fuse_s: float,
                     n_examples: int) -> Dict[str, object]:
    """Members run one after another: the sum of their latencies, plus the fusion per example."""
    parts = [source_latency(evaluator, m, locale, split) for m in members]
    fuse_ms = 1000 * fuse_s / max(1, n_examples)
    first = parts[0]
    return {"latency_ms": sum(p["latency_ms"] for p in parts) + fuse_ms,
            "latency_members_ms": {m: p["latency_ms"] for m, p in zip(members, parts)},
            "latency_fuse_ms": fuse_ms, "latency_members": len(parts),
            **{k: first[k] for k in ("latency_batch", "latency_sample", "latency_repeats", "latency_device")},
            "latency_measured_at": max(p["latency_measured_at"] for p in parts)}

