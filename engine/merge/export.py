"""Writes a merged state dict as a standard Hugging Face folder, with its recipe.

The folder loads with ``AutoModelForSequenceClassification.from_pretrained`` (config and tokenizer
files come from a source/template folder, weights from the state dict) and says how it was made:
``recipe.json`` always, ``mergekit.yaml`` when mergekit 0.1.5 can reproduce the merge.
"""
from __future__ import annotations

import datetime as _dt
import json
import shutil
from pathlib import Path
from typing import Any, Dict, List, Mapping, Optional, Tuple, Union

from safetensors.torch import save_file
from torch import Tensor

from .. import __version__ as ENGINE_VERSION
from ..formats import strict_json_default
from . import MERGES
from .common import MergeError

TOKENIZER_FILES = ("special_tokens_map.json", "added_tokens.json", "sentencepiece.bpe.model",
                   "spiece.model", "vocab.txt", "vocab.json", "merges.txt")
# Why a random merge's rerun differs (tests/test_merge_parity_models.py shows it is the draws only).
RANDOM_NOTE = [
    "Random dropping: this file reproduces the recipe, not the random draws. The engine draws",
    "each tensor's masks from a generator seeded by (seed, tensor name); mergekit draws from one",
    "global generator (--random-seed) tensor after tensor in name order, so its masks differ.",
]


def _template_files(template: Path) -> List[Path]:
    if not (template / "config.json").is_file():
        raise MergeError(f"template folder '{template}' has no config.json")
    files = [template / "config.json"]
    for f in sorted(template.iterdir()):
        if f.is_file() and (f.name.startswith("tokenizer") or f.name in TOKENIZER_FILES):
            files.append(f)
    return files


def mergekit_config(recipe: Mapping[str, Any],
                    out_dtype: str = "float32") -> Tuple[Optional[Dict[str, Any]], str]:
    """The mergekit config (as a dict) reproducing ``recipe``, or None and the reason why not.

    The method's ``to_mergekit`` hook (defined next to its kernel) gives the models and
    parameters; this adds merge_method (the ``mergekit`` trait) and the dtypes."""
    name = recipe["method"]
    method = MERGES.get(name)
    kit = method.traits.mergekit
    if not kit:
        return None, f"mergekit has no '{name}' method"
    if method.hooks.to_mergekit is None:  # a method registered with a mergekit name but no hook
        return None, f"no mergekit translation for '{name}'"
    sources = [str(s) for s in recipe.get("sources", [])]
    weights = [float(w) for w in recipe.get("weights") or [1.0] * len(sources)]
    if len(weights) != len(sources) or not sources:
        return None, "recipe needs one weight per source"
    total = sum(weights)
    weights = [w / total for w in weights]
    params = dict(method.resolve(recipe.get("params") or {}))
    base = recipe.get("base")
    base = None if base is None or str(base) in ("", "None") else str(base)
    parts, reason = method.hooks.to_mergekit(sources, weights, params, base)
    if parts is None:
        return None, reason
    if "base_model" in parts and not parts["base_model"]:
        return None, "recipe has no base model"
    config: Dict[str, Any] = {"merge_method": kit}
    if "base_model" in parts:
        config["base_model"] = parts["base_model"]
    config["models"] = parts["models"]
    config["parameters"] = dict(parts.get("parameters") or {})
    config["dtype"] = "float32"
    config["out_dtype"] = out_dtype
    return config, ""


YAML_DIGITS = 7  # significant digits of floats written to mergekit.yaml (float32 holds ~7)


def yaml_ready(value: Any) -> Any:
    """A copy with floats rounded to YAML_DIGITS significant digits: 0.314, not 0.31400000000000006
    (normalising weights leaves such noise; the rounding is far below what float32 tensors keep)."""
    if isinstance(value, dict):
        return {k: yaml_ready(v) for k, v in value.items()}
    if isinstance(value, list):
        return [yaml_ready(v) for v in value]
    if isinstance(value, float) and value == value and abs(value) != float("inf"):
        return float(f"{value:.{YAML_DIGITS}g}")
    return value


def _yaml(config: Dict[str, Any], header: List[str]) -> str:
    import yaml  # a dependency of transformers

    body = yaml.safe_dump(yaml_ready(config), sort_keys=False, default_flow_style=False, allow_unicode=True)
    return "".join(f"# {line}\n" for line in header) + body


