"""Training (engine/train): the shared loop learns, checkpoints resume bit for bit, a fine-tune
becomes a zoo model, bad settings fail before any run starts. Real tiny models, few steps."""
import dataclasses
import json
import shutil

import pytest
import torch

from engine.export_guard import ExportError
from engine.jobs import JobContext, execute
from engine.progress import Cancelled
from engine.store import Store
from engine.train.finetune import (FinetuneConfig, TrainError, check_config, checkpoint_dir, finetune_job,
                                   load_base, resume_finetune_here, run_finetune)
from engine.train.loop import Trainer
from engine.workspace import Settings, open_workspace
from engine.zoo import Zoo, load_state_dict


@pytest.fixture
def own_ws(tiny_zoo_dir, tmp_path):
    """A workspace over a private copy of the tiny zoo (training writes models and the manifest)."""
    zoo = tmp_path / "zoo"
    shutil.copytree(tiny_zoo_dir, zoo)
    return open_workspace(Settings(zoo=str(zoo), cache_dir=str(tmp_path / "cache"), device="cpu"))


def _batch_loss(model, tok, split):
    model.eval()
    with torch.no_grad():
        batch = tok(split.texts[:16], padding=True, truncation=True, max_length=64, return_tensors="pt")
        loss = float(model(**batch, labels=torch.tensor(split.labels[:16])).loss)
    model.train()
    return loss


def test_training_steps_lower_the_loss(own_ws):
    model, tok = load_base(own_ws, 0, "cpu")
    train = own_ws.dataset.get("de-DE", "train").head(16)  # every step sees these 16 examples
    trainer = Trainer(model, tok, train, steps=4, batch_size=16, lr=1e-3, seed=0, warmup=1)
    before = _batch_loss(model, tok, train)
    for _ in range(4):
        trainer.step()
    assert _batch_loss(model, tok, train) < before - 0.01


def test_trainer_checkpoint_resumes_bit_for_bit(own_ws, tmp_path):
    train = own_ws.dataset.get("nl-NL", "train")

    def fresh():
        model, tok = load_base(own_ws, 3, "cpu")
        return Trainer(model, tok, train, steps=4, batch_size=4, lr=1e-3, seed=3)

    straight = fresh()
    for _ in range(4):
        straight.step()
    first = fresh()
    first.step(), first.step()
    first.save(tmp_path / "ckpt", {"note": "half way"})
    second = fresh()  # a new process would rebuild from the base, then restore
    assert second.load(tmp_path / "ckpt") == {"note": "half way"}
    second.step(), second.step()
    assert second.losses == straight.losses
    for key, value in straight.weights().items():
        assert torch.equal(value, second.weights()[key]), key
    assert not list((tmp_path / "ckpt").glob("*.pt")) and not list((tmp_path / "ckpt").glob("*.bin"))


def test_finetune_run_writes_registers_and_records(own_ws):
    store = Store(own_ws.cache_dir / "runs.sqlite")
    config = FinetuneConfig(locale="de-DE", name="ft_de", steps=3, batch_size=4, lr=1e-3, eval_every=1,
                            register="replace")
    row = run_finetune(store, own_ws, config)
    assert row["status"] == "done" and row["kind"] == "train" and row["target"] == "de-DE"
    assert row["params"]["target_data"] == "labelled target train"
    assert 0 <= row["metrics"]["test"]["accuracy"] <= 1
    out = own_ws.zoo.root / "ft_de"
    record = json.loads((out / "train.json").read_text())
    assert record["steps_done"] == 3 and record["config"]["lr"] == 1e-3
    names = {p["name"] for p in store.series(row["id"])}
    assert {"loss", "validation_accuracy"} <= names
    zoo = Zoo.open(own_ws.zoo.root)
    assert zoo.models["de-DE"].name == "ft_de"          # now the zoo's de-DE model
    assert zoo.validate() is not None                   # and compatible with the others
    # an existing folder (this one, or a zoo model) is never trained over
    with pytest.raises(ExportError, match="not empty|zoo's model"):
        check_config(own_ws, dataclasses.replace(config))
    with pytest.raises(ExportError, match="zoo's model for en-US"):
        check_config(own_ws, dataclasses.replace(config, name="e5small_massive_k_en-US"))


