"""Whole-model parity with mergekit 0.1.5 on the tiny zoo's real models.

Each case merges real fine-tuned models with the engine, exports the folder
(``candidate_runs.export_candidate``: model.safetensors, recipe.json, mergekit.yaml), runs mergekit's
own ``run_merge`` on that ``mergekit.yaml`` (CPU, local folders, no network), and compares every
tensor. The deterministic methods must give the same tensors; one zoo has its task vectors
quantised so that many magnitudes tie at TIES' and breadcrumbs' cuts.

DARE and DELLA draw at random: mergekit from torch's global generator (``--random-seed`` /
``MergeOptions.random_seed``), tensor by tensor in sorted-name order, the engine from a generator
per tensor seeded by (seed, name). The YAML reproduces their recipe, not their draws:
``test_random_methods_differ_only_by_the_draws`` shows that replaying mergekit's draw order
through the engine's kernels gives mergekit's tensors bit for bit.
"""
import json
import os
import shutil
from pathlib import Path

import pytest
import torch
import yaml

pytest.importorskip("mergekit.merge", reason="mergekit 0.1.5 not installed")

from mergekit.config import MergeConfiguration  # noqa: E402
from mergekit.merge import run_merge  # noqa: E402
from mergekit.options import MergeOptions  # noqa: E402
from safetensors.torch import load_file, save_file  # noqa: E402

from engine.candidate_runs import export_candidate  # noqa: E402
from engine.experiments import Candidate, build_merge  # noqa: E402
from engine.merge import MERGES  # noqa: E402

TARGET, SOURCES = "nl-NL", ["de-DE", "en-US", "es-ES"]
W3 = [0.5, 0.3, 0.2]

# (method, params, weights, sources): every method we translate to mergekit, several densities
# and weights.
CASES = [
    ("linear", {}, W3, SOURCES),
    ("task_arithmetic", {}, W3, SOURCES),
    ("task_arithmetic", {"scale": 0.7}, [0.2, 0.5, 0.3], SOURCES),
    ("ties", {}, W3, SOURCES),
    ("ties", {"density": 0.5}, [0.31, 0.23, 0.46], SOURCES),
    ("ties", {"density": [0.1, 0.5, 0.9], "normalize": False, "scale": 1.3}, W3, SOURCES),
    ("breadcrumbs", {"density": 0.8, "gamma": 0.05}, W3, SOURCES),
    ("breadcrumbs", {"density": 0.5, "gamma": 0.2, "scale": 1.2}, [0.6, 0.4], SOURCES[1:]),
    ("breadcrumbs_ties", {"density": 0.6, "gamma": 0.1, "normalize": True}, [0.2, 0.3, 0.5],
     SOURCES),
    ("slerp", {}, [0.6, 0.4], SOURCES[:2]),
    ("model_stock", {}, [1, 1, 1], SOURCES),
    ("model_stock", {"filter_wise": True}, [1, 1], SOURCES[:2]),
]
# Methods whose engine kernel computes the same formula in another order (float32 rounding).
ROUNDING = {"task_arithmetic": 1e-6, "slerp": 1e-6, "model_stock": 1e-6}
# Magnitude-trimming methods on the quantised zoo, where surplus ties at the cut are the rule.
TIED_CASES = [
    ("ties", {"density": 0.2}, W3, SOURCES),
    ("ties", {"density": [0.3, 0.05, 0.6]}, [0.2, 0.5, 0.3], SOURCES),
    ("breadcrumbs_ties", {"density": 0.4, "gamma": 0.1}, W3, SOURCES),
]
RANDOM_CASES = [
    ("dare_linear", {"density": 0.4}, W3, SOURCES, 3),
    ("dare_ties", {"density": [0.3, 0.6, 0.5]}, W3, SOURCES, 11),
    ("della", {"density": 0.5, "epsilon": 0.2}, [0.2, 0.3, 0.5], SOURCES, 0),
    ("della_linear", {"density": 0.6, "epsilon": 0.1, "scale": 0.8}, [0.5, 0.5], SOURCES[1:], 7),
]


