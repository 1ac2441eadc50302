"""Metrics over logits or probabilities: what the seed experiments compare candidates by."""
from __future__ import annotations

from typing import Dict, Sequence

import numpy as np


def softmax(logits: np.ndarray, axis: int = -1) -> np.ndarray:
    z = logits - logits.max(axis=axis, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=axis, keepdims=True)


def macro_f1(pred: np.ndarray, labels: np.ndarray, n_classes: int) -> float:
    """Unweighted mean F1 over the classes that occur in labels or predictions."""
    scores = []
    for c in range(n_classes):
        tp = np.sum((pred == c) & (labels == c))
        fp = np.sum((pred == c) & (labels != c))
        fn = np.sum((pred != c) & (labels == c))
        if tp + fp + fn == 0:
            continue
        scores.append(2 * tp / (2 * tp + fp + fn))
    return float(np.mean(scores)) if scores else 0.0


def expected_calibration_error(probs: np.ndarray, labels: np.ndarray, bins: int = 10) -> float:
    conf = probs.max(axis=1)
    correct = probs.argmax(axis=1) == labels
    edges = np.linspace(0.0, 1.0, bins + 1)
    ece = 0.0
    for lo, hi in zip(edges[:-1], edges[1:]):
        mask = (conf > lo) & (conf <= hi)
        if mask.any():
            ece += mask.mean() * abs(correct[mask].mean() - conf[mask].mean())
    return float(ece)


def classification_metrics(probs: np.ndarray, labels: Sequence[int]) -> Dict[str, float]:
    """Accuracy, macro-F1, top-2, mean confidence, entropy, ECE and NLL of class probabilities."""
    probs = np.asarray(probs, dtype=np.float64)
    labels = np.asarray(labels, dtype=np.int64)
    if probs.ndim != 2 or len(probs) != len(labels):
        raise ValueError(f"probabilities {probs.shape} do not match {len(labels)} labels")
    if len(labels) == 0:
        raise ValueError("no examples to score")
    pred = probs.argmax(axis=1)
    top2 = np.argsort(-probs, axis=1)[:, :2]
    clipped = np.clip(probs, 1e-12, 1.0)
    return {
        "accuracy": float(np.mean(pred == labels)),
        "macro_f1": macro_f1(pred, labels, probs.shape[1]),
        "top2_accuracy": float(np.mean((top2 == labels[:, None]).any(axis=1))),
        "mean_confidence": float(probs.max(axis=1).mean()),
        "entropy": float(-(clipped * np.log(clipped)).sum(axis=1).mean()),
        "ece": expected_calibration_error(probs, labels),
        "nll": float(-np.log(clipped[np.arange(len(labels)), labels]).mean()),
        "n": int(len(labels)),
    }
