"""What a stored run is, beyond its numbers: its content key (the same for the same recipe on the
same inputs, whether it ran from a page, a sweep or the CLI), the target-language data it saw before
the test, where it came from, and how much of the gap to the target's own model it closes.

Compare, the Sweeps views and the sweep report read these, so a learned fusion fitted on the
target's labelled dev data is never shown as if it were a zero-shot merge.
"""
from __future__ import annotations

import hashlib
import json
from typing import TYPE_CHECKING, Dict, Optional

if TYPE_CHECKING:
    from .experiments import Candidate
    from .workspace import Workspace

# What target-language data a run used, weakest first (what Compare marks every run with); a
# training run that fits the target's own labelled train split is the target's own model in kind
TARGET_DATA = ("none", "unlabelled target text", "labelled target dev", "labelled target train")
TRAIN_LABELS = "labelled target train"
KEY_VERSION = 2
KEY_SPLITS = ("validation", "test")


def method_of(kind: str, name: str):
    if kind == "merge":
        from .merge import MERGES as registry
    else:
        from .ensemble import ENSEMBLES as registry
    return registry.get(name)


def target_data_use(cand: "Candidate") -> Dict[str, object]:
    """Which target data the recipe sees before it is tested, from the method's registry traits
    and the candidate's data_mode: ``target`` is one of :data:`TARGET_DATA`, ``source_data`` says
    whether source-language data was used as well. A zero-shot recipe is ``none``; a merge never
    reads more than its ``data_use`` trait declares (the conformance suite checks it)."""
    method = method_of(cand.kind, cand.method)
    traits = method.traits
    target, source = "none", False
    if cand.kind == "merge" and traits.needs_data and traits.data_use != "none":
        if "score" in traits.context:               # chooses by the target's validation accuracy
            target = "labelled target dev"
        if "texts" in traits.context:               # target text, labels withheld (adamerging)
            target = max(target, "unlabelled target text", key=TARGET_DATA.index)
        if "batches" in traits.context:
            if cand.data_mode in ("target", "both"):
                labels = traits.uses_labels
                if isinstance(labels, str):         # a parameter says (Fisher: empirical/sampled)
                    name, value = labels.split("=", 1)
                    labels = str(method.resolve(cand.params)[name]) == value
                target = max(target, "labelled target dev" if labels else "unlabelled target text",
                             key=TARGET_DATA.index)
            source = cand.data_mode in ("sources", "both")
    elif cand.kind == "ensemble" and traits.needs_fit:
        if traits.data_use == "target_text":  # labels withheld
            target = "unlabelled target text"
        elif cand.data_mode == "target":
            target = "labelled target dev"
        else:
            source = True
    use = {"target": target, "source_data": source}
    text = text_file_use(cand, traits)
    if text:
        use["text"] = text
    return use


def text_file_use(cand: "Candidate", traits) -> str:
    """'file: NAME, N lines, sha256 HEX' when the recipe learns on a user's target text file
    (else ''): what a run records beside 'unlabelled target text'."""
    from .data.target_text import read_target_text, reads_target_text

    if not getattr(cand, "target_text", "") or not reads_target_text(cand.kind, traits):
        return ""
    return read_target_text(cand.target_text).describe()


def _keyed_params(method, params: Dict[str, object]) -> Dict[str, object]:
    """The parameters that enter the key: a speed knob at its default is left out (``Param.speed``),
    and elsewhere tagged with its stream version where it has one (``Param.stream``)."""
    speed = {p.name: p for p in method.params if p.speed}
    keyed = {}
    for k, v in params.items():
        knob = speed.get(k)
        if knob is None:
            keyed[k] = v
        elif v != knob.default:
            keyed[k] = f"{v}@{knob.stream}" if knob.stream else v
    return keyed


def recipe_key_fields(cand: "Candidate") -> Dict[str, object]:
    """The recipe as it determines the numbers: parameters with their defaults filled in, weights
    normalised (4 decimals, as the pages edit them), and seed / data settings only where the method
    reads them, so a page run and a sweep cell of the same experiment get the same key."""
    method = method_of(cand.kind, cand.method)
    traits = method.traits
    total = float(sum(cand.weights)) or 1.0
    fields: Dict[str, object] = {
        "kind": cand.kind, "method": cand.method, "target": cand.target, "sources": list(cand.sources),
        "weights": [round(float(w) / total, 4) for w in cand.weights],
        "params": json.loads(json.dumps(_keyed_params(method, method.resolve(cand.params)), default=str))}
    if traits.version != 1:  # absent at 1: keys stored before versions existed stay valid
        fields["version"] = traits.version
    uses_data = (cand.kind == "merge" and "batches" in traits.context) or \
        (cand.kind == "ensemble" and traits.needs_fit and traits.data_use == "target_dev")
    if uses_data:
        fields["data_mode"] = cand.data_mode
        if cand.kind == "merge":
            fields["data_examples"] = cand.data_examples
    if traits.random or traits.needs_fit or traits.needs_data:
        fields["seed"] = cand.seed
    if text_file_use(cand, traits):  # the file's content, not its path (absent: the train split)
        from .data.target_text import read_target_text

        fields["target_text_sha256"] = read_target_text(cand.target_text).sha256
    return fields


