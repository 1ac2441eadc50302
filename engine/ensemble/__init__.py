"""Ensembles: fuse per-model logits (cached elsewhere) into one prediction, in output space.

Everything here works on an array ``logits`` of shape [K models, N examples, C classes] (or a
list of K arrays [N, C]) and returns fused probabilities [N, C]. Optional per-model ``weights``
(e.g. URIEL similarity) are normalised here; every bad input raises :class:`EnsembleError` (a
ValueError). A method is one ``ENSEMBLES.register`` call, and its kind is one trait:

* a **rule** (``needs_fit=False``, :mod:`.voting`) registers its kernel
  ``fn(logits [K, N, C] float32, weights [K] summing to 1, **params) -> probabilities [N, C]``;
* a **fusion** (``needs_fit=True``, :mod:`.learned`, :mod:`.entropy`, :mod:`.prior`) registers its fit function
  ``fn(logits, labels [N] int64 or None, prior [K] or None, *, seed, **params) -> Fitted``;
  labels are None for a fusion declared ``uses_labels=False`` (it is never handed them).

:func:`combine` and :func:`fit` dispatch on those traits and enforce ``min_sources`` /
``max_sources`` for every method; :func:`effective_weights` reads the ``effective_weights`` hook.
Fitted fusions (and temperature calibration, :mod:`.calibration`) save and load without pickle
(:mod:`.fitted`); :mod:`.checks` is the conformance suite every registered method passes.

Entry points::

    combine(method, logits, weights=None, params=None, fitted=None) -> probabilities [N, C]
    fit(method, val_logits, val_labels, weights=None, params=None, seed=0, calibrate=False)
        -> Fitted
    load_fitted(path) -> Fitted
"""
from __future__ import annotations

from typing import Any, Dict, Optional, Sequence, Union

import numpy as np

from ..registry import Method, Registry

ENSEMBLES = Registry("ensemble")

ArrayLike = Union[np.ndarray, Sequence[np.ndarray]]


class EnsembleError(ValueError):
    """Bad input to an ensemble: shapes, weights, labels, parameters or a fitted file."""


# ---------------------------------------------------------------------------------------------
# Input checks shared by the rules and the learned fusions.

def check_logits(logits: ArrayLike, name: str = "logits") -> np.ndarray:
    """Returns logits as a float32 [K, N, C] array, or raises EnsembleError naming the bad model.

    Accepts one [K, N, C] array or a list of K per-model [N, C] arrays (all the same shape).
    """
    if isinstance(logits, (list, tuple)):
        if len(logits) == 0:
            raise EnsembleError(f"{name}: no models given (empty list)")
        parts = []
        for k, part in enumerate(logits):
            arr = _numeric(part, f"{name}: model {k}")
            if arr.ndim != 2:
                raise EnsembleError(f"{name}: model {k} has shape {arr.shape}; expected "
                                    f"[N examples, C classes]")
            if parts and arr.shape != parts[0].shape:
                raise EnsembleError(
                    f"{name}: model {k} has shape {arr.shape} but model 0 has {parts[0].shape}; "
                    f"every model must score the same N examples over the same C classes")
            parts.append(arr)
        array = np.stack(parts)
    else:
        array = _numeric(logits, name)
        if array.ndim != 3:
            raise EnsembleError(f"{name} has shape {array.shape}; expected [K models, N examples, "
                                f"C classes] or a list of per-model [N, C] arrays")
    k, n, c = array.shape
    if k == 0 or n == 0 or c == 0:
        raise EnsembleError(f"{name} is empty: shape {array.shape} "
                            f"(K models, N examples, C classes)")
    if c < 2:
        raise EnsembleError(f"{name} has {c} class; a classifier needs at least 2")
    finite = np.isfinite(array)
    if not finite.all():
        bad_k, bad_n, bad_c = np.argwhere(~finite)[0]
        raise EnsembleError(f"{name}: model {bad_k} has a non-finite logit "
                            f"({array[bad_k, bad_n, bad_c]}) at example {bad_n}, class {bad_c}")
    return array


def _numeric(value: Any, label: str) -> np.ndarray:
    try:
        return np.asarray(value, dtype=np.float32)
    except (TypeError, ValueError):
        raise EnsembleError(f"{label} is not a numeric array") from None


