"""The built-in offline demo dataset: smart-home commands in the MASSIVE languages.

Source: ``home-assistant-intents`` (Apache-2.0), hand-written command templates per language,
parsed with ``hassil``. Sentences are random expansions of those templates drawn by a seeded sampler
of our own: hassil's sampler enumerates every combination and can exhaust memory. Runtime slots
({area}, {name}, {floor}, wildcards) get localized values from :mod:`.demo_slots`, ranges get numbers
within range, and a timer's command is another command sentence of the same language.

Splits are by template: each template's sentences go to exactly one split, so no test sentence's
template is seen in training (``info["template_ids"]`` records each sentence's template to prove it).

Label set. :func:`choose_intents` picks intents greedily for coverage of the MASSIVE locales (an
intent counts for a locale when it has >= ``min_templates`` templates there, one per split, and can
give >= ``min_per_intent`` distinct sentences), preferring intents every default locale has. With
the defaults (12 intents, 3 templates, 20 sentences) the labels are

    HassCancelTimer HassClimateGetTemperature HassClimateSetTemperature HassDecreaseTimer
    HassGetState HassLightSet HassMediaNext HassMediaPause HassMediaUnpause HassStartTimer
    HassTurnOff HassTurnOn

and the 45 covered MASSIVE locales have this many of them:

    12  ar-SA ca-ES da-DK de-DE el-GR en-US es-ES fi-FI fr-FR it-IT ml-IN nb-NO nl-NL pl-PL pt-PT
        ro-RO ru-RU sl-SL sv-SE th-TH zh-CN zh-TW
    11  he-IL hu-HU is-IS lv-LV vi-VN        10  hi-IN ko-KR        9  af-ZA bn-BD cy-GB fa-IR
     6  tr-TR ur-PK    4  hy-AM    3  id-ID ja-JP ms-MY    2  ka-GE kn-IN mn-MN sw-KE ta-IN te-IN

(home-assistant-intents 2026.10.27). A partial locale still loads; ``info["missing"]`` names what it
lacks. With ``n_intents=8`` (dropping the climate-set, decrease-timer, get-state and media-pause
intents) 33 locales have all.

Default locales (12 of the 22 full ones), chosen for related clusters, so that transfer between
close languages is visible, plus one distant language: West Germanic en-US de-DE nl-NL; North
Germanic da-DK nb-NO (the closest pair here; deeper data than sv-SE); Romance fr-FR es-ES it-IT
pt-PT; Slavic ru-RU (Cyrillic) pl-PL (Latin); and zh-CN (Sino-Tibetan, another script, no spaces).
"""
from __future__ import annotations

import random
from functools import lru_cache
from importlib.metadata import version
from typing import Dict, List, Optional, Sequence, Tuple

from .base import SPLITS, DataError, Dataset, Split
from .demo_expand import Expander, Template, Unfillable, language_templates, raw_language, variety

HA_TO_MASSIVE = {
    "af": "af-ZA", "ar": "ar-SA", "bn": "bn-BD", "ca": "ca-ES", "cy": "cy-GB", "da": "da-DK",
    "de": "de-DE", "el": "el-GR", "en": "en-US", "es": "es-ES", "fa": "fa-IR", "fi": "fi-FI",
    "fr": "fr-FR", "he": "he-IL", "hi": "hi-IN", "hu": "hu-HU", "hy": "hy-AM", "id": "id-ID",
    "is": "is-IS", "it": "it-IT", "ja": "ja-JP", "ka": "ka-GE", "kn": "kn-IN", "ko": "ko-KR",
    "lv": "lv-LV", "ml": "ml-IN", "mn": "mn-MN", "ms": "ms-MY", "nb": "nb-NO", "nl": "nl-NL",
    "pl": "pl-PL", "pt": "pt-PT", "ro": "ro-RO", "ru": "ru-RU", "sl": "sl-SL", "sv": "sv-SE",
    "sw": "sw-KE", "ta": "ta-IN", "te": "te-IN", "th": "th-TH", "tr": "tr-TR", "ur": "ur-PK",
    "vi": "vi-VN", "zh-CN": "zh-CN", "zh-TW": "zh-TW",
}
MASSIVE_TO_HA = {massive: ha for ha, massive in HA_TO_MASSIVE.items()}
DEMO_LOCALES: Tuple[str, ...] = tuple(sorted(MASSIVE_TO_HA))
DEFAULT_LOCALES: Tuple[str, ...] = ("en-US", "de-DE", "nl-NL", "da-DK", "nb-NO", "fr-FR", "es-ES",
                                    "it-IT", "pt-PT", "ru-RU", "pl-PL", "zh-CN")

