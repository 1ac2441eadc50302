"""Evaluation speed paths keep the numbers: length bucketing, inference mode, half precision on CUDA."""
import numpy as np
import pytest
import torch

from engine.evaluate import Evaluator, autocast_dtype


def test_bucketed_batches_give_the_same_predictions_as_the_split_order(tiny_ws, tmp_path):
    bucketed = Evaluator(tiny_ws.zoo, tiny_ws.dataset, device="cpu", batch_size=8, use_cache=False)
    plain = Evaluator(tiny_ws.zoo, tiny_ws.dataset, device="cpu", batch_size=8, use_cache=False,
                      bucket=False)
    enc_b, enc_p = bucketed.encoded("nl-NL", "test"), plain.encoded("nl-NL", "test")
    lengths = [len(x) for x in enc_b.input_ids]
    assert lengths == sorted(lengths) and [len(x) for x in enc_p.input_ids] != lengths
    model = tiny_ws.zoo.load_model("de-DE")
    a, b = bucketed.forward(model, enc_b), plain.forward(model, enc_p)
    np.testing.assert_array_equal(a.logits.argmax(1), b.logits.argmax(1))
    np.testing.assert_allclose(a.logits, b.logits, atol=1e-4)  # padding only changes rounding


def test_forward_runs_without_autograd(tiny_ws):
    ev = Evaluator(tiny_ws.zoo, tiny_ws.dataset, device="cpu", use_cache=False)
    seen = []
    model = tiny_ws.zoo.load_model("de-DE")
    model.register_forward_hook(lambda m, a, out: seen.append(
        (torch.is_inference_mode_enabled(), out.logits.requires_grad)))
    ev.forward(model, ev.encoded("nl-NL", "test"))
    assert seen and all(mode and not grad for mode, grad in seen)


def test_precision_choice_keeps_the_cpu_in_float32_and_halves_only_cuda():
    cpu, cuda = torch.device("cpu"), torch.device("cuda")
    for precision in ("float32", "auto", "bfloat16", "float16"):
        assert autocast_dtype(cpu, precision) is None
    assert autocast_dtype(cuda, "float32") is None
    assert autocast_dtype(cuda, "float16") is torch.float16
    assert autocast_dtype(cuda, "bfloat16") is torch.bfloat16
    with pytest.raises(ValueError, match="unknown evaluation precision 'half'"):
        autocast_dtype(cpu, "half")


def test_half_precision_request_on_cpu_scores_as_float32_under_the_same_cache_key(tiny_ws, tmp_path):
    full = Evaluator(tiny_ws.zoo, tiny_ws.dataset, cache_dir=tmp_path, device="cpu")
    asked = Evaluator(tiny_ws.zoo, tiny_ws.dataset, cache_dir=tmp_path, device="cpu",
                      precision="bfloat16")
    assert asked.half is None
    assert asked._key("m", "nl-NL", "test") == full._key("m", "nl-NL", "test")


@pytest.mark.skipif(not torch.cuda.is_available(), reason="half precision runs only on CUDA")
def test_half_precision_on_cuda_keeps_predictions_and_has_its_own_cache_entries(tiny_ws, tmp_path):
    full = Evaluator(tiny_ws.zoo, tiny_ws.dataset, cache_dir=tmp_path, device="cuda")
    half = Evaluator(tiny_ws.zoo, tiny_ws.dataset, cache_dir=tmp_path, device="cuda",
                     precision="auto")
    assert half.half in (torch.bfloat16, torch.float16)
    assert half._key("m", "nl-NL", "test") != full._key("m", "nl-NL", "test")
    a = full.source_logits("de-DE", "nl-NL", "test")
    b = half.source_logits("de-DE", "nl-NL", "test")
    assert not b.cached and b.logits.dtype == np.float32
    agree = (a.logits.argmax(1) == b.logits.argmax(1)).mean()
    assert agree >= 0.95
    np.testing.assert_allclose(a.logits, b.logits, atol=0.15)