def test_cancelled_finetune_resumes_to_the_uninterrupted_result(own_ws):
    store = Store(own_ws.cache_dir / "runs.sqlite")
    common = dict(locale="es-ES", steps=4, batch_size=4, lr=1e-3, eval_every=2, register="no", seed=1)
    straight = run_finetune(store, own_ws, FinetuneConfig(name="a", **common))

    config = check_config(own_ws, FinetuneConfig(name="b", **common))
    ckpt = checkpoint_dir(own_ws, "b-test")

    def stop_after_two(p):  # the user presses cancel once step 2 is done
        if "step 2/" in p.message:
            raise Cancelled("cancelled by the user")

    ctx = JobContext(store.create("train", method="finetune", target="es-ES",
                                  params={**config.to_dict(), "checkpoint": str(ckpt)}), store, echo=stop_after_two)
    assert isinstance(execute(finetune_job(own_ws, config, ckpt), ctx), Cancelled)
    assert store.get(ctx.run_id)["status"] == "cancelled" and (ckpt / "trainer.safetensors").exists()
    resumed = resume_finetune_here(store, own_ws, ctx.run_id)
    assert resumed["status"] == "done" and resumed["parent"] == ctx.run_id
    a = load_state_dict(own_ws.zoo.root / "a")
    b = load_state_dict(own_ws.zoo.root / "b")
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert resumed["metrics"]["test"]["accuracy"] == straight["metrics"]["test"]["accuracy"]
    with pytest.raises(TrainError, match="no checkpoint"):
        resume_finetune_here(store, own_ws, resumed["id"])


def test_bad_settings_fail_before_a_run(own_ws):
    ok = dict(locale="de-DE", steps=2, batch_size=4)
    with pytest.raises(TrainError, match="positive number of steps"):
        check_config(own_ws, FinetuneConfig(**{**ok, "steps": 0}))
    with pytest.raises(TrainError, match="batch size 0"):
        check_config(own_ws, FinetuneConfig(**{**ok, "batch_size": 0}))
    with pytest.raises(TrainError, match="'fr-FR' has no train split"):
        check_config(own_ws, FinetuneConfig(**{**ok, "locale": "fr-FR"}))
    other = dataclasses.replace(own_ws, dataset=dataclasses.replace(
        own_ws.dataset, labels=list(reversed(own_ws.dataset.labels))))
    with pytest.raises(TrainError, match="do not match the zoo's"):
        check_config(other, FinetuneConfig(**ok))
    (own_ws.zoo.root / "mine").mkdir()
    (own_ws.zoo.root / "mine" / "notes.txt").write_text("keep")
    with pytest.raises(ExportError, match="not empty"):
        check_config(own_ws, FinetuneConfig(**ok, name="mine"))
    assert (own_ws.zoo.root / "mine" / "notes.txt").read_text() == "keep"


def test_cli_train_bad_settings_exit_2(own_ws, capsys):
    from engine.cli import main

    args = ["train", "--zoo", str(own_ws.zoo.root), "--cache-dir", str(own_ws.cache_dir), "--device", "cpu",
            "--quiet", "--locale", "de-DE"]
    assert main(args + ["--steps", "0"]) == 2
    assert "steps must be in [1," in capsys.readouterr().err  # the declared range (engine/limits.py)
    assert main(args[:-2] + ["--locale", "xx-XX", "--steps", "2"]) == 2
    assert "no train split" in capsys.readouterr().err


def test_train_page_runs_a_fine_tune_and_shows_its_curves(app_cache, tiny_zoo_dir, tmp_path, monkeypatch):
    from app_support import open_app, page_path, rerun, runner

    zoo = tmp_path / "zoo"  # training writes into the zoo's folder: never the shared test zoo
    shutil.copytree(tiny_zoo_dir, zoo)
    monkeypatch.setenv("FUSION_ZOO", str(zoo))
    at = open_app()
    at.switch_page(page_path("Train")).run()
    assert not at.exception and at.title[0].value == "Train"
    at.selectbox(key="train_locale").set_value("nl-NL")
    at.text_input(key="train_name").set_value("ft_nl_app")
    at.number_input(key="train_steps").set_value(2)
    at.number_input(key="train_batch").set_value(4)
    at.button(key="train_start").click().run()
    assert not at.exception, [e.value for e in at.exception]
    run_id = at.session_state["train_run"]
    row = runner(app_cache).wait(run_id, timeout=300)
    assert row["status"] == "done", row.get("error")
    rerun(at)
    assert any(m.label == "Test accuracy" for m in at.metric)
    assert (zoo / "ft_nl_app" / "train.json").exists()
    assert "loss" in {p["name"] for p in runner(app_cache).store.series(run_id)}
    # a second run into the same folder is refused with the guard's message, no run created
    at.button(key="train_start").click().run()
    assert any("not empty" in e.value for e in at.error)
    # training with periodic merges, from the same page
    rerun(at)
    at.selectbox(key="pm_target").set_value("en-US").run()
    at.multiselect(key="pm_sources_en-US").set_value(["de-DE", "nl-NL"])
    at.segmented_control(key="pm_weighting").set_value("equal")
    for key, value in (("pm_steps", 2), ("pm_every", 1), ("pm_batch", 4)):
        at.number_input(key=key).set_value(value)
    at.toggle(key="pm_baseline").set_value(False)
    at.button(key="pm_start").click().run()
    assert not at.exception, [e.value for e in at.exception]
    run_id = at.session_state["train_run"]
    row = runner(app_cache).wait(run_id, timeout=300)
    assert row["status"] == "done" and row["method"] == "periodic-merge", row.get("error")
    rerun(at)
    assert any("2 merges" in s.value for s in at.success)


