"""The subspace merges (TSV-M, Iso-C, Iso-CTS, WUDI): their definitions, and parity with
FusionBench 0.2.33 (a test-only dependency, as mergekit is) on the tiny zoo's real models.

Parity runs FusionBench's own merge functions on the task vectors of one tensor of each kind
(square, wide and tall linear weights, an embedding table, the head, a bias, a LayerNorm) and
compares θ_base + λ·τ_merged with the engine's merge, tensor by tensor."""
import pytest
import torch
from safetensors.torch import load_file

from engine.merge import MERGES, merge_state_dicts
from engine.merge.run import match_base
from engine.merge.subspace import (is_embedding, iso_c_matrix, iso_cts_dims, is_head, iso_cts_matrix,
                                   tsv_matrix, wudi_loss, wudi_matrix)

LOCALES = ["de-DE", "en-US", "es-ES"]
KEYS = ["roberta.encoder.layer.0.attention.self.query.weight",
        "roberta.encoder.layer.0.intermediate.dense.weight",  # tall
        "roberta.encoder.layer.0.output.dense.weight",  # wide
        "roberta.embeddings.position_embeddings.weight",
        "classifier.out_proj.weight",  # 4 × 384: rank 4
        "roberta.encoder.layer.0.output.dense.bias",
        "roberta.embeddings.LayerNorm.weight"]
ATOL = 1e-5


@pytest.mark.parametrize("method", ["tsv_m", "iso_c", "iso_cts", "wudi"])
def test_the_classification_head_is_averaged(small, method):
    """FusionBench never merges heads (each task keeps its own); ours share one label set, so the
    head is the mean of the task vectors — flattening a head's spectrum left the demo's Iso-C
    predicting almost one class. The body's matrices still are merged as matrices."""
    params = {"iterations": 2} if method == "wudi" else {}
    ours = merge_state_dicts(method, small["sources"], base=small["base"], params=params)
    heads = [k for k in KEYS if is_head(k)]
    assert heads and any(not is_head(k) and small["base"][k].dim() == 2 for k in KEYS)
    for k in heads:
        mean_tv = sum(s[k] - small["base"][k] for s in small["sources"]) / len(small["sources"])
        torch.testing.assert_close(ours[k], small["base"][k] + mean_tv, rtol=0, atol=1e-6, msg=k)


@pytest.fixture(scope="module")
def zoo(tiny_zoo_dir):
    """Base and three fine-tuned sources, cut to KEYS (FusionBench's SVDs are slow on 2 cores)."""
    base = load_file(str(tiny_zoo_dir / "base" / "model.safetensors"))
    sources = [load_file(str(tiny_zoo_dir / f"e5small_massive_k_{loc}" / "model.safetensors"))
               for loc in LOCALES]
    names = match_base(base, KEYS)
    assert set(names) == set(KEYS)
    return {"base": {k: base[names[k]] for k in KEYS},
            "sources": [{k: s[k] for k in KEYS} for s in sources]}


@pytest.fixture(scope="module")
def small(zoo):
    """The same real tensors cut to their first 48 rows and 40 columns: the variants (weights,
    scale, options) are checked here, at a 50th of the SVD cost."""
    def cut(t):
        return (t[:48, :40] if t.dim() == 2 else t[:40]).contiguous()
    return {"base": {k: cut(v) for k, v in zoo["base"].items()},
            "sources": [{k: cut(v) for k, v in s.items()} for s in zoo["sources"]]}


def fb_task_vectors(zoo, scales=None, sources=None):
    """FusionBench's input: one task-vector state dict per source, optionally scaled."""
    sources = zoo["sources"] if sources is None else sources
    scales = scales or [1.0] * len(sources)
    return [{k: (s[k] - zoo["base"][k]) * c for k in KEYS} for s, c in zip(sources, scales)]


def assert_parity(ours, zoo, merged_tv, scale=1.0):
    """Every key but the classification head, which we average on purpose (see
    test_the_classification_head_is_averaged)."""
    for k in KEYS:
        if is_head(k):
            continue
        expected = zoo["base"][k] + scale * merged_tv[k]
        torch.testing.assert_close(ours[k], expected, rtol=0, atol=ATOL, msg=k)


