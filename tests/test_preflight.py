"""engine.preflight: every problem it reports, each fed for real on the tiny zoo (or a copy of it
without a base, or with data removed), and the engine's own run path refusing with the same text."""
import json
import re
import shutil

import pytest

from engine.data.base import DataError
from engine.ensemble import ENSEMBLES
from engine.experiments import Candidate, CandidateError, check_candidate
from engine.export_guard import ExportError
from engine.preflight import preflight
from engine.registry import Param
from engine.zoo import ZooError

T, S = "de-DE", ["nl-NL", "en-US"]


def texts(ws, cand, **kw):
    return [(p.about, p.text) for p in preflight(ws, cand, **kw)]


def only(ws, cand, about, fragment, error=CandidateError, **kw):
    """Exactly one problem, about ``about``, saying ``fragment``; check_candidate raises it."""
    found = preflight(ws, cand, **kw)
    assert [p.about for p in found] == [about], texts(ws, cand, **kw)
    assert fragment in found[0].text and "\n" not in found[0].text
    if about != "export":  # a run with a bad export folder still runs (its export error is stored)
        with pytest.raises(error, match=re.escape(fragment)):
            check_candidate(ws, cand)
    return found[0]


def test_a_good_recipe_has_no_problem(tiny_ws):
    assert preflight(tiny_ws, Candidate("merge", "ties", T, S, [0.5, 0.5], {"density": 0.5})) == []
    assert preflight(tiny_ws, Candidate("ensemble", "learned_weights", T, S, [1, 1], data_mode="target")) == []
    check_candidate(tiny_ws, Candidate("merge", "linear", T, S, [1, 0]))  # one zero weight is fine


def test_kind_method_sources_and_weights(tiny_ws):
    ws = tiny_ws
    only(ws, Candidate("stack", "linear", T, S, [1, 1]), "kind", "unknown candidate kind 'stack'")
    only(ws, Candidate("merge", "nonsense", T, S, [1, 1]), "method", "unknown merge method 'nonsense'")
    only(ws, Candidate("ensemble", "nonsense", T, S, [1, 1]), "method", "unknown ensemble method")
    only(ws, Candidate("merge", "linear", T, [], []), "sources", "choose at least one source")
    only(ws, Candidate("merge", "linear", T, ["nl-NL", "nl-NL"], [1, 1]), "sources", "nl-NL is listed more than once")
    only(ws, Candidate("merge", "linear", T, ["xx-XX"], [1]), "sources", "no model for 'xx-XX'", ZooError)
    only(ws, Candidate("merge", "linear", T, [T, "nl-NL"], [1, 1]), "sources", "the target de-DE is among the sources")
    only(ws, Candidate("merge", "linear", T, S, [1]), "weights", "1 weights for 2 sources")
    for bad in ([0, 0], [1, -1], [1, float("nan")], [1, float("inf")]):
        only(ws, Candidate("merge", "linear", T, S, bad), "weights", "finite, non-negative and not all zero")
    only(ws, Candidate("merge", "linear", T, S, ["a", 1]), "weights", "weights must be numbers")


def test_source_range_from_the_traits(tiny_ws):
    ws = tiny_ws
    only(ws, Candidate("merge", "model_stock", T, ["nl-NL"], [1]), "sources", "'model_stock' needs at least 2 sources")
    only(ws, Candidate("ensemble", "fixed_pair", T, ["nl-NL", "en-US", "es-ES"], [1, 1, 1]), "sources",
         "'fixed_pair' combines exactly 2 models; 3 are chosen")

    @ENSEMBLES.register("toy_at_most_two", params=[], max_sources=2)
    def toy(logits, weights):
        return logits.mean(axis=0)

    try:
        only(ws, Candidate("ensemble", "toy_at_most_two", T, ["nl-NL", "en-US", "es-ES"], [1, 1, 1]), "sources",
             "'toy_at_most_two' takes at most 2 sources; 3 chosen")
        assert preflight(ws, Candidate("ensemble", "toy_at_most_two", T, ["nl-NL"], [1])) == []
    finally:
        ENSEMBLES.unregister("toy_at_most_two")


def test_parameters_and_settings(tiny_ws):
    ws = tiny_ws
    only(ws, Candidate("merge", "ties", T, S, [1, 1], {"density": 2.0}), "params", "'density' must be in")
    only(ws, Candidate("merge", "ties", T, S, [1, 1], {"densty": 0.5}), "params", "has no parameter(s) ['densty']")
    only(ws, Candidate("merge", "ties", T, S, [1, 1], {"density": [0.5, 0.5, 0.5]}), "params",
         "'density' has 3 values but there are 2 source models")
    only(ws, Candidate("merge", "linear", T, S, [1, 1], data_mode="everything"), "settings", "data_mode must be one of")
    only(ws, Candidate("merge", "linear", T, S, [1, 1], seed=-1), "settings", "seed must be in")
    only(ws, Candidate("merge", "linear", T, S, [1, 1], data_examples=0), "settings", "data_examples must be in")


def test_export_folder_is_checked_only_when_asked(tiny_ws, tiny_zoo_dir, tmp_path):
    ws, cand = tiny_ws, Candidate("merge", "linear", T, S, [1, 1])
    only(ws, cand, "export", "base model", ExportError, export_path=tiny_zoo_dir / "base")
    full = tmp_path / "full"
    full.mkdir()
    (full / "notes.txt").write_text("mine")
    only(ws, cand, "export", "is not empty", ExportError, export_path=full)
    assert preflight(ws, cand, export_path=full, overwrite=True) == []
    assert preflight(ws, cand) == []


