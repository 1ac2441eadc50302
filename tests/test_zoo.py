"""Zoo discovery, validation and safe loading on real HF folders (copies of the tiny demo zoo)."""
import json
import shutil

import pytest
import torch
from safetensors.torch import load_file, save_file

from engine.zoo import Zoo, ZooError, fingerprint_state


def copy_zoo(src, dst):
    shutil.copytree(src, dst, ignore=shutil.ignore_patterns("data"))
    return dst


def test_manifest_zoo_has_models_base_labels(tiny_zoo_dir):
    zoo = Zoo.open(tiny_zoo_dir)
    assert zoo.locales == ["de-DE", "en-US", "es-ES", "nl-NL"]
    assert zoo.base is not None and len(zoo.labels) == 4
    assert zoo.validate() == []  # the demo base carries the shared head: nothing to note
    assert zoo.parameter_count() > 1_000_000


def test_discovery_by_name_pattern(tiny_zoo_dir, tmp_path):
    root = copy_zoo(tiny_zoo_dir, tmp_path / "z")
    (root / "zoo.json").unlink()
    zoo = Zoo.discover(root, "{base}_massive_k_{locale}", base="base")
    assert zoo.locales == ["de-DE", "en-US", "es-ES", "nl-NL"]
    with pytest.raises(ZooError, match="match the pattern"):
        Zoo.discover(root, "xlmr_{locale}_nothing")
    with pytest.raises(ZooError, match="must contain"):
        Zoo.discover(root, "no-locale-here")


def test_base_keys_align_with_classifier(tiny_ws):
    base = tiny_ws.zoo.base_state_dict()
    source = tiny_ws.zoo.state_dict("de-DE")
    assert set(base) <= set(source)
    assert "classifier.out_proj.weight" in base  # the demo base holds the shared initial head
    assert not torch.equal(base["classifier.out_proj.weight"], source["classifier.out_proj.weight"])


def test_wrong_paths_give_clear_errors(tmp_path):
    with pytest.raises(ZooError, match="does not exist"):
        Zoo.open(tmp_path / "missing")
    (tmp_path / "zoo.json").write_text("{not json")
    with pytest.raises(ZooError, match="not valid JSON"):
        Zoo.open(tmp_path)
    (tmp_path / "zoo.json").write_text(json.dumps({"models": {"de-DE": "nowhere"}}))
    with pytest.raises(ZooError, match="'nowhere' does not exist"):
        Zoo.open(tmp_path)


def test_label_set_mismatch_is_named(tiny_zoo_dir, tmp_path):
    root = copy_zoo(tiny_zoo_dir, tmp_path / "z")
    cfg_path = root / "e5small_massive_k_nl-NL" / "config.json"
    cfg = json.loads(cfg_path.read_text())
    first = cfg["id2label"]["0"]
    cfg["id2label"]["0"] = "HassSomethingElse"
    cfg_path.write_text(json.dumps(cfg))
    with pytest.raises(ZooError, match=rf"nl-NL: label set differs.*({first}|HassSomethingElse)"):
        Zoo.open(root).validate()


