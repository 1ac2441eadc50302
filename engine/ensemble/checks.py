"""The conformance suite every registered ensemble method passes (as scikit-learn's
``check_estimator``): plain functions taking a :class:`~engine.registry.Method`, each raising
AssertionError on a violation and returning None when it passed or a string saying why the method
is exempt. Exemptions are read from the method's traits and hooks, never from its name, so a new
method is checked the moment it is registered (tests/test_ensemble_conformance.py).

Rules are run through :func:`combine`; fusions through :func:`fit` (labels only when they declare
``uses_labels``) and the fitted object's ``predict``.
"""
from __future__ import annotations

import inspect
import tempfile
from typing import Any, Callable, Dict, List, Optional

import numpy as np

from ..registry import DATA_USES, Method
from . import EnsembleError, combine, fit, load_fitted, softmax

N_EXAMPLES, N_CLASSES, SEED = 40, 4, 3


def n_models(m: Method, wanted: int = 3) -> int:
    """``wanted`` clamped into the method's [min_sources, max_sources]."""
    high = m.traits.max_sources if m.traits.max_sources is not None else wanted
    return max(m.traits.min_sources, min(wanted, high))


def example(k: int, n: int = N_EXAMPLES, c: int = N_CLASSES, seed: int = 0):
    """(logits [k, n, c] float32, labels [n]): each model sees the label through its own noise,
    so fusions have something to learn and models disagree on some examples."""
    rng = np.random.default_rng(seed)
    y = rng.integers(0, c, size=n)
    x = rng.normal(0.0, 1.5, size=(k, n, c))
    x[:, np.arange(n), y] += np.linspace(0.5, 2.5, k)[:, None]
    return x.astype(np.float32), y


def example_weights(k: int, seed: int = 1) -> np.ndarray:
    return np.random.default_rng(seed).uniform(0.2, 1.0, size=k)


def fit_for(m: Method, x: np.ndarray, y: np.ndarray, weights=None, params=None, seed: int = SEED):
    """A fusion fitted the way its traits say: labels only if it reads them."""
    return fit(m.name, x, y if m.traits.uses_labels else None, weights=weights, params=params,
               seed=seed)


def apply(m: Method, x: np.ndarray, y: np.ndarray, weights=None, params=None,
          seed: int = SEED) -> np.ndarray:
    """Fused probabilities on ``x``: combined by a rule, or fitted on (x, y) and predicted."""
    if m.traits.needs_fit:
        return fit_for(m, x, y, weights, params, seed).predict(x)
    return combine(m.name, x, weights=weights, params=params)


def _own_prediction_kept(m: Method) -> Optional[str]:
    """None when one model (or K copies of it) must give that model's prediction, else why not."""
    if m.traits.family == "prior":
        return "it shifts the class prior on target text: by design not the model's own prediction"
    return _symmetric(m)


def _symmetric(m: Method) -> Optional[str]:
    """None when the output is a symmetric function of the (model, weight) pairs, else why not."""
    if m.hooks.effective_weights is not None:
        return "it applies weights of its own (effective_weights hook), tied to model positions"
    if m.traits.needs_fit and not m.traits.uses_weights:
        return "a fusion without per-model weights learns a free function of the ordered outputs"
    return None


def _same_prediction_as(m: Method, probs: np.ndarray, logits: np.ndarray, what: str) -> None:
    """Rules that pool probabilities/logits give that model's softmax exactly; vote rules and
    weighted fusions (a temperature may be fitted on top) give its argmax."""
    if m.traits.family == "vote" or m.traits.needs_fit:
        assert np.array_equal(probs.argmax(1), logits.argmax(1)), f"{m.name}: {what}: argmax differs"
    else:
        np.testing.assert_allclose(probs, softmax(logits), atol=1e-5,
                                   err_msg=f"{m.name}: {what}: not that model's softmax")


def check_traits(m: Method) -> None:
    """The kind's convention: rules read no data; fusions read target dev (labelled) or target
    text (unlabelled); the kernel takes every declared parameter by name."""
    t = m.traits
    assert t.data_use in DATA_USES
    if not t.needs_fit:
        assert t.data_use == "none", f"{m.name}: a rule reads no data, declares {t.data_use!r}"
        first = ["logits", "weights"]  # names may differ; the positions are the convention
    else:
        assert t.data_use != "none", f"{m.name}: a fusion must declare the data it fits on"
        assert (t.data_use == "target_dev") == t.uses_labels, \
            f"{m.name}: uses_labels={t.uses_labels} but data_use={t.data_use!r}"
        first = ["x", "labels", "prior"]
    signature = inspect.signature(m.fn).parameters
    names = list(signature)
    for p in m.params:  # one home for a default: the Param (combine/fit always pass it)
        if p.name in signature and signature[p.name].default is not inspect.Parameter.empty:
            assert signature[p.name].default == p.default, \
                f"{m.name}: kernel default {p.name}={signature[p.name].default!r} but the Param says {p.default!r}"
    assert len(names) >= len(first), f"{m.name}: kernel takes {names}, convention {first}"
    missing = {p.name for p in m.params} - set(names)
    has_var_kw = any(p.kind == p.VAR_KEYWORD for p in signature.values())
    assert not missing or has_var_kw, f"{m.name}: kernel does not take parameter(s) {missing}"