def k_times_w(weights):
    """The per-task factors K·w_i the engine applies (module docstring of engine.merge.subspace),
    bit for bit: normalised, held in float32. Bits matter: TSV-M is ill-conditioned where two
    tasks share a direction (Procrustes splits nearly parallel columns by their difference), and
    a 1-ulp change of one factor moves the position embeddings' merge by half its size."""
    total = sum(weights)
    normalised = torch.tensor([w / total for w in weights], dtype=torch.float32).tolist()
    return [len(weights) * w for w in normalised]


def test_registered_as_data_free_subspace_merges():
    for name in ("tsv_m", "iso_c", "iso_cts", "wudi"):
        traits = MERGES.get(name).traits
        assert (traits.family, traits.data_use, traits.needs_base, traits.needs_data,
                traits.random) == ("subspace", "none", True, False, False)


def test_embedding_keys():
    assert is_embedding("roberta.embeddings.word_embeddings.weight")
    assert is_embedding("model.embed_tokens.weight") and is_embedding("transformer.wte.weight")
    assert not is_embedding("roberta.encoder.layer.0.attention.self.query.weight")


# ---- TSV-M -------------------------------------------------------------------------------------

def _low_rank_tasks(count=3, shape=(12, 10), rank=3, seed=0):
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(shape[0], rank, generator=g) @ torch.randn(rank, shape[1], generator=g)
            for _ in range(count)]


def test_tsv_spectrum_is_the_tasks_top_singular_values():
    """Decorrelated: U⊥ and V⊥ have orthonormal columns, so the merged matrix's singular values
    are exactly each task's top k = r/K singular values put together (a plain sum of the low-rank
    task matrices would mix them)."""
    tasks = _low_rank_tasks()
    merged = tsv_matrix(tasks)
    k = 10 // 3
    kept = torch.cat([torch.linalg.svdvals(t)[:k] for t in tasks])
    got = torch.linalg.svdvals(merged)
    torch.testing.assert_close(got[: 3 * k], kept.sort(descending=True).values, rtol=1e-4, atol=1e-5)
    assert float(got[3 * k:].abs().max()) < 1e-4
    plain = sum(torch.linalg.svd(t)[0][:, :k] @ torch.diag(torch.linalg.svdvals(t)[:k])
                @ torch.linalg.svd(t)[2][:k] for t in tasks)
    assert not torch.allclose(torch.linalg.svdvals(plain)[: 3 * k], got[: 3 * k], atol=1e-3)


def test_tsv_single_task_is_itself_and_rank_fraction_truncates():
    (task,) = _low_rank_tasks(count=1, rank=6)
    torch.testing.assert_close(tsv_matrix([task]), task, rtol=1e-4, atol=1e-4)
    half = tsv_matrix([task], rank_fraction=0.5)  # k = 5 of rank 6
    assert int(torch.linalg.matrix_rank(half, atol=1e-4)) == 5


@pytest.fixture(scope="module")
def fb_tsv():
    return pytest.importorskip("fusion_bench.method.task_singular_vector.utils.TSVM_utils",
                               reason="fusion-bench 0.2.33 not installed")


def test_tsv_m_parity_with_fusionbench(zoo, small, fb_tsv):
    merged_tv = fb_tsv.compute_and_sum_svd_mem_reduction(fb_task_vectors(zoo), accelerator="cpu")
    assert_parity(merge_state_dicts("tsv_m", zoo["sources"], base=zoo["base"]), zoo, merged_tv)
    merged_tv = fb_tsv.compute_and_sum_svd_mem_reduction(fb_task_vectors(small), accelerator="cpu")
    scaled = merge_state_dicts("tsv_m", small["sources"], base=small["base"], params={"scale": 0.6})
    assert_parity(scaled, small, merged_tv, scale=0.6)