# Share of each intent's templates, and of its sentences, that goes to each split.
SPLIT_SHARES = {"train": 0.6, "validation": 0.15, "test": 0.25}
_TRIES = 8  # draws per template before it counts as exhausted


def _check_locales(locales: Optional[Sequence[str]]) -> List[str]:
    if locales is None:
        return list(DEFAULT_LOCALES)
    if isinstance(locales, str):
        locales = [locales]
    unknown = [loc for loc in locales if loc not in MASSIVE_TO_HA]
    if unknown:
        raise DataError(f"the demo data has no locale {', '.join(map(repr, unknown))}; "
                        f"supported: {' '.join(DEMO_LOCALES)}")
    if not locales:
        raise DataError("no locales given for the demo dataset")
    return list(dict.fromkeys(locales))


@lru_cache(maxsize=None)
def intent_stats(locale: str, per_template: int = 10) -> Dict[str, Tuple[int, int]]:
    """Per intent in one locale: (distinct templates, sentences available), where a template
    counts for at most ``per_template`` sentences. Reads the JSON; parses nothing."""
    raw = raw_language(MASSIVE_TO_HA[_check_locales([locale])[0]])
    rules, lists, memo = raw.get("expansion_rules", {}), raw.get("lists", {}), {}
    out = {}
    for name, intent in raw["intents"].items():
        seen: Dict[str, int] = {}
        for block in intent["data"]:
            local = block.get("expansion_rules")
            for text in block["sentences"]:
                if text not in seen:
                    seen[text] = variety(text, {**rules, **local}, lists, {}) if local else \
                        variety(text, rules, lists, memo)
        out[name] = (len(seen), sum(min(per_template, n) for n in seen.values()))
    return out


def _qualifies(locale: str, intent: str, min_templates: int, min_per_intent: int) -> bool:
    templates, sentences = intent_stats(locale).get(intent, (0, 0))
    return templates >= min_templates and sentences >= min_per_intent


@lru_cache(maxsize=None)
def choose_intents(n_intents: int = 12, min_per_intent: int = 20, min_templates: int = 3) -> Tuple[str, ...]:
    """The demo's label set, sorted. An intent counts for a locale when it has >= ``min_templates``
    templates (one per split) and can give >= ``min_per_intent`` sentences there. Greedy for
    coverage: each step adds the intent that keeps the most locales having every chosen intent;
    intents that all default locales have come first; ties go to more sentences, then name.
    Depends only on the package data, never on which locales a caller asks for, so every subset of
    locales shares one label list."""
    names = sorted({name for loc in DEMO_LOCALES for name in intent_stats(loc)})
    if not 1 <= n_intents <= len(names):
        raise DataError(f"n_intents must be between 1 and {len(names)}, got {n_intents}")
    if min_templates < 1 or min_per_intent < 1:
        raise DataError(f"min_templates and min_per_intent must be >= 1, got {min_templates}, {min_per_intent}")

    def has(loc: str, name: str) -> bool:
        return _qualifies(loc, name, min_templates, min_per_intent)

    chosen: List[str] = []
    kept = set(DEMO_LOCALES)
    for _ in range(n_intents):
        def score(name: str):
            keep = [loc for loc in kept if has(loc, name)]
            return (all(has(loc, name) for loc in DEFAULT_LOCALES), len(keep),
                    sum(intent_stats(loc)[name][1] for loc in keep))
        best = max((n for n in names if n not in chosen), key=score)
        chosen.append(best)
        kept = {loc for loc in kept if has(loc, best)}
    return tuple(sorted(chosen))


def covered_locales(n_intents: int = 12, min_per_intent: int = 20, min_templates: int = 3) -> List[str]:
    """Locales that have every intent of ``choose_intents(...)`` with the same thresholds."""
    intents = choose_intents(n_intents, min_per_intent, min_templates)
    return [loc for loc in DEMO_LOCALES
            if all(_qualifies(loc, name, min_templates, min_per_intent) for name in intents)]


def _split_templates(templates: List[Template], rng: random.Random) -> Dict[str, List[Template]]:
    """Shuffle and cut by SPLIT_SHARES, at least one template per split when there are three."""
    order = list(templates)
    rng.shuffle(order)
    n = len(order)
    n_test = max(1, round(n * SPLIT_SHARES["test"])) if n >= 2 else 0
    n_val = max(1, round(n * SPLIT_SHARES["validation"])) if n >= 3 else 0
    n_train = n - n_test - n_val
    return {"train": order[:n_train], "validation": order[n_train:n_train + n_val],
            "test": order[n_train + n_val:]}


