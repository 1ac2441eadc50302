"""Learned fusions fitted on a labelled validation split: trainable per-model weights and a fusion
MLP. Each registers its fit function (the fusion kind's convention, engine/ensemble/__init__.py).

Training is full-batch Adam(W) with early stopping: a seeded ``holdout`` fraction of the
validation examples is set aside, the parameters with the best holdout NLL are kept, and training
stops after ``patience`` steps without improvement (with ``holdout=0``: when the training NLL
stops improving). Both return :class:`~.fitted.Fitted` objects (save/load, ``model_weights``).
"""
from __future__ import annotations

from typing import Any, Callable, Dict, List, Optional, Tuple

import numpy as np
import torch

from ..registry import Param
from . import (ENSEMBLES, EnsembleError, log_softmax, softmax, uniform_if_none, voting,
               weighted_sum)
from .calibration import PROB_FLOOR, apply_temperature
from .fitted import Fitted, base_kwargs

LOG_PROB_FLOOR = -20.0  # MLP log-prob features are clipped here so one -1e3 logit can't dominate


def _training(max_steps: int, patience: int) -> List[Param]:
    return [Param("holdout", "float", 0.2, 0.0, 0.5,
                  help="fraction of the validation examples held out for early stopping (0: none)"),
            Param("max_steps", "int", max_steps, 1, 100000,
                  help="full-batch optimiser steps at most"),
            Param("patience", "int", patience, 1, 100000,
                  help="stop after this many steps without improvement")]


# ---------------------------------------------------------------------------------------------
# Training helpers.

def _split(n: int, holdout: float, seed: int) -> Tuple[np.ndarray, Optional[np.ndarray]]:
    """Seeded (fit, holdout) example indices; holdout None when the fraction is 0."""
    if holdout == 0:
        return np.arange(n), None
    n_hold = max(1, int(round(n * holdout)))
    if n - n_hold < 1:
        raise EnsembleError(f"only {n} validation example(s): too few to hold out {holdout:.0%} "
                            f"for early stopping; use holdout=0 or more data")
    order = np.random.default_rng(seed).permutation(n)
    return np.sort(order[n_hold:]), np.sort(order[:n_hold])


def _train(opt: torch.optim.Optimizer, nll: Callable[[np.ndarray], torch.Tensor],
           fit_idx: np.ndarray, hold_idx: Optional[np.ndarray], max_steps: int,
           patience: int) -> Dict[str, Any]:
    """Full-batch steps of ``opt`` on nll(fit_idx); keeps the parameters with the best
    early-stopping score (holdout NLL, or training NLL without a holdout)."""
    parameters = [p for group in opt.param_groups for p in group["params"]]
    watch = fit_idx if hold_idx is None else hold_idx

    def closure():
        opt.zero_grad()
        loss = nll(fit_idx)
        loss.backward()
        return loss

    with torch.no_grad():
        best = nll(watch).item()
    best_step, snapshot, since, step = 0, [p.detach().clone() for p in parameters], 0, 0
    for step in range(1, max_steps + 1):
        opt.step(closure)
        with torch.no_grad():
            score = nll(watch).item()
        if score < best - 1e-7:
            best, best_step, since = score, step, 0
            snapshot = [p.detach().clone() for p in parameters]
        else:
            since += 1
            if since >= patience:
                break
    with torch.no_grad():
        for p, kept in zip(parameters, snapshot):
            p.copy_(kept)
        fit_nll = nll(fit_idx).item()
    return {"steps": step, "best_step": best_step, "fit_nll": fit_nll,
            "holdout_nll": None if hold_idx is None else best,
            "n_fit": int(len(fit_idx)), "n_holdout": 0 if hold_idx is None else int(len(hold_idx))}


# ---------------------------------------------------------------------------------------------
# (a) Trainable per-model weights.

