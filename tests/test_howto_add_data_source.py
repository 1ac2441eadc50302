"""How to add a data source (issue 13): one registration in one file. The toy TSV source below is
registered from this test alone and at once is a ``--data`` choice of the CLI, a kind the workspace
accepts, an option of the Setup page, and the dataset a model is scored on."""
import csv
import json

import pytest

from engine.cli import main
from engine.data import Dataset, Split, remap_labels
from engine.data.sources import DATA_SOURCES, PATH
from engine.workspace import Settings, data_kinds, open_workspace

TITLE = "Toy TSV (locale, split, text, label)"
ZOO_LABELS = ["HassClimateGetTemperature", "HassLightSet", "HassTurnOff", "HassTurnOn"]  # the tiny zoo's
TEXTS = {"HassClimateGetTemperature": "wie warm ist es im {}", "HassLightSet": "dimme das licht im {}",
         "HassTurnOff": "schalte das licht im {} aus", "HassTurnOn": "schalte das licht im {} ein"}


def load_tsv(settings, zoo):
    """A tab-separated file with columns locale, split, text, label; labels mapped onto the zoo's."""
    rows = {}
    with open(settings.data_path, encoding="utf-8", newline="") as f:
        for r in csv.DictReader(f, delimiter="\t"):
            texts, labels = rows.setdefault(r["locale"], {}).setdefault(r["split"], ([], []))
            texts.append(r["text"])
            labels.append(r["label"])
    splits = {loc: {s: Split(t, remap_labels(y, zoo.labels, f"{settings.data_path} {loc}/{s}"))
                    for s, (t, y) in parts.items()} for loc, parts in rows.items()}
    return Dataset("toy tsv", list(zoo.labels), splits, {"source": settings.data_path})


@pytest.fixture
def toy_source(tmp_path):
    DATA_SOURCES.register("toy_tsv", title=TITLE, params=[PATH])(load_tsv)   # <- the whole addition
    path = tmp_path / "toy.tsv"
    with open(path, "w", encoding="utf-8", newline="") as f:
        w = csv.writer(f, delimiter="\t")
        w.writerow(["locale", "split", "text", "label"])
        for split in ("train", "validation", "test"):
            for room in ("bad", "flur", "keller"):
                for label, text in TEXTS.items():
                    w.writerow(["de-DE", split, text.format(room), label])
    yield path
    DATA_SOURCES.unregister("toy_tsv")


def test_toy_source_is_a_cli_choice_and_scores_a_model(toy_source, tiny_zoo_dir, tmp_path, capsys):
    with pytest.raises(SystemExit):
        main(["info", "--help"])
    help_text = capsys.readouterr().out
    assert "toy_tsv: Toy TSV" in " ".join(help_text.split())        # a --data choice, with its title
    assert "toy_tsv: the file or folder to read" in " ".join(help_text.split())   # its --data-path

    common = ["--zoo", str(tiny_zoo_dir), "--data", "toy_tsv", "--data-path", str(toy_source),
              "--cache-dir", str(tmp_path / "cache"), "--device", "cpu", "--json", "--quiet"]
    assert main(["info", *common]) == 0
    sizes = {(r["locale"]): r for r in json.loads(capsys.readouterr().out)["data"]}
    assert set(sizes) == {"de-DE"} and sizes["de-DE"]["test"] == 12

    assert main(["evaluate", "--model", "de-DE", "--locale", "de-DE", *common]) == 0
    scored = json.loads(capsys.readouterr().out)
    assert 0.0 <= scored["metrics"]["accuracy"] <= 1.0 and scored["metrics"]["n"] == 12


def test_toy_source_is_a_workspace_kind_with_its_settings_checked(toy_source, tiny_zoo_dir, tmp_path):
    assert "toy_tsv" in data_kinds() and data_kinds()[0] == "zoo"     # appended; the default stays first
    ws = open_workspace(Settings(zoo=str(tiny_zoo_dir), data="toy_tsv", data_path=str(toy_source),
                                 cache_dir=str(tmp_path), device="cpu"))
    assert ws.dataset.name == "toy tsv" and ws.target_locales() == ["de-DE"]
    assert ws.dataset.labels == ZOO_LABELS
    with pytest.raises(ValueError, match="data source 'toy_tsv' needs a path"):
        open_workspace(Settings(zoo=str(tiny_zoo_dir), data="toy_tsv", cache_dir=str(tmp_path), device="cpu"))


def test_a_source_setting_must_be_a_workspace_setting():
    from engine.data.sources import source_fields
    from engine.registry import Param

    DATA_SOURCES.register("toy_bad", params=[Param("delimiter", "text", "\t")])(load_tsv)
    try:
        with pytest.raises(ValueError, match="'toy_bad' declares the setting 'delimiter', which Settings has no"):
            source_fields()
    finally:
        DATA_SOURCES.unregister("toy_bad")


def test_toy_source_is_offered_by_the_setup_page(toy_source, app_cache):
    from app_support import goto, open_app, rerun

    at = goto(open_app(), "Setup")
    radio = at.radio(key="setup_data")
    assert TITLE in radio.options, radio.options               # listed by its title
    radio.set_value("toy_tsv")
    rerun(at)
    assert not at.text_input(key="setup_data_path").disabled      # the source declared a path
    assert at.text_input(key="setup_text_column").disabled         # and no text column


def test_a_declared_setting_becomes_a_cli_option(tiny_zoo_dir, tmp_path, capsys):
    """The table source declares its text and label columns, so the CLI offers --text-column and
    --label-column (before the registry it had no way to set them)."""
    path = tmp_path / "rows.csv"
    with open(path, "w", encoding="utf-8", newline="") as f:
        w = csv.writer(f)
        w.writerow(["locale", "split", "utt", "intent"])
        w.writerows(["de-DE", "test", text.format("bad"), label] for label, text in TEXTS.items())
    assert main(["info", "--zoo", str(tiny_zoo_dir), "--data", "table", "--data-path", str(path),
                 "--text-column", "utt", "--label-column", "intent", "--cache-dir", str(tmp_path / "c"),
                 "--device", "cpu", "--json", "--quiet"]) == 0
    rows = json.loads(capsys.readouterr().out)["data"]
    assert [(r["locale"], r["test"]) for r in rows] == [("de-DE", 4)]