def test_tsv_m_weights_are_fusionbenchs_per_task_alpha(small, fb_tsv):
    """Weights w scale each task vector by K·w_i before its SVD (FusionBench's alpha list); the
    non-matrix tensors get the weighted mean; a source of weight 0 takes no part."""
    weights = [0.5, 0.3, 0.2]
    merged_tv = fb_tsv.compute_and_sum_svd_mem_reduction(
        fb_task_vectors(small, k_times_w(weights)), accelerator="cpu")
    ours = merge_state_dicts("tsv_m", small["sources"], weights, base=small["base"])
    assert_parity(ours, small, merged_tv)
    bias = "roberta.encoder.layer.0.output.dense.bias"
    weighted = sum(w * (s[bias] - small["base"][bias]) for w, s in zip(weights, small["sources"]))
    torch.testing.assert_close(ours[bias], small["base"][bias] + weighted, rtol=0, atol=ATOL)
    two = fb_tsv.compute_and_sum_svd_mem_reduction(
        fb_task_vectors(small, sources=small["sources"][1:]), accelerator="cpu")
    assert_parity(merge_state_dicts("tsv_m", small["sources"], [0, 1, 1], base=small["base"]), small, two)


def test_tsv_m_embeddings_off_averages_them(small):
    key = "roberta.embeddings.position_embeddings.weight"
    on = merge_state_dicts("tsv_m", small["sources"], base=small["base"])
    off = merge_state_dicts("tsv_m", small["sources"], base=small["base"], params={"embeddings": False})
    mean = sum(s[key] for s in small["sources"]) / 3
    torch.testing.assert_close(off[key], mean, rtol=0, atol=ATOL)
    assert not torch.allclose(on[key], mean, atol=1e-4)
    torch.testing.assert_close(off[KEYS[0]], on[KEYS[0]], rtol=0, atol=0)


# ---- Iso-C, Iso-CTS ----------------------------------------------------------------------------

def _full_rank_tasks(count=3, shape=(12, 10), seed=1):
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(shape, generator=g) for _ in range(count)]


@pytest.mark.parametrize("fn", [iso_c_matrix, iso_cts_matrix])
def test_iso_spectrum_is_flat(fn):
    """Every singular value of the merged matrix equals the mean of the kept ones."""
    tasks = _full_rank_tasks()
    got = torch.linalg.svdvals(fn(tasks))
    torch.testing.assert_close(got, torch.full_like(got, float(got.mean())), rtol=1e-5, atol=1e-5)
    if fn is iso_c_matrix:  # the flat value is the sum's mean singular value, directions kept
        total = sum(tasks)
        assert abs(float(got[0]) - float(torch.linalg.svdvals(total).mean())) < 1e-5
        u, _, vh = torch.linalg.svd(total, full_matrices=False)
        torch.testing.assert_close(fn(tasks), float(got[0]) * u @ vh, rtol=1e-5, atol=1e-5)


def test_iso_cts_adds_each_tasks_own_directions():
    """All common space (fraction 1): Iso-C. Otherwise each task's top direction outside the
    common space is in the merge's span: the merge reaches what the sum's top directions miss."""
    tasks = _full_rank_tasks(shape=(16, 12))
    torch.testing.assert_close(iso_cts_matrix(tasks, 1.0), iso_c_matrix(tasks), rtol=1e-4, atol=1e-4)
    common, per_task = iso_cts_dims(12, 3, 0.5)
    assert (common, per_task) == (6, 2)
    merged = iso_cts_matrix(tasks, 0.5)
    u, _, _ = torch.linalg.svd(sum(tasks), full_matrices=False)
    basis = torch.linalg.svd(merged, full_matrices=False)[0]
    for t in tasks:
        own = torch.linalg.svd(t - u[:, :common] @ u[:, :common].T @ t)[0][:, 0]
        assert float(torch.linalg.vector_norm(basis.T @ own)) > 1 - 1e-4
    assert float(torch.linalg.vector_norm(basis.T @ u[:, -1])) < 0.99  # not the sum's whole span


def test_iso_cts_dims_never_negative():
    """FusionBench's split of rank 5 among 6 tasks rounds 5/6 up to 6 directions (-1 common);
    here it rounds down instead. Its usual splits are kept."""
    assert iso_cts_dims(5, 6, 0.0) == (5, 0)
    assert iso_cts_dims(384, 3, 0.8) == (306, 26) and iso_cts_dims(4, 3, 0.8) == (4, 0)


@pytest.fixture(scope="module")
def fb_iso():
    return pytest.importorskip("fusion_bench.method.isotropic_merging.iso_utils",
                               reason="fusion-bench 0.2.33 not installed")


