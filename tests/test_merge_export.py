"""export_merge: a loadable HF folder plus recipe.json and, where mergekit can express the merge,
a mergekit.yaml that mergekit 0.1.5 itself runs to the same tensors."""
import json

import pytest
import torch
from safetensors.torch import load_file
from tokenizers import Tokenizer, models, pre_tokenizers
from transformers import (AutoModelForSequenceClassification, AutoTokenizer,
                          PreTrainedTokenizerFast, XLMRobertaConfig,
                          XLMRobertaForSequenceClassification)

from engine import __version__
from engine.merge import MergeError, merge_state_dicts
from engine.merge.export import export_merge, mergekit_config

torch.set_num_threads(1)
WORDS = ["<s>", "<pad>", "</s>", "<unk>"] + [f"w{i}" for i in range(96)]


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    """A pretrained 'base' and three sources, each a complete HF folder with a tokenizer."""
    root = tmp_path_factory.mktemp("export")
    config = XLMRobertaConfig(vocab_size=100, hidden_size=32, num_hidden_layers=2,
                              num_attention_heads=2, intermediate_size=64,
                              max_position_embeddings=40, num_labels=4)
    tok = Tokenizer(models.WordLevel({w: i for i, w in enumerate(WORDS)}, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<s>", eos_token="</s>",
                                   pad_token="<pad>", unk_token="<unk>")
    paths = {}
    for i, name in enumerate(["base", "a", "b", "c"]):
        torch.manual_seed(i)
        model = XLMRobertaForSequenceClassification(config)
        if name != "base":  # sources = base + a small "fine-tuning" step
            base = load_file(str(paths["base"] / "model.safetensors"))
            model.load_state_dict({k: v + 0.02 * torch.randn_like(v) for k, v in base.items()})
        model.save_pretrained(root / name)
        fast.save_pretrained(root / name)
        paths[name] = root / name
    states = {n: load_file(str(p / "model.safetensors")) for n, p in paths.items()}
    return paths, states


def _merge(folders, method, params=None, sources=("a", "b", "c"), weights=(0.5, 0.3, 0.2)):
    paths, states = folders
    merged = merge_state_dicts(method, [states[s] for s in sources], list(weights),
                               base=states["base"], params=params, names=list(sources))
    recipe = {"method": method, "params": params or {}, "sources": [str(paths[s]) for s in sources],
              "weights": list(weights), "seed": 0, "base": str(paths["base"])}
    return merged, recipe


def test_round_trip_loads_with_transformers(folders, tmp_path):
    paths, _ = folders
    merged, recipe = _merge(folders, "ties", {"density": [0.3, 0.5, 0.7]})
    out = export_merge(merged, paths["a"], tmp_path / "merged", recipe)
    model = AutoModelForSequenceClassification.from_pretrained(out).eval()
    for k, v in model.state_dict().items():
        assert torch.equal(v, merged[k]), k
    tokenizer = AutoTokenizer.from_pretrained(out)
    assert tokenizer("w1 w2")["input_ids"] == AutoTokenizer.from_pretrained(paths["a"])(
        "w1 w2")["input_ids"]
    with torch.no_grad():
        logits = model(**tokenizer(["w1 w5 w9"], return_tensors="pt")).logits
    assert logits.shape == (1, 4)

    saved = json.loads((out / "recipe.json").read_text())
    for field in ("method", "params", "sources", "weights", "seed", "base"):
        assert saved[field] == recipe[field]
    assert saved["engine_version"] == __version__ and saved["created"].endswith("+00:00")
    assert saved["report"]["counts"] == {"ties": len(merged)}
    assert saved["mergekit_yaml"] == "mergekit.yaml"


def test_mergekit_yaml_is_valid_and_complete(folders, tmp_path):
    config_mod = pytest.importorskip("mergekit.config")
    import yaml
    paths, _ = folders
    merged, recipe = _merge(folders, "dare_ties", {"density": 0.4, "scale": 1.5})
    out = export_merge(merged, paths["a"], tmp_path / "m", recipe)
    text = (out / "mergekit.yaml").read_text()
    assert "not the random draws" in text  # random method: says its rerun draws differently
    config = config_mod.MergeConfiguration.model_validate(yaml.safe_load(text))
    assert config.merge_method == "dare_ties" and config.base_model.model.path == str(
        paths["base"])
    assert [m.parameters["weight"] for m in config.models] == pytest.approx([0.5, 0.3, 0.2])
    assert all(m.parameters["density"] == 0.4 for m in config.models)
    assert config.parameters == {"lambda": 1.5, "normalize": False, "rescale": True}


@pytest.mark.parametrize("method,params,sources,weights", [
    ("linear", {}, ("a", "b", "c"), (0.5, 0.3, 0.2)),
    ("task_arithmetic", {"scale": 2.0}, ("a", "b", "c"), (0.5, 0.3, 0.2)),
    ("ties", {"density": 0.4}, ("a", "b", "c"), (0.5, 0.3, 0.2)),
    ("breadcrumbs_ties", {"density": 0.8, "gamma": 0.05}, ("a", "b", "c"), (0.2, 0.2, 0.6)),
    ("slerp", {}, ("a", "b"), (0.7, 0.3)),
    ("model_stock", {"filter_wise": True}, ("a", "b", "c"), (1, 1, 1)),
])
def test_mergekit_runs_the_yaml_to_the_same_model(folders, tmp_path, method, params, sources,
                                                  weights):
    pytest.importorskip("mergekit.merge")
    import yaml
    from mergekit.config import MergeConfiguration
    from mergekit.merge import run_merge
    from mergekit.options import MergeOptions
    paths, _ = folders
    merged, recipe = _merge(folders, method, params, sources, weights)
    out = export_merge(merged, paths["a"], tmp_path / "ours", recipe)
    config = MergeConfiguration.model_validate(yaml.safe_load((out / "mergekit.yaml").read_text()))
    run_merge(config, str(tmp_path / "theirs"), MergeOptions(copy_tokenizer=False))
    theirs = load_file(str(tmp_path / "theirs" / "model.safetensors"))
    assert set(theirs) == set(merged)
    for k in merged:
        torch.testing.assert_close(merged[k], theirs[k], rtol=1e-5, atol=1e-6, msg=k)


@pytest.mark.parametrize("method,params,sources,weights,reason", [
    ("fisher", None, ("a", "b"), (1, 1), "mergekit has no 'fisher'"),
    ("slerp", {}, ("a", "b", "c"), (1, 1, 1), "exactly two"),
    ("model_stock", {}, ("a", "b", "c"), (1, 2, 1), "equal weights"),
    ("dare_linear", {"rescale": "inverse_density"}, ("a", "b"), (1, 1), "L1"),
])
def test_no_yaml_when_mergekit_cannot_reproduce(folders, method, params, sources, weights,
                                                reason):
    paths, _ = folders
    recipe = {"method": method, "params": params or {}, "sources": list(sources),
              "weights": list(weights), "base": "base"}
    if method == "fisher":
        recipe["params"] = {}
    config, why = mergekit_config(recipe)
    assert config is None and reason in why


def test_no_yaml_files_and_note_in_recipe(folders, tmp_path):
    paths, states = folders
    merged = merge_state_dicts("inverse_variance", [states["a"], states["b"]])
    out = export_merge(merged, paths["a"], tmp_path / "iv",
                       {"method": "inverse_variance", "sources": ["a", "b"]})
    saved = json.loads((out / "recipe.json").read_text())
    assert not (out / "mergekit.yaml").exists()
    assert saved["mergekit_yaml"] is None and "inverse_variance" in saved["mergekit_note"]


def test_export_errors(folders, tmp_path):
    paths, states = folders
    with pytest.raises(MergeError, match="no config.json"):
        export_merge(states["a"], tmp_path, tmp_path / "x", {"method": "linear"})
    with pytest.raises(MergeError, match="known merge method"):
        export_merge(states["a"], paths["a"], tmp_path / "x", {"method": "average"})
    with pytest.raises(MergeError, match="template folder"):
        export_merge(states["a"], paths["a"], paths["a"], {"method": "linear"})
