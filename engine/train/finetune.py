"""Fine-tune one locale's classifier from the zoo's pretrained base, as a resumable background job.

The run checkpoints (safetensors + JSON, never pickle) every few steps and when cancelled, so
``resume_finetune`` continues it bit for bit. Early stopping watches the locale's validation
(dev) split only; the test split is scored once, on the final model. The result is a new HF folder
in the zoo's own folder (``train.json`` records how it was made), added to the manifest's
``models`` so it is at once a source, or a target's own-model baseline.
"""
from __future__ import annotations

import json
import math
import os
import shutil
import time
import uuid
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any, Dict, Optional

import torch
from safetensors.torch import load_file, save_file

from ..export_guard import check_export_dir, export_folder, zoo_folders
from ..progress import Cancelled, Tracker
from ..store import ACTIVE, STOPPED
from ..zoo import MANIFEST, label_list, read_config
from .loop import Trainer, freeze_embeddings, seed_everything

TARGET_DATA = "labelled target train"   # what a fine-tune uses of its locale (Compare shows it)
REGISTER_MODES = ("auto", "replace", "no")


class TrainError(ValueError):
    """Training settings that cannot work; the message says which value and what to do."""


@dataclass
class FinetuneConfig:
    locale: str
    name: str = ""                 # output folder in the zoo's folder ("" = ft_<locale>_<time>)
    lr: float = 4e-4
    steps: int = 0                 # optimizer steps; 0 = from epochs
    epochs: float = 0.0
    batch_size: int = 32
    warmup: int = -1               # warm-up steps; -1 = 10% of the steps
    freeze_embeddings: bool = False
    seed: int = 0
    eval_every: int = 0            # validation every N steps; 0 = ~10 times per run
    patience: int = 0              # stop after N validations without gain (restoring the best); 0 = off
    checkpoint_every: int = 0      # 0 = at every validation
    register: str = "auto"         # auto: add to the zoo unless it has a model for the locale

    @classmethod
    def from_dict(cls, data: Dict[str, Any]) -> "FinetuneConfig":
        known = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in known})

    def to_dict(self) -> Dict[str, Any]:
        return asdict(self)


def total_steps(config: FinetuneConfig, n_train: int) -> int:
    if config.steps > 0:
        return int(config.steps)
    return int(math.ceil(config.epochs * n_train / max(1, config.batch_size)))


def check_config(ws, config: FinetuneConfig) -> FinetuneConfig:
    """Raises TrainError for settings that cannot train; fills in the output folder name."""
    if config.steps < 0 or config.epochs < 0 or (config.steps == 0 and config.epochs <= 0):
        raise TrainError(f"steps={config.steps}, epochs={config.epochs}: give a positive number of "
                         f"steps (or epochs) to train")
    if config.batch_size < 1:
        raise TrainError(f"batch size {config.batch_size} must be at least 1")
    if not (config.lr > 0 and math.isfinite(config.lr)):
        raise TrainError(f"learning rate {config.lr} must be a positive number")
    if config.register not in REGISTER_MODES:
        raise TrainError(f"register '{config.register}' must be one of {', '.join(REGISTER_MODES)}")
    if ws.zoo.base is None:
        raise TrainError("the zoo has no pretrained base to train from; add 'base' to its manifest "
                         "or pass --base")
    if not ws.dataset.has(config.locale, "train"):
        have = [l for l in ws.dataset.locales if ws.dataset.has(l, "train")]
        raise TrainError(f"locale '{config.locale}' has no train split in the dataset "
                         f"'{ws.dataset.name}'; locales with one: {', '.join(have) or 'none'}")
    if list(ws.dataset.labels) != list(ws.zoo.labels):
        raise TrainError(f"the dataset's labels ({', '.join(ws.dataset.labels[:6])}…) do not match the "
                         f"zoo's ({', '.join(ws.zoo.labels[:6])}…); train on data with the zoo's label set")
    if config.patience > 0 and not ws.dataset.has(config.locale, "validation"):
        raise TrainError(f"early stopping needs a validation split, and {config.locale} has none; "
                         f"set patience to 0")
    if not config.name:
        config.name = f"ft_{config.locale}_{time.strftime('%Y%m%d-%H%M%S')}"
    if "/" in config.name or config.name.startswith("."):
        raise TrainError(f"output name '{config.name}' must be a plain folder name")
    check_export_dir(Path(ws.zoo.root) / config.name, zoo_folders(ws.zoo), overwrite=False)
    return config


