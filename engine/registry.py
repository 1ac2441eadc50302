"""One registry per kind of method (merges, ensembles), each entry a function plus its parameter schema.

The schema is what the UI draws controls from and what the evolutionary search mutates, so a new
method needs exactly one decorated function in one file.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field, fields
from typing import Any, Callable, Dict, Iterable, List, Optional, Sequence, Tuple


@dataclass(frozen=True)
class Param:
    """A declared parameter: its type, range, default, and whether it takes one value per model."""

    name: str
    kind: str  # "float" | "int" | "bool" | "choice" | "text"
    default: Any
    low: Optional[float] = None
    high: Optional[float] = None
    choices: Tuple[Any, ...] = ()
    per_model: bool = False
    low_open: bool = False  # True: the low bound itself is not allowed, e.g. density in (0, 1]
    help: str = ""
    # A speed knob (exact vs fast draws): searches never tune it, and at its default it stays out
    # of a run's content key, so runs stored before the knob existed are still found.
    speed: bool = False
    # A speed knob whose non-default values draw a versioned stream: they enter the content key as
    # "value@stream", so runs made with an older stream are not reused (e.g. DARE rng='fast').
    stream: str = ""

    def check(self, value: Any, where: str = "") -> Any:
        """Returns the value coerced to the declared type, or raises ValueError saying why."""
        label = f"{where}parameter '{self.name}'"
        if self.per_model and isinstance(value, (list, tuple)):
            return [Param(self.name, self.kind, self.default, self.low, self.high, self.choices,
                          False, self.low_open).check(v, where) for v in value]
        if self.kind == "bool":
            if isinstance(value, bool):
                return value
            raise ValueError(f"{label} must be true or false, got {value!r}")
        if self.kind == "text":  # a path or a name (data sources' settings)
            if isinstance(value, str):
                return value
            raise ValueError(f"{label} must be text, got {value!r}")
        if self.kind == "choice":
            if value in self.choices:
                return value
            raise ValueError(f"{label} must be one of {list(self.choices)}, got {value!r}")
        try:
            number = float(value)
        except (TypeError, ValueError):
            raise ValueError(f"{label} must be a number, got {value!r}") from None
        if math.isnan(number) or math.isinf(number):
            raise ValueError(f"{label} must be finite, got {value!r}")
        if self.kind == "int":
            if number != int(number):
                raise ValueError(f"{label} must be a whole number, got {value!r}")
            number = int(number)
        if self.low is not None and (number < self.low or (self.low_open and number == self.low)):
            bracket = "(" if self.low_open else "["
            raise ValueError(f"{label} must be in {bracket}{self.low}, {self.high}], got {value!r}")
        if self.high is not None and number > self.high:
            bracket = "(" if self.low_open else "["
            raise ValueError(f"{label} must be in {bracket}{self.low}, {self.high}], got {value!r}")
        return number

    def to_dict(self) -> Dict[str, Any]:
        return {"name": self.name, "kind": self.kind, "default": self.default, "low": self.low,
                "high": self.high, "low_open": self.low_open, "choices": list(self.choices), "per_model": self.per_model,
                "help": self.help}


# how the words of a method id are written in its title (acronyms and proper names)
TITLE_WORDS = {"ties": "TIES", "dare": "DARE", "della": "DELLA", "slerp": "SLERP", "regmean": "RegMean",
               "mlp": "MLP", "fisher": "Fisher", "cmaes": "CMA-ES", "evomerge": "EvoMerge"}


TITLES = {"soft": "Soft vote", "majority": "Majority vote", "weighted_majority": "Weighted majority vote",
          "max": "Max probability", "inverse_variance": "Inverse-variance"}


def method_title(name: str) -> str:
    """'breadcrumbs_ties' -> 'Breadcrumbs-TIES', 'weighted_logits' -> 'Weighted logits'."""
    if name in TITLES:
        return TITLES[name]
    words = [w for w in name.split("_") if w]
    if not words:
        return name
    if len(words) == 2 and words[1] in ("ties", "linear") and words[0] in ("breadcrumbs", "dare", "della"):
        first = TITLE_WORDS.get(words[0], words[0].capitalize())
        return f"{first}-{TITLE_WORDS.get(words[1], words[1])}"
    out = [TITLE_WORDS.get(w, w) for w in words]
    out[0] = out[0] if out[0] != words[0] else out[0].capitalize()
    return " ".join(out)


# What data a method may read, weakest first; every run records which it actually used.
DATA_USES = ("none", "source", "target_text", "target_dev")
# How a merge can give only some rows of a 2-D tensor, bit-identical to those of the whole merge
# (engine/merge/rows.py): "" not at all, "entrywise" kernel on the row slices, "trim" TIES' cut
# from the whole tensor, then entrywise.
ROW_RULES = ("", "entrywise", "trim")


@dataclass(frozen=True)
class Traits:
    """What a method needs and how it behaves, declared once at registration.

    Runs, pages, exports and the conformance suites read these (as scikit-learn's checks read
    estimator tags), so no list of method names is kept anywhere else. Plain data only:
    ``Registry.schema()`` serialises them to JSON.
    """

    family: str = ""
    title: str = ""  # the name people read; empty: derived from the id (method_title)
    needs_base: bool = False  # merges: reads the pretrained base
    min_sources: int = 1
    max_sources: Optional[int] = None  # None: any number
    random: bool = False  # output depends on a seed
    needs_data: bool = False  # merges: a whole-model pre-pass over data (a MergeContext)
    context: Tuple[str, ...] = ()  # the MergeContext callables a data-aware merge calls
    uses_labels: bool = True  # a data-aware method reads labels (False: unlabelled text is enough)
    data_use: str = "none"  # the most a method can read, one of DATA_USES
    cache_aware: bool = False  # merges: the kernel takes ``inputs=`` from a MergeCache
    propagates_nonfinite: bool = False  # merges: a NaN/inf in a weighted source always reaches the output
    row_local: str = ""  # merges: one of ROW_RULES; searches then merge only the embedding rows they read
    mergekit: Optional[str] = None  # mergekit's name for the same method
    needs_fit: bool = False  # ensembles: fitted on data before combining (labels: uses_labels)
    uses_weights: bool = True  # ensembles: applies the per-model (URIEL) weights
    # merges: the cases in which the result is the input model itself (the conformance suite checks
    # each declared one): "single" (one source), "copies" (K copies of one model), "one_hot"
    # (weights 1, 0, 0, ...). A flat-spectrum merge (Iso-C) changes even one model: ().
    identity: Tuple[str, ...] = ("single", "copies", "one_hot")
    # bumped when the method's results change (a fix, new semantics): it enters the content key
    # above 1 only, so stored runs of the old version are not reused and no other method's key moves
    version: int = 1

    def __post_init__(self):
        if self.data_use not in DATA_USES:
            raise ValueError(f"data_use must be one of {DATA_USES}, got {self.data_use!r}")
        if self.row_local not in ROW_RULES:
            raise ValueError(f"row_local must be one of {ROW_RULES}, got {self.row_local!r}")
        if self.min_sources < 1 or (self.max_sources is not None and self.max_sources < self.min_sources):
            raise ValueError(f"bad source range [{self.min_sources}, {self.max_sources}]")
        if not isinstance(self.version, int) or isinstance(self.version, bool) or self.version < 1:
            raise ValueError(f"version must be a whole number >= 1, got {self.version!r}")

    def to_dict(self) -> Dict[str, Any]:
        out = {f.name: getattr(self, f.name) for f in fields(self)}
        out["context"] = list(self.context)
        out["identity"] = list(self.identity)
        return out


@dataclass(frozen=True)
class Hooks:
    """Optional behaviour beyond the kernel, attached at registration (never serialised).

    ``prepare(sources, weights, base, context, params, *, names, device, seed, progress)
    -> merge.common.Prepared``: a whole-model pre-pass run once before the per-key loop (merges).
    ``to_mergekit(sources, weights, params, base) -> (parts, reason)``: the mergekit config parts
    ({"models": [...], "parameters": {...}, optional "base_model"}) reproducing a recipe, or
    (None, why not); the exporter adds merge_method and dtypes (merges).
    ``effective_weights(weights, params) -> weights``: the per-model weights a rule actually
    applies (ensembles; default: the given weights if it uses_weights, else uniform).
    """

    prepare: Optional[Callable[..., Any]] = None
    to_mergekit: Optional[Callable[..., Any]] = None
    effective_weights: Optional[Callable[..., Any]] = None


TRAIT_NAMES = frozenset(f.name for f in fields(Traits))
HOOK_NAMES = frozenset(f.name for f in fields(Hooks))


@dataclass(frozen=True)
class Method:
    name: str
    fn: Callable[..., Any]
    params: Tuple[Param, ...]
    summary: str = ""
    traits: Traits = field(default_factory=Traits)
    hooks: Hooks = field(default_factory=Hooks)

    @property
    def title(self) -> str:
        """The name people read ('breadcrumbs_ties' -> 'Breadcrumbs-TIES'): the ``title`` trait
        when registered with one, else derived from the id word by word."""
        return self.traits.title or method_title(self.name)

    def defaults(self) -> Dict[str, Any]:
        """Every parameter at its declared default: kernels take their defaults from here."""
        return {p.name: p.default for p in self.params}

    def param(self, name: str) -> Param:
        for p in self.params:
            if p.name == name:
                return p
        raise KeyError(f"method '{self.name}' has no parameter '{name}'")

    def resolve(self, given: Optional[Dict[str, Any]] = None) -> Dict[str, Any]:
        """Defaults filled in, every value checked, unknown names rejected."""
        given = dict(given or {})
        known = {p.name for p in self.params}
        unknown = sorted(set(given) - known)
        if unknown:
            raise ValueError(f"method '{self.name}' has no parameter(s) {unknown}; "
                             f"it takes {sorted(known) or 'none'}")
        return {p.name: p.check(given.get(p.name, p.default), f"{self.name}: ")
                for p in self.params}


class Registry:
    """Name -> Method. ``@registry.register("ties", params=[...])`` adds one."""

    LOADED: Dict[str, "Registry"] = {}   # the first registry of each kind, for readers below its package

    def __init__(self, kind: str):
        self.kind = kind
        self._methods: Dict[str, Method] = {}
        Registry.LOADED.setdefault(kind, self)

    def register(self, name: str, params: Sequence[Param] = (), summary: str = "", **declared):
        """Adds one method: its kernel, parameter schema, traits and hooks in one call.

        Keyword arguments are trait or hook names (see Traits, Hooks); anything else is a typo and
        raises, so a registration cannot silently drop what it declares."""
        unknown = sorted(set(declared) - TRAIT_NAMES - HOOK_NAMES)
        if unknown:
            raise TypeError(f"{self.kind} method '{name}': unknown trait(s) or hook(s) {unknown}; "
                            f"traits: {sorted(TRAIT_NAMES)}; hooks: {sorted(HOOK_NAMES)}")
        trait_args = {k: v for k, v in declared.items() if k in TRAIT_NAMES}
        for listed in ("context", "identity"):
            if listed in trait_args:
                trait_args[listed] = tuple(trait_args[listed])
        traits = Traits(**trait_args)
        hooks = Hooks(**{k: v for k, v in declared.items() if k in HOOK_NAMES})

        def add(fn: Callable[..., Any]) -> Callable[..., Any]:
            if name in self._methods:
                raise ValueError(f"{self.kind} method '{name}' registered twice")
            doc = summary or (fn.__doc__ or "").strip().split("\n")[0]
            self._methods[name] = Method(name, fn, tuple(params), doc, traits, hooks)
            return fn
        return add

    def unregister(self, name: str) -> None:
        """Removes a method (tests register toy methods and take them out again)."""
        self._methods.pop(name, None)

    def get(self, name: str) -> Method:
        try:
            return self._methods[name]
        except KeyError:
            raise KeyError(f"unknown {self.kind} method '{name}'; known: {', '.join(self.names())}") from None

    def names(self) -> List[str]:
        return sorted(self._methods)

    def registered(self) -> List[str]:
        """The names in registration order, for lists whose first entry is the default."""
        return list(self._methods)

    def __iter__(self) -> Iterable[Method]:
        return iter(self._methods[n] for n in self.names())

    def __contains__(self, name: str) -> bool:
        return name in self._methods

    def schema(self) -> Dict[str, Dict[str, Any]]:
        return {m.name: {"summary": m.summary, "params": [p.to_dict() for p in m.params],
                         **m.traits.to_dict()} for m in self}
