"""Each merge method against its definition, on tensors small enough to check by hand."""
import math
from types import SimpleNamespace

import pytest
import torch

from engine.merge import MERGES, MergeContext, merge_state_dicts
from engine.merge.data_aware import fisher_information, linear_grams

torch.set_num_threads(1)
T = torch.tensor


def run(name, tensors, weights, base=None, seed=0, **params):
    method = MERGES.get(name)
    w = T(weights, dtype=torch.float32)
    gen = torch.Generator().manual_seed(seed)
    return method.fn([t.float() for t in tensors], w / w.sum(), base, key="x", generator=gen,
                     **{**method.resolve({k: v for k, v in params.items()
                                          if k not in ("fishers", "grams", "choice")}),
                        **{k: v for k, v in params.items() if k in ("fishers", "grams", "choice")}})


def close(a, b, tol=1e-5):
    torch.testing.assert_close(a, T(b, dtype=torch.float32) if not torch.is_tensor(b) else b,
                               rtol=tol, atol=tol)


def test_linear():
    close(run("linear", [T([1., 2.]), T([3., 4.]), T([5., 6.])], [1, 1, 2]), [3.5, 4.5])


def test_task_arithmetic():
    base = T([1., 1.])
    # base + 2 · (½·[1, 0] + ½·[0, 2])
    close(run("task_arithmetic", [T([2., 1.]), T([1., 3.])], [1, 1], base, scale=2.0), [2., 3.])


TIES_DELTAS = [T([3., -1., 0.5, 2.]), T([-2., -1., 0.1, 4.]), T([1., 2., -0.2, -1.])]


def test_ties_trims_elects_and_averages_agreeing_entries():
    # density 0.5 keeps 2 of 4: [3,0,0,2], [-2,0,0,4], [1,2,0,0]; elected signs + + (0→+) +
    got = run("ties", TIES_DELTAS, [1, 1, 1], torch.zeros(4), density=0.5)
    close(got, [(3 + 1) / 2, 2., 0., (2 + 4) / 2])
    unnormalised = run("ties", TIES_DELTAS, [1, 1, 1], torch.zeros(4), density=0.5,
                       normalize=False)
    close(unnormalised, [(3 + 1) / 3, 2 / 3, 0., (2 + 4) / 3])


def test_ties_weights_decide_the_sign():
    # entry 0: δ = +1 (w 0.2) vs −1 (w 0.8): elected −, only the second counts
    got = run("ties", [T([1.]), T([-1.])], [0.2, 0.8], torch.zeros(1), density=1.0)
    close(got, [-1.])


def test_dare_drops_and_rescales():
    base = torch.zeros(20000)
    delta = torch.full((20000,), 0.5)
    got = run("dare_linear", [base + delta], [1], base, density=0.3, rescale="inverse_density")
    kept = got != 0
    assert abs(kept.float().mean().item() - 0.3) < 0.02
    close(got[kept], torch.full((int(kept.sum()),), 0.5 / 0.3))
    l1 = run("dare_linear", [base + delta], [1], base, density=0.3, rescale="l1")
    assert math.isclose(l1.abs().sum().item(), delta.abs().sum().item(), rel_tol=1e-5)
    none = run("dare_linear", [base + delta], [1], base, density=0.3, rescale="none")
    assert set(none.unique().tolist()) == {0.0, 0.5}


def test_dare_is_seeded():
    base, src = torch.zeros(100), [torch.randn(100), torch.randn(100)]
    a = run("dare_ties", src, [1, 1], base, seed=3, density=0.5)
    b = run("dare_ties", src, [1, 1], base, seed=3, density=0.5)
    c = run("dare_ties", src, [1, 1], base, seed=4, density=0.5)
    assert torch.equal(a, b) and not torch.equal(a, c)


def test_breadcrumbs_drops_outliers_and_small_entries():
    delta = torch.arange(1., 11.)  # |δ| = 1..10
    # n=10: keep 5, drop the top ⌊0.2·10⌋ = 2 (9, 10) and the 3 smallest (1, 2, 3)
    got = run("breadcrumbs", [delta], [1], torch.zeros(10), density=0.5, gamma=0.2)
    close(got, [0, 0, 0, 4, 5, 6, 7, 8, 0, 0])



