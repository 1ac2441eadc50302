"""Pseudo-label self-training: fine-tune a merge on the target's own texts, labelled by the fusion.

The target's train split is read as text only (its labels are withheld, never read): a labeller
(the soft vote of the K sources, the merge itself, or the sources' weighted-logits vote with its
class prior recentred on these texts, ``engine.ensemble.prior``) predicts each text's class, the texts it is
confident on (top probability ≥ ``threshold``) become a training set, and the merge (TIES by
default) is fine-tuned on them for a few steps with the one training loop. The run records
``unlabelled target text`` as its target data. The dev split is scored after training (for
choosing settings); the test split only scores the final model.
"""
from __future__ import annotations

import time
import uuid
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Tuple

import numpy as np
import torch
from safetensors.torch import save_file

from ..data import Split
from ..progress import Tracker
from ..runinfo import TARGET_DATA
from .finetune import TrainError, checkpoint_dir, launch, load_base
from .loop import Trainer, load_weights

UNLABELLED = TARGET_DATA[1]  # "unlabelled target text"
LABELLERS = ("soft", "merge", "shifted")


@dataclass
class PseudoConfig:
    target: str
    sources: List[str] = field(default_factory=list)   # empty: the target's top-k by weighting
    top_k: int = 5
    weighting: str = "uriel"
    method: str = "ties"           # the merge that is fine-tuned (data-free, at its defaults)
    labeller: str = "soft"         # soft: soft vote of the sources; merge: the merge itself;
                                   # shifted: weighted-logits vote recentred on these texts (prior_shift)
    threshold: float = 0.5         # keep texts whose top pseudo-label probability is at least this
    steps: int = 30
    batch_size: int = 16
    lr: float = 1e-4
    warmup: int = -1               # -1: 10 % of the steps
    seed: int = 0

    def to_dict(self) -> Dict[str, Any]:
        return asdict(self)


def check_pseudo(ws, config: PseudoConfig) -> Tuple[PseudoConfig, List[float]]:
    """Raises TrainError for settings that cannot run; returns the config with its sources filled
    in (the target's top-k by ``weighting`` when none were given) and their weights."""
    from ..experiments import source_weights
    from ..merge import MERGES

    if config.labeller not in LABELLERS:
        raise TrainError(f"labeller '{config.labeller}' must be one of {', '.join(LABELLERS)}")
    if not 0.0 <= config.threshold <= 1.0:
        raise TrainError(f"threshold {config.threshold} must be a probability in [0, 1]")
    if config.steps < 1 or config.batch_size < 1 or not config.lr > 0:
        raise TrainError(f"steps={config.steps}, batch size {config.batch_size}, lr {config.lr}: all must be positive")
    if config.method not in MERGES or MERGES.get(config.method).traits.needs_data:
        raise TrainError(f"merge '{config.method}' must be a registered merge that reads no data (e.g. ties)")
    if ws.zoo.base is None:
        raise TrainError("the zoo has no pretrained base (needed to rebuild the classifier); add 'base' to its manifest")
    if not ws.dataset.has(config.target, "train"):
        raise TrainError(f"target '{config.target}' has no train split to take unlabelled text from")
    if list(ws.dataset.labels) != list(ws.zoo.labels):
        raise TrainError("the dataset's labels do not match the zoo's; use data with the zoo's label set")
    try:
        config.sources, weights = source_weights(ws, config.target, config.sources, top_k=config.top_k,
                                                 weighting=config.weighting)
    except ValueError as exc:  # CandidateError / ZooError: one line naming the value
        raise TrainError(str(exc)) from None
    return config, weights


def text_logits(ws, model: torch.nn.Module, texts: List[str], batch_size: int = 64) -> np.ndarray:
    """A model's logits [N, C] on plain texts (no labels anywhere near)."""
    from ..experiments import text_batches

    device = ws.evaluator.device
    model = model.to(device).eval()
    out = []
    with torch.inference_mode():
        for batch in text_batches(ws, texts, batch_size):
            out.append(model(**{k: v.to(device) for k, v in batch.items()}).logits.float().cpu())
    return torch.cat(out).numpy()


def pseudo_labels(ws, config: PseudoConfig, weights: List[float], merged, texts: List[str]) -> np.ndarray:
    """The labeller's probabilities [N, C] on the target's texts: the sources' soft vote, the merge,
    or the sources' weighted-logits vote with its class prior recentred on these same texts."""
    from ..ensemble import combine, fit

    if config.labeller == "merge":
        return combine("soft", text_logits(ws, ws.zoo.build_model(dict(merged)), texts)[None], [1.0])
    logits = np.stack([text_logits(ws, ws.evaluator.source_model(s), texts) for s in config.sources])
    if config.labeller == "shifted":
        return fit("prior_shift", logits, None, weights=weights, params={"rule": "weighted_logits"}).predict(logits)
    return combine("soft", logits, weights)


