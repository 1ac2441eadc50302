"""Dataset loaders: the built-in demo data (home-assistant-intents + hassil) and the file / hub
loaders, each tested on real files in tmp_path."""
import json
import random
import re
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import pytest

from engine.data.base import SPLITS, DataError
from engine.data.demo import (DEFAULT_LOCALES, DEMO_LOCALES, build_demo_dataset, choose_intents,
                              covered_locales)
from engine.data.demo_expand import Expander, Template, Unfillable, _tidy, variety
from engine.data.loaders import load_massive, load_massive_jsonl, load_table

ROOT = Path(__file__).resolve().parents[1]
PLACEHOLDER = re.compile(r"[{}<>\[\]\x00\x01]")


@pytest.fixture(scope="module")
def demo():
    return build_demo_dataset()


# ---------------------------------------------------------------- demo data

def test_demo_default_shape(demo):
    assert demo.name == "demo"
    assert demo.locales == sorted(DEFAULT_LOCALES)
    assert demo.labels == list(choose_intents()) and len(demo.labels) == 12
    for loc in demo.locales:
        sizes = {s: len(demo.splits[loc][s]) for s in SPLITS}
        assert sizes["train"] >= 250 and sizes["validation"] >= 50 and sizes["test"] >= 80, (loc, sizes)
        for split in SPLITS:  # every intent in every split, with a fair share in train
            counts = Counter(demo.splits[loc][split].labels)
            assert set(counts) == set(range(12)), (loc, split)
        assert min(Counter(demo.splits[loc]["train"].labels).values()) >= 15, loc
        assert demo.info["missing"][loc] == []


def test_demo_texts_are_clean_and_unique(demo):
    for loc in demo.locales:
        seen = set()
        for split in SPLITS:
            texts = demo.splits[loc][split].texts
            for text in texts:
                assert text and text == text.strip() and "  " not in text, (loc, text)
                assert not PLACEHOLDER.search(text), (loc, text)
            assert not seen & set(texts), (loc, split)  # no sentence in two splits, no duplicates
            assert len(set(texts)) == len(texts)
            seen |= set(texts)


def test_demo_split_is_by_template(demo):
    """Each sentence's recorded template belongs to its split only: no test template in training."""
    for loc in demo.locales:
        ids = demo.info["template_ids"][loc]
        assignment = demo.info["template_split"][loc]
        for split in SPLITS:
            assert len(ids[split]) == len(demo.splits[loc][split])
            assert all(assignment[key] == split for key in ids[split])
        assert not set(ids["train"]) & set(ids["test"])
        assert not set(ids["train"]) & set(ids["validation"])
        assert not set(ids["validation"]) & set(ids["test"])
        assert len(set(ids["test"])) >= 12  # many templates, not one per intent


def test_demo_template_ids_name_real_templates(demo):
    """A recorded id is the hash of the template that made the sentence: regenerating from that
    template alone can reproduce the sentence's shape (here: its first word is one it can start with)."""
    from engine.data.demo_expand import language_templates

    templates, _ = language_templates("en", demo.labels)
    by_key = {t.key: t for group in templates.values() for t in group}
    ids = demo.info["template_ids"]["en-US"]["test"]
    texts = demo.splits["en-US"]["test"].texts
    labels = demo.splits["en-US"]["test"].labels
    expander = Expander("en", random.Random(0))
    for text, key, label in list(zip(texts, ids, labels))[:15]:
        template = by_key[key]
        assert template.intent == demo.labels[label]
        firsts = {expander.sentence(template).split()[0].lower() for _ in range(300)}
        assert text.split()[0].lower() in firsts, (text, template.text)


def test_demo_is_deterministic_and_locale_independent(demo):
    a = build_demo_dataset(["de-DE", "zh-CN"], seed=0)
    b = build_demo_dataset(["de-DE", "zh-CN"], seed=0)
    c = build_demo_dataset(["de-DE"], seed=1)
    for loc in a.locales:
        for split in SPLITS:
            assert a.fingerprint(loc, split) == b.fingerprint(loc, split)
            assert a.fingerprint(loc, split) == demo.fingerprint(loc, split)  # same alone or with 11 others
    assert c.fingerprint("de-DE", "test") != a.fingerprint("de-DE", "test")