def mergekit_yaml(recipe: Mapping[str, Any], out_dtype: str = "float32") -> Tuple[Optional[str], str]:
    """The mergekit.yaml text reproducing ``recipe`` (with its header comments), or None and the
    reason why not: what an export folder holds and what the MLflow mirror logs for a merge run."""
    config, reason = mergekit_config(recipe, out_dtype)
    if config is None:
        return None, reason
    header = [f"mergekit 0.1.5 config reproducing this '{recipe['method']}' merge (engine {ENGINE_VERSION})."]
    if MERGES.get(recipe["method"]).traits.random:
        header += RANDOM_NOTE
    if config.get("base_model"):
        header.append("Tensors missing from base_model (a classification head) were "
                      "linear-averaged by the engine.")
    return _yaml(config, header), ""


def export_merge(state_dict: Mapping[str, Tensor], template_dir: Union[str, Path],
                 out_dir: Union[str, Path], recipe: Mapping[str, Any], overwrite: bool = False,
                 protected: Optional[Mapping[Path, str]] = None,
                 mergekit_note: Optional[str] = None) -> Path:
    """Writes ``out_dir`` = config + tokenizer of ``template_dir``, model.safetensors, recipe.json
    and (when mergekit can express it, and no ``mergekit_note`` says why not) mergekit.yaml;
    returns ``out_dir``.

    recipe: at least ``method``; usually params, sources (paths/ids, used verbatim in
    mergekit.yaml), weights, seed, base. engine_version and a UTC timestamp are added; a merged
    dict's report (``state_dict.report``) is added as ``report``. The folder is written whole or
    not at all (see :func:`engine.export_guard.export_folder`): never into ``protected`` folders
    (a zoo's models and base), never over a non-empty folder unless ``overwrite``.
    """
    from ..export_guard import check_export_dir, export_folder

    template, out = Path(template_dir), Path(out_dir)
    if "method" not in recipe or recipe["method"] not in MERGES:
        raise MergeError(f"recipe names no known merge method: {recipe.get('method')!r}")
    if not state_dict:
        raise MergeError("nothing to export: the state dict is empty")
    files = _template_files(template)
    check_export_dir(out, protected, overwrite=True)  # a zoo's folder is named as such first
    if out.resolve() == template.resolve():
        raise MergeError(f"export folder '{out}' is the template folder; choose another")
    protected = {template.resolve(): "the template model folder", **(protected or {})}
    with export_folder(out, protected, overwrite) as tmp:
        _write_folder(tmp, state_dict, files, recipe, mergekit_note)
    return out


def _write_folder(out: Path, state_dict: Mapping[str, Tensor], files: List[Path],
                  recipe: Mapping[str, Any], mergekit_note: Optional[str]) -> None:
    for f in files:
        shutil.copyfile(f, out / f.name)
    tensors, seen = {}, set()
    for key, t in state_dict.items():
        t = t.detach().to("cpu").contiguous()
        if t.untyped_storage().data_ptr() in seen:  # safetensors refuses shared storage
            t = t.clone()
        seen.add(t.untyped_storage().data_ptr())
        tensors[key] = t
    save_file(tensors, str(out / "model.safetensors"), metadata={"format": "pt"})

    record = dict(recipe)
    record.setdefault("engine_version", ENGINE_VERSION)
    record.setdefault("created", _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"))
    report = getattr(state_dict, "report", None)
    if report is not None and "report" not in record:
        record["report"] = report.to_dict()
    float_dtypes = {t.dtype for t in tensors.values() if t.is_floating_point()}
    out_dtype = str(float_dtypes.pop()).replace("torch.", "") if len(float_dtypes) == 1 \
        else "float32"
    text, reason = (None, mergekit_note) if mergekit_note else mergekit_yaml(record, out_dtype)
    if text is None:
        record["mergekit_yaml"] = None
        record["mergekit_note"] = reason
    else:
        (out / "mergekit.yaml").write_text(text, encoding="utf-8")
        record["mergekit_yaml"] = "mergekit.yaml"
    (out / "recipe.json").write_text(json.dumps(record, indent=2, default=strict_json_default,
                                                ensure_ascii=False), encoding="utf-8")
