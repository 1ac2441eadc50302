"""Entropy-minimised ensemble weights, fitted at test time on unlabelled target text.

As EMEA does for language adapters (Wang et al., EMNLP Findings 2021): the per-model weights
w = softmax(a) start from the given (URIEL) weights and take a few Adam steps down the mean
entropy of the fused prediction on the target's texts, then are applied. The ensemble trusts the
models that agree and are confident on the target language, without a single label: the fit
function is handed ``labels=None`` (the method declares ``uses_labels=False``) and refuses any.
"""
from __future__ import annotations

from typing import Any, Dict, Optional

import numpy as np
import torch

from ..registry import Param
from . import ENSEMBLES, EnsembleError, softmax, uniform_if_none, voting, weighted_sum
from .calibration import PROB_FLOOR
from .fitted import Fitted, base_kwargs

PRIOR_FLOOR = 1e-4  # a zero prior weight starts at log(1e-4), so the steps can still raise it


def _fused_log_probs(scores: torch.Tensor, per_model: torch.Tensor, space: str) -> torch.Tensor:
    """log of the fused distribution [N, C] for log-weights ``scores`` [K]."""
    fused = torch.einsum("k,knc->nc", torch.softmax(scores, 0), per_model)
    if space == "logits":
        return torch.log_softmax(fused, dim=-1)
    return torch.log(fused.clamp_min(PROB_FLOOR))


def mean_entropy(log_probs: torch.Tensor) -> torch.Tensor:
    """Mean over examples of H(p) = -sum_c p_c log p_c, in nats."""
    return -(log_probs.exp() * log_probs).sum(dim=-1).mean()


class EntropyWeights(Fitted):
    """Per-model weights w = softmax(scores) fitted by entropy minimisation; fuses like
    ``weighted_logits`` (space "logits") or ``soft`` (space "probabilities") with them."""

    kind = "entropy_min"

    def __init__(self, scores: np.ndarray, **kw):
        super().__init__(**kw)
        self.scores = np.asarray(scores, dtype=np.float64).reshape(-1)

    @property
    def model_weights(self) -> np.ndarray:
        e = np.exp(self.scores - self.scores.max())
        return e / e.sum()

    def _predict(self, x: np.ndarray) -> np.ndarray:
        if self.params["space"] == "logits":
            return softmax(weighted_sum(self.model_weights, x))
        return voting.soft(x, self.model_weights)

    def _tensors(self) -> Dict[str, np.ndarray]:
        return {"scores": self.scores}

    @classmethod
    def _from(cls, config: Dict[str, Any], tensors: Dict[str, np.ndarray]) -> "EntropyWeights":
        return cls(tensors["scores"], **base_kwargs(config))


@ENSEMBLES.register(
    "entropy_min", needs_fit=True, uses_weights=True, uses_labels=False, data_use="target_text",
    family="learned",
    params=[Param("steps", "int", 10, 1, 10000,
                  help="Adam steps on the mean prediction entropy (few: the minimum itself puts "
                       "all weight on the most confident model)"),
            Param("learning_rate", "float", 0.1, 0.0, 10.0, low_open=True,
                  help="Adam step size on the log-weights"),
            Param("space", "choice", "logits", choices=("logits", "probabilities"),
                  help="fuse softmax of weighted logits, or a weighted mixture of probabilities")],
    summary="Weights fitted at test time by minimising prediction entropy on unlabelled target "
            "text (EMEA); no labels.")
def fit_entropy_min(x: np.ndarray, labels: None, prior: Optional[np.ndarray], seed: int,
                    steps: int, learning_rate: float, space: str) -> EntropyWeights:
    """Full-batch Adam from the prior (uniform when none); keeps the lowest-entropy step, so the
    fused entropy never ends above where it started. Deterministic: the seed is not needed."""
    if labels is not None:
        raise EnsembleError("entropy_min fits on unlabelled text: it must not be given labels")
    k, n, c = x.shape
    start = np.log(np.maximum(uniform_if_none(prior, k), PRIOR_FLOOR))
    scores = torch.tensor(start, dtype=torch.float64, requires_grad=True)
    per_model = torch.from_numpy(x if space == "logits" else softmax(x)).double()
    adam = torch.optim.Adam([scores], lr=learning_rate)
    with torch.no_grad():
        first = best = mean_entropy(_fused_log_probs(scores, per_model, space)).item()
    best_scores, best_step = scores.detach().clone(), 0
    for step in range(1, steps + 1):
        adam.zero_grad()
        loss = mean_entropy(_fused_log_probs(scores, per_model, space))
        loss.backward()
        adam.step()
        with torch.no_grad():
            now = mean_entropy(_fused_log_probs(scores, per_model, space)).item()
        if now < best:
            best, best_step, best_scores = now, step, scores.detach().clone()
    info = {"entropy_start": first, "entropy_end": best, "best_step": best_step, "steps": steps,
            "n_fit": int(n), "labels_used": False}
    params = dict(steps=steps, learning_rate=learning_rate, space=space)
    return EntropyWeights(best_scores.numpy().copy(), method="entropy_min", params=params,
                          prior=prior, n_models=k, n_classes=c, info=info)
