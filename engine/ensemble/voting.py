"""Voting rules: fixed functions from per-model logits [K, N, C] to fused probabilities [N, C].

The rule kind's one convention (``needs_fit=False``, see engine/ensemble/__init__.py): each rule
receives validated float32 logits (their count already within its min/max_sources) and weights
normalised to sum 1 (uniform when the caller gave none), and every declared parameter resolved
from its ``Param`` (so kernels carry no defaults of their own). Rules unweighted by definition declare
``uses_weights=False``; a rule applying weights of its own declares an ``effective_weights`` hook.
``family`` says how the models are pooled: "vote" (argmax votes) or "pool" (probabilities or
logits averaged). Everything is vectorised over models, examples and classes.
"""
from __future__ import annotations

import numpy as np

from ..registry import Param
from . import ENSEMBLES, log_softmax, softmax, weighted_sum

# Majority ties: vote totals (or summed probabilities) within TIE_TOL count as equal, so a
# weighted vote of 0.2 + 0.3 ties with 0.5 despite float rounding. The winner is then marked by
# mixing in NUDGE of a one-hot, so argmax of the returned shares always names it.
TIE_TOL = 1e-6
NUDGE = 1e-5


def _votes(logits: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """[N, C] vote share: each model puts its weight on its argmax class (its own ties: lowest
    class id)."""
    k, n, c = logits.shape
    picks = logits.argmax(axis=-1)                       # [K, N]
    cells = (np.arange(n) * c + picks).ravel()           # flat index of (example, picked class)
    shares = np.bincount(cells, weights=np.repeat(weights, n), minlength=n * c)
    return shares.reshape(n, c)


def _vote_with_tiebreak(logits: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """Vote shares whose argmax is the deterministic winner.

    Winner: the class with the most (weighted) votes; among tied classes the one with the largest
    (weighted) summed probability over models; if that ties too, the lowest class id.
    """
    votes = _votes(logits, weights)
    tied = votes >= votes.max(axis=1, keepdims=True) - TIE_TOL
    winner = tied.argmax(axis=1)                         # first True = lowest class id
    rows = np.flatnonzero(tied.sum(axis=1) > 1)          # only these need the probabilities
    if rows.size:
        soft = weighted_sum(weights, softmax(logits[:, rows])).astype(np.float64)
        score = np.where(tied[rows], soft, -1.0)
        winner[rows] = (score >= score.max(axis=1, keepdims=True) - TIE_TOL).argmax(axis=1)
    out = votes * (1.0 - NUDGE)
    out[np.arange(out.shape[0]), winner] += NUDGE
    return out.astype(np.float32)


@ENSEMBLES.register("majority", params=[], uses_weights=False, needs_fit=False, family="vote",
                    summary="One vote per model for its top class; probabilities are vote shares.")
def majority(logits: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """Plain majority vote (weights ignored). Ties: summed probability, then lowest class id.

    The returned row is the vote share per class with 1e-5 of a one-hot on the tie-broken winner
    mixed in (so argmax names the winner); a class no model picked gets probability 0.
    """
    return _vote_with_tiebreak(logits, np.full(logits.shape[0], 1.0 / logits.shape[0]))


@ENSEMBLES.register("weighted_majority", params=[], uses_weights=True, needs_fit=False,
                    family="vote",
                    summary="Each model's vote counts its weight; ties as in majority (weighted).")
def weighted_majority(logits: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """Majority where model k's vote counts w_k; the summed-probability tie-break is weighted
    too."""
    return _vote_with_tiebreak(logits, weights)


@ENSEMBLES.register("soft", params=[], family="pool", uses_weights=True, needs_fit=False,
                    summary="Weighted mean of the models' probabilities.")
def soft(logits: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """sum_k w_k softmax(z_k): a mixture, so one confident wrong model is outvoted, not vetoing."""
    return weighted_sum(weights, softmax(logits))


@ENSEMBLES.register("weighted_logits", params=[], family="pool", uses_weights=True, needs_fit=False,
                    summary="Softmax of the weighted mean of logits (MergingUriel's uriel_logits).")
def weighted_logits(logits: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """softmax(sum_k w_k z_k). With normalised weights this equals the renormalised weighted
    geometric mean of probabilities (each model's log-normaliser is a per-example constant)."""
    return softmax(weighted_sum(weights, logits))


@ENSEMBLES.register(
    "geometric_mean", uses_weights=True, needs_fit=False, family="pool",
    params=[Param("eps", "float", 1e-8, 0.0, 0.1,
                  help="probability floor before the log: bounds how hard one model can veto a "
                       "class; 0 gives exactly weighted_logits")],
    summary="Renormalised weighted geometric mean of probabilities, computed in log space.")
def geometric_mean(logits: np.ndarray, weights: np.ndarray, eps: float) -> np.ndarray:
    """softmax(sum_k w_k log(p_k + eps)). The floor is what distinguishes it from weighted_logits:
    a model assigning ~0 to a class pulls it down by at most w_k log(eps), not without bound."""
    if eps == 0:
        logs = log_softmax(logits)
    else:
        logs = np.log(softmax(logits) + np.float32(eps))
    return softmax(weighted_sum(weights, logs))


@ENSEMBLES.register("max", params=[], family="pool", uses_weights=False, needs_fit=False,
                    summary="Per class, the largest probability any model gives; renormalised.")
def max_rule(logits: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """max_k p_k(c) / sum_c' max_k p_k(c'): follows whichever model is most confident (weights
    ignored)."""
    top = softmax(logits).max(axis=0)
    return top / top.sum(axis=1, keepdims=True)


def _pair_weights(weights: np.ndarray, params: dict) -> np.ndarray:
    """fixed_pair applies (a, 1 - a) from its parameter, whatever weights were given."""
    return np.array([params["first_weight"], 1.0 - params["first_weight"]])


@ENSEMBLES.register(
    "fixed_pair", uses_weights=False, needs_fit=False, min_sources=2, max_sources=2, family="pool",
    effective_weights=_pair_weights,
    params=[Param("first_weight", "float", 0.7, 0.0, 1.0,
                  help="share of the first model; the second gets 1 - first_weight")],
    summary="Fixed a / (1 - a) average of two models' probabilities (seed 000's 0.7/0.3).")
def fixed_pair(logits: np.ndarray, weights: np.ndarray, first_weight: float) -> np.ndarray:
    """a p_0 + (1 - a) p_1 for exactly two models (combine() enforces the count from the
    traits); the URIEL weights are not used."""
    return weighted_sum(_pair_weights(weights, {"first_weight": first_weight}), softmax(logits))