def test_demo_label_set_is_shared_by_every_locale(demo):
    partial = build_demo_dataset(["ja-JP", "hu-HU"])
    assert partial.labels == demo.labels
    assert "HassStartTimer" in partial.info["missing"]["ja-JP"]
    ja = Counter(partial.splits["ja-JP"]["train"].labels)
    assert {demo.labels[i] for i in ja} <= {"HassTurnOn", "HassTurnOff", "HassLightSet"}


def test_demo_intent_choice_matches_the_documented_table():
    assert choose_intents() == (
        "HassCancelTimer", "HassClimateGetTemperature", "HassClimateSetTemperature",
        "HassDecreaseTimer", "HassGetState", "HassLightSet", "HassMediaNext", "HassMediaPause",
        "HassMediaUnpause", "HassStartTimer", "HassTurnOff", "HassTurnOn")
    full = covered_locales()
    assert len(full) == 22 and set(DEFAULT_LOCALES) <= set(full)
    assert len(covered_locales(8)) == 33 and set(choose_intents(8)) < set(choose_intents())
    assert len(DEMO_LOCALES) == 45 and "sl-SL" in DEMO_LOCALES and "am-ET" not in DEMO_LOCALES


def test_demo_bad_arguments():
    with pytest.raises(DataError, match=r"'xx-XX'.*supported:.*de-DE"):
        build_demo_dataset(["de-DE", "xx-XX"])
    with pytest.raises(DataError, match="n_intents"):
        build_demo_dataset(["de-DE"], n_intents=0)
    with pytest.raises(DataError, match="per_intent"):
        build_demo_dataset(["de-DE"], per_intent=1)


def test_demo_build_is_fast():
    start = time.perf_counter()
    build_demo_dataset(seed=7)
    assert time.perf_counter() - start < 20  # ~1 s alone; generous for a shared 2-core machine


# ---------------------------------------------------------------- the random expander

def _mini(language="en"):
    from hassil.intents import Intents

    return Intents.from_dict({
        "language": language,
        "intents": {
            "HassTurnOn": {"data": [{"sentences": ["(turn|switch) on [the] {area} <light>",
                                                   "(<light>;{brightness} percent)", "turn on {name}"],
                                     "slots": {"domain": "light"}}]},
            "HassStartTimer": {"data": [{"sentences": ["{timer_command} in {1..9:minutes} minutes"]}]},
            "HassBroadcast": {"data": [{"sentences": ["announce {message}"]}]},
        },
        "lists": {"brightness": {"range": {"type": "percentage", "from": 10, "to": 20}},
                  "message": {"wildcard": True}, "timer_command": {"wildcard": True}},
        "expansion_rules": {"light": "(lamp|light)"},
    })


def _template(parsed, intent, index):
    block = parsed.intents[intent].data[0]
    template = Template(block.sentence_texts[index], intent)
    template.blocks.append(block)
    return template


def test_expander_draws_every_branch_and_only_valid_sentences():
    parsed = _mini()
    expander = Expander("en", random.Random(1), parsed)
    areas = "kitchen|living room|bedroom|office|garage"
    first = re.compile(rf"^(turn|switch) on (the )?({areas}) (lamp|light)$")
    drawn = [expander.sentence(_template(parsed, "HassTurnOn", 0)) for _ in range(300)]
    assert all(first.match(t) for t in drawn)
    assert {first.match(t).groups()[0] for t in drawn} == {"turn", "switch"}
    assert {first.match(t).groups()[1] for t in drawn} == {"the ", None}  # the optional, both ways
    assert {first.match(t).groups()[2] for t in drawn} == set(areas.split("|"))

    perm = re.compile(r"^(?:(lamp|light) (\d+) percent|(\d+) percent (lamp|light))$")
    drawn = [expander.sentence(_template(parsed, "HassTurnOn", 1)) for _ in range(200)]
    assert all(perm.match(t) for t in drawn)
    numbers = {int(m.group(2) or m.group(3)) for m in map(perm.match, drawn)}
    assert numbers <= set(range(10, 21)) and len(numbers) > 5
    assert any(perm.match(t).group(1) for t in drawn) and any(perm.match(t).group(4) for t in drawn)

    # {name} in a light block names a lamp, not the TV
    names = {expander.sentence(_template(parsed, "HassTurnOn", 2)) for _ in range(50)}
    assert names == {"turn on ceiling light", "turn on desk lamp"}