@pytest.fixture()
def bare_ws(tiny_zoo_dir, tmp_path):
    """The tiny zoo's models with no base, de-DE without validation data and nl-NL without train data."""
    from engine.workspace import Settings, open_workspace

    spec = json.loads((tiny_zoo_dir / "zoo.json").read_text())
    spec["models"] = {loc: str((tiny_zoo_dir / ref).resolve()) for loc, ref in spec["models"].items()}
    spec.pop("base")
    (tmp_path / "data").mkdir()
    for f in (tiny_zoo_dir / "data").glob("*.jsonl"):
        drop = {"de-DE": "dev", "nl-NL": "train"}.get(f.stem)
        lines = [l for l in f.read_text(encoding="utf-8").splitlines() if json.loads(l)["partition"] != drop]
        (tmp_path / "data" / f.name).write_text("\n".join(lines) + "\n", encoding="utf-8")
    (tmp_path / "zoo.json").write_text(json.dumps(spec))
    return open_workspace(Settings(zoo=str(tmp_path / "zoo.json"), cache_dir=str(tmp_path / "cache"), device="cpu"))


def test_base_and_data_a_method_needs(bare_ws, tiny_zoo_dir, tmp_path):
    ws = bare_ws
    only(ws, Candidate("merge", "ties", "es-ES", S, [1, 1]), "base", "needs the pretrained base model; this zoo has none")
    # data-aware merges: the data their traits say they read
    only(ws, Candidate("merge", "fisher", T, ["en-US", "es-ES"], [1, 1], data_mode="target"), "data",
         "no 'validation' split for de-DE", DataError)
    only(ws, Candidate("merge", "regmean", "es-ES", ["nl-NL", "en-US"], [1, 1], data_mode="sources"), "data",
         "no 'train' split for nl-NL", DataError)
    target_stats = Candidate("merge", "regmean", "es-ES", ["nl-NL", "en-US"], [1, 1], data_mode="target")
    assert preflight(ws, target_stats) == []
    only(ws, Candidate("merge", "frankenmerge", T, ["en-US", "es-ES"], [1, 1]), "data",
         "'frankenmerge' chooses by", DataError)
    # learned fusion: fitted on the target's or the sources' validation data
    only(ws, Candidate("ensemble", "learned_weights", T, ["en-US", "es-ES"], [1, 1], data_mode="target"), "data",
         "no 'validation' split for de-DE", DataError)
    only(ws, Candidate("ensemble", "fusion_mlp", "es-ES", [T, "en-US"], [1, 1], data_mode="sources"), "data",
         "no 'validation' split for de-DE", DataError)
    assert preflight(ws, Candidate("ensemble", "soft", T, ["en-US", "es-ES"], [1, 1])) == []

    @ENSEMBLES.register("toy_unlabelled_fit", params=[], needs_fit=True, uses_labels=False)
    def toy(logits, labels, weights, params, seed):
        raise AssertionError("never fitted here")

    try:  # a fusion that reads no labels fits on the target's validation texts, whatever data_mode says
        only(ws, Candidate("ensemble", "toy_unlabelled_fit", T, ["en-US", "es-ES"], [1, 1], data_mode="sources"),
             "data", "no 'validation' split for de-DE", DataError)
    finally:
        ENSEMBLES.unregister("toy_unlabelled_fit")

    # a base that was there when the zoo was opened and is gone now
    base = tmp_path / "moved_base"
    shutil.copytree(tiny_zoo_dir / "base", base)
    spec = json.loads((tmp_path / "zoo.json").read_text())
    spec["base"] = str(base)
    (tmp_path / "zoo.json").write_text(json.dumps(spec))
    from engine.workspace import Settings, open_workspace

    with_base = open_workspace(Settings(zoo=str(tmp_path / "zoo.json"), cache_dir=str(tmp_path / "c2"), device="cpu"))
    assert preflight(with_base, Candidate("merge", "ties", "es-ES", S, [1, 1])) == []
    shutil.rmtree(base)
    only(with_base, Candidate("merge", "ties", "es-ES", S, [1, 1]), "base", "does not exist")


def test_a_target_without_test_data(bare_ws, tmp_path):
    from engine.workspace import Settings, open_workspace

    f = tmp_path / "data" / "es-ES.jsonl"
    f.write_text("\n".join(l for l in f.read_text(encoding="utf-8").splitlines()
                           if json.loads(l)["partition"] != "test") + "\n", encoding="utf-8")
    ws = open_workspace(Settings(zoo=str(tmp_path / "zoo.json"), cache_dir=str(tmp_path / "c3"), device="cpu"))
    only(ws, Candidate("merge", "linear", "es-ES", ["en-US"], [1]), "data", "no 'test' split for es-ES", DataError)


def test_every_problem_at_once_is_listed(tiny_ws):
    found = preflight(tiny_ws, Candidate("merge", "ties", T, [T, "xx-XX"], [1], {"density": 5}, seed=-3))
    assert [p.about for p in found] == ["sources", "sources", "weights", "params", "settings"]
    with pytest.raises(ZooError, match=r"no model for 'xx-XX'; .* \(and 4 more: the target"):
        check_candidate(tiny_ws, Candidate("merge", "ties", T, [T, "xx-XX"], [1], {"density": 5}, seed=-3))
