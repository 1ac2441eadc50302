"""Runs mirrored to MLflow (mlflow-skinny): real tiny runs through the CLI, read back from a real local
MLflow store with MLflow's own client; the engine's store keeps every run whatever MLflow does."""
from __future__ import annotations

import json

import pytest
import yaml

from engine.cli import main
from engine.zoo import Zoo
from engine.store import open_store

mlflow = pytest.importorskip("mlflow", reason="mlflow-skinny is not installed")


def client_for(uri):
    return mlflow.MlflowClient(tracking_uri=uri)


def mlflow_runs(uri, engine_run_id=None):
    client = client_for(uri)
    experiment = client.get_experiment_by_name("fusion")
    assert experiment is not None, f"no 'fusion' experiment at {uri}"
    flt = f"tags.`fusion.run_id` = '{engine_run_id}'" if engine_run_id else ""
    return client.search_runs([experiment.experiment_id], filter_string=flt)


def test_cli_merge_is_logged_with_params_metrics_and_tags(tiny_zoo_dir, tmp_path, capsys):
    uri = (tmp_path / "mlruns").as_uri()
    ws = ["--zoo", str(tiny_zoo_dir), "--cache-dir", str(tmp_path / "cache"), "--device", "cpu", "--quiet", "--json"]
    assert main(["merge", "--target", "de-DE", "--method", "ties", "--param", "density=0.5",
                 "--mlflow", uri, *ws]) == 0
    out = json.loads(capsys.readouterr().out)
    row = open_store(tmp_path / "cache").get(out["run_id"])

    [run] = mlflow_runs(uri, row["id"])
    data = run.data
    assert run.info.status == "FINISHED" and run.info.run_name == row["name"]
    assert data.params["method"] == "ties" and data.params["target"] == "de-DE"
    assert data.params["sources"] == ",".join(row["sources"]) and "de-DE" not in row["sources"]
    for source, weight in zip(row["sources"], row["weights"]):
        assert float(data.params[f"weight.{source}"]) == pytest.approx(weight)
    assert float(data.params["density"]) == 0.5
    assert data.metrics["test.accuracy"] == pytest.approx(row["metrics"]["test"]["accuracy"])
    assert data.tags["fusion.kind"] == "merge" and data.tags["fusion.origin"] == "CLI"
    use = row["result"]["target_data"]
    assert data.tags["fusion.target_data"] == (use if isinstance(use, str) else json.dumps(use, sort_keys=True))
    assert data.tags["trait.data_use"] == "none" and data.tags["trait.needs_base"] == "true"   # the method's traits
    # recipe.json and mergekit.yaml (naming the zoo's real folders, so it reruns); no model by default
    client = client_for(uri)
    assert sorted(a.path for a in client.list_artifacts(run.info.run_id)) == ["mergekit.yaml", "recipe.json"]
    recipe = json.loads(open(client.download_artifacts(run.info.run_id, "recipe.json", str(tmp_path))).read())
    assert recipe["method"] == "ties" and recipe["sources"] == row["sources"]
    kit = yaml.safe_load(open(client.download_artifacts(run.info.run_id, "mergekit.yaml", str(tmp_path))).read())
    zoo = Zoo.open(tiny_zoo_dir)
    assert kit["merge_method"] == "ties" and kit["base_model"] == str(zoo.base.resolve())
    assert [m["model"] for m in kit["models"]] == [str(zoo.path(s).resolve()) for s in row["sources"]]
    assert {m["parameters"]["density"] for m in kit["models"]} == {0.5}

    # mlflow-export copies the older runs once: this merge is already there, a second call adds nothing
    assert main(["mlflow-export", uri, "--cache-dir", str(tmp_path / "cache"), "--json"]) == 0
    first = json.loads(capsys.readouterr().out)
    assert row["id"] not in first["logged"] and first["already"] >= 1
    assert main(["mlflow-export", uri, "--cache-dir", str(tmp_path / "cache"), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["logged"] == {}
    assert len(mlflow_runs(uri, row["id"])) == 1


def test_evolution_curve_has_one_step_per_generation(tiny_zoo_dir, tmp_path, capsys, monkeypatch):
    uri = (tmp_path / "mlruns").as_uri()
    monkeypatch.setenv("FUSION_MLFLOW_URI", uri)   # the environment's setting: no flag needed
    assert main(["evolve", "--zoo", str(tiny_zoo_dir), "--cache-dir", str(tmp_path / "cache"), "--device", "cpu",
                 "--target", "nl-NL", "--sources", "de-DE", "en-US", "--algorithm", "cmaes", "--generations", "2",
                 "--population", "2", "--dev-size", "8", "--layer-groups", "1", "--no-merge-cache",
                 "--json", "--quiet"]) == 0
    run_id = json.loads(capsys.readouterr().out)["run_id"]
    store = open_store(tmp_path / "cache")
    curves = {p["name"] for p in store.series(run_id)}
    assert curves, "the evolution logged no curve"

    [run] = mlflow_runs(uri, run_id)
    client = client_for(uri)
    for name in curves:
        keys = [k for k in run.data.metrics if k == name or k.startswith(name + ".")]
        assert keys, f"curve {name} not mirrored"
        for key in keys:
            steps = [m.step for m in client.get_metric_history(run.info.run_id, key)]
            assert sorted(steps) == sorted({p["step"] for p in store.series(run_id, name)})
    best = sorted(m.step for m in client.get_metric_history(run.info.run_id, "best"))
    assert best == [p["step"] for p in store.series(run_id, "best")] and best[-2:] == [1, 2]  # one per generation


def test_bad_uri_is_one_line_and_the_run_is_kept(tiny_zoo_dir, tmp_path, capsys):
    ws = ["--zoo", str(tiny_zoo_dir), "--cache-dir", str(tmp_path / "cache"), "--device", "cpu", "--quiet", "--json"]
    # a server URI is refused before any work
    assert main(["ensemble", "--target", "de-DE", "--method", "soft", "--equal", "--mlflow",
                 "http://mlflow.example:5000", *ws]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "http://mlflow.example:5000" in err and "not local" in err

    # a folder that cannot be one (a file is in the way): the run ends, is stored, and one warning says so
    blocker = tmp_path / "not_a_folder"
    blocker.write_text("x")
    assert main(["ensemble", "--target", "de-DE", "--method", "soft", "--equal", "--mlflow",
                 str(blocker / "mlruns"), *ws]) == 0
    captured = capsys.readouterr()
    run_id = json.loads(captured.out)["run_id"]
    warning = [line for line in captured.err.splitlines() if "MLflow" in line]
    assert len(warning) == 1 and run_id in warning[0] and "mlflow-export" in warning[0]
    assert "Traceback" not in captured.err
    assert open_store(tmp_path / "cache").get(run_id)["status"] == "done"


def test_store_hook_mirrors_each_run_once_with_recipe(tmp_path):
    """The store's own hook: a run mirrors when it ends done (not while it runs); recipe.json on request."""
    from engine.mlflow_mirror import MlflowMirror

    store = open_store(tmp_path / "cache")
    uri = str(tmp_path / "mlruns")       # a bare folder is a file: store
    store.mirror = MlflowMirror(uri, recipe=True)
    run_id = store.create("train", name="fine-tune da-DK", target="da-DK", params={"seed": 3, "lr": 5e-5})
    for step, loss in enumerate([2.0, 1.5, 1.1]):
        store.add_point(run_id, "loss", step, loss)
    store.update(run_id, status="running")
    assert not (tmp_path / "mlruns").exists()
    store.update(run_id, status="done", metrics={"dev": {"accuracy": 0.75}})
    store.update(run_id, status="done")  # a second "done" write does not log it twice

    mlflow_uri = (tmp_path / "mlruns").as_uri()
    [run] = mlflow_runs(mlflow_uri, run_id)
    assert run.data.params["seed"] == "3" and run.data.metrics["dev.accuracy"] == 0.75
    history = client_for(mlflow_uri).get_metric_history(run.info.run_id, "loss")
    assert [(m.step, m.value) for m in sorted(history, key=lambda m: m.step)] == [(0, 2.0), (1, 1.5), (2, 1.1)]
    [artifact] = client_for(mlflow_uri).list_artifacts(run.info.run_id)
    assert artifact.path == "recipe.json"


def test_setup_page_field_sets_the_mirror_of_the_app_store(app_cache, tmp_path):
    from app_support import goto, open_app, rerun

    from dashboard import state

    store = state.services(str(app_cache.resolve()))[0]
    at = goto(open_app(), "Setup")
    at.text_input(key="setup_mlflow").set_value("http://mlflow.example:5000")
    rerun(at)
    [error] = [e.value for e in at.error]
    assert "http://mlflow.example:5000" in error and "not local" in error and store.mirror is None

    at.text_input(key="setup_mlflow").set_value(str(tmp_path / "mlruns"))
    rerun(at)
    assert not at.error and store.mirror.uri == (tmp_path / "mlruns").as_uri()
    at.text_input(key="setup_mlflow").set_value("")
    rerun(at)
    assert store.mirror is None


def test_sweep_cells_and_the_sweep_are_mirrored(tiny_zoo_dir, tmp_path, capsys):
    spec = tmp_path / "spec.json"
    spec.write_text(json.dumps({"name": "mirrored", "targets": ["de-DE"], "sources": [2],
                                "methods": ["merge:linear", {"ensemble": "soft"}]}))
    uri = str(tmp_path / "mlruns")
    assert main(["sweep", str(spec), "--zoo", str(tiny_zoo_dir), "--cache-dir", str(tmp_path / "cache"),
                 "--device", "cpu", "--quiet", "--mlflow", uri]) == 0
    capsys.readouterr()
    store = open_store(tmp_path / "cache")
    done = {r["id"]: r for r in store.runs(status=["done"])}
    [sweep] = [r for r in done.values() if r["kind"] == "sweep"]
    cells = {i for i, r in done.items() if r["parent"] == sweep["id"]}
    assert len(cells) >= 2
    mirrored = {r.data.tags["fusion.run_id"]: r for r in mlflow_runs((tmp_path / "mlruns").as_uri())}
    assert set(done) <= set(mirrored)
    for cell in cells:
        tags = mirrored[cell].data.tags
        assert tags["fusion.parent"] == sweep["id"] and tags["fusion.sweep"] == sweep["id"]
        assert mirrored[cell].data.metrics["test.accuracy"] == pytest.approx(done[cell]["metrics"]["test"]["accuracy"])


def test_mlflow_export_copies_earlier_runs_since_a_date(tmp_path, capsys):
    store = open_store(tmp_path / "cache")          # no mirror: runs stored before MLflow was wanted
    old = store.create("merge", name="old", target="de-DE", method="linear")
    store.update(old, status="done", metrics={"test": {"accuracy": 0.5}})
    store._write("UPDATE runs SET created=created-3*86400 WHERE id=?", (old,))   # three days ago
    new = store.create("ensemble", name="new", target="de-DE", method="soft")
    store.update(new, status="done", metrics={"test": {"accuracy": 0.6}})
    failed = store.create("merge", name="failed", target="de-DE", method="ties")
    store.update(failed, status="failed", error="boom")
    uri = tmp_path / "mlruns"
    cache = ["--cache-dir", str(tmp_path / "cache"), "--json"]

    assert main(["mlflow-export", str(uri), "--since", "2d", *cache]) == 0
    assert list(json.loads(capsys.readouterr().out)["logged"]) == [new]
    assert main(["mlflow-export", str(uri), *cache]) == 0
    out = json.loads(capsys.readouterr().out)
    assert list(out["logged"]) == [old] and out["already"] == 1
    [run] = mlflow_runs(uri.as_uri(), new)
    assert run.data.tags["trait.family"] and run.data.metrics["test.accuracy"] == 0.6   # traits of soft voting

    for bad, words in [("http://mlflow.example:5000", "not local"), (str(uri), "--since")]:
        args = ["mlflow-export", bad, *cache] + (["--since", "yesterday"] if bad == str(uri) else [])
        assert main(args) == 2
        err = capsys.readouterr().err.strip()
        assert len(err.splitlines()) == 1 and words in err


def test_cli_fine_tune_logs_its_loss_curve(tiny_zoo_dir, tmp_path, capsys):
    import shutil

    zoo = tmp_path / "zoo"
    shutil.copytree(tiny_zoo_dir, zoo)      # training writes a model folder into the zoo
    uri = tmp_path / "mlruns"
    assert main(["train", "--zoo", str(zoo), "--cache-dir", str(tmp_path / "cache"), "--device", "cpu", "--quiet",
                 "--json", "--locale", "de-DE", "--steps", "3", "--train-batch-size", "8", "--register", "no",
                 "--mlflow", str(uri)]) == 0
    run_id = json.loads(capsys.readouterr().out)["run_id"]
    losses = open_store(tmp_path / "cache").series(run_id, "loss")
    [run] = mlflow_runs(uri.as_uri(), run_id)
    history = sorted(client_for(uri.as_uri()).get_metric_history(run.info.run_id, "loss"), key=lambda m: m.step)
    assert [(m.step, m.value) for m in history] == [(p["step"], p["value"]) for p in losses] and len(history) == 3
    assert run.data.tags["fusion.kind"] == "train" and run.data.params["seed"] == "0"


def test_export_and_model_folder_are_artifacts_when_asked(tiny_zoo_dir, tmp_path, capsys):
    """--mlflow-model logs the exported folder under model/; its mergekit.yaml is the export's own."""
    uri = tmp_path / "mlruns"
    out_dir = tmp_path / "merged"
    ws = ["--zoo", str(tiny_zoo_dir), "--cache-dir", str(tmp_path / "cache"), "--device", "cpu", "--quiet", "--json"]
    assert main(["merge", "--target", "nl-NL", "--method", "linear", "--export", str(out_dir),
                 "--mlflow", str(uri), "--mlflow-model", *ws]) == 0
    run_id = json.loads(capsys.readouterr().out)["run_id"]
    [run] = mlflow_runs(uri.as_uri(), run_id)
    client = client_for(uri.as_uri())
    top = sorted(a.path for a in client.list_artifacts(run.info.run_id))
    assert top == ["mergekit.yaml", "model", "recipe.json"]
    model = {a.path.split("/", 1)[1]: a.file_size for a in client.list_artifacts(run.info.run_id, "model")}
    assert model == {f.name: f.stat().st_size for f in out_dir.iterdir()}
    assert "model.safetensors" in model and "config.json" in model
    logged = client.download_artifacts(run.info.run_id, "mergekit.yaml", str(tmp_path / "dl"))
    assert open(logged).read() == (out_dir / "mergekit.yaml").read_text()
    capsys.readouterr()        # MLflow's download progress bar

    # --mlflow-model without a store to log to is one line, before any work
    assert main(["merge", "--target", "nl-NL", "--method", "linear", "--mlflow-model", *ws]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "--mlflow" in err


def test_sweep_spec_names_its_mlflow_store(tiny_zoo_dir, tmp_path, capsys):
    """A spec's ``mlflow:`` key mirrors the sweep and every cell, cells reused from an earlier sweep too."""
    from engine.sweep import SweepSpecError, load_spec

    cache = ["--zoo", str(tiny_zoo_dir), "--cache-dir", str(tmp_path / "cache"), "--device", "cpu", "--quiet"]
    spec = {"name": "spec-mirrored", "targets": ["nl-NL"], "sources": [2], "methods": ["merge:linear"]}
    first = tmp_path / "first.json"
    first.write_text(json.dumps(spec))                          # no MLflow: cells computed and stored
    assert main(["sweep", str(first), *cache]) == 0
    second = tmp_path / "second.yaml"
    second.write_text(yaml.safe_dump({**spec, "methods": ["merge:linear", {"ensemble": "soft"}],
                                      "mlflow": str(tmp_path / "mlruns")}))
    assert main(["sweep", str(second), *cache]) == 0
    capsys.readouterr()
    store = open_store(tmp_path / "cache")
    [sweep] = [r for r in store.runs(kind="sweep") if r["name"] == "sweep spec-mirrored" and r["params"]["spec"]["mlflow"]]
    cells = set(sweep["result"]["cells"].values())
    assert sweep["result"]["reused"] >= 1 and sweep["result"]["computed"] >= 1
    mirrored = {r.data.tags["fusion.run_id"]: r for r in mlflow_runs((tmp_path / "mlruns").as_uri())}
    assert set(mirrored) == cells | {sweep["id"]}
    assert mirrored[sweep["id"]].data.metrics["cells"] == len(cells)
    assert sweep["params"]["spec"]["mlflow"] == (tmp_path / "mlruns").as_uri()   # absolute: resumes agree

    with pytest.raises(SweepSpecError, match="mlflow.*not local"):
        load_spec({**spec, "mlflow": "http://mlflow.example:5000"})


def test_compare_button_logs_the_selected_runs(app_cache, tmp_path, tiny_zoo_dir, capsys):
    from app_support import goto, open_app, rerun

    from dashboard import state

    assert main(["merge", "--target", "de-DE", "--method", "linear", "--zoo", str(tiny_zoo_dir), "--cache-dir",
                 str(app_cache), "--device", "cpu", "--quiet", "--json"]) == 0
    run_id = json.loads(capsys.readouterr().out)["run_id"]
    store = state.services(str(app_cache.resolve()))[0]
    store.pin(run_id)                                        # Compare opens with pinned runs selected
    at = goto(open_app(), "Compare")
    uri = tmp_path / "page_mlruns"
    at.text_input(key="cmp_mlflow_uri").set_value(str(uri))
    at.button(key="cmp_mlflow").click()
    rerun(at)
    assert not at.error, [e.value for e in at.error]
    [run] = mlflow_runs(uri.as_uri(), run_id)
    [table] = [d.value for d in at.dataframe if "mlflow_run" in d.value.columns]
    assert table.to_dict("records") == [{"run": run_id, "mlflow_run": run.info.run_id, "logged": "now"}]
    assert sorted(a.path for a in client_for(uri.as_uri()).list_artifacts(run.info.run_id)) == \
        ["mergekit.yaml", "recipe.json"]
    at.button(key="cmp_mlflow").click()                      # a second click logs nothing twice
    rerun(at)
    [table] = [d.value for d in at.dataframe if "mlflow_run" in d.value.columns]
    assert table["logged"].tolist() == ["already"] and len(mlflow_runs(uri.as_uri(), run_id)) == 1

    at.text_input(key="cmp_mlflow_uri").set_value("http://mlflow.example:5000")
    at.button(key="cmp_mlflow").click()
    rerun(at)
    assert any("not local" in e.value for e in at.error)
    store.pin(run_id, False)


def test_log_runs_skips_running_runs_and_keeps_a_failed_runs_status(tmp_path):
    from engine.mlflow_mirror import log_runs

    store = open_store(tmp_path / "cache")
    done = store.create("ensemble", name="done", target="de-DE", method="soft")
    store.update(done, status="done", finished=1.0, metrics={"test": {"accuracy": 0.6}})
    failed = store.create("merge", name="failed", target="de-DE", method="ties")
    store.update(failed, status="failed", finished=2.0, error="boom")
    running = store.create("merge", name="running", target="de-DE", method="ties", status="running")
    out = log_runs(store, [done, failed, running, done], str(tmp_path / "mlruns"))
    assert set(out["logged"]) == {done, failed} and out["skipped"] == {running: "still running"}
    status = {r.data.tags["fusion.run_id"]: r.info.status for r in mlflow_runs((tmp_path / "mlruns").as_uri())}
    assert status == {done: "FINISHED", failed: "FAILED"}
    again = log_runs(store, [done], str(tmp_path / "mlruns"))
    assert again["already"] == {done: out["logged"][done]} and not again["logged"]
