"""The merge conformance checks as functions of one registered Method, like scikit-learn's
``parametrize_with_checks``: ``tests/test_merge_conformance.py`` runs every check on every
registered merge, and a new method (tests/test_howto_add_merge.py registers a toy one) runs the
same list. Exemptions come from the method's traits and Params, never from a list of names.

Each check is ``check_x(method, zoo)``: it raises AssertionError on a violation and returns None
when it passed or a string saying why the method is exempt (as engine/ensemble/checks.py); ``zoo`` is what :func:`build_zoo` returns (tiny real
models: a pretrained XLM-R encoder saved without a classification head, as a real zoo's base is,
and three classifiers fine-tuned from it by a few real SGD steps, written and read as
safetensors HF folders). Checks that need no models ignore it.
"""
from __future__ import annotations

import inspect
import json
from dataclasses import fields

import pytest
import torch
from safetensors.torch import load_file
from transformers import XLMRobertaConfig, XLMRobertaForSequenceClassification, XLMRobertaModel

from engine.merge import MERGES, MergeCache, MergeContext, MergeError, merge_state_dicts
from engine.registry import DATA_USES, Method, Traits

CONFIG = dict(vocab_size=100, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
              intermediate_size=64, max_position_embeddings=40, num_labels=4)
KEY = "roberta.encoder.layer.1.output.dense.weight"  # a tensor the base has (as 'encoder.…')
KERNEL_ARGS = ("tensors", "weights", "base", "key", "generator")