def test_iso_parity_with_fusionbench(zoo, fb_iso):
    tvs = fb_task_vectors(zoo)
    assert_parity(merge_state_dicts("iso_c", zoo["sources"], base=zoo["base"]), zoo,
                  fb_iso.iso_c(tvs, accelerator="cpu"))
    assert_parity(merge_state_dicts("iso_cts", zoo["sources"], base=zoo["base"]), zoo,
                  fb_iso.iso_cts(tvs, 0.8, accelerator="cpu"))


def test_iso_variants_parity_with_fusionbench(small, fb_iso):
    """Scale, common-space fraction, weights (task vectors scaled K·w_i), a weight of 0."""
    tvs = fb_task_vectors(small)
    ours = merge_state_dicts("iso_c", small["sources"], base=small["base"], params={"scale": 1.7})
    assert_parity(ours, small, fb_iso.iso_c(tvs, accelerator="cpu"), scale=1.7)
    ours = merge_state_dicts("iso_cts", small["sources"], base=small["base"],
                             params={"common_space_fraction": 0.4, "scale": 0.5})
    assert_parity(ours, small, fb_iso.iso_cts(tvs, 0.4, accelerator="cpu"), scale=0.5)
    weights = [0.2, 0.5, 0.3]
    scaled = fb_task_vectors(small, k_times_w(weights))
    assert_parity(merge_state_dicts("iso_c", small["sources"], weights, base=small["base"]), small,
                  fb_iso.iso_c(scaled, accelerator="cpu"))
    assert_parity(merge_state_dicts("iso_cts", small["sources"], weights, base=small["base"]),
                  small, fb_iso.iso_cts(scaled, 0.8, accelerator="cpu"))
    two = fb_task_vectors(small, sources=small["sources"][:2])
    assert_parity(merge_state_dicts("iso_cts", small["sources"], [1, 1, 0], base=small["base"]),
                  small, fb_iso.iso_cts(two, 0.8, accelerator="cpu"))


# ---- WUDI --------------------------------------------------------------------------------------

@pytest.mark.parametrize("shape", [(12, 10), (3, 40)])  # A = Σ τᵀτ/n, and the factored (wide) form
def test_wudi_loss_decreases_from_the_sum(shape):
    tasks = [t * 0.1 for t in _low_rank_tasks(shape=shape, rank=2, seed=3)]
    losses = [float(wudi_loss(wudi_matrix(tasks, n, 1e-3), tasks)) for n in (0, 50, 100, 200)]
    assert all(a > b for a, b in zip(losses, losses[1:])), losses
    assert losses[-1] < 0.5 * losses[0]
    torch.testing.assert_close(wudi_matrix(tasks, 0), sum(tasks))


def test_wudi_closed_form_step_is_adam_on_the_loss():
    """One engine step equals torch.optim.Adam on wudi_loss by autograd (FusionBench's way)."""
    tasks = _low_rank_tasks(shape=(6, 20), rank=2, seed=4)
    merged = torch.nn.Parameter(sum(tasks))
    opt = torch.optim.Adam([merged], lr=1e-2)
    for _ in range(3):
        opt.zero_grad()
        wudi_loss(merged, tasks).backward()
        opt.step()
    torch.testing.assert_close(wudi_matrix(tasks, 3, 1e-2), merged.detach(), rtol=1e-5, atol=1e-6)


@pytest.fixture(scope="module")
def fb_wudi():
    return pytest.importorskip("fusion_bench.method.wudi.wudi",
                               reason="fusion-bench 0.2.33 not installed")


def test_wudi_parity_with_fusionbench(zoo, small, fb_wudi):
    """Full-size tensors for a few Adam steps (FusionBench's autograd is slow on 2 cores), the cut
    ones for FusionBench's function default of 300; scale and weights on the cut ones."""
    tvs = fb_task_vectors(zoo)
    ours = merge_state_dicts("wudi", zoo["sources"], base=zoo["base"], params={"iterations": 10})
    assert_parity(ours, zoo, fb_wudi.wudi_merging(tvs, accelerator="cpu", iter_num=10))
    theirs = fb_wudi.wudi_merging(fb_task_vectors(small), accelerator="cpu", iter_num=300)
    ours = merge_state_dicts("wudi", small["sources"], base=small["base"],
                             params={"iterations": 300, "scale": 0.8})
    assert_parity(ours, small, {k: v.detach() for k, v in theirs.items()}, scale=0.8)
    weights = [0.6, 0.1, 0.3]
    theirs = fb_wudi.wudi_merging(fb_task_vectors(small, k_times_w(weights)), accelerator="cpu",
                                  iter_num=50)
    ours = merge_state_dicts("wudi", small["sources"], weights, base=small["base"],
                             params={"iterations": 50})
    assert_parity(ours, small, {k: v.detach() for k, v in theirs.items()})