def load_base(ws, seed: int, device):
    """(model, tokenizer) from the zoo's base, seeded first; a head for the zoo's labels is added
    (seeded) when the base is a bare encoder."""
    from transformers import AutoConfig, AutoModelForSequenceClassification, AutoTokenizer

    base = Path(ws.zoo.base)
    seed_everything(seed)
    tok_dir = base if (base / "tokenizer_config.json").exists() else ws.zoo.path(ws.zoo.locales[0])
    tok = AutoTokenizer.from_pretrained(str(tok_dir), trust_remote_code=False)
    labels = list(ws.zoo.labels)
    if label_list(read_config(base)) == labels:
        model = AutoModelForSequenceClassification.from_pretrained(str(base), trust_remote_code=False)
    else:
        config = AutoConfig.from_pretrained(str(base), trust_remote_code=False)
        config.num_labels = len(labels)
        config.id2label = dict(enumerate(labels))
        config.label2id = {n: i for i, n in enumerate(labels)}
        model = AutoModelForSequenceClassification.from_pretrained(str(base), config=config,
                                                                   trust_remote_code=False)
    model.to(device).train()
    return model, tok


def _save_checkpoint(folder: Path, trainer: Trainer, extra: dict, best: Optional[dict]) -> None:
    """Writes the checkpoint whole into a sibling folder, then swaps it in (a kill leaves the
    previous one)."""
    tmp = folder.with_name(folder.name + f".partial-{uuid.uuid4().hex[:6]}")
    trainer.save(tmp, extra)
    if best is not None:
        save_file(best, str(tmp / "best.safetensors"))
    old = folder.with_name(folder.name + ".old")
    shutil.rmtree(old, ignore_errors=True)
    if folder.exists():
        os.rename(folder, old)
    os.rename(tmp, folder)
    shutil.rmtree(old, ignore_errors=True)


def register_model(ws, locale: str, folder: Path, mode: str) -> Optional[str]:
    """Adds ``folder`` to the zoo manifest's ``models`` under ``locale`` (written atomically);
    returns the locale registered, or None when the mode or the zoo says not to."""
    manifest = Path(ws.zoo.root) / MANIFEST
    if mode == "no" or not manifest.is_file():
        return None
    spec = json.loads(manifest.read_text())
    if locale in spec.get("models", {}) and mode != "replace":
        return None
    spec.setdefault("models", {})[locale] = folder.name
    spec["models"] = dict(sorted(spec["models"].items()))
    tmp = manifest.with_name(f".{manifest.name}.{uuid.uuid4().hex[:6]}")
    tmp.write_text(json.dumps(spec, indent=2, ensure_ascii=False))
    os.replace(tmp, manifest)
    return locale


def checkpoint_dir(ws, key: str) -> Path:
    return Path(ws.cache_dir) / "training" / key


def launch(job, run_fields: dict, runner=None, store=None, echo=None):
    """A training job as a stored run: queued on ``runner`` (the pages; returns the run id) or run
    in this thread on ``store`` (the CLI; returns the finished row)."""
    if runner is not None:
        return runner.submit("train", job, lane="compute", **run_fields)
    from ..jobs import run_here

    return run_here(store, "train", job, echo=echo, **run_fields)