def test_expander_fills_timer_command_and_wildcards():
    parsed = _mini()
    expander = Expander("en", random.Random(2), parsed)
    command = (r"(?:(?:turn|switch) on (?:the )?[a-z ]+ (?:lamp|light)|(?:lamp|light) \d+ percent"
               r"|\d+ percent (?:lamp|light)|turn on (?:ceiling light|desk lamp))")
    timer = re.compile(rf"^{command} in [1-9] minutes$")
    for _ in range(50):
        text = expander.sentence(_template(parsed, "HassStartTimer", 0))
        assert timer.match(text), text
    assert expander.sentence(_template(parsed, "HassBroadcast", 0)) in {
        "announce dinner is ready", "announce we are leaving in five minutes"}


def test_expander_refuses_a_slot_it_has_no_language_values_for():
    parsed = _mini("xx")
    expander = Expander("xx", random.Random(0), parsed)
    with pytest.raises(Unfillable):
        expander.sentence(_template(parsed, "HassBroadcast", 0))


def test_tidy_drops_a_template_word_the_value_already_has():
    assert _tidy("on the \x00first floor\x01 floor") == "on the first floor"
    assert _tidy("im \x00Obergeschoss\x01Geschoss") == "im Obergeschoss"
    assert _tidy("planta \x00planta baja\x01 luz") == "planta baja luz"
    assert _tidy("\x00一楼\x01楼的灯") == "一楼的灯"
    assert _tidy("\x00køkken\x01en") == "køkkenen"  # a case ending stays
    assert _tidy("the \x00theater\x01  light") == "the theater light"


def test_variety_counts_template_syntax():
    assert variety("(a|b) [c] d", {}, {}, {}) == 4
    assert variety("(a;b;c)", {}, {}, {}) == 6
    assert variety("(a|b;c)", {}, {}, {}) == 4  # 2 orders x 2 alternatives
    lists = {"l": {"values": ["u", {"in": "(v|w)"}]}, "w": {"wildcard": True},
             "r": {"range": {"from": 0, "to": 100, "step": 10}}}
    assert variety("<x> {l} {w:slot}", {"x": "(p|q|r)"}, lists, {}) == 3 * 3 * 5
    assert variety("{r}", {}, lists, {}) == 11
    assert variety("a\\(b", {}, {}, {}) == 1


# ---------------------------------------------------------------- MASSIVE through `datasets`

MASSIVE_ROWS = {
    "de-DE": {"train": [("weck mich um neun uhr auf", 0), ("wie wird das wetter morgen", 1),
                        ("spiel etwas jazz", 2)],
              "validation": [("stell einen wecker für sechs", 0)],
              "test": [("regnet es heute", 1), ("spiel musik von queen", 2)]},
    "fr-FR": {"train": [("réveille-moi à neuf heures", 0), ("quel temps fera-t-il demain", 1)],
              "validation": [("mets de la musique", 2)],
              "test": [("est-ce qu'il pleut", 1)]},
}
INTENTS = ["alarm_set", "weather_query", "play_music"]


def _massive_parquet(root: Path) -> Path:
    from datasets import ClassLabel, Dataset, Features, Value

    features = Features({"id": Value("string"), "locale": Value("string"),
                         "partition": Value("string"), "utt": Value("string"),
                         "intent": ClassLabel(names=INTENTS)})
    for locale, parts in MASSIVE_ROWS.items():
        for split, rows in parts.items():
            folder = root / locale / split
            folder.mkdir(parents=True)
            Dataset.from_dict({"id": [str(i) for i in range(len(rows))], "locale": [locale] * len(rows),
                               "partition": [split] * len(rows), "utt": [u for u, _ in rows],
                               "intent": [y for _, y in rows]},
                              features=features).to_parquet(str(folder / "0000.parquet"))
    return root


