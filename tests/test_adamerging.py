"""AdaMerging (issue 14): task-arithmetic coefficients learned by entropy minimisation on the
target's unlabelled text. Checked against its definition and end to end on the tiny zoo: the
entropy falls, fixed λ is task arithmetic, one layer group is task-wise, seeds reproduce, no label
is ever read, and a cancel stops the optimisation at the next step."""
import dataclasses
import types

import pytest
from conftest import Unreadable
import torch

from engine.experiments import Candidate, build_merge, merge_context
from engine.merge import MERGES, MergeContext, MergeError, merge_state_dicts
from engine.merge.adamerging import coefficient_groups, mean_entropy, prepare_adamerging
from engine.runinfo import recipe_key_fields, target_data_use

TARGET, SOURCES, WEIGHTS = "de-DE", ["en-US", "es-ES", "nl-NL"], [0.5, 0.3, 0.2]
QUICK = {"steps": 12, "examples": 48, "batch_size": 16}


pytestmark = pytest.mark.usefixtures("one_torch_thread")



@pytest.fixture(scope="module")
def parts(tiny_ws):
    ws = tiny_ws
    cand = Candidate("merge", "adamerging", TARGET, SOURCES, WEIGHTS)
    return {"ws": ws, "sources": [ws.zoo.state_dict(s) for s in SOURCES], "base": ws.zoo.base_state_dict(),
            "context": merge_context(ws, cand)}


def ada(parts, params=None, weights=WEIGHTS, seed=0, **kw):
    return merge_state_dicts("adamerging", parts["sources"], weights, base=parts["base"],
                             params={**QUICK, **(params or {})}, names=SOURCES,
                             context=kw.pop("context", parts["context"]), seed=seed, **kw)