def test_architecture_mismatch_is_named(tiny_zoo_dir, tmp_path):
    root = copy_zoo(tiny_zoo_dir, tmp_path / "z")
    folder = root / "e5small_massive_k_es-ES"
    state = load_file(str(folder / "model.safetensors"))
    key = "classifier.dense.weight"
    state[key] = state[key][:, :-1].contiguous()
    save_file(state, str(folder / "model.safetensors"))
    with pytest.raises(ZooError, match=rf"es-ES: tensor '{key}' has shape"):
        Zoo.open(root).validate()
    cfg = json.loads((folder / "config.json").read_text())
    cfg["num_hidden_layers"] = 7
    (folder / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(ZooError, match="num_hidden_layers=7"):
        Zoo.open(root).validate()


def test_nan_and_corrupt_weights_and_pickles_are_refused(tiny_zoo_dir, tmp_path):
    root = copy_zoo(tiny_zoo_dir, tmp_path / "z")
    folder = root / "e5small_massive_k_de-DE"
    state = load_file(str(folder / "model.safetensors"))
    state["classifier.out_proj.bias"][0] = float("nan")
    save_file(state, str(folder / "model.safetensors"))
    zoo = Zoo.open(root)
    with pytest.raises(ZooError, match="classifier.out_proj.bias.*NaN"):
        zoo.state_dict("de-DE")
    (folder / "model.safetensors").write_bytes(b"garbage" * 10)
    with pytest.raises(ZooError, match="not .*safetensors"):
        zoo.state_dict("de-DE")
    (folder / "model.safetensors").unlink()
    (folder / "pytorch_model.bin").write_bytes(b"pickle")
    with pytest.raises(ZooError, match="only pickled weights"):
        zoo.state_dict("de-DE")


def test_unknown_locale_lists_the_zoo(tiny_ws):
    with pytest.raises(ZooError, match="no model for 'fr-FR'.*de-DE"):
        tiny_ws.zoo.path("fr-FR")


def test_build_model_runs_a_merged_state(tiny_ws):
    state = tiny_ws.zoo.state_dict("en-US")
    model = tiny_ws.zoo.build_model(state)
    ids = torch.tensor([[0, 5, 6, 2]])
    with torch.inference_mode():
        ours = model(input_ids=ids).logits
        ref = tiny_ws.zoo.load_model("en-US")(input_ids=ids).logits
    assert torch.allclose(ours, ref, atol=1e-5)
    assert fingerprint_state(state) == fingerprint_state(dict(state))
    state2 = dict(state)
    state2["classifier.out_proj.bias"] = state["classifier.out_proj.bias"] + 1
    assert fingerprint_state(state2) != fingerprint_state(state)


def test_weights_stay_resident_until_the_file_changes(tiny_zoo_dir, tmp_path):
    from engine.resident import ResidentStates, state_bytes
    from engine.zoo import load_state_dict

    root = copy_zoo(tiny_zoo_dir, tmp_path / "z")
    folder = root / "e5small_massive_k_de-DE"
    cache = ResidentStates(budget=10 ** 9)
    a = cache.get(folder, load_state_dict)
    b = cache.get(folder, load_state_dict)
    assert (cache.hits, cache.misses) == (1, 1)
    key = next(iter(a))
    assert b[key] is a[key] and b is not a          # shared tensors, a fresh dict
    state = load_file(str(folder / "model.safetensors"))
    state[key] = state[key] + 1
    save_file(state, str(folder / "model.safetensors"))
    c = cache.get(folder, load_state_dict)
    assert cache.misses == 2 and torch.equal(c[key], a[key] + 1)
    assert len(cache._items) == 1                   # the stale version was dropped
    # a budget smaller than two models keeps only the most recent; zero keeps none
    other = root / "e5small_massive_k_es-ES"
    small = ResidentStates(budget=int(state_bytes(a) * 1.5))
    small.get(folder, load_state_dict), small.get(other, load_state_dict)
    assert len(small._items) == 1 and small.size <= small.budget
    off = ResidentStates(budget=0)
    off.get(folder, load_state_dict), off.get(folder, load_state_dict)
    assert (off.hits, off.misses, len(off._items)) == (0, 2, 0)


def test_resident_weights_survive_every_kind_of_merge(tiny_ws):
    """Data-aware merges build real models over the resident tensors (assign=True): the zoo's
    weights must come out of every merge family unchanged."""
    from engine.experiments import Candidate, build_merge

    sources = ["de-DE", "en-US"]
    before = {s: {k: v.clone() for k, v in tiny_ws.zoo.state_dict(s).items()} for s in sources}
    for method in ("fisher", "regmean", "frankenmerge", "ties", "dare_ties", "slerp"):
        params = {"examples": 8} if method in ("fisher", "regmean") else {}
        build_merge(tiny_ws, Candidate("merge", method, "nl-NL", sources, [0.5, 0.5], params=params))
        for s in sources:
            now = tiny_ws.zoo.state_dict(s)
            assert all(torch.equal(now[k], before[s][k]) for k in before[s]), (method, s)


def test_resident_budget_from_the_environment(monkeypatch):
    from engine.resident import default_budget

    monkeypatch.setenv("ENGINE_RESIDENT_GB", "0.5")
    assert default_budget() == 2 ** 29
    monkeypatch.setenv("ENGINE_RESIDENT_GB", "0")
    assert default_budget() == 0
    monkeypatch.delenv("ENGINE_RESIDENT_GB")
    auto = default_budget()
    assert 0 < auto <= 8 * 2 ** 30
    for bad in ("lots", "-1"):
        monkeypatch.setenv("ENGINE_RESIDENT_GB", bad)
        with pytest.warns(UserWarning, match="ENGINE_RESIDENT_GB"):
            assert default_budget() == auto
