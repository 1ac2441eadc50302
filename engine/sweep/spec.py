"""What a sweep is: a spec (targets × methods with parameter grids × number of sources × feature set ×
weighting) and its expansion into cells, each a :class:`~engine.experiments.Candidate` with a key.

A spec file is YAML or JSON::

    name: merge-vs-ensemble
    targets: [de-DE, nl-NL]        # or "all": every locale with test data
    sources: [2, 3]                # number of URIEL top-K sources (leave-one-out: never the target)
    features: [syntax_knn]         # URIEL feature sets, 'a+b' joins several
    weighting: [uriel]             # uriel (Sinkhorn weights), equal, and/or predicted (sources and
                                   # weights from predicted transfer, engine.transfer)
    methods:
      - merge: linear
      - merge: ties
        grid: {density: [0.2, 0.5]}
      - ensemble: soft
    seed: 0
    equal_merge_baseline: true     # add the equal-weight linear merge of the same sources as a cell
    mlflow: ./mlruns               # optional: log the sweep and every cell to this local MLflow store

The cell key hashes the workspace's content (source, base and tokenizer fingerprints, the data's
fingerprints, max length) with the recipe, so a cell computed once — by any sweep, on any executor —
is found again and never recomputed.
"""
from __future__ import annotations

import itertools
import json
import math
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Union

from ..experiments import DATA_MODES, WEIGHTINGS, Candidate, CandidateError, suggest_sources
from ..limits import check_setting
from ..runinfo import KEY_SPLITS, candidate_key, target_data_use
from ..workspace import Workspace

MAX_VARIANTS = 10_000     # grid combinations per method
MAX_CELLS = 100_000       # cells of one sweep (targets × methods × grids × axes)
SWEEP_SPLITS = KEY_SPLITS


class SweepSpecError(ValueError):
    """A sweep spec that cannot be run as written; the message names the field."""


@dataclass
class MethodSpec:
    kind: str                                   # "merge" | "ensemble"
    method: str
    grid: Dict[str, List[Any]] = field(default_factory=dict)

    def variants(self) -> List[Dict[str, Any]]:
        """Every combination of the grid's values (one empty dict when there is no grid)."""
        names = sorted(self.grid)
        return [dict(zip(names, combo)) for combo in itertools.product(*(self.grid[n] for n in names))]

    @property
    def label(self) -> str:
        return f"{self.kind}:{self.method}"


@dataclass
class SweepSpec:
    methods: List[MethodSpec]
    targets: Union[str, List[str]] = "all"
    sources: List[int] = field(default_factory=lambda: [3])
    features: List[str] = field(default_factory=lambda: ["syntax_knn"])
    weighting: List[str] = field(default_factory=lambda: ["uriel"])
    name: str = "sweep"
    seed: int = 0
    data_mode: str = "sources"
    data_examples: int = 64
    sinkhorn_iters: int = 20
    equal_merge_baseline: bool = True
    mlflow: str = ""                            # a local MLflow tracking URI ("" = none), made absolute
    target_text: Dict[str, str] = field(default_factory=dict)  # locale -> a UTF-8 sentence-per-line file

    def to_dict(self) -> Dict[str, Any]:
        return asdict(self)


def _as_list(value, name: str) -> list:
    if isinstance(value, (list, tuple)):
        if not value:
            raise SweepSpecError(f"sweep spec: '{name}' is empty")
        return list(value)
    return [value]


def _method_spec(item, i: int) -> MethodSpec:
    """Accepts {kind: merge, method: ties, grid: {...}}, {merge: ties, grid: {...}} or 'merge:ties'."""
    if isinstance(item, MethodSpec):
        item = asdict(item)
    if isinstance(item, str):
        if ":" not in item:
            raise SweepSpecError(f"sweep spec: methods[{i}] '{item}' must look like 'merge:ties'")
        kind, method = item.split(":", 1)
        item = {"kind": kind.strip(), "method": method.strip()}
    if not isinstance(item, dict):
        raise SweepSpecError(f"sweep spec: methods[{i}] must be a mapping or 'kind:method'")
    item = dict(item)
    for kind in ("merge", "ensemble"):
        if kind in item and "kind" not in item:
            item["kind"], item["method"] = kind, item.pop(kind)
    unknown = set(item) - {"kind", "method", "grid"}
    if unknown:
        raise SweepSpecError(f"sweep spec: methods[{i}] has unknown field(s) {sorted(unknown)}")
    kind, method = item.get("kind"), item.get("method")
    if kind == "merge":
        from ..merge import MERGES as registry
    elif kind == "ensemble":
        from ..ensemble import ENSEMBLES as registry
    else:
        raise SweepSpecError(f"sweep spec: methods[{i}] kind must be merge or ensemble, got {kind!r}")
    if method not in registry:
        raise SweepSpecError(f"sweep spec: methods[{i}]: unknown {kind} method {method!r}; "
                             f"known: {', '.join(registry.names())}")
    grid_in = item.get("grid") or {}
    if not isinstance(grid_in, dict):
        raise SweepSpecError(f"sweep spec: methods[{i}] ({kind}:{method}) grid must be a mapping")
    grid = {str(k): _as_list(v, f"methods[{i}].grid.{k}") for k, v in grid_in.items()}
    combos = math.prod(len(v) for v in grid.values())
    if combos > MAX_VARIANTS:  # checked before expanding: a big grid would hang right here
        raise SweepSpecError(f"sweep spec: methods[{i}] ({kind}:{method}) grid has {combos:,} "
                             f"combinations; at most {MAX_VARIANTS:,} per method")
    spec = MethodSpec(kind, method, grid)
    for variant in spec.variants():      # every grid value checked against the method's schema now
        try:
            registry.get(method).resolve(variant)
        except ValueError as exc:
            raise SweepSpecError(f"sweep spec: methods[{i}]: {exc}") from None
    return spec