def test_cases_cover_every_method_with_a_mergekit_hook():
    """Each to_mergekit hook is rerun by mergekit below: deterministic ones to the same tensors,
    random ones (the random trait) to tensors differing by the draws alone."""
    from test_merge_parity_mergekit_new import MODEL_CASES  # mergekit's newer methods, same rerun

    hooked = [m for m in MERGES if m.hooks.to_mergekit is not None]
    assert {m.name for m in hooked if not m.traits.random} == {c[0] for c in CASES + MODEL_CASES}
    assert {m.name for m in hooked if m.traits.random} == {c[0] for c in RANDOM_CASES}


def mergekit_rerun(folder: Path, out: Path, seed=None) -> dict:
    """mergekit's run_merge on the exported mergekit.yaml; its output tensors by name."""
    config = MergeConfiguration.model_validate(
        yaml.safe_load((folder / "mergekit.yaml").read_text(encoding="utf-8")))
    run_merge(config, str(out), MergeOptions(device="cpu", random_seed=seed, quiet=True,
                                             copy_tokenizer=False, write_model_card=False))
    tensors = {}
    for f in sorted(out.glob("*.safetensors")):
        tensors.update(load_file(f))
    return tensors


def differing(ours: dict, theirs: dict, atol: float = 0.0) -> dict:
    """name -> entries that differ by more than ``atol``, over every tensor (both must hold the
    same names)."""
    assert sorted(ours) == sorted(theirs)
    out = {}
    for key, t in ours.items():
        assert t.dtype == theirs[key].dtype and t.shape == theirs[key].shape, key
        n = int(((t - theirs[key]).abs() > atol).sum())
        if n:
            out[key] = n
    return out


def export_and_rerun(ws, tmp_path, method, params, weights, sources, seed=0):
    cand = Candidate("merge", method, TARGET, list(sources), list(weights), dict(params),
                     seed=seed)
    state = build_merge(ws, cand)
    folder = export_candidate(ws, cand, state, tmp_path / "export")
    assert (folder / "mergekit.yaml").is_file(), json.loads(
        (folder / "recipe.json").read_text())["mergekit_note"]
    ours = load_file(folder / "model.safetensors")
    return folder, ours, mergekit_rerun(folder, tmp_path / "mergekit", seed)


@pytest.mark.parametrize("method,params,weights,sources", CASES,
                         ids=[f"{c[0]}-{i}" for i, c in enumerate(CASES)])
def test_mergekit_reruns_the_export_to_the_same_tensors(tiny_ws, tmp_path, method, params,
                                                        weights, sources):
    """Every tensor of mergekit's rerun equals the exported model's: bit for bit for linear, TIES
    and breadcrumbs; to float32 rounding (≤ 1e-6, a unit in the last place of weights up to 8;
    4.8e-7 measured) where the engine computes in another order (task arithmetic as
    (1 − λΣw)·θ_base + λ·Σw_iθ_i, SLERP, model stock)."""
    _, ours, theirs = export_and_rerun(tiny_ws, tmp_path, method, params, weights, sources)
    assert differing(ours, theirs, atol=ROUNDING.get(method, 0.0)) == {}