def candidate_key(ws: "Workspace", cand: "Candidate") -> str:
    """The content key of a candidate run: the same for the same recipe on the same inputs, whether
    it ran from a page, a sweep or the CLI (a sweep reuses any finished run with its key)."""
    from .experiments import inputs_fingerprint

    blob = json.dumps({"v": KEY_VERSION, "ws": inputs_fingerprint(ws, cand), "recipe": recipe_key_fields(cand),
                       "splits": KEY_SPLITS}, sort_keys=True, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:24]


EVOLVE_TARGET_DATA = {"target": "labelled target dev", "source_data": False}  # fitness on the dev split
TARGET_DATA_MARKS = {"none": "○", "unlabelled target text": "◐", "labelled target dev": "●",
                     TRAIN_LABELS: "●"}


def run_target_data(run: Dict[str, object]) -> Dict[str, object]:
    """What target data a stored run used: as recorded, or (older runs) derived from its recipe, so
    no run shows blank. ``{"target": one of TARGET_DATA or "unknown", "source_data": bool}``."""
    result, params = run.get("result") or {}, run.get("params") or {}
    if isinstance(result.get("target_data"), dict):
        return dict(result["target_data"])
    if str(params.get("target_data", "")).startswith(TRAIN_LABELS):  # a label curve: "… (n examples per point)"
        return {"target": TRAIN_LABELS, "source_data": False}
    if params.get("target_data") in TARGET_DATA:
        return {"target": params["target_data"], "source_data": bool(params.get("source_data"))}
    if run.get("kind") == "evolve":
        return dict(EVOLVE_TARGET_DATA)
    from .experiments import Candidate

    try:
        method = method_of(str(run.get("kind")), str(run.get("method")))
        names = {p.name for p in method.params}
        default_mode = "target" if run.get("kind") == "ensemble" else "sources"  # what the pages stored
        cand = Candidate(str(run["kind"]), str(run["method"]), str(run.get("target")), list(run.get("sources") or []),
                         list(run.get("weights") or []), {k: v for k, v in params.items() if k in names},
                         int(params.get("seed", 0)), str(params.get("data_mode", default_mode)),
                         int(params.get("data_examples", 64)))
        return target_data_use(cand)
    except (KeyError, ValueError, TypeError):
        return {"target": "unknown", "source_data": False}


def target_data_text(use: Dict[str, object]) -> str:
    """One cell of a table: the mark and the words, '+ source data' when that was used too."""
    target = str(use.get("target", "unknown"))
    text = f" ({use['text']})" if use.get("text") else ""
    return (f"{TARGET_DATA_MARKS.get(target, '?')} {target}{text}"
            + (" + source data" if use.get("source_data") else ""))


def run_origin(run: Dict[str, object]) -> str:
    """Where a stored run came from: page, CLI, sweep or sweep (CLI) (older runs: from how they were
    stored)."""
    result = run.get("result") or {}
    if result.get("origin"):
        return str(result["origin"])
    if result.get("sweep") or (run.get("params") or {}).get("role"):
        return "sweep"
    return "page"


def gap_closed_vs(accuracy: Optional[float], base: Dict[str, Dict[str, object]],
                  baseline: str = "best_source") -> Optional[float]:
    """The sweep report's gap closed for one run: (accuracy − baseline) / (own model − baseline),
    with the best chosen source as the baseline here (a page run has no equal-weight merge beside
    it). None when undefined (a value missing, or the own model not better than the baseline)."""
    from .stats import gap_closed

    low = (base.get(baseline) or {}).get("accuracy")
    high = (base.get("target_model") or {}).get("accuracy")
    if accuracy is None or low is None or high is None:
        return None
    value = float(gap_closed([accuracy], [float(low)], [float(high)])[0])
    return None if value != value else value