def parse_spec(data: Dict[str, Any]) -> SweepSpec:
    """A validated :class:`SweepSpec` from a plain mapping (errors name the field)."""
    if not isinstance(data, dict):
        raise SweepSpecError("a sweep spec must be a mapping at its top level")
    known = set(SweepSpec.__dataclass_fields__)
    unknown = set(data) - known
    if unknown:
        raise SweepSpecError(f"sweep spec: unknown field(s) {sorted(unknown)}; known: {sorted(known)}")
    if not data.get("methods"):
        raise SweepSpecError("sweep spec: 'methods' is required (e.g. [merge: linear, ensemble: soft])")
    methods = [_method_spec(m, i) for i, m in enumerate(_as_list(data["methods"], "methods"))]
    targets = data.get("targets", "all")
    if targets != "all":
        targets = [str(t) for t in _as_list(targets, "targets")]
    sources = _as_list(data.get("sources", [3]), "sources")
    if not all(isinstance(k, int) and not isinstance(k, bool) for k in sources):
        raise SweepSpecError(f"sweep spec: 'sources' must be whole numbers ≥ 1, got {sources}")
    for k in sources:
        check_setting("sources", k, "sweep spec: ", SweepSpecError)
    from ..languages import parse_features

    features = [str(f) for f in _as_list(data.get("features", ["syntax_knn"]), "features")]
    for f in features:
        try:
            parse_features(f)
        except ValueError as exc:
            raise SweepSpecError(f"sweep spec: features: {exc}") from None
    weighting = [str(w) for w in _as_list(data.get("weighting", ["uriel"]), "weighting")]
    bad = [w for w in weighting if w not in WEIGHTINGS]
    if bad:
        raise SweepSpecError(f"sweep spec: weighting {bad} unknown; use {list(WEIGHTINGS)}")
    spec = SweepSpec(methods=methods, targets=targets, sources=sources, features=features,
                     weighting=weighting, **{k: data[k] for k in ("name", "seed", "data_mode", "data_examples",
                                                                  "sinkhorn_iters", "equal_merge_baseline")
                                             if k in data})
    if data.get("mlflow"):
        from ..mlflow_mirror import MlflowMirrorError, normalise_uri

        try:
            spec.mlflow = normalise_uri(str(data["mlflow"]))
        except MlflowMirrorError as exc:
            raise SweepSpecError(f"sweep spec: mlflow: {exc}") from None
    spec.target_text = target_text_files(data.get("target_text") or {})
    if spec.data_mode not in DATA_MODES:
        raise SweepSpecError(f"sweep spec: data_mode must be one of {DATA_MODES}, got {spec.data_mode!r}")
    for name in ("seed", "data_examples", "sinkhorn_iters"):
        value = getattr(spec, name)
        if not isinstance(value, int) or isinstance(value, bool):
            raise SweepSpecError(f"sweep spec: '{name}' must be a whole number, got {value!r}")
        check_setting(name, value, "sweep spec: ", SweepSpecError)
    cells = (sum(len(m.variants()) for m in methods) * len(sources) * len(features)
             * len(weighting) * (1 if targets == "all" else len(targets)))
    if cells > MAX_CELLS:
        raise SweepSpecError(f"sweep spec: {cells:,} cells per target set is more than {MAX_CELLS:,}; "
                             f"split it into several sweeps")
    return spec