def test_load_massive_from_a_local_parquet_copy(tmp_path):
    repo = _massive_parquet(tmp_path / "massive")
    ds = load_massive(["de-DE", "fr-FR"], cache_dir=str(tmp_path / "hf"), name=str(repo))
    assert ds.name == "massive" and ds.labels == INTENTS  # the ClassLabel's names, in its order
    assert ds.locales == ["de-DE", "fr-FR"]
    test = ds.get("de-DE", "test")
    assert sorted(zip(test.texts, test.labels)) == sorted(MASSIVE_ROWS["de-DE"]["test"])
    assert len(ds.get("fr-FR", "validation")) == 1


def test_load_massive_from_save_to_disk_and_string_intents(tmp_path):
    from datasets import Dataset, DatasetDict

    parts = {split: Dataset.from_dict({"utt": [u for u, _ in rows], "intent": [INTENTS[y] for _, y in rows]})
             for split, rows in MASSIVE_ROWS["de-DE"].items()}
    DatasetDict(parts).save_to_disk(str(tmp_path / "copy" / "de-DE"))
    ds = load_massive("de-DE", name=str(tmp_path / "copy"))
    assert ds.labels == sorted(INTENTS)  # strings: the sorted union
    train = ds.get("de-DE", "train")
    assert [ds.labels[y] for y in train.labels] == ["alarm_set", "weather_query", "play_music"]


def test_load_massive_local_copy_errors(tmp_path):
    repo = _massive_parquet(tmp_path / "massive")
    with pytest.raises(DataError, match=r"no locale 'ja-JP'; it has: de-DE, fr-FR"):
        load_massive(["ja-JP"], name=str(repo))
    from datasets import Dataset

    Dataset.from_dict({"text": ["x"], "intent": ["a"]}).save_to_disk(str(tmp_path / "bad" / "de-DE"))
    with pytest.raises(DataError, match=r"lacks column\(s\) utt; it has: text, intent"):
        load_massive(["de-DE"], name=str(tmp_path / "bad"))


def test_load_massive_offline_and_not_cached_fails_fast_and_clearly(tmp_path, monkeypatch):
    """A fresh interpreter (datasets reads the offline switches at import) with the hub unroutable."""
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("HF_ENDPOINT", "http://127.0.0.1:9")  # nothing listens: no hang even if asked
    code = ("from engine.data.loaders import load_massive\n"
            "from engine.data.base import DataError\n"
            "try:\n"
            f"    load_massive(['de-DE'], cache_dir={str(tmp_path / 'cache')!r}, name='nobody/no-such-massive')\n"
            "except DataError as e:\n"
            "    print('DataError:', e)\n")
    start = time.perf_counter()
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert time.perf_counter() - start < 60
    lines = [line for line in out.stdout.splitlines() if line.startswith("DataError:")]
    assert len(lines) == 1, out.stdout + out.stderr
    assert "not available locally" in lines[0] and "offline" in lines[0] and "de-DE" in lines[0]


# ---------------------------------------------------------------- MASSIVE jsonl

def _write_jsonl(path: Path, records):
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records), encoding="utf-8")


def test_load_massive_jsonl(tmp_path):
    for locale, parts in MASSIVE_ROWS.items():
        _write_jsonl(tmp_path / f"{locale}.jsonl", [
            {"id": str(i), "locale": locale, "partition": "dev" if split == "validation" else split,
             "scenario": "x", "intent": INTENTS[y], "utt": utt, "annot_utt": utt}
            for split, rows in parts.items() for i, (utt, y) in enumerate(rows)])
    ds = load_massive_jsonl(str(tmp_path))
    assert ds.locales == ["de-DE", "fr-FR"] and ds.labels == sorted(INTENTS)
    assert ds.get("fr-FR", "validation").texts == ["mets de la musique"]  # dev -> validation
    assert ds.labels[ds.get("fr-FR", "validation").labels[0]] == "play_music"
    only = load_massive_jsonl(str(tmp_path), locales=["fr-FR"])
    assert only.locales == ["fr-FR"]
    with pytest.raises(DataError, match=r"no locale 'ja-JP'; it has: de-DE, fr-FR"):
        load_massive_jsonl(str(tmp_path), locales=["ja-JP"])
    with pytest.raises(DataError, match="not found"):
        load_massive_jsonl(str(tmp_path / "nowhere"))