@pytest.mark.parametrize("grid", [None, 64.0])
@pytest.mark.parametrize("n", [1000, 50_000])
def test_breadcrumbs_band_keeps_the_ranks_mergekit_sorts(monkeypatch, grid, n):
    """Breadcrumbs keeps ascending |δ| ranks [bottom, bottom + target) of torch.sort(|δ|): the
    value band from a selection (or from sorted magnitudes) keeps the same entries as the sort
    wherever no band edge splits equal magnitudes, and the sort decides where one does (a grid
    makes thousands of equal magnitudes)."""
    from engine.merge import sparse_trim
    from engine.merge.sparse_trim import magnitude_order, magnitude_outliers, outlier_band

    g = torch.Generator().manual_seed(n)
    delta = torch.randn(n, generator=g)
    if grid:
        delta = (delta * grid).round() / grid
    sorts, split = [], 0
    monkeypatch.setattr(sparse_trim, "magnitude_order",
                        lambda d: sorts.append(1) or magnitude_order(d))
    for density, gamma in [(0.5, 0.1), (0.9, 0.01), (0.3, 0.0), (0.99, 0.05)]:
        target, top = int(density * n), int(gamma * n)
        bottom = max(0, n - target - top)
        want = torch.zeros(n)
        keep = magnitude_order(delta)[bottom:bottom + target]
        want[keep] = delta[keep]
        sorted_size = torch.sort(delta.abs()).values
        for given in (None, sorted_size):
            sorts.clear()
            got = magnitude_outliers(delta, density, gamma, sorted_size=given)
            assert torch.equal(got, want), (density, gamma)
            band = outlier_band(delta, bottom, target, given)
            assert (band is None) == bool(sorts)  # sorted only where the band cannot decide
            split += band is None
    assert split == 0 if grid is None else split > 0  # distinct magnitudes: never a sort


def test_della_keep_probability_follows_magnitude_rank():
    rows = T([1., 2., 3., 4., 5.]).repeat(20000, 1)
    got = run("della_linear", [rows], [1], torch.zeros_like(rows), density=0.5, epsilon=0.2,
              rescale="inverse_density")
    kept = (got != 0).float().mean(dim=0)
    probs = T([0.3, 0.4, 0.5, 0.6, 0.7])  # density − ε … density + ε by rank
    close(kept, probs, tol=0.02)
    survivors = got[:, 4][got[:, 4] != 0]
    close(survivors, torch.full_like(survivors, 5 / 0.7))


def test_della_rejects_epsilon_past_the_density():
    from engine.merge import MergeError
    with pytest.raises(MergeError, match="density ± epsilon"):
        run("della", [torch.ones(4)], [1], torch.zeros(4), density=0.1, epsilon=0.2)


def test_slerp_two_and_three_models():
    a, b = T([2., 0.]), T([0., 2.])
    h = math.sqrt(0.5)
    close(run("slerp", [a, b], [1, 1]), [2 * h, 2 * h])
    # sequential: slerp(slerp(a, b, ½), c, ⅓); r = [h, h, 0] ⟂ c, so sin(60°), sin(30°)
    x, y, z = T([1., 0., 0.]), T([0., 1., 0.]), T([0., 0., 1.])
    s60, s30 = math.sin(math.pi / 3), 0.5
    close(run("slerp", [x, y, z], [1, 1, 1]), [s60 * h, s60 * h, s30])


def test_slerp_of_aligned_vectors_is_the_weighted_average():
    v = T([1., 2., 3.])
    close(run("slerp", [v, 2 * v, 4 * v], [1, 2, 1]), (v + 4 * v + 4 * v) / 4)


def test_model_stock():
    base = torch.zeros(2)
    # orthogonal deltas: cos 0 -> t 0 -> the base
    close(run("model_stock", [T([1., 0.]), T([0., 1.])], [1, 1], base), [0., 0.])
    c = 1 / math.sqrt(2)
    t = 2 * c / (1 + c)
    close(run("model_stock", [T([1., 0.]), T([1., 1.])], [1, 1], base), [t * 1.0, t * 0.5])
    # identical deltas: cos 1 -> t 1 -> the (common) fine-tuned model
    close(run("model_stock", [T([1., 3.])] * 3, [1, 1, 1], base), [1., 3.])