def _draw(templates: List[Template], target: int, per_template: int, expander: Expander,
          seen: set, dropped: set) -> List[Tuple[str, str]]:
    """Round-robin over the templates, one new sentence each per round, until ``target``.
    A sentence already drawn anywhere in the locale is redrawn: no duplicates, none across splits."""
    out: List[Tuple[str, str]] = []
    used = {t.key: 0 for t in templates}
    live = list(templates)
    expander.rng.shuffle(live)
    while live and len(out) < target:
        for tpl in list(live):
            if len(out) >= target:
                break
            for _ in range(_TRIES):
                try:
                    text = expander.sentence(tpl)
                except Unfillable:
                    continue
                if text not in seen:
                    seen.add(text)
                    out.append((text, tpl.key))
                    used[tpl.key] += 1
                    break
            else:  # exhausted: nothing new in _TRIES draws
                live.remove(tpl)
                if not used[tpl.key]:
                    dropped.add(tpl.key)
                continue
            if used[tpl.key] >= per_template:
                live.remove(tpl)
    return out


def build_demo_dataset(locales: Optional[Sequence[str]] = None, n_intents: int = 12, seed: int = 0,
                       per_intent: int = 40, per_template: int = 10, min_per_intent: int = 20,
                       min_templates: int = 3) -> Dataset:
    """The demo :class:`Dataset` (name "demo") for MASSIVE ``locales`` (default: DEFAULT_LOCALES).

    ``per_intent`` sentences are drawn per intent and locale, split 60/15/25 (24/6/10 by default);
    one template gives at most ``per_template`` sentences to a split. Deterministic for a seed; a
    locale's sentences do not depend on which other locales are asked for. ``info["missing"]`` lists,
    per locale, the intents with fewer than ``min_per_intent`` sentences or absent from some split.
    """
    locs = _check_locales(locales)
    if per_intent < 3 or per_template < 1:
        raise DataError(f"per_intent must be >= 3 and per_template >= 1, got {per_intent}, {per_template}")
    labels = list(choose_intents(n_intents, min_per_intent, min_templates))
    targets = {split: max(1, round(per_intent * share)) for split, share in SPLIT_SHARES.items()}
    splits: Dict[str, Dict[str, Split]] = {}
    info: Dict[str, object] = {
        "source": f"home-assistant-intents {version('home-assistant-intents')}, "
                  f"hassil {version('hassil')}",
        "intents": labels, "locales": locs, "seed": seed, "per_intent": per_intent,
        "per_template": per_template, "min_templates": min_templates, "min_per_intent": min_per_intent,
        "templates": {}, "template_ids": {}, "template_split": {}, "missing": {},
        "dropped_templates": {},
    }
    for loc in locs:
        language = MASSIVE_TO_HA[loc]
        templates, clashes = language_templates(language, labels)
        rng = random.Random(f"demo/{seed}/{loc}")
        expander = Expander(language, rng)
        parts = {name: _split_templates(templates[name], rng) for name in labels}
        seen: set = set()
        dropped: set = set()
        drawn: Dict[str, List[Tuple[str, int, str]]] = {}
        for split in SPLITS:  # train draws first: a sentence shared by two templates stays there
            drawn[split] = [(text, label, key) for label, name in enumerate(labels)
                            for text, key in _draw(parts[name][split], targets[split], per_template,
                                                   expander, seen, dropped)]
            rng.shuffle(drawn[split])  # mixed intents, so that Split.head(n) is a fair sample
        splits[loc] = {s: Split([t for t, _, _ in drawn[s]], [y for _, y, _ in drawn[s]]) for s in SPLITS}
        ids = {s: [k for _, _, k in drawn[s]] for s in SPLITS}
        info["templates"][loc] = {name: {s: len(parts[name][s]) for s in SPLITS} for name in labels}
        info["template_ids"][loc] = ids
        info["template_split"][loc] = {t.key: split for name in labels
                                       for split, group in parts[name].items() for t in group}
        info["dropped_templates"][loc] = clashes + len(dropped)
        counts = {s: [splits[loc][s].labels.count(i) for i in range(len(labels))] for s in SPLITS}
        info["missing"][loc] = [name for i, name in enumerate(labels)
                                if sum(c[i] for c in counts.values()) < min_per_intent
                                or not all(c[i] for c in counts.values())]
    return Dataset("demo", labels, splits, info)
