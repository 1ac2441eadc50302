"""Random sentences from home-assistant-intents templates, over hassil's parse.

hassil's own sampler enumerates every combination of a template and can exhaust memory, so this
draws one random expansion at a time: a random branch of each alternative, each optional half the
time, permutations shuffled, lists and rules followed. Runtime slots get localized values from
:mod:`.demo_slots`, ranges get numbers in range, a timer's command is a turn-on/off sentence.
"""
from __future__ import annotations

import hashlib
import math
import random
import re
from functools import lru_cache
from typing import Dict, List, Optional, Sequence, Tuple

from .base import DataError
from .demo_slots import slot_values

_PLACEHOLDER = re.compile(r"[{}<>\[\]]")
_VALUE = re.compile("\x00([^\x00\x01]*)\x01")  # a runtime slot value, marked while expanding
_ROUND_NUMBERS = (1, 2, 3, 5, 10, 15, 20, 25, 30, 40, 45, 50, 60, 75, 80, 90, 100)
_MAX_DEPTH = 40  # rule references nested deeper than this are a cycle
_RUNTIME_VALUES = 5  # what a runtime slot ({area}, wildcards) adds to a variety count
_CAP = 10 ** 6  # variety counts stop here


class Unfillable(Exception):
    """A template needs a value the demo has none for (no localized slot, missing rule)."""


@lru_cache(maxsize=None)
def raw_language(language: str) -> dict:
    from home_assistant_intents import get_intents

    data = get_intents(language)
    if data is None:
        raise DataError(f"home-assistant-intents has no data for language '{language}'")
    return data


@lru_cache(maxsize=None)
def parsed_language(language: str):
    """hassil's parse of one language's rules and lists; templates are parsed one by one (_parse)."""
    from hassil.intents import Intents

    return Intents.from_dict(raw_language(language))