class LearnedWeights(Fitted):
    """w = softmax(a), fitted by minimising validation NLL of the fused distribution.

    ``space="probabilities"`` fuses like ``soft`` (a mixture: sum_k w_k p_k); ``"logits"`` like
    ``weighted_logits`` (softmax(sum_k w_k z_k)). The learned w are its ``model_weights``.
    With ``learn_temperature`` a sharpness 1/T is fitted jointly: weights on the simplex cannot
    sharpen the fused distribution, so without it NLL buys confidence by piling weight on the most
    confident model; with it the weights measure trust and T absorbs confidence.
    """

    kind = "learned_weights"

    def __init__(self, scores: np.ndarray, log_sharpness: float = 0.0, **kw):
        super().__init__(**kw)
        self.scores = np.asarray(scores, dtype=np.float64).reshape(-1)  # a: log-weights
        self.log_sharpness = float(log_sharpness)                       # log(1 / T)

    @property
    def model_weights(self) -> np.ndarray:
        e = np.exp(self.scores - self.scores.max())
        return e / e.sum()

    @property
    def temperature(self) -> float:
        return float(np.exp(-self.log_sharpness))

    def _predict(self, x: np.ndarray) -> np.ndarray:
        w = self.model_weights
        if self.params["space"] == "logits":
            return softmax(weighted_sum(w, x) * np.float32(1 / self.temperature))
        mixture = voting.soft(x, w)
        return mixture if self.log_sharpness == 0 else apply_temperature(mixture, self.temperature)

    def _tensors(self) -> Dict[str, np.ndarray]:
        return {"scores": self.scores, "log_sharpness": np.array([self.log_sharpness])}

    @classmethod
    def _from(cls, config, tensors):
        return cls(tensors["scores"], float(tensors["log_sharpness"][0]), **base_kwargs(config))


@ENSEMBLES.register(
    "learned_weights", needs_fit=True, uses_weights=True, family="learned", data_use="target_dev",
    params=[Param("space", "choice", "logits", choices=("logits", "probabilities"),
                  help="fuse softmax of weighted logits, or a weighted mixture of probabilities"),
            Param("learn_temperature", "bool", True,
                  help="fit a sharpness jointly so the weights measure trust, not confidence"),
            Param("learning_rate", "float", 0.1, 0.0, 10.0, low_open=True),
            *_training(max_steps=500, patience=30)],
    summary="Per-model weights (softmax-parameterised) fitted on validation NLL; prior = start.")
def fit_learned_weights(x: np.ndarray, y: np.ndarray, prior: Optional[np.ndarray], seed: int,
                        space: str, learn_temperature: bool, learning_rate: float, holdout: float,
                        max_steps: int, patience: int) -> LearnedWeights:
    """Adam on (log-weights, log-sharpness), starting from the given weights (e.g. URIEL; zeros
    floored at 1e-4 so they can recover) or uniform, and T = 1; the seed picks the holdout."""
    k, n, c = x.shape
    fit_idx, hold_idx = _split(n, holdout, seed)
    scores = torch.tensor(np.log(np.maximum(uniform_if_none(prior, k), 1e-4)), requires_grad=True)
    sharp = torch.zeros((), dtype=torch.float64, requires_grad=learn_temperature)
    per_model = torch.from_numpy(x if space == "logits" else softmax(x))
    target = torch.from_numpy(y)

    def nll(idx):
        fused = torch.einsum("k,knc->nc", torch.softmax(scores, 0).float(), per_model[:, idx])
        if space == "probabilities":
            fused = torch.log(fused.clamp_min(PROB_FLOOR))
        return torch.nn.functional.cross_entropy(fused * torch.exp(sharp).float(), target[idx])

    adam = torch.optim.Adam([scores, sharp] if learn_temperature else [scores], lr=learning_rate)
    info = _train(adam, nll, fit_idx, hold_idx, max_steps, patience)
    params = dict(space=space, learn_temperature=learn_temperature, learning_rate=learning_rate,
                  holdout=holdout, max_steps=max_steps, patience=patience)
    fitted = LearnedWeights(scores.detach().numpy().copy(), sharp.item(), method="learned_weights",
                            params=params, prior=prior, n_models=k, n_classes=c, info=info)
    fitted.holdout_index = hold_idx
    return fitted


# ---------------------------------------------------------------------------------------------
# (b) Fusion MLP over the concatenated model outputs.

