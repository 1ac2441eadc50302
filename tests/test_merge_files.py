"""Disk → disk streaming merges (engine/merge/files.py) give exactly the in-memory merge's tensors."""
import pytest
import torch
from safetensors.torch import load_file, save_file

from engine.merge import merge_state_dicts
from engine.merge.common import MergeError
from engine.merge.files import merge_files
from engine.zoo import Zoo, load_state_dict


@pytest.fixture(scope="module")
def zoo(tiny_zoo_dir):
    return Zoo.open(tiny_zoo_dir)


@pytest.mark.parametrize("method,params", [("linear", {}), ("task_arithmetic", {"scale": 0.7}),
                                           ("ties", {"density": 0.3}), ("dare_ties", {"density": 0.5})])
def test_streaming_merge_equals_in_memory_merge(zoo, tmp_path, method, params):
    locales = zoo.locales[:3]
    weights = [0.5, 0.3, 0.2]
    out = tmp_path / "merged.safetensors"
    report = merge_files(method, [zoo.path(l) for l in locales], out, weights, base_dir=zoo.base,
                         params=params, names=locales, seed=3).report
    expected = merge_state_dicts(method, [load_state_dict(zoo.path(l)) for l in locales], weights,
                                 base=zoo.base_state_dict(), params=params, names=locales, seed=3)
    got = load_file(str(out))
    assert list(got) == list(expected)
    for key in expected:
        assert torch.equal(got[key], expected[key]), key
    assert report.treatment == expected.report.treatment


def test_streaming_merge_names_the_model_with_nan_and_writes_nothing(zoo, tmp_path):
    bad = tmp_path / "bad"
    bad.mkdir()
    state = load_state_dict(zoo.path(zoo.locales[1]))
    key = next(k for k, v in state.items() if v.is_floating_point() and v.dim() == 2)
    state[key] = state[key].clone()
    state[key][0, 0] = float("nan")
    save_file(state, str(bad / "model.safetensors"))
    out = tmp_path / "merged.safetensors"
    with pytest.raises(MergeError, match=f"model 'bad' tensor '{key}' contains NaN"):
        merge_files("linear", [zoo.path(zoo.locales[0]), bad], out, names=["good", "bad"])
    assert not out.exists() and not list(tmp_path.glob("*.partial"))


def test_streaming_merge_casts_to_the_asked_dtype(zoo, tmp_path):
    out = tmp_path / "half.safetensors"
    merge_files("linear", [zoo.path(l) for l in zoo.locales[:2]], out, dtype=torch.bfloat16)
    got = load_file(str(out))
    floats = [v for v in got.values() if v.is_floating_point()]
    assert floats and all(v.dtype == torch.bfloat16 for v in floats)


@pytest.mark.parametrize("method,weights,bad", [("linear", [1.0, 0.0], 1), ("linear", [0.5, 0.5], 0),
                                                ("task_arithmetic", [0.7, 0.3], 1)])
def test_weighted_sums_check_only_the_output_yet_still_name_the_bad_source(zoo, method, weights, bad):
    """linear/TA skip the per-source NaN pass (the output check catches what a sum propagates);
    a zero-weight source, which the sum skips, is still checked on its own."""
    states = [dict(load_state_dict(zoo.path(l))) for l in zoo.locales[:2]]
    key = next(k for k, v in states[0].items() if v.is_floating_point() and v.dim() == 2)
    states[bad][key] = states[bad][key].clone()
    states[bad][key][0, 1] = float("inf")
    with pytest.raises(MergeError, match=f"model '{'ab'[bad]}' tensor '{key}' contains NaN or inf"):
        merge_state_dicts(method, states, weights, base=zoo.base_state_dict(), names=["a", "b"])


def write_models(root, dtype, nan_in=None):
    """Base + 3 sources with a tensor large enough to be merged slice by slice (ragged last
    slice), a small one and a head the base lacks."""
    g = torch.Generator().manual_seed(4)
    base = {"roberta.big.weight": torch.randn(700, 301, generator=g),
            "roberta.small.bias": torch.randn(10, generator=g)}
    dirs = []
    for i in range(4):
        state = {k: v + 0.1 * torch.randn(v.shape, generator=g) for k, v in base.items()}
        state["classifier.weight"] = torch.randn(3, 8, generator=g)
        if i == nan_in:
            state["roberta.big.weight"][650, 7] = float("nan")  # in one of the last slices
        folder = root / f"m{i}"
        folder.mkdir()
        save_file({k: v.to(dtype) for k, v in state.items()}, str(folder / "model.safetensors"))
        dirs.append(folder)
    (root / "base").mkdir()
    save_file({k[len("roberta."):]: v.to(dtype) for k, v in base.items()},
              str(root / "base" / "model.safetensors"))
    return dirs[:3], root / "base"


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("method,params", [("linear", {}), ("task_arithmetic", {"scale": 0.8})])
def test_sliced_streaming_merge_is_bit_identical_to_the_whole_tensor_merge(tmp_path, method, params, dtype):
    from engine.merge.run import SLICED_FROM

    sources, base = write_models(tmp_path, dtype)
    weights = [0.5, 0.3, 0.2]
    out = tmp_path / "merged.safetensors"
    report = merge_files(method, sources, out, weights, base_dir=base, params=params).report
    states = [load_state_dict(s) for s in sources]
    assert states[0]["roberta.big.weight"].numel() > 3 * SLICED_FROM
    expected = merge_state_dicts(method, states, weights, base={"roberta." + k: v for k, v in
                                                                load_state_dict(base).items()},
                                 params=params)
    got = load_file(str(out))
    assert list(got) == list(expected)
    for key in expected:
        assert got[key].dtype == dtype and torch.equal(got[key], expected[key]), key
    assert report.treatment == expected.report.treatment


def test_sliced_streaming_merge_names_the_source_with_nan_and_writes_nothing(tmp_path):
    sources, base = write_models(tmp_path, torch.float32, nan_in=1)
    out = tmp_path / "merged.safetensors"
    with pytest.raises(MergeError, match="model 'm1' tensor 'roberta.big.weight' contains NaN"):
        merge_files("task_arithmetic", sources, out, base_dir=base)
    assert not out.exists() and not list(tmp_path.glob("*.partial"))


def test_streaming_writer_takes_slices_in_any_order_and_refuses_a_missing_one(tmp_path):
    from engine.tensorfile import StreamingWriter, TensorFileError

    big, small = torch.randn(1000), torch.randn(3)
    path = tmp_path / "m.safetensors"
    w = StreamingWriter(path, [("a", torch.float32, (3,)), ("big", torch.float32, (1000,)),
                               ("c", torch.float32, (3,))])
    for start in reversed(range(0, 1000, 300)):  # slices first, last one first
        w.write_slice("big", start, big[start:start + 300])
    w.write("a", small)
    w.write("c", small * 2)  # the sliced tensor is skipped in the order
    w.close()
    got = load_file(str(path))
    assert torch.equal(got["big"], big) and torch.equal(got["c"], small * 2)
    w = StreamingWriter(tmp_path / "n.safetensors", [("big", torch.float32, (1000,))])
    w.write_slice("big", 0, big[:900])
    with pytest.raises(TensorFileError, match="only 0 of 1"):
        w.close()
    assert not (tmp_path / "n.safetensors").exists()