def test_fisher_weighted_average():
    got = run("fisher", [T([1., 2.]), T([3., 4.])], [1, 1], epsilon=0.0,
              fishers=[T([1., 0.]), T([1., 1.])])
    close(got, [2., 4.])
    # floor ε·F̄ with F̄ = mean of the per-source means = (0.5 + 1.5) / 2 = 1 -> 0.5
    got = run("fisher", [T([1., 2.]), T([3., 4.])], [1, 1], epsilon=0.5,
              fishers=[T([1., 0.]), T([3., 0.])])
    close(got, [(1.5 * 1 + 3.5 * 3) / 5, (2 + 4) / 2])
    # no Fisher anywhere: the weighted average
    close(run("fisher", [T([1.]), T([3.])], [1, 3], epsilon=0.0,
              fishers=[T([0.]), T([0.])]), [2.5])


class Softmax(torch.nn.Module):
    """Softmax regression with an HF-style output, for a Fisher computable by hand."""

    def __init__(self):
        super().__init__()
        self.lin = torch.nn.Linear(3, 2, bias=False)
        with torch.no_grad():
            self.lin.weight.copy_(T([[0.5, -1.0, 0.2], [0.1, 0.3, -0.4]]))

    def forward(self, input_ids, attention_mask=None):
        return SimpleNamespace(logits=self.lin(input_ids.float()))


def test_fisher_information_is_the_mean_squared_score():
    model = Softmax()
    xs = [T([[1., 2., 0.]]), T([[0., 1., 1.]]), T([[2., 0., 1.]])]
    ys = [0, 1, 1]
    expected = torch.zeros(2, 3)
    for x, y in zip(xs, ys):  # ∂ log p_y / ∂W = (e_y − p) xᵀ
        p = torch.softmax(x @ model.lin.weight.detach().T, -1)[0]
        expected += torch.outer(torch.nn.functional.one_hot(T(y), 2).float() - p, x[0]) ** 2
    examples = [{"input_ids": x, "labels": T([y])} for x, y in zip(xs, ys)]
    got = fisher_information(model, examples, "empirical")
    close(got["lin.weight"], expected / 3)

    g1, g2 = torch.Generator().manual_seed(5), torch.Generator().manual_seed(5)
    sampled = fisher_information(model, examples, "sampled", g1)
    expected = torch.zeros(2, 3)
    for x in xs:
        p = torch.softmax(x @ model.lin.weight.detach().T, -1)[0]
        y = int(torch.multinomial(p, 1, generator=g2))
        expected += torch.outer(torch.nn.functional.one_hot(T(y), 2).float() - p, x[0]) ** 2
    close(sampled["lin.weight"], expected / 3)


def _reference_regmean(ws, grams, weights, alpha):
    lhs = sum(w * (alpha * g + (1 - alpha) * torch.diag(torch.diag(g))) for w, g in
              zip(weights, grams))
    rhs = sum(w * (alpha * g + (1 - alpha) * torch.diag(torch.diag(g))) @ W.T for w, W, g in
              zip(weights, ws, grams))
    return (torch.inverse(lhs.double()) @ rhs.double()).T.float()


@pytest.mark.parametrize("alpha", [1.0, 0.5, 0.0])
def test_regmean_solves_the_normal_equations(alpha):
    g = torch.Generator().manual_seed(0)
    ws = [torch.randn(2, 3, generator=g) for _ in range(3)]
    xs = [torch.randn(10, 3, generator=g) for _ in range(3)]
    grams = [x.T @ x / 10 for x in xs]
    got = run("regmean", ws, [1, 2, 1], alpha=alpha, grams=grams)
    close(got, _reference_regmean(ws, grams, [0.25, 0.5, 0.25], alpha), tol=1e-4)


def test_regmean_recovers_least_squares_on_the_union_of_data():
    g = torch.Generator().manual_seed(1)
    true = torch.randn(2, 4, generator=g)
    xs = [torch.randn(50, 4, generator=g) for _ in range(2)]
    ys = [x @ true.T + 0.1 * torch.randn(50, 2, generator=g) for x in xs]
    ws = [torch.linalg.lstsq(x, y).solution.T for x, y in zip(xs, ys)]
    union = torch.linalg.lstsq(torch.cat(xs), torch.cat(ys)).solution.T
    got = run("regmean", ws, [1, 1], alpha=1.0, grams=[x.T @ x / 50 for x in xs])
    close(got, union, tol=1e-4)