def _batch(gen, size=8, length=10):
    ids = torch.randint(3, 100, (size, length), generator=gen)
    mask = torch.ones_like(ids)
    mask[: size // 2, length - 3:] = 0  # some right padding
    ids[mask == 0] = 1
    ids[:, 0] = 0
    return {"input_ids": ids, "attention_mask": mask,
            "labels": torch.randint(0, 4, (size,), generator=gen)}


def build_zoo(root):
    """The base, three fine-tuned sources and a MergeContext over them, all under ``root``."""
    config = XLMRobertaConfig(**CONFIG)
    torch.manual_seed(0)
    XLMRobertaModel(config, add_pooling_layer=False).save_pretrained(root / "base")
    sources = []
    for i in range(3):
        torch.manual_seed(10 + i)
        model = XLMRobertaForSequenceClassification.from_pretrained(root / "base", num_labels=4)
        model.train()
        opt = torch.optim.SGD(model.parameters(), lr=0.3)
        gen = torch.Generator().manual_seed(i)
        for _ in range(3):
            loss = model(**_batch(gen)).loss
            opt.zero_grad()
            loss.backward()
            opt.step()
        model.save_pretrained(root / f"src{i}")
        sources.append(load_file(str(root / f"src{i}" / "model.safetensors")))
    base = load_file(str(root / "base" / "model.safetensors"))

    def build(state):
        m = XLMRobertaForSequenceClassification(config)
        m.load_state_dict(state)
        return m

    def batches(i):
        gen = torch.Generator().manual_seed(100 + i)
        return [_batch(gen) for _ in range(2)]

    val = _batch(torch.Generator().manual_seed(999), size=16)

    def score(state):
        with torch.no_grad():
            logits = build(state).eval()(input_ids=val["input_ids"],
                                         attention_mask=val["attention_mask"]).logits
        return float((logits.argmax(-1) == val["labels"]).float().mean())

    def texts(batch_size):  # the target's unlabelled text (adamerging)
        gen = torch.Generator().manual_seed(77)
        return [{k: v for k, v in _batch(gen, batch_size).items() if k != "labels"} for _ in range(2)]

    return {"base": base, "sources": sources, "config": config, "build": build, "val": val,
            "context": MergeContext(build, batches, score, texts), "root": root}


FAST = {"examples": 12, "steps": 3, "batch_size": 4}  # small data passes and few learning steps


def fast_params(method: Method) -> dict:
    """Defaults, but short data passes (``examples``, ``batch_size``) and few learning ``steps``
    where a method declares those Params, to keep the checks fast."""
    names = {p.name for p in method.params}
    return {name: value for name, value in FAST.items() if name in names}


def identity_params(method: Method) -> dict:
    """Parameters under which a method must return its input when there is nothing to merge:
    nothing sparsified (a ``density`` Param at 1)."""
    dense = {"density": 1.0} if any(p.name == "density" for p in method.params) else {}
    frozen = {"steps": 0} if method.traits.family == "learned" else {}  # learning off: the prior
    return {**fast_params(method), **dense, **frozen}


def zoo_sources(method, zoo) -> list:
    """The zoo's three sources, or as many as the method takes (max_sources)."""
    most = method.traits.max_sources if isinstance(method, Method) else None
    return zoo["sources"][: most or len(zoo["sources"])]


def merge(zoo, method, sources=None, weights=(0.5, 0.3, 0.2), seed=0, **kw):
    if isinstance(method, str) and method in MERGES:
        method = MERGES.get(method)
    sources = zoo_sources(method, zoo) if sources is None else sources
    weights = list(weights)[: len(sources)]
    name = method.name if isinstance(method, Method) else method
    params = kw.pop("params", None)
    if params is None and isinstance(method, Method):
        params = fast_params(method)
    return merge_state_dicts(name, sources, weights, base=kw.pop("base", zoo["base"]),
                             params=params, context=zoo["context"], seed=seed, **kw)


def _same(a, b, tol=1e-5):
    for k in b:
        torch.testing.assert_close(a[k], b[k], rtol=tol, atol=tol, msg=k)


# ---- checks that need no models ----------------------------------------------------------------

def check_traits_valid(method: Method, zoo=None):
    """Typed traits that agree with each other, the hooks and the kernel's signature."""
    t = method.traits
    assert isinstance(t, Traits) and isinstance(t.family, str) and t.family, "family must be named"
    for name in ("needs_base", "random", "needs_data", "cache_aware", "propagates_nonfinite"):
        assert isinstance(getattr(t, name), bool), name
    assert isinstance(t.min_sources, int) and t.min_sources >= 1
    assert t.max_sources is None or (isinstance(t.max_sources, int) and t.max_sources >= t.min_sources)
    assert t.data_use in DATA_USES
    known_context = {f.name for f in fields(MergeContext)}
    assert set(t.context) <= known_context, f"context {t.context} not in {sorted(known_context)}"
    assert set(t.identity) <= {"single", "copies", "one_hot"}, f"unknown identity case in {t.identity}"
    if t.needs_data:
        assert t.data_use != "none", "a data-aware merge declares the most data it can read"
        assert t.context, "a data-aware merge names the MergeContext callables it calls"
        assert callable(method.hooks.prepare), "a data-aware merge has a prepare hook (its data pass)"
        prepare = inspect.signature(method.hooks.prepare).parameters
        assert list(prepare)[:5] == ["sources", "weights", "base", "context", "params"], list(prepare)
        assert {"names", "device", "seed", "progress"} <= set(prepare), list(prepare)
    else:
        assert t.data_use == "none" and not t.context and method.hooks.prepare is None
    if isinstance(t.uses_labels, str):  # "param=value": a choice Param decides
        name, value = t.uses_labels.split("=", 1)
        assert value in method.param(name).choices
    else:
        assert isinstance(t.uses_labels, bool)
    assert bool(t.mergekit) == (method.hooks.to_mergekit is not None), \
        "a mergekit name and a to_mergekit hook come together"
    if method.hooks.to_mergekit is not None:
        assert len(inspect.signature(method.hooks.to_mergekit).parameters) == 4, \
            "to_mergekit(sources, weights, params, base)"
    assert method.hooks.effective_weights is None, "effective_weights is an ensemble hook"
    signature = inspect.signature(method.fn).parameters
    for name in KERNEL_ARGS:
        assert name in signature, f"kernel lacks '{name}'"
    for p in method.params:
        assert p.name in signature, f"kernel lacks a keyword for Param '{p.name}'"
    assert ("inputs" in signature) == t.cache_aware, "cache_aware kernels (only) take inputs="
    json.dumps({"summary": method.summary, "params": [p.to_dict() for p in method.params],
                **t.to_dict()})
    assert method.summary, "a one-line summary (the kernel's docstring) for the CLI and the page"


def check_kernel_defaults_match_params(method: Method, zoo=None):
    """A kernel called directly behaves as the schema says: its keyword defaults are the Params'."""
    signature = inspect.signature(method.fn).parameters
    for p in method.params:
        assert signature[p.name].default == p.default, \
            f"{method.name}: kernel default {p.name}={signature[p.name].default!r}, Param says {p.default!r}"


def _mergekit_configs(method: Method):
    """mergekit_config for a tiny recipe at the default params, two and three sources."""
    from engine.merge.export import mergekit_config

    out = []
    for count in (2, 3):
        if count < method.traits.min_sources or (method.traits.max_sources or count) < count:
            continue
        recipe = {"method": method.name, "params": {}, "sources": [f"/zoo/src{i}" for i in range(count)],
                  "weights": [1.0] * count, "seed": 0, "base": "/zoo/base"}
        out.append(mergekit_config(recipe))
    return out


def check_to_mergekit_is_valid_mergekit(method: Method, zoo=None):
    """The to_mergekit hook's config is accepted by mergekit 0.1.5's parser, names parameters
    its method takes, and meets its input contract (base, number of models)."""
    if method.hooks.to_mergekit is None:
        from engine.merge.export import mergekit_config
        config, reason = mergekit_config({"method": method.name, "sources": ["/a", "/b"]})
        assert config is None and reason
        return "no to_mergekit hook (the export says why in recipe.json)"
    pytest.importorskip("mergekit.config", reason="mergekit 0.1.5 not installed")
    from mergekit import merge_methods
    from mergekit.config import MergeConfiguration

    configs = _mergekit_configs(method)
    written = [c for c, _ in configs if c is not None]
    assert written, f"{method.name}: no recipe translated: {[r for _, r in configs]}"
    spec = merge_methods.get(method.traits.mergekit).spec
    known = {p.name for p in spec.parameters}
    for config in written:
        assert config["merge_method"] == method.traits.mergekit
        parsed = MergeConfiguration.model_validate(config)
        assert parsed.merge_method == method.traits.mergekit
        assert set(config["parameters"]) <= known, (set(config["parameters"]) - known, known)
        for model in config["models"]:
            assert set(model.get("parameters") or {}) <= known
        ids = [m["model"] for m in config["models"]]
        base = config.get("base_model")
        spec.contract.validate_ids(ids + ([base] if base and base not in ids else []), base)


def check_data_use_bounds_what_runs_record(method: Method, zoo=None):
    """What engine/runinfo records a run used never exceeds the method's data_use trait."""
    from engine.experiments import Candidate
    from engine.runinfo import TARGET_DATA, target_data_use

    as_use = {"none": "none", "unlabelled target text": "target_text",
              "labelled target dev": "target_dev"}
    settings = [{}]
    if isinstance(method.traits.uses_labels, str):
        name = method.traits.uses_labels.split("=", 1)[0]
        settings = [{name: c} for c in method.param(name).choices]
    for mode in ("sources", "target", "both"):
        for params in settings:
            cand = Candidate("merge", method.name, "xx", ["a", "b"], [1.0, 1.0], params, 0, mode)
            used = target_data_use(cand)
            assert used["target"] in TARGET_DATA
            rank = DATA_USES.index(as_use[used["target"]])
            if used["source_data"]:
                rank = max(rank, DATA_USES.index("source"))
            assert rank <= DATA_USES.index(method.traits.data_use), (mode, params, used)


# ---- checks on the tiny zoo --------------------------------------------------------------------

def check_output_is_a_working_model(method: Method, zoo):
    out = merge(zoo, method)
    src = zoo["sources"][0]
    assert list(out) == list(src)
    for k, v in out.items():
        assert v.shape == src[k].shape and v.dtype == src[k].dtype, k
        assert torch.isfinite(v).all(), k
    assert set(out.report.treatment) == set(src)
    if method.traits.needs_base:
        # the base has no head and no 'roberta.' prefix: head averaged, encoder merged
        assert out.report.treatment["classifier.out_proj.weight"] == "linear (base lacks it)"
        assert out.report.treatment["roberta.encoder.layer.0.output.dense.weight"] == method.name
    model = zoo["build"](out).eval()
    with torch.no_grad():
        logits = model(input_ids=zoo["val"]["input_ids"],
                       attention_mask=zoo["val"]["attention_mask"]).logits
    assert logits.shape == (16, 4) and torch.isfinite(logits).all()
    # not just a copy of one source
    assert any(not torch.equal(out[k], s[k]) for s in zoo["sources"] for k in out)


def check_deterministic_for_a_seed(method: Method, zoo):
    a, b = merge(zoo, method, seed=7), merge(zoo, method, seed=7)
    assert all(torch.equal(a[k], b[k]) for k in a)
    if method.traits.random:
        c = merge(zoo, method, seed=8)
        assert any(not torch.equal(a[k], c[k]) for k in a)


def check_identities(method: Method, zoo):
    """Alone, with copies of itself, or weighted one-hot, a model comes back unchanged — in each
    case the ``identity`` trait declares; a merge needing more sources than given (min_sources)
    says so."""
    cases = method.traits.identity
    if not cases:
        return "declares no identity (identity=()): e.g. a flat spectrum changes even one model"
    src = zoo["sources"][1]
    params = identity_params(method)
    tol = 1e-4 if method.traits.needs_data else 1e-5
    if method.traits.min_sources > 1:
        with pytest.raises(MergeError, match=f"at least {method.traits.min_sources}"):
            merge(zoo, method, sources=[src], params=params)
    elif "single" in cases:
        _same(merge(zoo, method, sources=[src], params=params), src, tol)
    count = len(zoo_sources(method, zoo))
    if "copies" in cases:
        # identical sources: task vectors scaled to unit norm, so that no method's numerical floor
        # (model stock's |δ_a|·|δ_b| ≥ 1e-6 clamp, as mergekit's) moves them
        base = {f"roberta.{k}": v for k, v in zoo["base"].items()}
        big = {k: base[k] + (v - base[k]) / max(float((v - base[k]).norm()), 1e-30) if k in base else v
               for k, v in src.items()}
        _same(merge(zoo, method, sources=[big] * count, params=params), big, tol)
    if "one_hot" in cases:
        one_hot = [zoo["sources"][1], zoo["sources"][0], zoo["sources"][2]][:count]
        _same(merge(zoo, method, sources=one_hot, weights=(1, 0, 0), params=params), src, tol)
    skipped = [c for c in ("single", "copies", "one_hot") if c not in cases]
    return f"identity not declared for {skipped}" if skipped else None


def check_source_count_limits(method: Method, zoo):
    """More sources than max_sources is a clear MergeError."""
    most = method.traits.max_sources
    if most is None:
        return "takes any number of sources (no max_sources)"
    sources = (zoo["sources"] * (most // 3 + 2))[: most + 1]
    with pytest.raises(MergeError, match=f"at most {most}"):
        merge(zoo, method, sources=sources, weights=[1.0] * len(sources))


def check_nonfinite_inputs_are_named(method: Method, zoo):
    """A NaN/inf in any source, weighted or not, stops the merge; a data-free merge names the model
    and tensor (propagates_nonfinite lets the run check the output instead: it must really
    propagate, e.g. an inf entry a sparsifier drops as an outlier would slip through)."""
    count = len(zoo_sources(method, zoo))
    zero_last = [1.0] * (count - 1) + [0.0]
    for weights, bad, value in (((0.5, 0.3, 0.2), 0, float("inf")), (zero_last, count - 1, float("nan"))):
        sources = [dict(s) for s in zoo_sources(method, zoo)]
        broken = sources[bad][KEY].clone()
        broken.view(-1)[0] = value
        sources[bad][KEY] = broken
        names = ["en", "fr", "de"][:count]
        with pytest.raises(MergeError) as caught:
            merge(zoo, method, sources=sources, weights=weights, names=names)
        if not method.traits.needs_data:
            assert f"model '{names[bad]}' tensor '{KEY}' contains NaN or inf" in str(caught.value)


def check_inputs_untouched_and_cache_transparent(method: Method, zoo):
    """Sources stay resident in memory between merges (engine/resident.py): no method may write
    into its inputs, with or without the repeated-merge cache; the cache gives the same tensors."""
    before = [{k: v.clone() for k, v in s.items()} for s in zoo_sources(method, zoo)]
    base_before = {k: v.clone() for k, v in zoo["base"].items()}
    plain = merge(zoo, method)
    cached = merge(zoo, method, cache=MergeCache())
    for s, b in zip(zoo["sources"], before):
        assert all(torch.equal(s[k], b[k]) for k in b)
    assert all(torch.equal(zoo["base"][k], base_before[k]) for k in base_before)
    assert all(torch.equal(plain[k], cached[k]) for k in plain)


CHECKS = [check_traits_valid, check_kernel_defaults_match_params, check_to_mergekit_is_valid_mergekit,
          check_data_use_bounds_what_runs_record, check_output_is_a_working_model,
          check_deterministic_for_a_seed, check_identities, check_source_count_limits,
          check_nonfinite_inputs_are_named, check_inputs_untouched_and_cache_transparent]


def merge_checks(methods):
    """(method, check) pairs for ``pytest.mark.parametrize``, with readable ids."""
    pairs = [(m, c) for m in methods for c in CHECKS]
    return {"argvalues": pairs, "ids": [f"{m.name}-{c.__name__[len('check_'):]}" for m, c in pairs]}


def run_checks(method: Method, zoo) -> dict:
    """check name -> "passed" or why the method is exempt (an AssertionError propagates)."""
    return {c.__name__: c(method, zoo) or "passed" for c in CHECKS}