@pytest.fixture(scope="module")
def tied_ws(tiny_zoo_dir, tmp_path_factory):
    """The tiny zoo with every source's task vector rounded to multiples of 2⁻¹² (float32-exact):
    thousands of equal magnitudes per tensor, so TIES' and breadcrumbs' cuts fall on ties."""
    from engine.workspace import Settings, open_workspace

    root = tmp_path_factory.mktemp("tied_zoo")
    manifest = json.loads((tiny_zoo_dir / "zoo.json").read_text())
    for entry in ["data", manifest["base"]]:
        os.symlink(tiny_zoo_dir / entry, root / entry)
    base = load_file(tiny_zoo_dir / manifest["base"] / "model.safetensors")
    for folder in manifest["models"].values():
        shutil.copytree(tiny_zoo_dir / folder, root / folder)
        state = load_file(root / folder / "model.safetensors")
        step = 2.0 ** -12
        save_file({k: (base[k] + torch.round((t - base[k]) / step) * step
                       if t.is_floating_point() and k in base else t).contiguous()
                   for k, t in state.items()}, str(root / folder / "model.safetensors"))
    (root / "zoo.json").write_text(json.dumps(manifest))
    return open_workspace(Settings(zoo=str(root), cache_dir=str(root / "cache"), device="cpu"))


def surplus_ties(ws, sources, density) -> int:
    """How many tensors of the first source have more entries tied at TIES' cut than fit."""
    from engine.merge.sparse import trim_cut

    base, state = ws.zoo.base_state_dict(), ws.zoo.state_dict(sources[0])
    count = 0
    for key, t in state.items():
        if t.is_floating_point() and key in base:
            size = (t.float() - base[key].float()).abs().reshape(-1)
            cut, _, exact = trim_cut(density, size.numel(), size=size)
            count += int(cut > 0 and not exact)
    return count


@pytest.mark.parametrize("method,params,weights,sources", TIED_CASES,
                         ids=[f"{c[0]}-{i}" for i, c in enumerate(TIED_CASES)])
def test_trimming_keeps_what_mergekit_keeps_at_ties(tied_ws, tmp_path, method, params, weights,
                                                    sources):
    """On quantised task vectors (ties at the cut in most tensors) TIES and breadcrumbs keep
    exactly mergekit's entries, so the tensors are the same."""
    assert surplus_ties(tied_ws, sources, 0.2) >= 10  # the case is what it claims to be
    _, ours, theirs = export_and_rerun(tied_ws, tmp_path, method, params, weights, sources)
    assert differing(ours, theirs) == {}


def mergekit_draw_order(method, params, weights, sources, seed, zoo):
    """The engine's kernels fed mergekit's draws: one generator seeded like mergekit's
    ``--random-seed``, tensors in sorted-name order (mergekit's schedule), sources in the YAML's
    order; float32 throughout as the YAML says."""
    spec = MERGES.get(method)
    base = zoo.base_state_dict()
    states = [zoo.state_dict(s) for s in sources]
    w = torch.tensor(weights, dtype=torch.float32)
    w = w / w.sum()
    gen = torch.Generator().manual_seed(seed)
    out = {}
    for key in sorted(states[0]):
        out[key] = spec.fn([s[key].float() for s in states], w, base[key].float(), key=key,
                           generator=gen, **spec.resolve(params))
    return out


@pytest.mark.parametrize("method,params,weights,sources,seed", RANDOM_CASES,
                         ids=[c[0] for c in RANDOM_CASES])
def test_random_methods_differ_only_by_the_draws(tiny_ws, tmp_path, method, params, weights,
                                                 sources, seed):
    """DARE / DELLA: the YAML reruns the recipe, not the engine's draws (entries of every drawn
    tensor differ), and the export says so; mergekit's draws replayed through the engine's
    kernels give mergekit's tensors bit for bit, so the two differ by the draws alone."""
    assert MERGES.get(method).traits.random
    folder, ours, theirs = export_and_rerun(tiny_ws, tmp_path, method, params, weights, sources,
                                            seed=seed)
    header = (folder / "mergekit.yaml").read_text(encoding="utf-8").split("merge_method")[0]
    assert "not the random draws" in header
    drawn = [k for k, t in ours.items() if t.numel() > 100]
    assert set(differing(ours, theirs)) >= set(drawn)
    replayed = mergekit_draw_order(method, params, weights, sources, seed, tiny_ws.zoo)
    assert differing(replayed, theirs) == {}