class Tagger(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.emb = torch.nn.Embedding(5, 2)
        self.lin = torch.nn.Linear(2, 2)

    def forward(self, input_ids, attention_mask=None):
        return SimpleNamespace(logits=self.lin(self.emb(input_ids)).mean(1))


def test_linear_grams_skip_padding():
    model = Tagger()
    ids = T([[1, 2, 0], [3, 0, 0]])
    mask = T([[1, 1, 0], [1, 0, 0]])
    grams = linear_grams(model, [{"input_ids": ids, "attention_mask": mask}])
    rows = model.emb.weight.detach()[T([1, 2, 3])]
    close(grams["lin.weight"], rows.T @ rows / 3)


def test_frankenmerge_picks_layers_by_score():
    def model(v):
        return {"enc.layer.0.w": T([v]), "enc.layer.1.w": T([v]), "head.w": T([v])}

    sources = [model(0.), model(1.), model(2.)]
    target = {"enc.layer.0.w": 1., "enc.layer.1.w": 2.}

    def score(sd):  # best when layer 0 is source 1's and layer 1 source 2's
        return -sum(abs(float(sd[k]) - v) for k, v in target.items())

    out = merge_state_dicts("frankenmerge", sources, [1, 1, 1], context=MergeContext(score=score))
    assert float(out["enc.layer.0.w"]) == 1. and float(out["enc.layer.1.w"]) == 2.
    assert float(out["head.w"]) == 1.  # outside the layers: the linear merge
    assert out.report.treatment["enc.layer.1.w"] == "enc.layer.1 from model 2"

    target["enc.layer.1.w"] = 1.0  # the linear merge (1.0) is as good as source 1: kept merged
    out = merge_state_dicts("frankenmerge", sources, [1, 1, 1], context=MergeContext(score=score))
    assert out.report.treatment["enc.layer.1.w"].startswith("linear")


def test_inverse_variance():
    # mean 1, v = (1, 1, 4), v̄ = 2, floor = ε·v̄ = 1 -> c = (1/6, 1/6, 1/15) -> 0.2 / 0.4
    close(run("inverse_variance", [T([0.]), T([0.]), T([3.])], [1, 1, 1], epsilon=0.5), [0.5])
    a, b, c = T([0., 1.]), T([0., 1.]), T([3., 1.])
    got = run("inverse_variance", [a, b, c], [1, 1, 1], epsilon=0.5, granularity="tensor")
    v = [((x - T([1., 1.])) ** 2).mean() for x in (a, b, c)]  # the mean is (1, 1)
    cs = [(1 / 3) / (vi + 0.5 * sum(v) / 3) for vi in v]
    close(got, (cs[0] * a + cs[1] * b + cs[2] * c) / sum(cs))


def test_integer_buffers_are_copied_when_equal_and_refused_when_not():
    from engine.merge import MergeError
    a = {"w": T([1., 2.]), "ids": T([0, 1, 2])}
    b = {"w": T([3., 4.]), "ids": T([0, 1, 2])}
    out = merge_state_dicts("linear", [a, b])
    assert torch.equal(out["ids"], a["ids"]) and out.report.treatment["ids"].startswith("copied")
    with pytest.raises(MergeError, match="non-floating tensor 'ids' differs"):
        merge_state_dicts("linear", [a, {"w": b["w"], "ids": T([0, 1, 3])}])


def test_select_kth_is_exactly_kthvalue():
    """TIES' cut comes from numpy's selection on CPU: the value is torch.kthvalue's in smooth,
    heavy-tied, constant and extreme-rank cases."""
    from engine.merge.common import select_kth

    gen = torch.Generator().manual_seed(0)
    n = 300_007
    cases = {"smooth": torch.randn(n, generator=gen).abs(),
             "ties": torch.randint(0, 7, (n,), generator=gen).float(),
             "constant": torch.full((n,), 0.25),
             "spiky": torch.cat([torch.zeros(n - 100), torch.rand(100, generator=gen)])}
    for name, values in cases.items():
        for rank in (1, 2, n // 5, n // 2, n - 100, n - 1, n):
            assert select_kth(values, rank) == torch.kthvalue(values, rank).values, (name, rank)