def _features(x: np.ndarray, kind: str) -> Tuple[np.ndarray, np.ndarray]:
    """(MLP inputs [N, K*C] with model k's outputs in columns k*C .. (k+1)*C - 1,
    clipped log-probabilities [N, K, C] for the skip path)."""
    k, n, c = x.shape
    log_probs = np.maximum(log_softmax(x), LOG_PROB_FLOOR).transpose(1, 0, 2)
    f = log_probs if kind == "log_probs" else softmax(x).transpose(1, 0, 2)
    return np.ascontiguousarray(f.reshape(n, k * c)), np.ascontiguousarray(log_probs)


class _FusionNet(torch.nn.Module):
    """logits = sum_k s_k log p_k (skip, s_k init 1/K) + MLP(concatenated outputs), last layer
    zero-initialised. Fitting first trains the skip weights alone (a weighted geometric mean with
    a free scale), then the MLP learns corrections from there, early-stopped on holdout NLL with
    that start as the score to beat. Without the skip, a plain MLP over K*C inputs has to relearn
    "class c means class c" for each class from a small validation split; with many classes it
    cannot (10 models x 60 classes x 3000 examples: 0.63 test accuracy without, 0.99 with)."""

    def __init__(self, k: int, c: int, hidden: int, residual: bool):
        super().__init__()
        if hidden == 0:  # seed 003's single Dense layer over the concatenated outputs
            self.mlp = torch.nn.Sequential(torch.nn.Linear(k * c, c))
        else:
            self.mlp = torch.nn.Sequential(torch.nn.Linear(k * c, hidden), torch.nn.ReLU(),
                                           torch.nn.Linear(hidden, c))
        self.skip = torch.nn.Parameter(torch.full((k,), 1.0 / k)) if residual else None
        if residual:
            torch.nn.init.zeros_(self.mlp[-1].weight)
            torch.nn.init.zeros_(self.mlp[-1].bias)

    def forward(self, inputs: torch.Tensor, log_probs: torch.Tensor) -> torch.Tensor:
        out = self.mlp(inputs)
        if self.skip is not None:
            out = out + torch.einsum("k,nkc->nc", self.skip, log_probs)
        return out


class FusionMLP(Fitted):
    """softmax(skip + MLP(standardised concatenated per-model outputs)), see :class:`_FusionNet`.

    ``model_weights`` is permutation importance measured at fit time on the whole validation
    split: for each model, the rise in NLL when all of its outputs (MLP inputs and skip) are
    shuffled across examples (mean of 3 seeded shuffles), clipped at 0 and normalised (uniform if
    nothing matters).
    """

    kind = "fusion_mlp"

    def __init__(self, net: _FusionNet, mean: np.ndarray, std: np.ndarray,
                 importance: np.ndarray, **kw):
        super().__init__(**kw)
        self.net = net.eval()
        self.mean = np.asarray(mean, dtype=np.float32)
        self.std = np.asarray(std, dtype=np.float32)
        self.importance = np.asarray(importance, dtype=np.float64)

    @property
    def model_weights(self) -> np.ndarray:
        return self.importance

    def _predict(self, x: np.ndarray) -> np.ndarray:
        inputs, log_probs = _features(x, self.params["features"])
        with torch.no_grad():
            out = self.net(torch.from_numpy((inputs - self.mean) / self.std),
                           torch.from_numpy(log_probs))
            return torch.softmax(out, dim=-1).numpy()

    def _tensors(self) -> Dict[str, np.ndarray]:
        state = {f"net.{k}": v.detach().numpy() for k, v in self.net.state_dict().items()}
        return {**state, "mean": self.mean, "std": self.std, "importance": self.importance}

    @classmethod
    def _from(cls, config, tensors):
        p = config["params"]
        net = _FusionNet(config["n_models"], config["n_classes"], p["hidden_size"], p["residual"])
        state = {key[4:]: torch.from_numpy(v) for key, v in tensors.items()
                 if key.startswith("net.")}
        try:
            net.load_state_dict(state)
        except RuntimeError as e:
            raise EnsembleError(f"fusion_mlp tensors do not match its config: {e}") from None
        return cls(net, tensors["mean"], tensors["std"], tensors["importance"],
                   **base_kwargs(config))