def test_wudi_skips_a_task_vector_of_zero(small, fb_wudi):
    """A source equal to the base: FusionBench divides by its norm 0 (NaN); here its term drops
    out, so the matrices are FusionBench's on the other two (the biases' mean still counts it)."""
    sources = [dict(small["base"])] + small["sources"][1:]
    ours = merge_state_dicts("wudi", sources, base=small["base"], params={"iterations": 20})
    theirs = fb_wudi.wudi_merging(fb_task_vectors(small, sources=sources[1:]), accelerator="cpu",
                                  iter_num=20)
    nan = fb_wudi.wudi_merging(fb_task_vectors(small, sources=sources), accelerator="cpu",
                               iter_num=2)
    assert torch.isnan(nan[KEYS[0]]).all()
    for k in KEYS:
        if small["base"][k].dim() == 2 and not is_head(k):  # the head: averaged on purpose
            expected = small["base"][k] + theirs[k].detach()
            torch.testing.assert_close(ours[k], expected, rtol=0, atol=ATOL, msg=k)


# ---- the Merge page ----------------------------------------------------------------------------

def test_merge_page_draws_and_runs_the_subspace_merges(app_cache):
    """Each method's controls come from its schema; an Iso-CTS merge runs as a job to its card."""
    from app_support import button, goto, metric, open_app, rerun, wait_for

    at = goto(open_app(), "Merge")
    for name, param in (("tsv_m", "rank_fraction"), ("iso_c", "scale"),
                        ("iso_cts", "common_space_fraction"), ("wudi", "step_size")):
        at.selectbox(key="merge_method").set_value(name)
        rerun(at)
        keys = {w.key for w in at.slider} | {w.key for w in at.number_input}
        assert f"merge.{name}.{param}" in keys, (name, sorted(keys))
        assert at.checkbox(key=f"merge.{name}.embeddings").value is True
        assert not at.error, [e.value for e in at.error]
    at.selectbox(key="merge_method").set_value("iso_cts")
    rerun(at)
    at.slider(key="merge.iso_cts.common_space_fraction").set_value(0.5)
    button(at, "merge_run_button").click()
    rerun(at)
    row = wait_for(app_cache, at.session_state["merge_run"])
    rerun(at)
    assert row["method"] == "iso_cts" and row["params"]["common_space_fraction"] == 0.5
    assert metric(at, "Test accuracy") == f"{row['metrics']['test']['accuracy']:.3f}"


SCALE_ZOO = "/work/scale_zoo"


@pytest.mark.skipif(not __import__("os").path.isfile(f"{SCALE_ZOO}/zoo.json"),
                    reason="the XLM-R-base scale zoo is not built here")
def test_iso_cts_survives_a_float32_svd_that_does_not_converge():
    """XLM-R-base's layer-0 output matrix (768 × 3072, 3 sources): float32 LAPACK fails on a task
    residual (FusionBench raises there); the engine retries that SVD in float64."""
    import json
    from safetensors import safe_open

    from engine.merge.subspace import iso_cts_matrix

    manifest = json.load(open(f"{SCALE_ZOO}/zoo.json"))
    key = "roberta.encoder.layer.0.output.dense.weight"
    with safe_open(f"{SCALE_ZOO}/{manifest['base']}/model.safetensors", "pt") as f:
        base = f.get_tensor(key if key in f.keys() else key.split(".", 1)[1])
    tvs = []
    for name in sorted(manifest["models"])[:3]:
        with safe_open(f"{SCALE_ZOO}/{manifest['models'][name]}/model.safetensors", "pt") as f:
            tvs.append(f.get_tensor(key) - base)
    merged = iso_cts_matrix(tvs)
    assert merged.dtype == torch.float32 and torch.isfinite(merged).all()
    got = torch.linalg.svdvals(merged.double())
    assert float(got.max() - got.min()) < 1e-4 * float(got.mean())  # still a flat spectrum