def check_distribution(m: Method) -> None:
    """Shape [N, C], finite, non-negative, rows sum to 1."""
    x, y = example(n_models(m))
    probs = apply(m, x, y, example_weights(x.shape[0]))
    assert probs.shape == (N_EXAMPLES, N_CLASSES), f"{m.name}: output shape {probs.shape}"
    assert np.isfinite(probs).all() and (probs >= 0).all(), f"{m.name}: non-finite/negative"
    np.testing.assert_allclose(probs.sum(1), 1.0, atol=1e-5, err_msg=f"{m.name}: rows")


def check_permutation(m: Method) -> Optional[str]:
    """Models permuted with their weights give the same output."""
    why = _symmetric(m)
    if why:
        return why
    x, y = example(n_models(m))
    w = example_weights(x.shape[0])
    order = np.arange(x.shape[0])[::-1]
    np.testing.assert_allclose(apply(m, x[order], y, w[order]), apply(m, x, y, w), atol=1e-4,
                               err_msg=f"{m.name}: depends on the order of the models")
    return None


def check_single_model(m: Method) -> Optional[str]:
    """K=1 gives that model's prediction."""
    if m.traits.min_sources > 1:
        return f"combines at least {m.traits.min_sources} models (min_sources)"
    why = _own_prediction_kept(m)
    if why:
        return why
    x, y = example(1)
    _same_prediction_as(m, apply(m, x, y, [1.0]), x[0], "one model")
    return None


def check_identical_models(m: Method) -> Optional[str]:
    """K copies of one model, any weights, give that model's prediction."""
    if (m.traits.needs_fit and not m.traits.uses_weights) or m.traits.family == "prior":
        return _own_prediction_kept(m)
    x, y = example(1)
    k = n_models(m)
    copies = np.repeat(x, k, axis=0)
    _same_prediction_as(m, apply(m, copies, y, example_weights(k)), x[0], f"{k} identical models")
    return None


def check_weights_trait(m: Method) -> None:
    """``uses_weights`` is honest: other weights change the output exactly when it is True
    (for a rule with an effective_weights hook: never, its weights come from its parameters)."""
    x, y = example(n_models(m))
    k = x.shape[0]
    a, b = apply(m, x, y, np.full(k, 1.0)), apply(m, x, y, np.arange(1.0, k + 1) ** 3)
    same = np.allclose(a, b, atol=1e-6)
    if m.traits.uses_weights and m.hooks.effective_weights is None:
        assert not same, f"{m.name}: declares uses_weights but ignores the weights"
    else:
        assert same, f"{m.name}: declares uses_weights=False but the weights change its output"


def check_bad_inputs(m: Method) -> None:
    """NaN logits, wrong weight count, negative weights, an unknown parameter, a model count
    outside [min_sources, max_sources], and labels against uses_labels raise EnsembleError."""
    x, y = example(n_models(m))
    k = x.shape[0]
    nan = x.copy()
    nan[0, 1, 2] = np.nan
    cases: List[tuple] = [("NaN logit", nan, None, None), ("wrong weight count", x, [1.0] * (k + 1), None),
                          ("negative weight", x, [-1.0] + [1.0] * (k - 1), None),
                          ("unknown parameter", x, None, {"no_such_param": 1})]
    if m.traits.max_sources is not None:
        cases.append(("too many models", np.repeat(x[:1], m.traits.max_sources + 1, axis=0), None, None))
    if m.traits.min_sources > 1:
        cases.append(("too few models", x[: m.traits.min_sources - 1], None, None))
    for what, logits, weights, params in cases:
        try:
            apply(m, logits, y, weights, params)
        except EnsembleError:
            continue
        raise AssertionError(f"{m.name}: {what} did not raise EnsembleError")
    if m.traits.needs_fit:
        wrong = None if m.traits.uses_labels else y
        try:
            fit(m.name, x, wrong)
        except EnsembleError:
            return
        raise AssertionError(f"{m.name}: fit with labels={'given' if wrong is not None else None} "
                             f"against uses_labels={m.traits.uses_labels} did not raise")


def check_round_trip(m: Method) -> None:
    """A fitted fusion (a rule: calibrated) saved and loaded (JSON + safetensors, no pickle)
    predicts identically."""
    x, y = example(n_models(m))
    w = example_weights(x.shape[0])
    if m.traits.needs_fit:
        fitted = fit_for(m, x, y, w)
    else:
        fitted = fit(m.name, x, y, weights=w, calibrate=True)
    with tempfile.TemporaryDirectory() as folder:
        loaded = load_fitted(fitted.save(folder))
        assert np.array_equal(loaded.predict(x), fitted.predict(x)), f"{m.name}: round trip"
        np.testing.assert_allclose(loaded.model_weights, fitted.model_weights, atol=0)


def check_deterministic(m: Method) -> None:
    """The same inputs and seed give the same output."""
    x, y = example(n_models(m))
    w = example_weights(x.shape[0])
    assert np.array_equal(apply(m, x, y, w, seed=5), apply(m, x, y, w, seed=5)), \
        f"{m.name}: not deterministic for a seed"


CHECKS: List[Callable[[Method], Optional[str]]] = [
    check_traits, check_distribution, check_permutation, check_single_model,
    check_identical_models, check_weights_trait, check_bad_inputs, check_round_trip,
    check_deterministic]


def run_checks(m: Method) -> Dict[str, Any]:
    """Every check on one method: {check name: "passed" or "exempt: why"}; raises on a failure."""
    out = {}
    for check in CHECKS:
        why = check(m)
        out[check.__name__] = "passed" if why is None else f"exempt: {why}"
    return out
