"""Temperature calibration: one temperature T fitted on validation NLL, on top of any rule or
fitted fusion. p' = softmax(log p / T) keeps every argmax and only fixes over/under-confidence."""
from __future__ import annotations

import math
from typing import Any, Dict, Optional, Tuple

import numpy as np

from . import ENSEMBLES, softmax, uniform_if_none
from .fitted import Fitted, base_kwargs, from_config

PROB_FLOOR = 1e-12  # calibration works on log(fused probability); vote shares can be 0
T_RANGE = (1e-2, 1e2)


def _log_scores(probs: np.ndarray) -> np.ndarray:
    return np.log(np.maximum(probs.astype(np.float64), PROB_FLOOR))


def _nll_at(scores: np.ndarray, y: np.ndarray, beta: float) -> float:
    z = beta * scores
    top = z.max(axis=1)
    lse = top + np.log(np.exp(z - top[:, None]).sum(axis=1))
    return float(np.mean(lse - z[np.arange(len(y)), y]))


def fit_temperature(probs: np.ndarray, y: np.ndarray) -> Tuple[float, float, float]:
    """(T, NLL at T=1, NLL at T) for p' = softmax(log p / T), T in [0.01, 100].

    NLL is convex in 1/T, so a golden-section search over log(1/T) finds the minimum with no
    learning rate to tune, deterministically.
    """
    scores = _log_scores(probs)
    f = lambda log_beta: _nll_at(scores, y, math.exp(log_beta))  # noqa: E731
    lo, hi = math.log(1 / T_RANGE[1]), math.log(1 / T_RANGE[0])
    g = (math.sqrt(5) - 1) / 2
    a, b = hi - g * (hi - lo), lo + g * (hi - lo)
    fa, fb = f(a), f(b)
    for _ in range(60):
        if fa < fb:
            hi, b, fb = b, a, fa
            a = hi - g * (hi - lo)
            fa = f(a)
        else:
            lo, a, fa = a, b, fb
            b = lo + g * (hi - lo)
            fb = f(b)
    log_beta = (lo + hi) / 2
    before, after = f(0.0), f(log_beta)
    if before <= after:
        log_beta, after = 0.0, before
    return math.exp(-log_beta), before, after


def apply_temperature(probs: np.ndarray, temperature: float) -> np.ndarray:
    return softmax(_log_scores(probs) / temperature).astype(np.float32)


class Calibrated(Fitted):
    """A voting rule (``inner`` None) or a fitted fusion, followed by one fitted temperature.

    ``method`` and ``params`` are those of the rule / inner fusion, so ``combine(method, ...,
    fitted=calibrated)`` reads like the uncalibrated call.
    """

    kind = "calibrated"

    def __init__(self, temperature: float, inner: Optional[Fitted] = None, **kw):
        super().__init__(**kw)
        self.temperature = float(temperature)
        self.inner = inner

    @property
    def model_weights(self) -> np.ndarray:
        if self.inner is not None:
            return self.inner.model_weights
        from . import effective_weights

        return effective_weights(ENSEMBLES.get(self.method),
                                 uniform_if_none(self.prior, self.n_models), self.params)

    def uncalibrated(self, x: np.ndarray) -> np.ndarray:
        if self.inner is not None:
            return self.inner._predict(x)
        rule = ENSEMBLES.get(self.method).fn
        return rule(x, uniform_if_none(self.prior, x.shape[0]), **self.params)

    def _predict(self, x: np.ndarray) -> np.ndarray:
        return apply_temperature(self.uncalibrated(x), self.temperature)

    def _extra(self) -> Dict[str, Any]:
        return {"temperature": self.temperature,
                "inner": None if self.inner is None else self.inner.to_config()}

    def _tensors(self) -> Dict[str, np.ndarray]:
        if self.inner is None:
            return {"temperature": np.array([self.temperature])}
        return {f"inner.{k}": v for k, v in self.inner._tensors().items()}

    @classmethod
    def _from(cls, config, tensors):
        inner = None
        if config.get("inner") is not None:
            inner_tensors = {k[len("inner."):]: v for k, v in tensors.items()
                             if k.startswith("inner.")}
            inner = from_config(config["inner"], inner_tensors)
        return cls(config["temperature"], inner, **base_kwargs(config))


def _calibrated(base: Fitted, probs: np.ndarray, y: np.ndarray,
                inner: Optional[Fitted]) -> Calibrated:
    t, before, after = fit_temperature(probs, y)
    info = {"nll_before": before, "nll_after": after, "n_calibration": int(len(y))}
    return Calibrated(t, inner, method=base.method, params=base.params, prior=base.prior,
                      n_models=base.n_models, n_classes=base.n_classes, info=info)


def calibrate(fitted: Fitted, x: np.ndarray, y: np.ndarray) -> Calibrated:
    """Temperature on top of a fitted fusion, fitted on its holdout (the examples it did not
    train on) or, when it had none, on all of the validation data."""
    idx = fitted.holdout_index if fitted.holdout_index is not None else np.arange(len(y))
    return _calibrated(fitted, fitted._predict(x[:, idx]), y[idx], fitted)


def calibrate_rule(name: str, params: Dict[str, Any], prior: Optional[np.ndarray], x: np.ndarray,
                   y: np.ndarray) -> Calibrated:
    """Temperature on top of a voting rule, fitted on all of the validation data."""
    probs = ENSEMBLES.get(name).fn(x, uniform_if_none(prior, x.shape[0]), **params)
    shell = Calibrated(1.0, None, method=name, params=params, prior=prior,
                       n_models=x.shape[0], n_classes=x.shape[2])
    return _calibrated(shell, probs, y, None)
