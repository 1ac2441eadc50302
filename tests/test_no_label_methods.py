"""Issue 14's no-label levers: label-prior correction (EM of Saerens et al. 2002, recentering) as an
ensemble fusion and on top of a merge, and pseudo-label self-training of a merge. Checked against
their definitions on synthetic data and the merge conformance zoo, and shown never to read the
target's gold labels: a copy of the tiny zoo whose target train/dev labels are all wrong gives
the same models and predictions."""
import json
import shutil

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from engine.ensemble import EnsembleError, combine, fit, load_fitted
from engine.ensemble.prior import apply_shift, em_prior, log_shift, recenter_shift
from engine.merge import MergeContext, MergeError, merge_state_dicts

pytestmark = pytest.mark.usefixtures("one_torch_thread")

TARGET = "nl-NL"


def _shifted_data(n=20000, prior=(0.5, 0.3, 0.15, 0.05), seed=0):
    """Classes drawn with ``prior``, features x ~ N(mu_y, I); returns (Bayes posteriors under a
    uniform prior [N, C], Bayes posteriors under the true prior, labels)."""
    rng = np.random.default_rng(seed)
    prior = np.asarray(prior)
    means = rng.normal(0, 1.2, size=(len(prior), 3))
    y = rng.choice(len(prior), size=n, p=prior)
    x = means[y] + rng.normal(size=(n, 3))
    loglik = -0.5 * ((x[:, None, :] - means[None]) ** 2).sum(-1)
    uniform = np.exp(loglik - loglik.max(1, keepdims=True))
    uniform /= uniform.sum(1, keepdims=True)
    true = uniform * prior
    return uniform, true / true.sum(1, keepdims=True), y


def test_em_recovers_a_known_prior_shift_and_the_bayes_posterior():
    uniform, true_post, y = _shifted_data()
    pi = em_prior(uniform, iterations=1000)
    np.testing.assert_allclose(pi, [0.5, 0.3, 0.15, 0.05], atol=0.02)
    # the shift log(pi_t / pi_s) turns the uniform-prior posterior into the true one (Bayes)
    exact = apply_shift(uniform, np.log([0.5, 0.3, 0.15, 0.05]) - np.log(0.25))
    np.testing.assert_allclose(exact, true_post, atol=1e-5)
    assert (exact.argmax(1) == y).mean() > (uniform.argmax(1) == y).mean()
    # with no shift in the data, EM stays at the source prior
    balanced, _, _ = _shifted_data(prior=(0.25,) * 4)
    np.testing.assert_allclose(em_prior(balanced, iterations=1000), 0.25, atol=0.02)


def test_recenter_makes_the_mean_prediction_uniform():
    uniform, _, _ = _shifted_data(n=3000)
    b = recenter_shift(uniform, iterations=500)
    np.testing.assert_allclose(apply_shift(uniform, b).mean(0), 0.25, atol=1e-5)
    assert abs(b.mean()) < 1e-9
    with pytest.raises(EnsembleError, match="mode"):
        log_shift(uniform, "median", 10)


def _logits(k=3, n=60, c=4, seed=0):
    rng = np.random.default_rng(seed)
    x = rng.normal(0, 1.0, size=(k, n, c)).astype(np.float32)
    x[:, :, 0] += 1.5  # every model leans to class 0 on this text
    return x


def test_prior_shift_fusion_reads_no_labels_and_is_the_rule_plus_a_shift():
    x, w = _logits(), [0.5, 0.3, 0.2]
    with pytest.raises(EnsembleError, match="unlabelled"):
        fit("prior_shift", x, np.zeros(60, dtype=int), weights=w)
    fitted = fit("prior_shift", x, None, weights=w, params={"rule": "weighted_logits"})
    rule = combine("weighted_logits", x, weights=w)
    np.testing.assert_allclose(fitted.predict(x), apply_shift(rule, fitted.shift), atol=1e-6)
    np.testing.assert_allclose(fitted.predict(x).mean(0), 0.25, atol=1e-5)  # recentred on its fit data
    assert fitted.shift[0] < 0 and rule.argmax(1).tolist().count(0) > fitted.predict(x).argmax(1).tolist().count(0)
    off = fit("prior_shift", x, None, weights=w, params={"iterations": 0})
    np.testing.assert_allclose(off.predict(x), combine("soft", x, weights=w), atol=1e-6)
    # one model, or K copies of it, get the same shift and the same prediction
    one = fit("prior_shift", x[:1], None, params={"mode": "em"})
    copies = fit("prior_shift", np.repeat(x[:1], 3, axis=0), None, weights=w, params={"mode": "em"})
    np.testing.assert_allclose(copies.predict(np.repeat(x[:1], 3, axis=0)), one.predict(x[:1]), atol=1e-5)


