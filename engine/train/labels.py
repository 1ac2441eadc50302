"""What a merge is worth in target labels: fine-tune (a) the pretrained base and (b) a fused model on
n = 0, 8, 16, 32, … labelled target examples, and score both on the target's test split.

The horizontal distance between the two curves is the number of target labels the merge saves.
The n examples are nested (the first n of one seeded shuffle of the target's train split), so a
larger n only adds examples. No dev data is used (no early stopping): the target data a run uses
is its n labelled train examples; test only scores.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Optional

import numpy as np
import torch

from ..data import Split
from ..progress import Tracker
from .finetune import TrainError, launch, load_base
from .loop import Trainer, load_weights

TARGET_DATA = "labelled target train (n examples per point)"


@dataclass
class LabelCurveConfig:
    target: str
    fused: str                       # a stored run id (merge, or periodic-merge training) or a model folder
    ns: List[int] = field(default_factory=lambda: [0, 8, 16, 32, 64, 128])
    steps: int = 30
    batch_size: int = 16
    lr: float = 4e-4
    seed: int = 0

    def to_dict(self) -> Dict[str, Any]:
        return asdict(self)


def is_fused_run(run: dict) -> bool:
    """A finished run whose model a label curve can start from: a merge or a periodic-merge training."""
    return run.get("status") == "done" and (run.get("kind") == "merge" or run.get("method") == "periodic-merge")


def fused_state(ws, store, ref: str) -> Dict[str, torch.Tensor]:
    """The weights of a fused model: a stored merge run (rebuilt from its recipe), a periodic-merge
    training run (its final merge), or an HF model folder."""
    from safetensors.torch import load_file

    from ..zoo import load_state_dict

    if Path(ref).is_dir():
        return load_state_dict(Path(ref))
    try:
        row = store.get(ref)
    except KeyError:
        raise TrainError(f"'{ref}' is neither a model folder nor a stored run id") from None
    result = row.get("result") or {}
    if row["status"] != "done":
        raise TrainError(f"run {ref} is {row['status']}, not done: it has no fused model")
    if row["kind"] == "train" and result.get("merged"):
        return load_file(result["merged"])
    if row["kind"] == "merge" and result.get("candidate"):
        from ..experiments import Candidate, build_merge

        return dict(build_merge(ws, Candidate(**result["candidate"])))
    raise TrainError(f"run {ref} is a '{row['kind']}' run without merged weights; use a merge run, a "
                     f"periodic-merge training run, or an exported model folder")


def check_curve(ws, config: LabelCurveConfig) -> LabelCurveConfig:
    if not config.ns or any(n < 0 for n in config.ns):
        raise TrainError(f"label counts {config.ns} must be non-negative numbers")
    if config.steps < 1 or config.batch_size < 1 or not config.lr > 0:
        raise TrainError(f"steps={config.steps}, batch size {config.batch_size}, lr {config.lr}: all must be positive")
    if not ws.dataset.has(config.target, "train") or not ws.dataset.has(config.target, "test"):
        raise TrainError(f"target '{config.target}' needs train and test splits")
    if list(ws.dataset.labels) != list(ws.zoo.labels):
        raise TrainError("the dataset's labels do not match the zoo's; use data with the zoo's label set")
    available = len(ws.dataset.get(config.target, "train"))
    config.ns = sorted({min(int(n), available) for n in config.ns})
    return config


def labels_saved(curve: List[dict]) -> Optional[int]:
    """How many labels the base needs to match the fused model with none (None: more than tried)."""
    rows = {r["n"]: r for r in curve}
    if 0 not in rows:
        return None
    goal = rows[0]["fused"]
    for n in sorted(rows):
        if rows[n]["base"] >= goal:
            return n
    return None


def label_curve_job(ws, store, config: LabelCurveConfig):
    def job(ctx):
        device = ws.evaluator.device
        fused = fused_state(ws, store, config.fused)
        train = ws.dataset.get(config.target, "train")
        order = np.random.default_rng(config.seed).permutation(len(train)).tolist()
        tracker = Tracker(ctx.progress, 2 * len(config.ns), "label curve")
        curve = []
        for n in config.ns:
            point = {"n": n}
            for start in ("base", "fused"):
                model, tok = load_base(ws, config.seed, device)
                if start == "fused":
                    load_weights(model, fused)
                if n > 0:
                    subset = Split([train.texts[i] for i in order[:n]], [train.labels[i] for i in order[:n]])
                    trainer = Trainer(model, tok, subset, config.steps, min(config.batch_size, n), config.lr,
                                      config.seed, device=device)
                    for _ in range(config.steps):
                        trainer.step()
                    ctx.check()
                state = {k: v.detach().to("cpu") for k, v in model.state_dict().items()}
                acc = float(ws.evaluator.evaluate_state(state, config.target, "test")["accuracy"])
                point[start] = acc
                ctx.log(f"{start}_test_accuracy", n, acc)
                tracker.advance(1, f"n={n}: {start} test accuracy {acc:.3f}")
            curve.append(point)
        saved = labels_saved(curve)
        return {"message": "label curve ready" + (f"; the merge is worth ≥ {saved} labels" if saved else ""),
                "result": {"curve": curve, "labels_saved": saved, "target_data": TARGET_DATA,
                           "max_n": config.ns[-1]}}
    return job


def _fields(config: LabelCurveConfig) -> dict:
    return dict(name=f"label curve for {config.target}: base vs {config.fused}", target=config.target,
                method="label-curve", params={**config.to_dict(), "target_data": TARGET_DATA})


def submit_label_curve(runner, ws, config: LabelCurveConfig) -> str:
    config = check_curve(ws, config)
    return launch(label_curve_job(ws, runner.store, config), _fields(config), runner=runner)


def run_label_curve(store, ws, config: LabelCurveConfig, echo=None) -> dict:
    config = check_curve(ws, config)
    return launch(label_curve_job(ws, store, config), _fields(config), store=store, echo=echo)
