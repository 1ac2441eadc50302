"""Label-prior correction on unlabelled target text: shift the class scores so that the predictions
on the target's texts have the right class distribution.

A model fitted where the classes had prior π_s, used where they have prior π_t, should predict
p_t(y|x) ∝ p_s(y|x) · π_t(y) / π_s(y) (Bayes). π_t is unknown without labels; two ways to get it:

* ``em`` (Saerens, Latinne & Decaestecker 2002, "Adjusting the outputs of a classifier to new a
  priori probabilities"): start at π = π_s and alternate the adjusted posteriors and their mean
  until π is their fixed point, i.e. the maximum-likelihood prior for the target's texts.
* ``recenter``: the per-class log shift b that makes the mean adjusted prediction on the target's
  texts equal to π_s (iterative proportional fitting, as Sinkhorn does for one margin). It assumes
  the target's classes are as balanced as the sources' were and removes the class bias the
  language shift put into the model ("calibrate before use", Zhao et al. 2021, for one model).

π_s is taken as uniform (the sources' train splits are balanced in the demo and in MASSIVE; a
prior from the sources' own labels would need source data). The shift is a vector [C] of log
ratios; applied to probabilities p it gives p·exp(b) renormalised, i.e. softmax(logits + b). The
``prior_shift`` fusion fits b on the fused prediction of a rule (soft vote or weighted logits) on
the target's validation texts, labels withheld; ``engine.merge.prior`` bakes the same b into a
merged model's classifier bias.
"""
from __future__ import annotations

from typing import Any, Dict, Optional

import numpy as np

from ..registry import Param
from . import ENSEMBLES, EnsembleError, uniform_if_none
from .fitted import Fitted, base_kwargs

MODES = ("em", "recenter")
RULES = ("soft", "weighted_logits")
PRIOR_FLOOR = 1e-6  # an estimated prior never goes below this (its log shift stays finite)


def _adjusted(probs: np.ndarray, log_shift: np.ndarray) -> np.ndarray:
    """p·exp(b) renormalised per row, in float64."""
    q = probs.astype(np.float64) * np.exp(log_shift - log_shift.max())[None, :]
    return q / np.maximum(q.sum(axis=1, keepdims=True), 1e-300)


def em_prior(probs: np.ndarray, source_prior: Optional[np.ndarray] = None, iterations: int = 100,
             tol: float = 1e-8) -> np.ndarray:
    """The target prior π_t [C] re-estimated from posteriors ``probs`` [N, C] made under
    ``source_prior`` (uniform when None) by Saerens et al.'s EM; returns the last iterate."""
    n, c = probs.shape
    pi_s = np.full(c, 1.0 / c) if source_prior is None else np.asarray(source_prior, np.float64)
    pi = pi_s.copy()
    for _ in range(iterations):
        new = _adjusted(probs, np.log(np.maximum(pi, PRIOR_FLOOR)) - np.log(pi_s)).mean(axis=0)
        new = np.maximum(new, PRIOR_FLOOR)
        new /= new.sum()
        done = np.abs(new - pi).max() < tol
        pi = new
        if done:
            break
    return pi


def recenter_shift(probs: np.ndarray, goal: Optional[np.ndarray] = None, iterations: int = 100,
                   tol: float = 1e-8) -> np.ndarray:
    """The log shift b [C] (mean zero) with mean_n adjusted(p_n, b) = ``goal`` (uniform when None)."""
    n, c = probs.shape
    goal = np.full(c, 1.0 / c) if goal is None else np.asarray(goal, np.float64)
    b = np.zeros(c)
    for _ in range(iterations):
        mean = _adjusted(probs, b).mean(axis=0)
        step = np.log(goal) - np.log(np.maximum(mean, 1e-300))
        b = b + step
        b -= b.mean()
        if np.abs(step).max() < tol:
            break
    return b


