"""What every fitted fusion shares: predict, model_weights, and save/load without pickle.

A fitted fusion is saved as a folder: ``config.json`` (kind, method, params, prior weights, shapes,
fit statistics) and ``tensors.safetensors`` (its arrays). :func:`load_fitted` dispatches on the
config's ``kind`` to the subclass that declared it.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Dict, Optional, Type, Union

import numpy as np
from safetensors.numpy import load_file, save_file

from . import EnsembleError, check_logits

FORMAT = "engine.ensemble.fitted/1"
CONFIG_FILE = "config.json"
TENSOR_FILE = "tensors.safetensors"

KINDS: Dict[str, Type["Fitted"]] = {}


class Fitted:
    """A fusion fitted on validation data; self-contained (it carries its params and weights).

    Subclasses set ``kind`` and implement ``model_weights``, ``_predict``, ``_tensors`` and
    ``_from``; ``_extra`` adds their own JSON fields.
    """

    kind = ""

    def __init_subclass__(cls, **kw):
        super().__init_subclass__(**kw)
        if cls.kind:
            KINDS[cls.kind] = cls

    def __init__(self, method: str, params: Dict[str, Any], prior: Optional[np.ndarray],
                 n_models: int, n_classes: int, info: Optional[Dict[str, Any]] = None):
        self.method = method
        self.params = dict(params)
        self.prior = None if prior is None else np.asarray(prior, dtype=np.float64)
        self.n_models = int(n_models)
        self.n_classes = int(n_classes)
        self.info = dict(info or {})
        # Examples held out from training (early stopping); calibration fits on them. Not saved.
        self.holdout_index: Optional[np.ndarray] = None

    @property
    def model_weights(self) -> np.ndarray:
        """[K] non-negative, sums to 1: how much the fusion relies on each source model."""
        raise NotImplementedError

    def predict(self, logits) -> np.ndarray:
        """Fused probabilities [N, C] for logits [K, N, C] of the same models and classes."""
        x = check_logits(logits)
        if x.shape[0] != self.n_models or x.shape[2] != self.n_classes:
            raise EnsembleError(f"'{self.method}' was fitted on {self.n_models} models x "
                                f"{self.n_classes} classes; got logits of shape {x.shape}")
        return self._predict(x)

    def _predict(self, x: np.ndarray) -> np.ndarray:
        raise NotImplementedError

    def _tensors(self) -> Dict[str, np.ndarray]:
        return {}

    def _extra(self) -> Dict[str, Any]:
        return {}

    @classmethod
    def _from(cls, config: Dict[str, Any], tensors: Dict[str, np.ndarray]) -> "Fitted":
        raise NotImplementedError

    def to_config(self) -> Dict[str, Any]:
        return {"format": FORMAT, "kind": self.kind, "method": self.method, "params": self.params,
                "prior": None if self.prior is None else self.prior.tolist(),
                "n_models": self.n_models, "n_classes": self.n_classes, "info": self.info,
                **self._extra()}

    def save(self, path: Union[str, Path]) -> Path:
        """Writes ``path/config.json`` and ``path/tensors.safetensors``; returns the folder."""
        folder = Path(path)
        folder.mkdir(parents=True, exist_ok=True)
        (folder / CONFIG_FILE).write_text(json.dumps(self.to_config(), indent=2))
        tensors = {k: np.ascontiguousarray(v) for k, v in self._tensors().items()}
        save_file(tensors, str(folder / TENSOR_FILE), metadata={"format": FORMAT})
        return folder

    @staticmethod
    def load(path: Union[str, Path]) -> "Fitted":
        return load_fitted(path)

    def __repr__(self) -> str:
        weights = ", ".join(f"{w:.3f}" for w in self.model_weights)
        return f"{type(self).__name__}({self.method}, K={self.n_models}, weights=[{weights}])"


def base_kwargs(config: Dict[str, Any]) -> Dict[str, Any]:
    """The constructor arguments every Fitted takes, read from a saved config."""
    return {key: config[key] for key in ("method", "params", "prior", "n_models", "n_classes",
                                         "info")}


def from_config(config: Dict[str, Any], tensors: Dict[str, np.ndarray]) -> Fitted:
    if (not isinstance(config, dict) or config.get("format") != FORMAT
            or config.get("kind") not in KINDS):
        got = config.get("kind") if isinstance(config, dict) else type(config).__name__
        raise EnsembleError(f"not a fitted ensemble config (kind {got!r}; known {sorted(KINDS)})")
    try:
        return KINDS[config["kind"]]._from(config, tensors)
    except KeyError as e:
        raise EnsembleError(f"saved '{config['kind']}' fusion is missing {e.args[0]!r}") from None


def load_fitted(path: Union[str, Path]) -> Fitted:
    """Reads a folder written by :meth:`Fitted.save` (JSON + safetensors only, never pickle)."""
    folder = Path(path)
    config_path, tensor_path = folder / CONFIG_FILE, folder / TENSOR_FILE
    if not config_path.is_file() or not tensor_path.is_file():
        raise EnsembleError(f"{folder} is not a saved fusion: needs {CONFIG_FILE} and "
                            f"{TENSOR_FILE}")
    try:
        config = json.loads(config_path.read_text())
        tensors = load_file(str(tensor_path))
    except (ValueError, OSError) as e:
        raise EnsembleError(f"cannot read saved fusion in {folder}: {e}") from None
    bad = [k for k, t in tensors.items() if np.issubdtype(t.dtype, np.floating) and not np.isfinite(t).all()]
    if bad:
        raise EnsembleError(f"saved fusion {tensor_path}: tensor '{bad[0]}' has NaN/inf values; refit it")
    return from_config(config, tensors)