# ---- iterative training with periodic merges ---------------------------------------------------
def _model_tensors(folder):
    from safetensors.torch import load_file

    return {k[len("model."):]: v for k, v in load_file(str(folder / "trainer.safetensors")).items()
            if k.startswith("model.")}


def test_periodic_merge_equals_the_registered_merge_of_the_checkpointed_weights(own_ws):
    from safetensors.torch import load_file

    from engine.merge import merge_state_dicts
    from engine.train.periodic import PeriodicConfig, run_periodic

    store = Store(own_ws.cache_dir / "runs.sqlite")
    config = PeriodicConfig(target="en-US", sources=["de-DE", "nl-NL"], weighting="equal", method="task_arithmetic",
                            steps=2, merge_every=1, batch_size=4, lr=1e-3, keep_checkpoint=True)
    row = run_periodic(store, own_ws, config)
    assert row["status"] == "done", row.get("error")
    assert row["method"] == "periodic-merge" and row["params"]["target_data"] == "none"
    assert [m["step"] for m in row["result"]["merges"]] == [1, 2]
    assert "accuracy" in row["result"]["posthoc"] and 0 <= row["metrics"]["test"]["accuracy"] <= 1
    ckpt = own_ws.cache_dir / "training" / row["params"]["checkpoint"].rsplit("/", 1)[1]
    states = [_model_tensors(ckpt / "together" / str(i)) for i in range(2)]  # saved before the final merge
    expected = merge_state_dicts("task_arithmetic", states, [0.5, 0.5], base=own_ws.zoo.base_state_dict(),
                                 names=["de-DE", "nl-NL"], seed=0)
    merged = load_file(str(ckpt / "merged.safetensors"))
    assert set(merged) == set(expected) and all(torch.equal(merged[k], expected[k]) for k in merged)
    names = {p["name"] for p in store.series(row["id"])}
    assert {"loss/de-DE", "loss/nl-NL", "merged_dev_accuracy", "posthoc_dev_accuracy"} <= names


def test_periodic_run_resumes_to_the_same_merged_model(own_ws):
    from safetensors.torch import load_file

    from engine.train.periodic import PeriodicConfig, check_periodic, periodic_job, resume_periodic_here, run_periodic

    store = Store(own_ws.cache_dir / "runs.sqlite")
    common = dict(target="es-ES", sources=["de-DE", "en-US"], weighting="equal", steps=3, merge_every=1,
                  batch_size=4, lr=1e-3, baseline=False, adaptive=True)
    straight = run_periodic(store, own_ws, PeriodicConfig(**common))
    assert straight["params"]["target_data"] == "labelled target dev"
    config = check_periodic(own_ws, PeriodicConfig(**common))
    ckpt = checkpoint_dir(own_ws, "periodic-test")

    def stop_at_two(p):
        if "step 2/" in p.message:
            raise Cancelled("cancelled by the user")

    ctx = JobContext(store.create("train", method="periodic-merge", target="es-ES",
                                  params={**config.to_dict(), "checkpoint": str(ckpt)}), store, echo=stop_at_two)
    assert isinstance(execute(periodic_job(own_ws, config, ckpt), ctx), Cancelled)
    resumed = resume_periodic_here(store, own_ws, ctx.run_id)
    assert resumed["status"] == "done", resumed.get("error")
    a = load_file(straight["result"]["merged"])
    b = load_file(resumed["result"]["merged"])
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert resumed["result"]["merges"] == straight["result"]["merges"]
    assert not (ckpt / "together").exists() and (ckpt / "merged.safetensors").exists()  # only the result kept


def test_periodic_bad_settings(own_ws):
    from engine.train.periodic import PeriodicConfig, check_periodic

    with pytest.raises(TrainError, match="at least 1"):
        check_periodic(own_ws, PeriodicConfig(target="en-US", sources=["de-DE"], steps=0))
    with pytest.raises(TrainError, match="unknown merge method 'nope'"):
        check_periodic(own_ws, PeriodicConfig(target="en-US", sources=["de-DE"], method="nope"))
    with pytest.raises(TrainError, match="xx-XX"):
        check_periodic(own_ws, PeriodicConfig(target="en-US", sources=["xx-XX"], weighting="equal"))
    with pytest.raises(TrainError, match="blend"):
        check_periodic(own_ws, PeriodicConfig(target="en-US", sources=["de-DE"], blend=0))