def resume_fields(store, run_id: str, can_resume, config_type, fields_of, what: str):
    """(config, checkpoint, run fields) continuing a stopped training run as a new run whose
    ``parent`` is the old one; TrainError when it is still running or has no checkpoint."""
    row = store.get(run_id)
    if row["status"] in ACTIVE:
        raise TrainError(f"run {run_id} is still {row['status']}; cancel it first")
    if not can_resume(row):
        raise TrainError(f"run {run_id} has no checkpoint to resume from (no {what} checkpoint: it finished, "
                         f"or is not a {what}); start a new one")
    config = config_type.from_dict(row["params"])
    ckpt = Path(row["params"]["checkpoint"])
    run_fields = fields_of(config, ckpt)
    run_fields["name"] += " (resumed)"
    return config, ckpt, {**run_fields, "parent": run_id}


def finetune_job(ws, config: FinetuneConfig, ckpt: Path):
    """The job function: trains (resuming from ``ckpt`` when it holds a checkpoint), writes the
    model folder, registers it, scores it."""
    def job(ctx):
        device = ws.evaluator.device
        train = ws.dataset.get(config.locale, "train")
        val = ws.dataset.get(config.locale, "validation") if ws.dataset.has(config.locale, "validation") else None
        steps = total_steps(config, len(train))
        model, tok = load_base(ws, config.seed, device)
        if config.freeze_embeddings:
            freeze_embeddings(model)
        trainer = Trainer(model, tok, train, steps, config.batch_size, config.lr, config.seed,
                          warmup=None if config.warmup < 0 else config.warmup, device=device)
        eval_every = config.eval_every or max(1, steps // 10)
        ckpt_every = config.checkpoint_every or eval_every
        info = {"best_accuracy": None, "best_step": None, "since_best": 0, "stopped": ""}
        best = None
        if (ckpt / "trainer.json").exists():
            info = trainer.load(ckpt)
            if (ckpt / "best.safetensors").exists():
                best = load_file(str(ckpt / "best.safetensors"))
        tracker = Tracker(ctx.progress, steps, f"fine-tuning {config.locale}")
        tracker.start -= info.get("seconds", 0.0)  # the ETA counts the time before a resume
        tracker.set(trainer.step_count)
        started = time.perf_counter()
        try:
            while trainer.step_count < steps and not info["stopped"]:
                loss = trainer.step()
                step = trainer.step_count
                ctx.log("loss", step, loss)
                if val is not None and (step % eval_every == 0 or step == steps):
                    acc = trainer.accuracy(val)
                    ctx.log("validation_accuracy", step, acc)
                    if info["best_accuracy"] is None or acc > info["best_accuracy"]:
                        info.update(best_accuracy=acc, best_step=step, since_best=0)
                        best = trainer.weights() if config.patience > 0 else None
                    else:
                        info["since_best"] += 1
                        if config.patience > 0 and info["since_best"] >= config.patience:
                            info["stopped"] = (f"no validation gain in {config.patience} evaluations; "
                                               f"best at step {info['best_step']}")
                if step % ckpt_every == 0 and step < steps:
                    info["seconds"] = info.get("seconds", 0.0) + time.perf_counter() - started
                    started = time.perf_counter()
                    _save_checkpoint(ckpt, trainer, info, best)
                tracker.advance(1, f"fine-tuning {config.locale}: step {step}/{steps}, "
                                   f"loss {trainer.recent_loss():.3f}")
        except (Cancelled, KeyboardInterrupt):
            info["seconds"] = info.get("seconds", 0.0) + time.perf_counter() - started
            _save_checkpoint(ckpt, trainer, info, best)
            raise
        if best is not None:
            trainer.load_weights(best)
        seconds = info.get("seconds", 0.0) + time.perf_counter() - started
        return _finish(ws, config, trainer, info, steps, seconds, ckpt, ctx)
    return job


def _finish(ws, config, trainer, info, steps, seconds, ckpt, ctx) -> dict:
    model, tok = trainer.model, trainer.tok
    record = {"kind": "finetune", "config": config.to_dict(), "base": str(Path(ws.zoo.base).resolve()),
              "steps_planned": steps, "steps_done": trainer.step_count, "best_step": info["best_step"],
              "best_validation_accuracy": info["best_accuracy"], "stopped": info["stopped"],
              "final_loss": trainer.recent_loss(), "train_examples": len(trainer.train),
              "target_data": TARGET_DATA, "seconds": round(seconds, 2), "run_id": ctx.run_id,
              "device": str(ws.evaluator.device), "dataset": ws.dataset.name}
    out = Path(ws.zoo.root) / config.name
    model.eval()
    with export_folder(out, zoo_folders(ws.zoo)) as tmp:
        model.to("cpu").save_pretrained(str(tmp), safe_serialization=True)
        tok.save_pretrained(str(tmp))
        (tmp / "train.json").write_text(json.dumps(record, indent=2))
    registered = register_model(ws, config.locale, out, config.register)
    shutil.rmtree(ckpt, ignore_errors=True)
    state = trainer.weights()
    metrics = {}
    for split in ("validation", "test"):
        if ws.dataset.has(config.locale, split):
            metrics[split] = ws.evaluator.evaluate_state(state, config.locale, split)
    note = (f"registered in the zoo as {registered}" if registered else
            f"not registered: the zoo already has a model for {config.locale} (choose 'replace' to "
            f"make this one the zoo's)" if config.register == "auto" else "not registered")
    acc = (metrics.get("test") or {}).get("accuracy")
    return {"metrics": metrics, "message": f"saved {out.name}" + (f"; test accuracy {acc:.3f}" if acc is not None else ""),
            "result": {"output": str(out), "registered_as": registered, "note": note, "record": record,
                       "target_data": TARGET_DATA, "seconds": round(seconds, 2),
                       "seconds_per_step": seconds / max(1, trainer.step_count)}}


def _fields(config: FinetuneConfig, ckpt: Path) -> dict:
    return dict(name=f"fine-tune {config.locale} → {config.name}", target=config.locale, method="finetune",
                params={**config.to_dict(), "target_data": TARGET_DATA, "checkpoint": str(ckpt)})


def submit_finetune(runner, ws, config: FinetuneConfig) -> str:
    """Checks the settings (raising TrainError/ExportError before any run is created), then queues
    the fine-tune as a background job; returns the run id."""
    config = check_config(ws, config)
    ckpt = checkpoint_dir(ws, f"{config.name}-{uuid.uuid4().hex[:6]}")
    return launch(finetune_job(ws, config, ckpt), _fields(config, ckpt), runner=runner)


def run_finetune(store, ws, config: FinetuneConfig, echo=None) -> dict:
    """The same job in this thread, stored as a run (the CLI); returns the run row."""
    config = check_config(ws, config)
    ckpt = checkpoint_dir(ws, f"{config.name}-{uuid.uuid4().hex[:6]}")
    return launch(finetune_job(ws, config, ckpt), _fields(config, ckpt), store=store, echo=echo)


def resumable(row: dict) -> bool:
    ckpt = (row.get("params") or {}).get("checkpoint")
    return (row["kind"] == "train" and row["status"] in STOPPED
            and row.get("method") == "finetune" and bool(ckpt) and (Path(ckpt) / "trainer.json").exists())


def _resume_fields(store, run_id: str):
    return resume_fields(store, run_id, resumable, FinetuneConfig, _fields, "fine-tune")


def resume_finetune(runner, ws, run_id: str) -> str:
    """Continues a stopped fine-tune from its last checkpoint as a new run (``parent`` = the old
    one); returns the new run id."""
    config, ckpt, run_fields = _resume_fields(runner.store, run_id)
    return launch(finetune_job(ws, config, ckpt), run_fields, runner=runner)


def resume_finetune_here(store, ws, run_id: str, echo=None) -> dict:
    """:func:`resume_finetune` in this thread (the CLI); returns the finished run row."""
    config, ckpt, run_fields = _resume_fields(store, run_id)
    return launch(finetune_job(ws, config, ckpt), run_fields, store=store, echo=echo)