def check_weights(weights: Optional[Sequence[float]], n_models: int) -> Optional[np.ndarray]:
    """Per-model weights normalised to sum 1 (float64), None kept as None; errors say why."""
    if weights is None:
        return None
    try:
        w = np.asarray(weights, dtype=np.float64)
    except (TypeError, ValueError):
        raise EnsembleError(f"weights must be numbers, got {weights!r}") from None
    if w.ndim != 1 or w.shape[0] != n_models:
        raise EnsembleError(f"weights has shape {w.shape} but there are {n_models} models; "
                            f"give one weight per model")
    if not np.isfinite(w).all():
        raise EnsembleError(f"weights must be finite; model {int(np.argmax(~np.isfinite(w)))} "
                            f"has {w[~np.isfinite(w)][0]}")
    if (w < 0).any():
        raise EnsembleError(f"weights must be non-negative; model {int(np.argmax(w < 0))} "
                            f"has {w[w < 0][0]}")
    total = w.sum()
    if total <= 0:
        raise EnsembleError("weights are all zero: at least one model must have a positive weight")
    return w / total


def uniform_if_none(weights: Optional[np.ndarray], n_models: int) -> np.ndarray:
    return np.full(n_models, 1.0 / n_models) if weights is None else weights


def check_labels(labels: Any, n_examples: int, n_classes: int) -> np.ndarray:
    """Labels as int64 [N] in [0, C), or EnsembleError naming the first bad one."""
    try:
        y = np.asarray(labels)
    except (TypeError, ValueError):
        raise EnsembleError("labels must be an array of class ids") from None
    if y.ndim != 1 or y.shape[0] != n_examples:
        raise EnsembleError(f"labels has shape {y.shape} but the logits score "
                            f"{n_examples} examples")
    if y.dtype.kind == "f" and np.isfinite(y).all() and (y == np.round(y)).all():
        y = y.astype(np.int64)
    if y.dtype.kind not in "iu":
        raise EnsembleError(f"labels must be integer class ids, got dtype {y.dtype}")
    bad = (y < 0) | (y >= n_classes)
    if bad.any():
        i = int(np.argmax(bad))
        raise EnsembleError(f"label {int(y[i])} at example {i} is outside [0, {n_classes})")
    return y.astype(np.int64)


# ---------------------------------------------------------------------------------------------
# Numerics shared by rules and fusions (float32, vectorised over K, N, C).

def softmax(z: np.ndarray) -> np.ndarray:
    out = z - z.max(axis=-1, keepdims=True)
    np.exp(out, out=out)
    out /= out.sum(axis=-1, keepdims=True)
    return out


def log_softmax(z: np.ndarray) -> np.ndarray:
    shifted = z - z.max(axis=-1, keepdims=True)
    return shifted - np.log(np.exp(shifted).sum(axis=-1, keepdims=True))


def weighted_sum(weights: np.ndarray, per_model: np.ndarray) -> np.ndarray:
    """sum_k w_k x_k over the model axis: [K] x [K, N, C] -> [N, C] (one BLAS call)."""
    return np.tensordot(weights.astype(per_model.dtype), per_model, axes=(0, 0))


# ---------------------------------------------------------------------------------------------
# The methods register themselves on import.

from . import voting  # noqa: E402  (registers the voting rules)
from .fitted import Fitted, load_fitted  # noqa: E402
from .learned import FusionMLP, LearnedWeights  # noqa: E402  (registers the learned fusions)
from .entropy import EntropyWeights  # noqa: E402  (registers entropy_min)
from .prior import PriorShift  # noqa: E402  (registers prior_shift)
from . import calibration  # noqa: E402
from .calibration import Calibrated  # noqa: E402


def get_method(name: str) -> Method:
    """The registered method, or EnsembleError listing the known ones."""
    try:
        return ENSEMBLES.get(name)
    except KeyError as e:
        raise EnsembleError(e.args[0]) from None


def resolve(m: Method, params: Optional[Dict[str, Any]]) -> Dict[str, Any]:
    try:
        return m.resolve(params)
    except ValueError as e:
        raise EnsembleError(str(e)) from None


def check_sources(m: Method, n_models: int) -> None:
    """The number of models within the method's declared [min_sources, max_sources]."""
    low, high = m.traits.min_sources, m.traits.max_sources
    if low <= n_models and (high is None or n_models <= high):
        return
    if low == high:
        need = f"exactly {low} models"
    elif high is None:
        need = f"at least {low} models"
    else:
        need = f"{low} to {high} models"
    raise EnsembleError(f"'{m.name}' combines {need}, got {n_models}; choose that many sources")


def effective_weights(m: Method, weights: np.ndarray, params: Dict[str, Any]) -> np.ndarray:
    """The per-model weights a rule actually applies: its ``effective_weights`` hook when it has
    one, else the given (normalised) weights if it ``uses_weights``, else uniform."""
    if m.hooks.effective_weights is not None:
        return np.asarray(m.hooks.effective_weights(weights, params), dtype=np.float64)
    if m.traits.uses_weights:
        return weights
    return np.full(weights.shape[0], 1.0 / weights.shape[0])