def test_load_massive_jsonl_bad_records(tmp_path):
    (tmp_path / "de-DE.jsonl").write_text('{"partition": "train", "utt": "a", "intent": "x"}\n{oops\n')
    with pytest.raises(DataError, match=r"de-DE.jsonl:2: not valid JSON"):
        load_massive_jsonl(str(tmp_path))
    _write_jsonl(tmp_path / "de-DE.jsonl", [{"partition": "train", "text": "a", "intent": "x"}])
    with pytest.raises(DataError, match=r"de-DE.jsonl:1: record lacks utt"):
        load_massive_jsonl(str(tmp_path))
    _write_jsonl(tmp_path / "de-DE.jsonl", [{"partition": "holdout", "utt": "a", "intent": "x"}])
    with pytest.raises(DataError, match="unknown split 'holdout'"):
        load_massive_jsonl(str(tmp_path))


# ---------------------------------------------------------------- generic tables

CSV = ("text,label,locale,split\n"
       "turn on the light,on,en-US,train\n"
       "turn off the light,off,en-US,train\n"
       "switch it on,on,en-US,test\n"
       "mach das licht an,on,de-DE,train\n"
       "licht aus,off,de-DE,dev\n"
       "\"schalte, bitte, aus\",off,de-DE,test\n")


def test_load_table_csv_with_locale_and_split_columns(tmp_path):
    path = tmp_path / "commands.csv"
    path.write_text(CSV, encoding="utf-8")
    ds = load_table(str(path))
    assert ds.name == "commands" and ds.labels == ["off", "on"] and ds.locales == ["de-DE", "en-US"]
    assert ds.get("de-DE", "validation").texts == ["licht aus"]
    test = ds.get("de-DE", "test")
    assert test.texts == ["schalte, bitte, aus"] and test.labels == [0]
    assert len(ds.get("en-US", "train")) == 2 and not ds.has("en-US", "validation")
    de = load_table(str(path), locale="de-DE", split="train")  # options select rows
    assert de.locales == ["de-DE"] and list(de.splits["de-DE"]) == ["train"]


def test_load_table_jsonl_with_options_and_given_labels(tmp_path):
    path = tmp_path / "nl.jsonl"
    _write_jsonl(path, [{"sentence": "doe het licht aan", "intent": "on"},
                        {"sentence": "licht uit", "intent": "off"}])
    ds = load_table(str(path), text_column="sentence", label_column="intent", locale="nl-NL",
                    split="test", labels=["on", "off", "dim"])
    assert ds.labels == ["on", "off", "dim"] and ds.get("nl-NL", "test").labels == [0, 1]
    with pytest.raises(DataError, match=r"label 'off' is not in the label set"):
        load_table(str(path), text_column="sentence", label_column="intent", locale="nl-NL",
                   split="test", labels=["on"])


def test_load_table_folder_of_files(tmp_path):
    (tmp_path / "a.csv").write_text("text,label,locale,split\nhello,greet,en-US,train\n")
    _write_jsonl(tmp_path / "b.jsonl", [{"text": "bye", "label": "leave", "locale": "en-US", "split": "test"}])
    ds = load_table(str(tmp_path))
    assert ds.labels == ["greet", "leave"]
    assert ds.get("en-US", "train").texts == ["hello"] and ds.get("en-US", "test").texts == ["bye"]


def test_load_table_errors(tmp_path):
    with pytest.raises(DataError, match="not found"):
        load_table(str(tmp_path / "missing.csv"))
    path = tmp_path / "t.csv"
    path.write_text("utterance,label\nhi,greet\n")
    with pytest.raises(DataError, match=r"missing column\(s\) 'text', 'locale', 'split'; it has: 'utterance', 'label'"):
        load_table(str(path))
    path.write_text("text,label\n")
    with pytest.raises(DataError, match="no data rows"):
        load_table(str(path), locale="en-US", split="train")
    path.write_text(CSV)
    with pytest.raises(DataError, match=r"no rows for locale 'fr-FR'; locales present: de-DE, en-US"):
        load_table(str(path), locale="fr-FR")
    path.write_text("text,label,locale,split\nhi,,en-US,train\n")
    with pytest.raises(DataError, match=r"t.csv:2: empty 'label'"):
        load_table(str(path))
    (tmp_path / "x.txt").write_text("hi")
    with pytest.raises(DataError, match=r"expected a .csv or .jsonl"):
        load_table(str(tmp_path / "x.txt"))