def log_shift(probs: np.ndarray, mode: str, iterations: int) -> np.ndarray:
    """The per-class log shift [C] for predictions ``probs`` [N, C] on unlabelled target text."""
    if mode not in MODES:
        raise EnsembleError(f"prior_shift: mode must be one of {MODES}, got {mode!r}")
    probs = np.asarray(probs, dtype=np.float64)
    if probs.ndim != 2 or probs.shape[0] == 0:
        raise EnsembleError(f"prior_shift needs predictions [N > 0, C] on target text, got {probs.shape}")
    if mode == "em":
        c = probs.shape[1]
        return np.log(em_prior(probs, iterations=iterations)) - np.log(np.full(c, 1.0 / c))
    return recenter_shift(probs, iterations=iterations)


def apply_shift(probs: np.ndarray, shift: np.ndarray) -> np.ndarray:
    """Probabilities [N, C] (float32) with the class log shift applied."""
    return _adjusted(probs, np.asarray(shift, dtype=np.float64)).astype(np.float32)


class PriorShift(Fitted):
    """A voting rule's fused prediction with a per-class log shift fitted on target text."""

    kind = "prior_shift"

    def __init__(self, shift: np.ndarray, **kw):
        super().__init__(**kw)
        self.shift = np.asarray(shift, dtype=np.float64).reshape(-1)

    @property
    def model_weights(self) -> np.ndarray:
        return _rule_weights(self.params["rule"], self.prior, self.n_models)

    def _predict(self, x: np.ndarray) -> np.ndarray:
        return apply_shift(_fused(x, self.params["rule"], self.prior), self.shift)

    def _tensors(self) -> Dict[str, np.ndarray]:
        return {"shift": self.shift}

    @classmethod
    def _from(cls, config: Dict[str, Any], tensors: Dict[str, np.ndarray]) -> "PriorShift":
        return cls(tensors["shift"], **base_kwargs(config))


def _rule_weights(rule: str, prior: Optional[np.ndarray], k: int) -> np.ndarray:
    from . import effective_weights  # defined after the package imports its method modules

    m = ENSEMBLES.get(rule)
    return effective_weights(m, uniform_if_none(prior, k), m.defaults())


def _fused(x: np.ndarray, rule: str, prior: Optional[np.ndarray]) -> np.ndarray:
    m = ENSEMBLES.get(rule)
    return m.fn(x, _rule_weights(rule, prior, x.shape[0]), **m.defaults())


@ENSEMBLES.register(
    "prior_shift", needs_fit=True, uses_weights=True, uses_labels=False, data_use="target_text",
    family="prior", title="Prior-shifted vote",
    params=[Param("rule", "choice", "soft", choices=RULES,
                  help="the voting rule whose fused prediction is shifted"),
            Param("mode", "choice", "recenter", choices=MODES,
                  help="em: the target prior re-estimated by EM (Saerens et al. 2002); recenter: "
                       "shift until the mean prediction on target text is uniform"),
            Param("iterations", "int", 100, 0, 100_000,
                  help="EM / recentering iterations (0: no shift, the rule itself)")],
    summary="A voting rule with its class prior corrected on unlabelled target text (EM of "
            "Saerens et al. 2002, or recentering the mean prediction); no labels.")
def fit_prior_shift(x: np.ndarray, labels: None, prior: Optional[np.ndarray], seed: int,
                    rule: str = "soft", mode: str = "recenter", iterations: int = 100) -> PriorShift:
    """The rule's fused prediction on the target's texts [K, N, C] gives the class shift; the
    seed is not needed (deterministic)."""
    if labels is not None:
        raise EnsembleError("prior_shift fits on unlabelled text: it must not be given labels")
    k, n, c = x.shape
    fused = _fused(x, rule, prior)
    shift = log_shift(fused, mode, iterations) if iterations > 0 else np.zeros(c)
    after = apply_shift(fused, shift)
    info = {"n_fit": int(n), "labels_used": False, "shift": shift.tolist(),
            "mean_prediction_before": fused.mean(axis=0).tolist(),
            "mean_prediction_after": after.mean(axis=0).tolist()}
    return PriorShift(shift, method="prior_shift", params=dict(rule=rule, mode=mode, iterations=iterations),
                      prior=prior, n_models=k, n_classes=c, info=info)
