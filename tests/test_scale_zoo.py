"""The scale zoo builder (at a small shape with the real vocabulary) and the safetensors streaming
reader/writer it and the disk→disk merge use."""
import json

import pytest
import torch
from safetensors.torch import load_file, save_file

from engine.demo.scale import build_scale_zoo, small_shape
from engine.tensorfile import MappedModel, StreamingWriter, TensorFileError
from engine.zoo import Zoo


@pytest.fixture(scope="module")
def scale_zoo(tmp_path_factory):
    out = tmp_path_factory.mktemp("scale") / "zoo"
    build_scale_zoo(out, locales=["de-DE", "en-US", "es-ES"], shape=small_shape())
    return out


def test_scale_zoo_has_real_shapes_and_loads(scale_zoo):
    zoo = Zoo.open(scale_zoo)
    assert zoo.locales == ["de-DE", "en-US", "es-ES"]
    spec = json.loads((scale_zoo / "zoo.json").read_text())
    state = zoo.state_dict("de-DE")
    assert state["roberta.embeddings.word_embeddings.weight"].shape == (250_002, 8)
    assert state["roberta.embeddings.position_embeddings.weight"].shape == (66, 8)
    assert state["classifier.out_proj.weight"].shape == (len(spec["labels"]), 8)
    assert json.loads((zoo.path("de-DE") / "config.json").read_text())["architectures"] == ["XLMRobertaForSequenceClassification"]
    assert spec["parameters"] == sum(t.numel() for t in state.values())
    base = zoo.base_state_dict()
    # a model is the base plus a small dense task vector
    delta = state["roberta.encoder.layer.1.output.dense.weight"] - base["roberta.encoder.layer.1.output.dense.weight"]
    assert 0 < delta.abs().mean() < 0.1 * base["roberta.encoder.layer.1.output.dense.weight"].abs().mean() + 0.01
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(zoo.path("de-DE")))
    ids = tok(["Schalte das Licht im Wohnzimmer aus"], return_tensors="pt")
    assert int(ids["input_ids"].max()) < 250_002
    model = AutoModelForSequenceClassification.from_pretrained(str(zoo.path("de-DE")))
    assert model(**ids).logits.shape == (1, len(spec["labels"]))


def test_scale_zoo_is_seeded_and_reused(scale_zoo, tmp_path):
    again = build_scale_zoo(tmp_path / "again", locales=["de-DE", "en-US", "es-ES"], shape=small_shape())
    a = load_file(str(scale_zoo / "e5small_massive_k_en-US" / "model.safetensors"))
    b = load_file(str(again.parent / "e5small_massive_k_en-US" / "model.safetensors"))
    assert all(torch.equal(a[k], b[k]) for k in a)
    mtime = (scale_zoo / "zoo.json").stat().st_mtime_ns
    build_scale_zoo(scale_zoo, locales=["de-DE", "en-US", "es-ES"], shape=small_shape())
    assert (scale_zoo / "zoo.json").stat().st_mtime_ns == mtime  # finished build reused
    with pytest.raises(ValueError, match="other settings"):
        build_scale_zoo(scale_zoo, locales=["de-DE", "en-US", "es-ES"], shape=small_shape(hidden=4))


def test_streaming_writer_round_trips_through_safetensors(tmp_path):
    tensors = {"a": torch.randn(3, 5), "b": torch.arange(7), "c": torch.randn(2, dtype=torch.float64).to(torch.bfloat16),
               "empty": torch.zeros(0, 4), "flag": torch.tensor([True, False])}
    path = tmp_path / "m.safetensors"
    with StreamingWriter(path, [(k, v.dtype, v.shape) for k, v in tensors.items()]) as w:
        for k, v in tensors.items():
            w.write(k, v)
    back = load_file(str(path))
    assert set(back) == set(tensors) and all(torch.equal(back[k], tensors[k]) for k in tensors)
    save_file(tensors, str(tmp_path / "ref.safetensors"))
    mapped = MappedModel([tmp_path / "ref.safetensors"], prefix="p.")
    assert mapped.shape("p.a") == (3, 5) and mapped.dtype("p.b") == torch.int64
    assert all(torch.equal(mapped["p." + k], tensors[k]) for k in tensors)


def test_streaming_writer_refuses_wrong_or_missing_tensors(tmp_path):
    path = tmp_path / "m.safetensors"
    w = StreamingWriter(path, [("a", torch.float32, (2,)), ("b", torch.float32, (2,))])
    with pytest.raises(TensorFileError, match="expected tensor 'a'"):
        w.write("b", torch.zeros(2))
    w.write("a", torch.zeros(2))
    with pytest.raises(TensorFileError, match="only 1 of 2"):
        w.close()
    assert not path.exists() and not list(tmp_path.iterdir())