def test_label_curve_from_a_periodic_merge_run(own_ws):
    from dashboard.train_figures import label_curve
    from engine.train.labels import LabelCurveConfig, labels_saved, run_label_curve
    from engine.train.periodic import PeriodicConfig, run_periodic

    store = Store(own_ws.cache_dir / "runs.sqlite")
    fused = run_periodic(store, own_ws, PeriodicConfig(target="en-US", sources=["de-DE", "nl-NL"], weighting="equal",
                                                       steps=2, merge_every=2, batch_size=4, baseline=False))
    row = run_label_curve(store, own_ws, LabelCurveConfig(target="en-US", fused=fused["id"], ns=[0, 8, 10_000],
                                                          steps=2, batch_size=4))
    curve = row["result"]["curve"]
    n_train = len(own_ws.dataset.get("en-US", "train"))
    assert [p["n"] for p in curve] == [0, 8, n_train]         # capped at the train split
    assert row["params"]["target_data"].startswith("labelled target train")
    # n = 0 is the fused model itself, as its own run scored it
    assert curve[0]["fused"] == pytest.approx(fused["metrics"]["test"]["accuracy"])
    assert labels_saved([{"n": 0, "base": .2, "fused": .6}, {"n": 8, "base": .5, "fused": .7},
                         {"n": 16, "base": .65, "fused": .8}]) == 16
    assert len(label_curve(curve).data) == 2
    with pytest.raises(TrainError, match="neither a model folder nor a stored run"):
        run_label_curve(store, own_ws, LabelCurveConfig(target="en-US", fused="no-such-run", ns=[0]))


def test_train_page_measures_a_label_curve(app_cache, tiny_zoo_dir, tmp_path, monkeypatch):
    from app_support import open_app, page_path, rerun, runner

    from engine.train.periodic import PeriodicConfig, submit_periodic

    zoo = tmp_path / "zoo"
    shutil.copytree(tiny_zoo_dir, zoo)
    monkeypatch.setenv("FUSION_ZOO", str(zoo))
    ws = open_workspace(Settings(zoo=str(zoo), cache_dir=str(app_cache), device="cpu"))
    fused = submit_periodic(runner(app_cache), ws, PeriodicConfig(
        target="nl-NL", sources=["de-DE", "en-US"], weighting="equal", steps=1, merge_every=1, batch_size=4,
        baseline=False))
    assert runner(app_cache).wait(fused, timeout=300)["status"] == "done"
    at = open_app()
    at.switch_page(page_path("Train")).run()
    at.selectbox(key="lc_fused").set_value(fused)
    at.text_input(key="lc_ns").set_value("0 4")
    at.number_input(key="lc_steps").set_value(1)
    at.button(key="lc_start").click().run()
    assert not at.exception, [e.value for e in at.exception]
    row = runner(app_cache).wait(at.session_state["train_run"], timeout=300)
    assert row["status"] == "done", row.get("error")
    assert [p["n"] for p in row["result"]["curve"]] == [0, 4]
    rerun(at)
    assert any("to match the fused model" in c.value for c in at.caption)


def test_periodic_sources_default_to_the_targets_uriel_top_k(own_ws):
    from engine.train.periodic import PeriodicConfig, check_periodic

    config = check_periodic(own_ws, PeriodicConfig(target="nl-NL", top_k=2))
    assert len(config.sources) == 2 and "nl-NL" not in config.sources
    assert sum(config.weights) == pytest.approx(1.0)


def test_demo_builder_still_makes_the_same_models(tiny_zoo_dir, tmp_path):
    """The demo builder now trains through engine/train's loop: its models must not change."""
    from engine.data.loaders import load_massive_jsonl
    from engine.demo.build import SIZES, finetune
    from engine.zoo import fingerprint_dir

    spec = SIZES["tiny"]
    dataset = load_massive_jsonl(str(tiny_zoo_dir / "data"))
    reference = tiny_zoo_dir / "e5small_massive_k_es-ES"
    # the same float summation order as the build: other test modules pin torch to 1 thread
    threads = json.loads((reference / "training.json").read_text()).get("torch_threads")
    before = torch.get_num_threads()
    torch.set_num_threads(threads or before)
    try:
        finetune(tiny_zoo_dir / "base", dataset, "es-ES", tmp_path / "es", spec.steps, spec.batch_size, spec.lr, 0)
    finally:
        torch.set_num_threads(before)
    assert fingerprint_dir(tmp_path / "es") == fingerprint_dir(reference)
