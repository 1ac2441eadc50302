"""Evaluation: batched inference equals one-at-a-time, the logits cache, metrics, the N×N matrix."""
import numpy as np
import pytest
import torch

from engine.evaluate import Evaluator
from engine.metrics import classification_metrics, expected_calibration_error, macro_f1


def test_batched_logits_equal_single_example_forward(tiny_ws):
    ev = tiny_ws.evaluator
    scored = ev.source_logits("de-DE", "nl-NL", "test")
    data = tiny_ws.dataset.get("nl-NL", "test")
    model = tiny_ws.zoo.load_model("de-DE")
    tok = ev.tokenizer
    for i in (0, 7, len(data) - 1):
        enc = tok(data.texts[i], return_tensors="pt", truncation=True, max_length=ev.max_length)
        with torch.inference_mode():
            single = model(**enc).logits[0].numpy()
        np.testing.assert_allclose(scored.logits[i], single, atol=1e-4)


def test_logits_cache_hits_and_is_keyed_by_content(tiny_ws, tmp_path):
    ev = Evaluator(tiny_ws.zoo, tiny_ws.dataset, cache_dir=tmp_path, device="cpu")
    assert not ev.has_source_logits("en-US", "de-DE")
    first = ev.source_logits("en-US", "de-DE")
    assert ev.has_source_logits("en-US", "de-DE") and not ev.has_source_logits("en-US", "nl-NL")
    assert not ev.has_source_logits("en-US", "xx-XX")
    second = ev.source_logits("en-US", "de-DE")
    assert not first.cached and second.cached
    np.testing.assert_array_equal(first.logits, second.logits)
    state = tiny_ws.zoo.state_dict("en-US")
    via_state = ev.state_logits(state, "de-DE")
    np.testing.assert_allclose(via_state.logits, first.logits, atol=1e-5)
    state["classifier.out_proj.bias"] = state["classifier.out_proj.bias"] + 3.0
    shifted = ev.state_logits(state, "de-DE")
    assert not shifted.cached
    np.testing.assert_allclose(shifted.logits, first.logits + 3.0, atol=1e-4)


def test_metrics_against_hand_computed_values():
    probs = np.array([[0.7, 0.2, 0.1], [0.1, 0.8, 0.1], [0.4, 0.5, 0.1], [0.2, 0.3, 0.5]])
    labels = np.array([0, 1, 0, 1])
    m = classification_metrics(probs, labels)
    assert m["accuracy"] == pytest.approx(0.5)
    assert m["top2_accuracy"] == pytest.approx(1.0)
    assert m["mean_confidence"] == pytest.approx((0.7 + 0.8 + 0.5 + 0.5) / 4)
    assert m["nll"] == pytest.approx(-np.mean(np.log([0.7, 0.8, 0.4, 0.3])))
    # class 0: tp1 fp0 fn1 -> 2/3; class 1: tp1 fp1 fn1 -> 1/2; class 2: fp1 -> 0
    assert macro_f1(probs.argmax(1), labels, 3) == pytest.approx((2 / 3 + 1 / 2 + 0) / 3)
    # ECE, 10 bins: 0.7 bin right (|1-.7|), 0.8 bin right (|1-.8|), 0.5 bin: 2 wrong (|0-.5|)
    assert expected_calibration_error(probs, labels) == pytest.approx((0.3 + 0.2 + 2 * 0.5) / 4)
    with pytest.raises(ValueError, match="do not match"):
        classification_metrics(probs, labels[:2])


def test_nxn_matrix_has_every_model_and_locale_and_diagonal_is_strong(tiny_ws):
    table = tiny_ws.evaluator.nxn()
    assert list(table.index) == tiny_ws.zoo.locales
    assert list(table.columns) == tiny_ws.dataset.locales
    assert table.notna().all().all()
    diag = np.mean([table.loc[l, l] for l in table.index])
    off = np.mean([table.loc[m, l] for m in table.index for l in table.columns if m != l])
    assert diag > off  # in-language beats zero-shot on average, even for the tiny zoo


def test_evaluate_reports_latency_and_memory(tiny_ws):
    m = tiny_ws.evaluator.evaluate_source("es-ES", "es-ES")
    assert m["latency_ms"] >= 0 and m["peak_mem_mb"] > 1
    assert 0 <= m["accuracy"] <= 1 and m["n"] == len(tiny_ws.dataset.get("es-ES", "test"))


def test_label_set_mismatch_between_zoo_and_data(tiny_ws):
    from engine.data import Dataset

    other = Dataset("other", ["a", "b", "c", "d"], {})
    with pytest.raises(ValueError, match="label set does not match"):
        Evaluator(tiny_ws.zoo, other, use_cache=False)


def test_unknown_locale_and_split(tiny_ws):
    from engine.data import DataError

    with pytest.raises(DataError, match="no locale 'fr-FR'"):
        tiny_ws.evaluator.evaluate_source("de-DE", "fr-FR")
    with pytest.raises(DataError, match="no 'dev' split"):
        tiny_ws.evaluator.evaluate_source("de-DE", "de-DE", "dev")