def combine(method: str, logits: ArrayLike, weights: Optional[Sequence[float]] = None,
            params: Optional[Dict[str, Any]] = None, fitted: Optional[Fitted] = None) -> np.ndarray:
    """Fused probabilities [N, C] (float32, rows sum to 1) from per-model logits.

    A fusion (trait ``needs_fit``) needs ``fitted`` from :func:`fit`; a rule takes it only when it
    was calibrated (``fit(rule, ..., calibrate=True)``). A fitted fusion carries its own weights
    and parameters: ``weights``/``params`` given beside it must match those it was fitted with
    (None is always fine), so a test set is scored exactly as validation was.
    """
    m = get_method(method)
    x = check_logits(logits)
    check_sources(m, x.shape[0])
    w = check_weights(weights, x.shape[0])
    if fitted is not None:
        if not isinstance(fitted, Fitted):
            raise EnsembleError(f"fitted must come from fit() or load_fitted(), "
                                f"got {type(fitted).__name__}")
        if fitted.method != m.name:
            raise EnsembleError(f"fitted fusion is for '{fitted.method}', not '{m.name}'")
        if params is not None and resolve(m, params) != fitted.params:
            raise EnsembleError(f"'{m.name}' was fitted with params {fitted.params}, got "
                                f"{resolve(m, params)}; refit or pass params=None")
        if w is not None and (fitted.prior is None or not np.allclose(w, fitted.prior, atol=1e-9)):
            raise EnsembleError(f"'{m.name}' was fitted with weights {fitted.prior}, "
                                f"got {w.tolist()}; refit or pass weights=None")
        return fitted.predict(x)
    if m.traits.needs_fit:
        data = "val_labels" if m.traits.uses_labels else "None (it reads no labels)"
        raise EnsembleError(f"'{m.name}' is a learned fusion: call fit('{m.name}', val_logits, "
                            f"{data}) and pass the result as fitted=")
    return m.fn(x, uniform_if_none(w, x.shape[0]), **resolve(m, params))


def fit(method: str, val_logits: ArrayLike, val_labels: Any,
        weights: Optional[Sequence[float]] = None, params: Optional[Dict[str, Any]] = None,
        seed: int = 0, calibrate: bool = False) -> Fitted:
    """Fits a learned fusion (and/or a temperature on top of any rule) on a validation split.

    For a fusion ``weights`` are a prior (the starting point of learned weights); for a rule they
    are the rule's weights. A fusion declared ``uses_labels=False`` takes ``val_labels=None`` and
    refuses labels, so it provably fits on unlabelled text. ``calibrate=True`` adds a single
    temperature fitted on validation NLL (on the held-out part when the fusion itself was trained
    on the rest); it needs labels. Deterministic for a given seed.
    """
    m = get_method(method)
    x = check_logits(val_logits, "val_logits")
    check_sources(m, x.shape[0])
    fusion_reads_labels = m.traits.needs_fit and m.traits.uses_labels
    if val_labels is None:
        if fusion_reads_labels or calibrate or not m.traits.needs_fit:
            raise EnsembleError(f"fit('{m.name}') needs val_labels: "
                                + ("calibration fits a temperature on labelled data" if calibrate
                                   or not m.traits.needs_fit else "this fusion is fitted on labels"))
        y = None
    else:
        if m.traits.needs_fit and not m.traits.uses_labels and not calibrate:
            raise EnsembleError(f"'{m.name}' fits on unlabelled text and reads no labels: pass "
                                f"val_labels=None")
        y = check_labels(val_labels, x.shape[1], x.shape[2])
    w = check_weights(weights, x.shape[0])
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
        raise EnsembleError(f"seed must be a non-negative integer, got {seed!r}")
    p = resolve(m, params)
    if m.traits.needs_fit:
        fitted = m.fn(x, y if fusion_reads_labels else None, w, seed=int(seed), **p)
        return calibration.calibrate(fitted, x, y) if calibrate else fitted
    if not calibrate:
        raise EnsembleError(f"'{m.name}' is a voting rule with nothing to fit: use combine() "
                            f"directly, or fit(..., calibrate=True) to fit a temperature on top")
    return calibration.calibrate_rule(m.name, p, w, x, y)


__all__ = ["ENSEMBLES", "EnsembleError", "Fitted", "LearnedWeights", "FusionMLP", "Calibrated",
           "EntropyWeights", "PriorShift", "combine", "fit", "load_fitted", "get_method", "check_logits",
           "check_weights", "check_labels", "check_sources", "effective_weights"]
