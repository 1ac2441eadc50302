"""The model zoo: one fine-tuned sequence classifier per source locale, plus the pretrained base.

A zoo is found from a manifest (``zoo.json``) or by scanning a folder for names matching a pattern
such as MergingUriel's ``{base}_massive_k_{locale}``. Models may also be hub ids (used only from the
local HF cache when offline). Weights load through safetensors only; ``trust_remote_code`` is never set.
"""
from __future__ import annotations

import hashlib
import json
import os
import re
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, List, Optional

import torch
from safetensors import safe_open
from safetensors.torch import load_file

from .resident import RESIDENT

MANIFEST = "zoo.json"
DEFAULT_PATTERN = "{base}_massive_k_{locale}"
LOCALE_RE = r"[a-z]{2,3}-[A-Z]{2}"


class ZooError(ValueError):
    """A zoo the user pointed at cannot be used as it is; the message says what to fix."""


def resolve_model_dir(ref: str, root: Optional[Path] = None) -> Path:
    """A local folder (relative to ``root``) or a hub id already in the local HF cache."""
    candidates = [Path(ref)] if root is None else [root / ref, Path(ref)]
    for c in candidates:
        if c.is_dir():
            return c
    if re.fullmatch(r"[\w.-]+/[\w.-]+", ref):
        try:
            from huggingface_hub import snapshot_download

            offline = os.environ.get("HF_HUB_OFFLINE", "0") not in ("0", "", "false")
            return Path(snapshot_download(ref, local_files_only=offline,
                                          allow_patterns=["*.json", "*.safetensors", "*.model", "*.txt"]))
        except Exception as exc:  # network refused, not cached, gated...
            raise ZooError(f"model '{ref}' is not a local folder and could not be fetched from the "
                           f"hub cache ({type(exc).__name__}); download it beforehand or point at a "
                           f"local folder") from None
    raise ZooError(f"model folder '{ref}' does not exist" + (f" (looked under {root})" if root else ""))


def safetensors_files(model_dir: Path) -> List[Path]:
    files = sorted(model_dir.glob("*.safetensors"))
    if not files:
        if any(model_dir.glob("*.bin")) or any(model_dir.glob("*.pt")):
            raise ZooError(f"{model_dir} has only pickled weights (*.bin/*.pt); this tool loads "
                           f"safetensors only — convert them with safetensors' convert script first")
        raise ZooError(f"{model_dir} has no model.safetensors")
    return files


def read_shapes(model_dir: Path) -> Dict[str, tuple]:
    """Tensor name -> shape from the safetensors headers, without loading the weights."""
    shapes: Dict[str, tuple] = {}
    for f in safetensors_files(model_dir):
        try:
            with safe_open(str(f), framework="pt") as handle:
                for key in handle.keys():
                    shapes[key] = tuple(handle.get_slice(key).get_shape())
        except Exception as exc:
            raise ZooError(f"{f} is not a readable safetensors file: {exc}") from None
    return shapes


def nonfinite_error(what: str, file: Path, key: str, t: torch.Tensor) -> "ZooError":
    bad = int((~torch.isfinite(t)).sum())
    return ZooError(f"{what}: tensor '{key}' in {file} has {bad} NaN/inf value(s) of {t.numel()}: "
                    f"the weights are broken; rebuild or re-download this model (nothing was scored)")


def load_state_dict(model_dir: Path, check_finite: bool = True, label: str = "") -> Dict[str, torch.Tensor]:
    """All tensors of a model folder; ``label`` (e.g. the locale) names the model in errors."""
    state: Dict[str, torch.Tensor] = {}
    for f in safetensors_files(model_dir):
        try:
            part = load_file(str(f))
        except Exception as exc:
            raise ZooError(f"{f} is corrupt or not safetensors: {exc}") from None
        if check_finite:
            for key, t in part.items():
                if t.is_floating_point() and not torch.isfinite(t).all():
                    raise nonfinite_error(label or model_dir.name, f, key, t)
        state.update(part)
    return state


def check_model_finite(model: torch.nn.Module, model_dir: Path, label: str = "") -> None:
    """Every floating tensor of a loaded model is finite, else a ZooError naming the model and the
    file that holds the bad tensor (NaN weights would otherwise score as a silent 1/C accuracy)."""
    for key, t in model.state_dict().items():
        if t.is_floating_point() and not torch.isfinite(t).all():
            files = safetensors_files(model_dir)
            holder = next((f for f in files if _holds(f, key)), files[0] if len(files) == 1 else model_dir)
            raise nonfinite_error(label or model_dir.name, holder, key, t)