def test_prior_shift_fusion_round_trips(tmp_path):
    x = _logits()
    fitted = fit("prior_shift", x, None, weights=[1, 2, 3], params={"mode": "em"})
    loaded = load_fitted(fitted.save(tmp_path / "f"))
    assert np.array_equal(loaded.predict(x), fitted.predict(x))


@pytest.fixture(scope="module")
def merge_zoo(tmp_path_factory):
    from merge_checks import build_zoo

    return build_zoo(tmp_path_factory.mktemp("prior_zoo"))


def test_prior_shift_merge_is_the_inner_merge_with_its_bias_shifted(merge_zoo):
    zoo, w = merge_zoo, [0.5, 0.3, 0.2]
    params = {"examples": 12, "batch_size": 4}
    ties = merge_state_dicts("ties", zoo["sources"], w, base=zoo["base"])
    shifted = merge_state_dicts("prior_shift", zoo["sources"], w, base=zoo["base"], params=params,
                                context=zoo["context"])
    bias = "classifier.out_proj.bias"
    for key in ties:
        if key != bias:
            assert torch.equal(ties[key], shifted[key]), key
    # the base lacks the head: the bias is averaged and still gets the shift (an offset)
    assert shifted.report.treatment[bias] == "linear (base lacks it) + offset"
    texts = torch.cat([b["input_ids"] for b in zoo["context"].texts(4)])
    mask = torch.cat([b["attention_mask"] for b in zoo["context"].texts(4)])
    with torch.no_grad():
        before = zoo["build"](ties).eval()(input_ids=texts, attention_mask=mask).logits
        after = zoo["build"](shifted).eval()(input_ids=texts, attention_mask=mask).logits
    shift = shifted[bias] - ties[bias]
    torch.testing.assert_close(after, before + shift, rtol=1e-5, atol=1e-5)
    # recentred: the mean prediction on the texts it read is uniform
    torch.testing.assert_close(torch.softmax(after, -1).mean(0), torch.full((4,), 0.25), rtol=0, atol=1e-4)
    em = merge_state_dicts("prior_shift", zoo["sources"], w, base=zoo["base"], params={**params, "mode": "em"},
                           context=zoo["context"])
    assert not torch.equal(em[bias], shifted[bias])


def test_prior_shift_merge_refuses_labelled_text(merge_zoo):
    zoo = merge_zoo
    labelled = MergeContext(zoo["build"], None, None, lambda bs: [dict(zoo["val"])])
    with pytest.raises(MergeError, match="unlabelled"):
        merge_state_dicts("prior_shift", zoo["sources"], None, base=zoo["base"], context=labelled)


# ---- the gold labels are never read: a zoo whose target labels are all wrong gives the same result ----

@pytest.fixture(scope="module")
def corrupted_zoo(tiny_zoo_dir, tmp_path_factory):
    """The tiny zoo with every train/dev label of the target moved to another class (models linked,
    the test split untouched)."""
    root = tmp_path_factory.mktemp("corrupted_zoo")
    manifest = json.loads((tiny_zoo_dir / "zoo.json").read_text())
    for item in tiny_zoo_dir.iterdir():
        if item.name not in ("zoo.json", "data"):
            (root / item.name).symlink_to(item)
    shutil.copy(tiny_zoo_dir / "zoo.json", root / "zoo.json")
    (root / "data").mkdir()
    labels = manifest["labels"]
    changed = 0
    for path in (tiny_zoo_dir / "data").iterdir():
        rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
        for row in rows:
            if row["locale"] == TARGET and row["partition"] in ("train", "dev"):
                row["intent"] = labels[(labels.index(row["intent"]) + 1) % len(labels)]
                changed += 1
        (root / "data" / path.name).write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows))
    assert changed > 0
    return root