def pseudo_job(ws, config: PseudoConfig, weights: List[float], out_dir: Path):
    def job(ctx):
        from ..experiments import Candidate, baselines, build_merge, unlabelled_texts

        started = time.perf_counter()
        device = ws.evaluator.device
        tracker = Tracker(ctx.progress, config.steps + 3, f"pseudo-labels for {config.target}")
        merged = build_merge(ws, Candidate("merge", config.method, config.target, config.sources, weights,
                                           seed=config.seed))
        tracker.advance(1, f"{config.method} merge built")
        texts = unlabelled_texts(ws, config.target)
        probs = pseudo_labels(ws, config, weights, merged, texts)
        keep = np.flatnonzero(probs.max(axis=1) >= config.threshold)
        if keep.size == 0:
            raise TrainError(f"no target text reaches confidence {config.threshold} (highest "
                             f"{probs.max():.3f}); lower --threshold")
        labels = probs.argmax(axis=1)
        tracker.advance(1, f"{keep.size} of {len(texts)} texts pseudo-labelled")
        model, tok = load_base(ws, config.seed, device)
        load_weights(model, merged)
        train = Split([texts[i] for i in keep], [int(labels[i]) for i in keep])
        trainer = Trainer(model, tok, train, config.steps, min(config.batch_size, len(train)), config.lr,
                          config.seed, warmup=None if config.warmup < 0 else config.warmup, device=device)
        for _ in range(config.steps):
            loss = trainer.step()
            ctx.log("loss", trainer.step_count, loss)
            tracker.advance(1, f"self-training {config.target}: step {trainer.step_count}/{config.steps}, "
                               f"loss {trainer.recent_loss():.3f}")
            ctx.check()
        state = trainer.weights()
        metrics, start = {}, {}
        for split in ("validation", "test"):
            if ws.dataset.has(config.target, split):
                metrics[split] = ws.evaluator.evaluate_state(state, config.target, split)
                start[split] = ws.evaluator.evaluate_state(dict(merged), config.target, split)["accuracy"]
        out_dir.mkdir(parents=True, exist_ok=True)
        path = out_dir / "model.safetensors"
        save_file({k: v.contiguous() for k, v in state.items()}, str(path))
        tracker.advance(1)
        counts = np.bincount(labels[keep], minlength=probs.shape[1]).tolist()
        acc = (metrics.get("test") or {}).get("accuracy")
        return {"metrics": metrics,
                "message": f"self-trained on {keep.size} pseudo-labelled texts"
                           + (f"; test accuracy {acc:.3f} (the {config.method} merge: {start['test']:.3f})"
                              if acc is not None else ""),
                "result": {"merged": str(path), "output": str(path), "steps_done": trainer.step_count,
                           "note": f"labeller {config.labeller}, {keep.size} of {len(texts)} target texts at "
                                   f"confidence ≥ {config.threshold} (their labels never read)",
                           "target_data": {"target": UNLABELLED, "source_data": False},
                           "start_accuracy": start, "kept": int(keep.size), "texts": len(texts),
                           "pseudo_label_counts": counts, "final_loss": trainer.recent_loss(),
                           "baselines": baselines(ws, config.target, config.sources, "test"),
                           "seconds": round(time.perf_counter() - started, 2)}}
    return job


def _fields(config: PseudoConfig, weights: List[float]) -> dict:
    return dict(name=f"pseudo-label self-training {config.method} → {config.target}", target=config.target,
                method="pseudo-label", sources=list(config.sources), weights=list(weights),
                params={**config.to_dict(), "target_data": UNLABELLED})


def submit_pseudo(runner, ws, config: PseudoConfig) -> str:
    config, weights = check_pseudo(ws, config)
    out = checkpoint_dir(ws, f"pseudo_{config.target}_{uuid.uuid4().hex[:6]}")
    return launch(pseudo_job(ws, config, weights, out), _fields(config, weights), runner=runner)


def run_pseudo(store, ws, config: PseudoConfig, echo=None) -> dict:
    """The self-training in this thread, stored as a run (the CLI); returns the run row."""
    config, weights = check_pseudo(ws, config)
    out = checkpoint_dir(ws, f"pseudo_{config.target}_{uuid.uuid4().hex[:6]}")
    return launch(pseudo_job(ws, config, weights, out), _fields(config, weights), store=store, echo=echo)