def _holds(file: Path, key: str) -> bool:
    """Whether a safetensors file holds ``key`` (also under a prefix the model adds or drops)."""
    with safe_open(str(file), framework="pt") as handle:
        return any(k == key or k.endswith("." + key) or key.endswith("." + k) for k in handle.keys())


_FP_CACHE: Dict[tuple, str] = {}


def fingerprint_dir(model_dir: Path) -> str:
    """Content hash of a model's weights + config (memoised on size and mtime)."""
    files = safetensors_files(model_dir) + [model_dir / "config.json"]
    stamp = tuple((str(f), f.stat().st_size, f.stat().st_mtime_ns) for f in files if f.exists())
    if stamp not in _FP_CACHE:
        h = hashlib.sha256()
        for f in files:
            if f.exists():
                with open(f, "rb") as handle:
                    for chunk in iter(lambda: handle.read(1 << 22), b""):
                        h.update(chunk)
        _FP_CACHE[stamp] = h.hexdigest()[:24]
    return _FP_CACHE[stamp]


def fingerprint_state(state: Dict[str, torch.Tensor]) -> str:
    """Content hash of an in-memory state dict (for caching the logits of merged models)."""
    h = hashlib.sha256()
    for key in sorted(state):
        t = state[key].detach().to("cpu").contiguous()
        h.update(key.encode())
        h.update(str(t.dtype).encode())
        h.update(t.view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()[:24]


def read_config(model_dir: Path) -> dict:
    path = model_dir / "config.json"
    if not path.exists():
        raise ZooError(f"{model_dir} has no config.json")
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise ZooError(f"{path} is not valid JSON: {exc}") from None


def label_list(config: dict) -> List[str]:
    id2label = config.get("id2label") or {}
    return [id2label[k] for k in sorted(id2label, key=lambda k: int(k))]


ARCH_FIELDS = ("model_type", "hidden_size", "num_hidden_layers", "num_attention_heads",
               "intermediate_size", "vocab_size")


@dataclass
class Zoo:
    """Source models by locale, the pretrained base, and their shared label list."""

    root: Path
    models: Dict[str, Path]
    base: Optional[Path] = None
    name: str = "zoo"
    info: Dict[str, object] = field(default_factory=dict)

    # ---- discovery -------------------------------------------------------------------------
    @classmethod
    def open(cls, path: str | Path, pattern: str = DEFAULT_PATTERN, base: Optional[str] = None) -> "Zoo":
        """A manifest file, a folder with ``zoo.json``, or a folder scanned with ``pattern``."""
        path = Path(path)
        if path.is_file():
            return cls.from_manifest(path)
        if (path / MANIFEST).is_file():
            return cls.from_manifest(path / MANIFEST)
        return cls.discover(path, pattern, base)

    @classmethod
    def from_manifest(cls, manifest: str | Path) -> "Zoo":
        manifest = Path(manifest)
        try:
            spec = json.loads(manifest.read_text())
        except FileNotFoundError:
            raise ZooError(f"manifest {manifest} does not exist") from None
        except json.JSONDecodeError as exc:
            raise ZooError(f"manifest {manifest} is not valid JSON: {exc}") from None
        if not isinstance(spec.get("models"), dict) or not spec["models"]:
            raise ZooError(f"manifest {manifest} needs a non-empty 'models' mapping locale -> folder")
        root = manifest.parent
        models = {loc: resolve_model_dir(ref, root) for loc, ref in spec["models"].items()}
        base = resolve_model_dir(spec["base"], root) if spec.get("base") else None
        info = {k: v for k, v in spec.items() if k not in ("models", "base")}
        return cls(root, dict(sorted(models.items())), base, spec.get("name", root.name), info)

    @classmethod
    def discover(cls, folder: str | Path, pattern: str = DEFAULT_PATTERN,
                 base: Optional[str] = None) -> "Zoo":
        folder = Path(folder)
        if not folder.is_dir():
            raise ZooError(f"zoo folder '{folder}' does not exist")
        if "{locale}" not in pattern:
            raise ZooError(f"name pattern '{pattern}' must contain {{locale}}")
        regex = re.escape(pattern).replace(r"\{base\}", r"(?P<base>.+?)").replace(
            r"\{locale\}", rf"(?P<locale>{LOCALE_RE})")
        models = {}
        for entry in sorted(folder.iterdir()):
            m = re.fullmatch(regex, entry.name)
            if m and entry.is_dir():
                models[m.group("locale")] = entry
        if not models:
            raise ZooError(f"no model folders in {folder} match the pattern '{pattern}'")
        base_dir = resolve_model_dir(base, folder) if base else None
        return cls(folder, models, base_dir, folder.name, {"pattern": pattern})

    # ---- access ----------------------------------------------------------------------------
    @property
    def locales(self) -> List[str]:
        return sorted(self.models)

    def path(self, locale: str) -> Path:
        if locale not in self.models:
            raise ZooError(f"the zoo has no model for '{locale}'; it has: {', '.join(self.locales)}")
        return self.models[locale]

    def config(self, locale: Optional[str] = None) -> dict:
        return read_config(self.path(locale or self.locales[0]))

    @property
    def labels(self) -> List[str]:
        return label_list(self.config())

    def state_dict(self, locale: str) -> Dict[str, torch.Tensor]:
        """The model's weights, kept resident between calls (engine/resident.py): the tensors are
        shared, so never modify them in place."""
        return RESIDENT.get(self.path(locale), lambda d: load_state_dict(d, label=locale))

    def base_state_dict(self) -> Dict[str, torch.Tensor]:
        """The pretrained base, with key names aligned to the classifiers' (prefix added if needed)."""
        if self.base is None:
            raise ZooError("this zoo has no pretrained base model; task-vector merges need one "
                           "(add 'base' to the manifest or pass --base)")
        state = RESIDENT.get(self.base, lambda d: load_state_dict(d, label="the base model"))
        target_keys = set(read_shapes(self.path(self.locales[0])))
        prefix = self.config().get("model_type", "").replace("-", "_")
        if prefix == "xlm_roberta":
            prefix = "roberta"
        if not (set(state) & target_keys) and prefix:
            state = {f"{prefix}.{k}": v for k, v in state.items()}
        missing = set(state) - target_keys
        if set(state) and len(missing) == len(state):
            raise ZooError(f"the base model's tensor names do not match the source models' "
                           f"(e.g. '{next(iter(missing))}')")
        return {k: v for k, v in state.items() if k in target_keys}

    def fingerprint(self, locale: str) -> str:
        return fingerprint_dir(self.path(locale))

    def tokenizer_fingerprint(self) -> str:
        """Hash of the tokenizer files (memoised: it is part of every logits-cache key)."""
        if "_tok_fp" in self.__dict__:
            return self.__dict__["_tok_fp"]
        h = hashlib.sha256()
        folder = self.path(self.locales[0])
        for name in ("tokenizer.json", "tokenizer_config.json", "sentencepiece.bpe.model", "vocab.txt"):
            if (folder / name).exists():
                h.update((folder / name).read_bytes())
        self.__dict__["_tok_fp"] = h.hexdigest()[:16]
        return self.__dict__["_tok_fp"]

    def tokenizer(self):
        from transformers import AutoTokenizer

        return AutoTokenizer.from_pretrained(str(self.path(self.locales[0])), trust_remote_code=False)

    def load_model(self, locale: str):
        return model_from_dir(self.path(locale), label=locale)

    def build_model(self, state: Optional[Dict[str, torch.Tensor]] = None):
        """A classifier with the zoo's architecture, holding ``state`` (e.g. a merge result)."""
        from transformers import AutoConfig, AutoModelForSequenceClassification

        config = AutoConfig.from_pretrained(str(self.path(self.locales[0])), trust_remote_code=False)
        with torch.device("meta"):
            model = AutoModelForSequenceClassification.from_config(config)
        if state is None:  # a copy: the model's parameters are its tensors (assign=True)
            state = {k: v.clone() for k, v in self.state_dict(self.locales[0]).items()}
        missing, unexpected = model.load_state_dict(state, strict=False, assign=True)
        missing = [k for k in missing if "position_ids" not in k]
        if missing or unexpected:
            raise ZooError(f"state dict does not fit the zoo's architecture: missing {missing[:3]}, "
                           f"unexpected {unexpected[:3]}")
        tied = getattr(model, "tie_weights", None)
        if tied:
            model.tie_weights()
        for name, buf in list(model.named_buffers()):
            if buf.is_meta:  # non-persistent buffers (position_ids etc.) are rebuilt on CPU
                module = model.get_submodule(name.rsplit(".", 1)[0]) if "." in name else model
                leaf = name.rsplit(".", 1)[-1]
                if leaf == "position_ids":
                    module.register_buffer(leaf, torch.arange(buf.shape[-1]).expand(buf.shape), persistent=False)
                elif leaf == "token_type_ids":
                    module.register_buffer(leaf, torch.zeros(buf.shape, dtype=torch.long), persistent=False)
                else:
                    raise ZooError(f"cannot rebuild buffer {name}")
        return model.eval()

    # ---- validation ------------------------------------------------------------------------
    def validate(self) -> List[str]:
        """Raises ZooError saying exactly what differs between models; returns notes otherwise."""
        notes: List[str] = []
        configs = {loc: self.config(loc) for loc in self.locales}
        shapes_of = {loc: read_shapes(self.path(loc)) for loc in self.locales}
        # The reference is the majority's model, not the first by name: one odd model is named as
        # the odd one out instead of making all the good ones look wrong.
        signature = {loc: json.dumps([[configs[loc].get(f) for f in ARCH_FIELDS],
                                      label_list(configs[loc]), sorted(shapes_of[loc].items())],
                                     default=str) for loc in self.locales}
        counts = Counter(signature.values())
        ref_loc = max(self.locales, key=lambda loc: counts[signature[loc]])  # first among ties
        agree = counts[signature[ref_loc]]
        ref = (f"{ref_loc} and {agree - 1} other model{'s' if agree > 2 else ''}" if agree > 1
               else ref_loc)
        have = "have" if agree > 1 else "has"
        ref_cfg, ref_shapes = configs[ref_loc], shapes_of[ref_loc]
        ref_labels = label_list(ref_cfg)
        problems = []
        for loc in self.locales:
            if signature[loc] == signature[ref_loc]:
                continue
            cfg = configs[loc]
            for f in ARCH_FIELDS:
                if cfg.get(f) != ref_cfg.get(f):
                    problems.append(f"{loc}: {f}={cfg.get(f)!r} but {ref} {have} {ref_cfg.get(f)!r}")
            labels = label_list(cfg)
            if labels != ref_labels:
                diff = sorted(set(labels) ^ set(ref_labels))
                what = f"labels differ ({', '.join(diff[:5])})" if diff else "same labels in a different order"
                problems.append(f"{loc}: label set differs from {ref}: {what}")
            shapes = shapes_of[loc]
            for key in sorted(set(shapes) | set(ref_shapes)):
                if shapes.get(key) != ref_shapes.get(key):
                    problems.append(f"{loc}: tensor '{key}' has shape {shapes.get(key)} but "
                                    f"{ref} {have} {ref_shapes.get(key)}")
                    break
        if self.base is not None:
            base_cfg = read_config(self.base)
            for f in ARCH_FIELDS[1:]:
                if base_cfg.get(f) != ref_cfg.get(f):
                    problems.append(f"base: {f}={base_cfg.get(f)!r} but the sources have {ref_cfg.get(f)!r}")
            base_keys = set(self.base_state_keys())
            head = sorted(set(ref_shapes) - base_keys)
            if head:
                notes.append(f"base lacks {len(head)} tensors (e.g. the classification head "
                             f"'{head[0]}'): task-vector merges average them linearly")
        else:
            notes.append("no pretrained base: task-vector methods (TA, TIES, DARE, ...) unavailable")
        if problems:
            raise ZooError("the zoo's models are not compatible:\n  " + "\n  ".join(problems))
        return notes

    def base_state_keys(self) -> List[str]:
        keys = list(read_shapes(self.base)) if self.base else []
        target = set(read_shapes(self.path(self.locales[0])))
        if keys and not (set(keys) & target):
            prefix = "roberta" if self.config().get("model_type") == "xlm-roberta" else self.config().get("model_type")
            keys = [f"{prefix}.{k}" for k in keys]
        return [k for k in keys if k in target]

    def parameter_count(self) -> int:
        total = 0
        for shape in read_shapes(self.path(self.locales[0])).values():
            n = 1
            for s in shape:
                n *= s
            total += n
        return total

    def describe(self) -> dict:
        return {"name": self.name, "root": str(self.root), "locales": self.locales,
                "base": str(self.base) if self.base else None, "labels": self.labels,
                "parameters": self.parameter_count(), "model_type": self.config().get("model_type")}


def model_from_dir(model_dir: Path, label: str = ""):
    """A sequence classifier from a local HF folder: safetensors only, no remote code, finite weights."""
    from transformers import AutoModelForSequenceClassification
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()  # the engine reports its own progress
    safetensors_files(model_dir)
    try:
        model = AutoModelForSequenceClassification.from_pretrained(
            str(model_dir), trust_remote_code=False, use_safetensors=True)
    except Exception as exc:
        raise ZooError(f"cannot load {model_dir} as a sequence classifier: {exc}") from None
    check_model_finite(model, model_dir, label)
    return model.eval()