def target_text_files(value) -> Dict[str, str]:
    """``target_text: {locale: file}``: each target's unlabelled text for the methods that learn
    on it (adamerging, entropy_min); each file checked now, kept as an absolute path."""
    from ..data.target_text import TargetTextError, read_target_text

    if not isinstance(value, dict):
        raise SweepSpecError("sweep spec: 'target_text' must map target locales to text files, "
                             "e.g. {da-DK: da.txt}")
    out = {}
    for locale, path in value.items():
        try:
            out[str(locale)] = str(Path(read_target_text(str(path)).path).resolve())
        except TargetTextError as exc:
            raise SweepSpecError(f"sweep spec: target_text.{locale}: {exc}") from None
    return out


def load_spec(source: Union[str, Path, Dict[str, Any], SweepSpec]) -> SweepSpec:
    """A spec from a YAML/JSON file, a mapping, or a spec (returned as it is)."""
    if isinstance(source, SweepSpec):
        return source
    if isinstance(source, dict):
        return parse_spec(source)
    path = Path(source)
    if not path.is_file():
        raise SweepSpecError(f"sweep spec file not found: {path}")
    text = path.read_text(encoding="utf-8")
    try:
        if path.suffix.lower() == ".json":
            data = json.loads(text)
        else:
            import yaml

            data = yaml.safe_load(text)
    except Exception as exc:  # syntax errors of either format, one clear line
        raise SweepSpecError(f"cannot read sweep spec {path}: {exc}") from None
    return parse_spec(data)


# ---- cells -----------------------------------------------------------------------------------------
@dataclass
class Cell:
    key: str
    candidate: Candidate
    axes: Dict[str, Any]          # k (sources asked for), features, weighting
    role: str                     # "method" | "equal_merge" (baseline added by the sweep)

    @property
    def forward_passes(self) -> int:
        return 1 if self.candidate.kind == "merge" else len(self.candidate.sources)

    def run_params(self) -> Dict[str, Any]:
        """What the stored run's ``params`` hold: the method's grid values, the axes, the key."""
        c = self.candidate
        use = target_data_use(c)
        params = {**c.params, **self.axes, "seed": c.seed, "data_mode": c.data_mode,
                  "data_examples": c.data_examples, "cell_key": self.key, "role": self.role,
                  "target_data": use["target"], "source_data": use["source_data"]}
        if use.get("text"):  # a user's text file: name, lines, sha256
            params["target_text"] = use["text"]
        return params


def cell_key(ws: Workspace, cand: Candidate) -> str:
    """The candidate's content key: the one a page run of the same recipe stores too."""
    return candidate_key(ws, cand)


def sweep_targets(ws: Workspace, spec: SweepSpec) -> List[str]:
    available = ws.target_locales()
    if spec.targets == "all":
        return available
    missing = [t for t in spec.targets if t not in available]
    if missing:
        raise SweepSpecError(f"sweep spec: target(s) {missing} have no test data here; "
                             f"available: {', '.join(available)}")
    return list(spec.targets)


def _text_for(spec: SweepSpec, kind: str, method: str, target: str) -> str:
    """The target's text file for a method that learns on unlabelled target text, else ''."""
    from ..data.target_text import reads_target_text
    from ..runinfo import method_of

    path = spec.target_text.get(target, "")
    return path if path and reads_target_text(kind, method_of(kind, method).traits) else ""


def expand_cells(ws: Workspace, spec: SweepSpec) -> List[Cell]:
    """Every cell of the sweep, grouped by target, duplicates (same key) removed."""
    cells: Dict[str, Cell] = {}
    for target in sweep_targets(ws, spec):
        for k in spec.sources:
            for features in spec.features:
                recipes, source_sets = [], []
                for weighting in spec.weighting:
                    chosen = suggest_sources(ws, target, top_k=k, features=features,
                                             sinkhorn_iters=spec.sinkhorn_iters, weighting=weighting)
                    if not chosen:
                        raise CandidateError(f"no source model is available for target {target}")
                    sources, weights = list(chosen), list(chosen.values())
                    if sorted(sources) not in map(sorted, source_sets):
                        source_sets.append(sources)
                    for m in spec.methods:
                        for variant in m.variants():
                            recipes.append((m.kind, m.method, variant, weighting, sources, weights, "method"))
                if spec.equal_merge_baseline:  # one per source set: predicted may choose other sources
                    recipes += [("merge", "linear", {}, "equal", sources, [1.0 / len(sources)] * len(sources),
                                 "equal_merge") for sources in source_sets]
                for kind, method, params, weighting, sources, weights, role in recipes:
                    cand = Candidate(kind, method, target, sources, [float(w) for w in weights], dict(params),
                                     spec.seed, spec.data_mode, spec.data_examples,
                                     target_text=_text_for(spec, kind, method, target))
                    key = cell_key(ws, cand)
                    if key not in cells:
                        cells[key] = Cell(key, cand, {"k": k, "features": features, "weighting": weighting}, role)
    return list(cells.values())