def entropy_on_target_text(parts, state, n=48):
    model = parts["ws"].zoo.build_model(dict(state)).eval()
    with torch.no_grad():
        values = [mean_entropy(model(**batch).logits) * batch["input_ids"].shape[0]
                  for batch in parts["context"].texts(16)]
    return float(sum(values[: n // 16])) / n


def test_entropy_falls_over_the_steps(parts):
    seen = []
    out = ada(parts, {"steps": 20, "learning_rate": 0.02}, progress=seen.append)
    start = ada(parts, {"steps": 0})
    assert entropy_on_target_text(parts, out) < entropy_on_target_text(parts, start) - 0.01
    curve = [p.point[2] for p in seen if p.point is not None]
    assert [p.point[1] for p in seen if p.point is not None] == list(range(1, 21))
    assert sum(curve[-5:]) / 5 < sum(curve[:5]) / 5
    note = next(n for n in out.report.notes if "mean entropy" in n)
    before, after = (float(x) for x in note.split("texts ")[1].split(" after")[0].split(" → "))
    assert after < before and "unlabelled target texts" in note


@pytest.mark.parametrize("params", [{"steps": 0}, {"steps": 3, "learning_rate": 0.0}])
def test_with_lambda_fixed_it_is_task_arithmetic(parts, params):
    """λ never moves (no steps, or a zero learning rate): the encoder is θ_base + prior_scale Σ w_k τ_k,
    exactly task_arithmetic with scale = prior_scale; the head (which this zoo's base holds) is
    the weighted average of the sources' heads, as the docstring says, not a scaled task vector."""
    for scale in (1.0, 0.6):
        got = ada(parts, {**params, "prior_scale": scale})
        want = merge_state_dicts("task_arithmetic", parts["sources"], WEIGHTS, base=parts["base"],
                                 params={"scale": scale})
        average = merge_state_dicts("linear", parts["sources"], WEIGHTS)
        assert set(got) == set(want)
        heads = [k for k in want if k.startswith("classifier.")]
        assert heads and "classifier.out_proj.weight" in parts["base"]
        for k in want:
            torch.testing.assert_close(got[k], (average if k in heads else want)[k], rtol=1e-5, atol=1e-6, msg=k)
            if k in heads:
                assert got.report.treatment[k] == "linear (classification head)"
        if scale != 1.0:
            assert not torch.allclose(want["classifier.out_proj.weight"], average["classifier.out_proj.weight"])


def test_layer_wise_with_one_group_is_task_wise(parts):
    common = dict(names=SOURCES, device=torch.device("cpu"), seed=3, progress=None)
    w = [x / sum(WEIGHTS) for x in WEIGHTS]
    resolved = {**MERGES.get("adamerging").defaults(), **QUICK}
    task = prepare_adamerging(parts["sources"], w, parts["base"], parts["context"],
                              {**resolved, "granularity": "task"}, **common)
    one = prepare_adamerging(parts["sources"], w, parts["base"], parts["context"],
                             {**resolved, "granularity": "layer"}, groups_of=lambda ks: (["all"], {k: 0 for k in ks}),
                             **common)
    layered = prepare_adamerging(parts["sources"], w, parts["base"], parts["context"],
                                 {**resolved, "granularity": "layer"}, **common)
    assert one.extras == task.extras
    lambdas = {tuple(e["coefficients"]) for e in layered.extras.values()}
    assert len(lambdas) > 1  # real layer groups do learn apart
    names, index = coefficient_groups(["roberta.encoder.layer.0.attention.self.query.weight",
                                       "roberta.encoder.layer.1.output.dense.bias",
                                       "roberta.embeddings.word_embeddings.weight"], "layer")
    assert names == ["layer 0", "layer 1", "outside the layers"] and list(index.values()) == [0, 1, 2]
    assert len(coefficient_groups(list(parts["base"]), "tensor")[0]) == len(parts["base"])


def test_seeded_runs_reproduce(parts):
    a, b, c = ada(parts, seed=5), ada(parts, seed=5), ada(parts, seed=6)
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert any(not torch.equal(a[k], c[k]) for k in a)  # another batch order, another λ


def test_labels_are_never_read(tiny_ws):
    """The target's dataset hands out texts whose labels fail on any read; the merge still runs,
    and is recorded as using unlabelled target text whatever data_mode says."""
    ws = tiny_ws
    real = ws.dataset.get

    def get(locale, split="test"):
        part = real(locale, split)
        return types.SimpleNamespace(texts=part.texts, labels=Unreadable(), __len__=lambda: len(part.texts))

    ws.dataset.get = get
    try:
        cand = Candidate("merge", "adamerging", TARGET, SOURCES, WEIGHTS, params=QUICK, data_mode="target")
        batches = list(merge_context(ws, cand).texts(16))
        assert batches and all(set(b) <= {"input_ids", "attention_mask", "token_type_ids"} for b in batches)
        state = build_merge(ws, cand)
        assert any("unlabelled target texts" in n for n in state.report.notes)
        fisher = Candidate("merge", "fisher", TARGET, SOURCES, WEIGHTS, data_mode="target")
        with pytest.raises(AssertionError, match="labels were read"):  # the guard does catch a read
            build_merge(ws, fisher)
    finally:
        del ws.dataset.get
    for mode in ("target", "sources", "both"):
        cand = Candidate("merge", "adamerging", TARGET, SOURCES, WEIGHTS, data_mode=mode)
        assert target_data_use(cand)["target"] == "unlabelled target text"
    keys = [recipe_key_fields(Candidate("merge", "adamerging", TARGET, SOURCES, WEIGHTS, data_mode=m))
            for m in ("target", "sources")]
    assert keys[0] == keys[1] and "data_mode" not in keys[0]
    traits = MERGES.get("adamerging").traits
    assert (traits.uses_labels, traits.data_use, traits.family) == (False, "target_text", "learned")


def test_kernel_defaults_are_the_params():
    """Called directly, the kernel behaves as the schema says (main's conformance check)."""
    import inspect

    method = MERGES.get("adamerging")
    signature = inspect.signature(method.fn).parameters
    assert {p.name: signature[p.name].default for p in method.params} == method.defaults()
    assert callable(method.hooks.prepare)


def test_refuses_labelled_batches_and_a_missing_text_source(parts):
    labelled = dataclasses.replace(parts["context"], texts=lambda bs: [
        {**b, "labels": torch.zeros(b["input_ids"].shape[0], dtype=torch.long)}
        for b in parts["context"].texts(bs)])
    with pytest.raises(MergeError, match="must not carry labels"):
        ada(parts, context=labelled)
    with pytest.raises(MergeError, match="needs a MergeContext with texts"):
        ada(parts, context=MergeContext(build_model=parts["ws"].zoo.build_model))
    with pytest.raises(MergeError, match="granularity"):
        ada(parts, {"granularity": "row"})


def test_cancel_stops_at_the_next_step_with_a_clear_status(tiny_ws, tmp_path):
    """A job cancelled while λ is being learned stops at the step it reached: the run is
    'cancelled', its message names the step, and the live curve holds the steps before it."""
    from engine.jobs import JobContext, execute
    from engine.store import Store

    store = Store(tmp_path / "runs.sqlite")
    ctx = JobContext(store.create("merge"), store)
    cand = Candidate("merge", "adamerging", TARGET, SOURCES, WEIGHTS, params={**QUICK, "steps": 50})

    def progress(p):
        if p.point is not None and p.point[1] == 3:
            ctx.cancel_event.set()  # the user presses Cancel during step 3
        ctx.progress(p)

    execute(lambda c: build_merge(tiny_ws, cand, progress=progress) and {}, ctx)
    row = store.get(ctx.run_id)
    assert row["status"] == "cancelled"
    assert "at AdaMerging step 3/50" in row["message"] and "cancelled by the user" in row["message"]
    assert [p["step"] for p in store.series(ctx.run_id, "entropy")] == [1, 2]


def _curves(at):
    return [c for c in at.get("plotly_chart") if "Mean prediction entropy" in str(c.proto.spec)]


def test_merge_page_runs_adamerging_with_a_live_entropy_curve(app_cache):
    """On the Merge page AdaMerging says it learns on unlabelled target text; while a run is
    active the page draws its entropy curve beside the progress bar (and Cancel); the finished
    run keeps the curve, and its card says the run used unlabelled target text (◐)."""
    from app_support import button, goto, metric, open_app, rerun, runner, wait_for

    at = goto(open_app(), "Merge")
    at.selectbox(key="merge_method").set_value("adamerging")
    rerun(at)
    assert any("labels withheld" in c.value for c in at.caption)
    at.number_input(key="merge.adamerging.steps").set_value(4)
    at.number_input(key="merge.adamerging.examples").set_value(16)
    rerun(at)
    store = runner(app_cache).store
    live = store.create("merge", name="adamerging (live)", target=at.selectbox(key="merge_target").value,
                        method="adamerging",
                        sources=SOURCES, weights=WEIGHTS)
    store.update(live, status="running", progress=0.4, message="AdaMerging step 2/5: entropy 1.2")
    for step, value in ((1, 1.30), (2, 1.20)):
        store.add_point(live, "entropy", step, value)
    at.session_state["merge_run"] = live
    rerun(at)
    assert _curves(at) and [b for b in at.button if b.label == "Cancel"]
    store.update(live, status="cancelled", message="cancelled")
    button(at, "merge_run_button").click()
    rerun(at)
    run_id = at.session_state["merge_run"]
    assert run_id != live
    row = wait_for(app_cache, run_id)
    rerun(at)
    assert [p["step"] for p in store.series(run_id, "entropy")] == [1, 2, 3, 4]
    assert _curves(at)
    assert metric(at, "Target data used") == "◐ unlabelled target text"
    assert row["params"]["target_data"] == "unlabelled target text"
