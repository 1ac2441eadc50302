"""Training runs in Compare (issue 15): every fine-tune, periodic merge and label curve is a row with
its target, test accuracy and the target data it used, never scored as a transfer gain; one click
from a fused row opens the Train page's label curve with that run chosen. Real tiny runs, few steps."""
import shutil

import pytest

from engine.report import tables
from engine.runinfo import run_target_data


@pytest.fixture(scope="module")
def trained(app_cache, tiny_zoo_dir, tmp_path_factory):
    """A fine-tune of nl-NL on its own labels, a periodic merge for nl-NL and a label curve from it,
    stored in the app's results store (a private copy of the zoo: training writes into it)."""
    from app_support import runner

    from engine.train.finetune import FinetuneConfig, submit_finetune
    from engine.train.labels import LabelCurveConfig, submit_label_curve
    from engine.train.periodic import PeriodicConfig, submit_periodic
    from engine.workspace import Settings, open_workspace

    zoo = tmp_path_factory.mktemp("train_compare") / "zoo"
    shutil.copytree(tiny_zoo_dir, zoo)
    ws = open_workspace(Settings(zoo=str(zoo), cache_dir=str(app_cache), device="cpu"))
    run = runner(app_cache)
    ids = {"finetune": submit_finetune(run, ws, FinetuneConfig(locale="nl-NL", name="ft_nl_cmp", steps=2,
                                                                 batch_size=4, register="no")),
           "periodic": submit_periodic(run, ws, PeriodicConfig(target="nl-NL", sources=["de-DE", "en-US"],
                                                               weighting="equal", steps=1, merge_every=1,
                                                               batch_size=4, baseline=False))}
    for run_id in ids.values():
        assert run.wait(run_id, timeout=300)["status"] == "done"
    ids["curve"] = submit_label_curve(run, ws, LabelCurveConfig(target="nl-NL", fused=ids["periodic"], ns=[0, 4],
                                                                steps=1, batch_size=4))
    assert run.wait(ids["curve"], timeout=300)["status"] == "done"
    return {kind: run.store.get(run_id) for kind, run_id in ids.items()}


def test_training_runs_say_what_target_data_they_used(trained):
    assert run_target_data(trained["finetune"])["target"] == "labelled target train"
    assert run_target_data(trained["curve"])["target"] == "labelled target train"  # "… (n examples per point)"
    assert run_target_data(trained["periodic"])["target"] == "none"   # dev scores only draw its curve
    frame = tables.runs_frame(list(trained.values())).set_index("method")
    assert frame.loc["finetune", "target_data"] == "● labelled target train"
    assert frame.loc["label-curve", "target_data"] == "● labelled target train"
    assert frame.loc["periodic-merge", "target_data"] == "○ none"
    assert frame.loc["finetune", "test_accuracy"] == pytest.approx(trained["finetune"]["metrics"]["test"]["accuracy"])
    assert frame.loc["finetune", "label"].startswith("● finetune")
    # a model fitted on the target's own labels is no transfer: no gain over a source is claimed,
    # even when a best source is known for its target
    ft = dict(trained["finetune"], result={**trained["finetune"]["result"],
                                            "baselines": {"best_source": {"accuracy": 0.1}}})
    assert tables.runs_frame([ft])["gain_vs_best_source"].isna().all()


def test_summary_shows_training_runs_but_never_makes_them_the_winner(trained):
    merge = dict(trained["periodic"], id="m-1", kind="merge", method="linear", metrics={"test": {"accuracy": 0.2}},
                 params={"target_data": "none"}, result={"baselines": {"best_source": {"accuracy": 0.1}}})
    finetune = dict(trained["finetune"], metrics={"test": {"accuracy": 0.9}})
    summary = tables.summary(tables.runs_frame([merge, finetune])).iloc[0]
    assert summary["best train"] == pytest.approx(0.9) and summary["best train target data"] == "● labelled target train"
    assert summary["winner"] == "merge"
    assert "train beats best source" not in summary.index


def test_compare_lists_training_runs_and_opens_the_label_curve_for_a_fused_one(app_cache, trained):
    from app_support import goto, open_app, rerun, runner

    from dashboard import runs as runs_view

    store = runner(app_cache).store
    for row in trained.values():
        store.pin(row["id"], False)
    at = goto(open_app(), "Compare")
    table = [d.value for d in at.dataframe if "target_data" in d.value.columns][0]
    shown = table.set_index("id")
    for row in trained.values():
        assert row["id"] in shown.index, f"training run {row['method']} missing from Compare"
    assert shown.loc[trained["finetune"]["id"], "target_data"] == "● labelled target train"
    # no single row selected: no button; a fine-tune (not fused) selected: no button either
    assert not [b for b in at.button if b.key == "cmp_label_curve"]
    store.pin(trained["finetune"]["id"])
    rerun(goto(at, "Compare"))
    assert not [b for b in at.button if b.key == "cmp_label_curve"]
    store.pin(trained["finetune"]["id"], False)
    store.pin(trained["periodic"]["id"])
    at = goto(open_app(), "Compare")
    buttons = [b for b in at.button if b.key == "cmp_label_curve"]
    assert buttons and buttons[0].label == "What is it worth in target labels?"
    buttons[0].click().run()
    assert not at.exception, [e.value for e in at.exception]
    assert at.title[0].value == "Train"
    assert at.selectbox(key="lc_fused").value == trained["periodic"]["id"]
    assert runs_view.LABEL_CURVE_RUN not in at.session_state    # used once: a later visit starts fresh
    store.pin(trained["periodic"]["id"], False)