def _ws(zoo, cache):
    from engine.workspace import Settings, open_workspace

    return open_workspace(Settings(zoo=str(zoo), cache_dir=str(cache), device="cpu"))


@pytest.fixture(scope="module")
def both_ws(tiny_zoo_dir, corrupted_zoo, tmp_path_factory):
    clean, bad = _ws(tiny_zoo_dir, tmp_path_factory.mktemp("c1")), _ws(corrupted_zoo, tmp_path_factory.mktemp("c2"))
    assert clean.dataset.get(TARGET, "train").labels != bad.dataset.get(TARGET, "train").labels
    assert clean.dataset.get(TARGET, "test").labels == bad.dataset.get(TARGET, "test").labels
    return clean, bad


def _cand(kind, method, params=None, data_mode="target"):
    from engine.experiments import Candidate

    return Candidate(kind, method, TARGET, ["de-DE", "en-US", "es-ES"], [0.5, 0.3, 0.2], params or {}, 0, data_mode)


def test_prior_shift_never_reads_target_labels(both_ws):
    from engine.experiments import evaluate_candidate
    from engine.runinfo import target_data_use

    clean, bad = both_ws
    for cand in (_cand("merge", "prior_shift", {"examples": 64}), _cand("ensemble", "prior_shift", {"mode": "em"})):
        a = evaluate_candidate(clean, cand, with_baselines=False)
        b = evaluate_candidate(bad, cand, with_baselines=False)
        assert a["predictions"] == b["predictions"], cand.method
        assert a["metrics"]["test"]["accuracy"] == b["metrics"]["test"]["accuracy"]
        assert target_data_use(cand)["target"] == "unlabelled target text"
    # the control: a fusion fitted on the target's labels does see the corruption
    control = _cand("ensemble", "learned_weights")
    fa = evaluate_candidate(clean, control, with_baselines=False)["fitted"]
    fb = evaluate_candidate(bad, control, with_baselines=False)["fitted"]
    assert not np.allclose(fa.model_weights, fb.model_weights)


def test_pseudo_label_self_training_never_reads_target_labels(both_ws, tiny_zoo_dir, corrupted_zoo, tmp_path, capsys):
    from engine.cli import main
    from engine.report.tables import runs_frame
    from engine.store import open_store

    outputs = []
    for zoo, cache in ((tiny_zoo_dir, tmp_path / "a"), (corrupted_zoo, tmp_path / "b")):
        args = ["train-pseudo", "--target", TARGET, "--top-k", "2", "--steps", "3", "--threshold", "0.2",
                "--labeller", "shifted",
                "--zoo", str(zoo), "--cache-dir", str(cache), "--device", "cpu", "--quiet", "--json"]
        assert main(args) == 0
        outputs.append(json.loads(capsys.readouterr().out))
    a, b = outputs
    assert a["result"]["kept"] == b["result"]["kept"] > 0
    assert a["result"]["pseudo_label_counts"] == b["result"]["pseudo_label_counts"]
    wa, wb = load_file(a["result"]["merged"]), load_file(b["result"]["merged"])
    assert all(torch.equal(wa[k], wb[k]) for k in wa)
    assert a["metrics"]["test"]["accuracy"] == b["metrics"]["test"]["accuracy"]
    # Compare lists it as a run on unlabelled target text
    store = open_store(tmp_path / "a")
    frame = runs_frame(store.runs())
    row = frame[frame.id == a["run_id"]].iloc[0]
    assert row["method"] == "pseudo-label" and "unlabelled target text" in row["target_data"]
    assert row["best_source"] is not None


def test_pseudo_label_bad_settings_are_one_line(tiny_zoo_dir, tmp_path, capsys):
    from engine.cli import main

    ws = ["--zoo", str(tiny_zoo_dir), "--cache-dir", str(tmp_path), "--device", "cpu", "--quiet"]
    assert main(["train-pseudo", "--target", TARGET, "--threshold", "1.5", *ws]) == 2
    assert "threshold 1.5" in capsys.readouterr().err
    assert main(["train-pseudo", "--target", TARGET, "--sources", TARGET, *ws]) == 2
    assert "leave-one-out" in capsys.readouterr().err