@ENSEMBLES.register(
    "fusion_mlp", needs_fit=True, uses_weights=False, family="learned", data_use="target_dev",
    params=[Param("hidden_size", "int", 64, 0, 4096, help="hidden units; 0 = one linear layer"),
            Param("features", "choice", "log_probs", choices=("log_probs", "probs"),
                  help="what of each model is concatenated: log-probabilities or probabilities"),
            Param("residual", "bool", True,
                  help="add a per-model weighted sum of log-probs and start the MLP at zero"),
            Param("weight_decay", "float", 0.01, 0.0, 10.0, help="AdamW decoupled weight decay"),
            Param("learning_rate", "float", 0.01, 0.0, 1.0, low_open=True),
            *_training(max_steps=300, patience=20)],
    summary="A small MLP over the concatenated model outputs, fitted on validation data.")
def fit_fusion_mlp(x: np.ndarray, y: np.ndarray, prior: Optional[np.ndarray], seed: int,
                   hidden_size: int, features: str, residual: bool, weight_decay: float,
                   learning_rate: float, holdout: float, max_steps: int,
                   patience: int) -> FusionMLP:
    """Weights (the prior) are not used: the MLP learns its own reliance on each model."""
    k, n, c = x.shape
    fit_idx, hold_idx = _split(n, holdout, seed)
    raw, log_probs = _features(x, features)
    mean = raw[fit_idx].mean(axis=0)
    std = np.maximum(raw[fit_idx].std(axis=0), 1e-3).astype(np.float32)
    inputs, skip_in = torch.from_numpy((raw - mean) / std), torch.from_numpy(log_probs)
    target = torch.from_numpy(y)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        net = _FusionNet(k, c, hidden_size, residual)

    def nll(idx):
        return torch.nn.functional.cross_entropy(net(inputs[idx], skip_in[idx]), target[idx])

    groups = [{"params": list(net.mlp.parameters())}]
    if residual:  # stage 1: the skip weights alone (convex, cheap: the zeroed MLP adds 0)
        def skip_nll(idx):
            fused = torch.einsum("k,nkc->nc", net.skip, skip_in[idx])
            return torch.nn.functional.cross_entropy(fused, target[idx])

        skip_info = _train(torch.optim.Adam([net.skip], lr=0.1), skip_nll, fit_idx, hold_idx,
                           max_steps, patience)
        groups.append({"params": [net.skip], "weight_decay": 0.0})
    adamw = torch.optim.AdamW(groups, lr=learning_rate, weight_decay=weight_decay)
    info = _train(adamw, nll, fit_idx, hold_idx, max_steps, patience)
    if residual:
        info["skip_stage"] = skip_info
    importance, deltas = _permutation_importance(net, inputs, skip_in, target, k, c, seed)
    info["permutation_nll_increase"] = deltas
    params = dict(hidden_size=hidden_size, features=features, residual=residual,
                  weight_decay=weight_decay, learning_rate=learning_rate, holdout=holdout,
                  max_steps=max_steps, patience=patience)
    fitted = FusionMLP(net, mean, std, importance, method="fusion_mlp", params=params,
                       prior=prior, n_models=k, n_classes=c, info=info)
    fitted.holdout_index = hold_idx
    return fitted


def _permutation_importance(net, inputs, log_probs, target, k, c, seed, repeats=3):
    """Per model: mean rise in NLL when its outputs are shuffled across examples; the rises
    clipped at 0 and normalised are the importance (uniform when no model matters)."""
    rng = np.random.default_rng(seed)
    loss = torch.nn.functional.cross_entropy
    deltas = []
    with torch.no_grad():
        base = loss(net(inputs, log_probs), target).item()
        for m in range(k):
            block = slice(m * c, (m + 1) * c)
            rises = []
            for _ in range(repeats):
                order = torch.from_numpy(rng.permutation(len(inputs)))
                shuffled, shuffled_lp = inputs.clone(), log_probs.clone()
                shuffled[:, block] = inputs[order, block]
                shuffled_lp[:, m] = log_probs[order, m]
                rises.append(loss(net(shuffled, shuffled_lp), target).item() - base)
            deltas.append(float(np.mean(rises)))
    clipped = np.maximum(np.array(deltas), 0.0)
    total = clipped.sum()
    return (clipped / total if total > 0 else np.full(k, 1.0 / k)), deltas