def variety(template: str, rules: Dict[str, str], lists: Dict[str, dict], memo: Dict[str, int]) -> int:
    """How many distinct sentences a template string can give (capped), counted on the raw
    template syntax: alternatives add, sequences multiply, [optional] adds one, (a;b) permutes.
    Cheap enough to run over every language, unlike hassil's parser."""

    def group(text: str, i: int, close: str, depth: int) -> Tuple[int, int]:
        """Count from text[i] to the matching ``close``; returns (count, index after it)."""
        alts: List[int] = []  # finished alternatives of the current permutation item
        items: List[int] = []  # finished permutation items
        cur = 1  # the sequence being read
        while i < len(text):
            c = text[i]
            if c == close:
                i += 1
                break
            if c == "\\":
                i += 1
            elif c in "([":
                n, i = group(text, i + 1, ")" if c == "(" else "]", depth)
                cur = min(_CAP, cur * (n + (c == "[")))
                continue
            elif c == "|":
                alts, cur = alts + [cur], 1
            elif c == ";":
                items, alts, cur = items + [sum(alts) + cur], [], 1
            elif c in "<{":
                j = text.find(">" if c == "<" else "}", i)
                if j < 0:
                    break
                name = text[i + 1:j]
                n = rule(name, depth) if c == "<" else slot(name.split(":")[0], depth)
                cur, i = min(_CAP, cur * n), j
            i += 1
        last = sum(alts) + cur
        if items:
            last = math.factorial(len(items) + 1) * math.prod(items) * last
        return min(_CAP, last), i

    def count(text: str, depth: int) -> int:
        return 1 if depth > _MAX_DEPTH else group(text, 0, "", depth + 1)[0]

    def rule(name: str, depth: int) -> int:
        if name not in memo:
            memo[name] = count(rules[name], depth) if name in rules else 1
        return memo[name]

    def slot(name: str, depth: int) -> int:
        spec = lists.get(name) or {}
        if "range" in spec:
            r = spec["range"]
            return max(1, (int(r["to"]) - int(r["from"])) // int(r.get("step", 1)) + 1)
        if spec.get("values"):
            return sum(count(v["in"] if isinstance(v, dict) else v, depth) for v in spec["values"])
        return _RUNTIME_VALUES  # wildcard or runtime list: filled from the demo's tables

    return count(template, 0)


@lru_cache(maxsize=None)
def _parse(text: str):
    """hassil's parse of one template, done only for templates actually drawn from (parsing is
    most of the demo's build time)."""
    from hassil.parse_expression import parse_sentence

    return parse_sentence(text, keep_text=True).expression


class Template:
    """One template text of one intent; the same text in several blocks keeps each block's context."""

    def __init__(self, text: str, intent: str):
        self.text = text
        self.intent = intent
        self.key = hashlib.sha1(text.encode("utf-8")).hexdigest()[:12]
        self.blocks: list = []  # hassil IntentData: rules, lists and domain for this text

    @property
    def expression(self):
        return _parse(self.text)


def language_templates(language: str, intents: Sequence[str]) -> Tuple[Dict[str, List[Template]], int]:
    """Templates per intent, and how many were dropped for appearing under two intents."""
    parsed = parsed_language(language)
    by_text: Dict[str, Template] = {}
    clash = set()
    for name in intents:
        if name not in parsed.intents:
            continue
        for block in parsed.intents[name].data:
            for text in block.sentence_texts:
                tpl = by_text.setdefault(text, Template(text, name))
                if tpl.intent != name:
                    clash.add(text)
                tpl.blocks.append(block)
    out: Dict[str, List[Template]] = {name: [] for name in intents}
    for text in sorted(by_text):
        if text not in clash:
            out[by_text[text].intent].append(by_text[text])
    return out, len(clash)


class Expander:
    """Draws one random sentence from a template: a random branch of each alternative, each optional
    half the time, permutations shuffled, lists and rules followed, runtime slots localized."""

    def __init__(self, language: str, rng: random.Random, parsed=None):
        self.language = language
        self.parsed = parsed if parsed is not None else parsed_language(language)
        self.rng = rng
        self.block = None
        self._commands: Optional[list] = None
        self._in_command = False

    def sentence(self, template: Template) -> str:
        self.block = self.rng.choice(template.blocks)
        text = _tidy(self._expand(template.expression, 0))
        if not text or _PLACEHOLDER.search(text):
            raise Unfillable(f"template left a placeholder: {text!r}")
        return text

    def _expand(self, exp, depth: int) -> str:
        from hassil.expression import (Alternative, ListReference, Permutation, RuleReference,
                                       Sequence as Seq, TextChunk)

        if depth > _MAX_DEPTH:
            raise Unfillable("rule references nest too deep")
        if isinstance(exp, TextChunk):
            return exp.original_text
        if isinstance(exp, Alternative):
            return self._expand(self.rng.choice(exp.items), depth)
        if isinstance(exp, Permutation):
            items = list(exp.items)
            self.rng.shuffle(items)
            return "".join(self._expand(item, depth) for item in items)
        if isinstance(exp, Seq):
            return "".join(self._expand(item, depth) for item in exp.items)
        if isinstance(exp, RuleReference):
            rule = self.block.expansion_rules.get(exp.rule_name) or \
                self.parsed.expansion_rules.get(exp.rule_name)
            if rule is None:
                raise Unfillable(f"missing rule <{exp.rule_name}>")
            return self._expand(rule.expression, depth + 1)
        if isinstance(exp, ListReference):
            return self._list_value(exp, depth)
        raise Unfillable(f"unexpected template part {type(exp).__name__}")

    def _list_value(self, ref, depth: int) -> str:
        from hassil.intents import RangeSlotList, RangeType, TextSlotList

        if ref.is_inline_range:
            return self._number(*ref.get_inline_range())
        slot = self.block.slot_lists.get(ref.list_name) or self.parsed.slot_lists.get(ref.list_name)
        if isinstance(slot, TextSlotList) and slot.values:
            return self._expand(self.rng.choice(slot.values).text_in, depth + 1)
        if isinstance(slot, RangeSlotList):
            if slot.type == RangeType.TEMPERATURE and slot.start <= 16 and slot.stop >= 28:
                return str(self.rng.randint(16, 28))  # room temperatures read as commands
            return self._number(slot.start, slot.stop, slot.step)
        if ref.list_name == "timer_command":
            return self._command(depth)
        values = slot_values(self.language, ref.list_name, sorted(self.block.domains))
        if not values:
            raise Unfillable(f"no {self.language} values for {{{ref.list_name}}}")
        return f"\x00{self.rng.choice(values)}\x01"

    def _number(self, start: int, stop: int, step: int) -> str:
        """A number in range, usually a round one as people say them (5 minutes, 50 %)."""
        nice = [n for n in _ROUND_NUMBERS if start <= n <= stop and (n - start) % step == 0]
        if nice and self.rng.random() < 0.6:
            return str(self.rng.choice(nice))
        return str(self.rng.randrange(start, stop + 1, step))

    def _command(self, depth: int) -> str:
        """A timer's command: a turn-on/off sentence of the same language."""
        if self._commands is None:
            self._commands = [(text, block) for name in ("HassTurnOn", "HassTurnOff")
                              if name in self.parsed.intents
                              for block in self.parsed.intents[name].data
                              for text in block.sentence_texts]
        if not self._commands or self._in_command:
            raise Unfillable("no command sentence for a timer")
        outer = self.block
        text, self.block = self.rng.choice(self._commands)
        self._in_command = True
        try:
            return self._expand(_parse(text), depth + 1)
        finally:
            self.block, self._in_command = outer, False


def _tidy(text: str) -> str:
    """Unmark slot values, dropping a template word that repeats a value's first or last word:
    templates add their own "floor" word ("{floor} [floor]"), values may already have it."""
    pieces = _VALUE.split(text)  # text, value, text, value, ..., text
    for i in range(1, len(pieces), 2):
        words = pieces[i].lower().split() or [""]
        before = re.search(r"(\w+)(\s?)$", pieces[i - 1])
        if before and before.group(2) and before.group(1).lower() == words[0]:
            pieces[i - 1] = pieces[i - 1][:before.start()]
        after = re.match(r"(\s?)(\w+)", pieces[i + 1])
        if after:
            word = after.group(2).lower()
            # "floor floor", "Obergeschoss Geschoss", "ObergeschossGeschoss"; not "køkken" + "en"
            if word == words[-1] or (len(word) >= 4 and words[-1].endswith(word)):
                pieces[i + 1] = pieces[i + 1][after.end():]
            elif ord(words[-1][-1:] or "a") >= 0x2E80 and word.startswith(words[-1][-1]):
                pieces[i + 1] = pieces[i + 1][1 + len(after.group(1)):]  # CJK: 一楼 + 楼
    return " ".join("".join(pieces).split())  # and single spaces, as hassil normalizes
