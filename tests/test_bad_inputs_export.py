"""Exports that must lose nothing (issue 11, items 1 and 2): never into a zoo's model or base,
never over a non-empty folder unasked, written whole or not at all; a failed export keeps the
finished run, and ``python -m engine export RUN_ID DIR`` writes it again, bit for bit.

Every test works on a copy of the tiny zoo and checks, by sha256, that no model or base file of
it changed, and that the store's earlier runs are all still there.
"""
import hashlib
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from safetensors.torch import load_file

from engine.cli import main
from engine.store import Store

ROOT = Path(__file__).resolve().parent.parent


def tree_hashes(folder: Path) -> dict:
    """sha256 of every file under ``folder`` (the zoo's models, base, data and manifest)."""
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def zoo(tiny_zoo_dir, tmp_path_factory):
    """A private copy of the tiny zoo (never the shared one) and a results cache for it."""
    root = tmp_path_factory.mktemp("export_zoo")
    shutil.copytree(tiny_zoo_dir, root / "zoo")
    return root / "zoo", root / "cache"


@pytest.fixture
def guard(zoo):
    """Hashes of the zoo and the store's runs before the test; asserts after that nothing changed
    and no earlier run went missing."""
    zoo_dir, cache = zoo
    before = tree_hashes(zoo_dir)
    store = Store(cache / "runs.sqlite")
    earlier = {r["id"]: r["status"] for r in store.runs(limit=10000)}
    yield zoo_dir, cache, store
    assert tree_hashes(zoo_dir) == before, "a file of the zoo changed"
    now = {r["id"]: r["status"] for r in store.runs(limit=10000)}
    assert all(now.get(i) == s for i, s in earlier.items()), "an earlier run was lost or changed"
    leftovers = [p for p in zoo_dir.parent.rglob(".*partial-*")]
    assert not leftovers, f"half-written folders left behind: {leftovers}"


def ws_args(zoo_dir, cache):
    return ["--zoo", str(zoo_dir), "--cache-dir", str(cache), "--device", "cpu", "--quiet"]


def merge(zoo_dir, cache, export, *extra):
    return main(["merge", "--target", "de-DE", "--method", "ties", "--sources", "nl-NL", "en-US",
                 "--equal", "--export", str(export), *extra, *ws_args(zoo_dir, cache)])


def one_line_error(capsys) -> str:
    err = capsys.readouterr().err.strip()
    assert err.startswith("error:") and "\n" not in err and "Traceback" not in err, err
    return err


def stored_run(err: str, store: Store) -> dict:
    """The run the error message names: stored, done, with the export error recorded."""
    run_id = err.split("stored as run ")[1].split(",")[0]
    row = store.get(run_id)
    assert row["status"] == "done" and row["metrics"]["test"]["accuracy"] > 0
    assert row["result"]["export_error"] and "export" not in row["result"]
    assert f"python -m engine export {run_id} NEW_DIR" in err
    return row


def zoo_targets(zoo_dir: Path, cache: Path = None) -> dict:
    model = zoo_dir / "e5small_massive_k_es-ES"
    return {"model": (model, "model for es-ES"), "inside_model": (model / "merged", "model for es-ES"),
            "base": (zoo_dir / "base", "base model"), "zoo_root": (zoo_dir, "contains"),
            "around_zoo": (zoo_dir.parent, "contains"), "data": (zoo_dir / "data", "the zoo's dataset"),
            "results_store": (cache, "the results store")}


@pytest.mark.parametrize("where", ["model", "base"])
def test_merge_export_into_the_zoo_is_refused_and_the_run_kept(guard, capsys, where):
    zoo_dir, cache, store = guard
    target, what = zoo_targets(zoo_dir)[where]
    assert merge(zoo_dir, cache, target, "--overwrite") == 2  # even when asked to overwrite
    err = one_line_error(capsys)
    assert what in err and f"'{target}'" in err and "nothing was written" in err
    stored_run(err, store)


def test_export_of_a_stored_run_into_the_zoo_is_refused(guard, capsys):
    """Every folder in, of or around the zoo's models, through ``engine export`` (the rebuilt
    merge goes through the same guard)."""
    zoo_dir, cache, store = guard
    run_id = next(r["id"] for r in store.runs(kind="merge") if r["status"] == "done")
    for where, (target, what) in zoo_targets(zoo_dir, cache).items():
        assert main(["export", run_id, str(target), "--overwrite", "--cache-dir", str(cache),
                     "--quiet"]) == 2, where
        err = one_line_error(capsys)
        assert what in err and f"'{target}'" in err and "nothing was written" in err, (where, err)
    assert not (zoo_dir / "e5small_massive_k_es-ES" / "merged").exists()
    assert (cache / "runs.sqlite").is_file()


def test_non_empty_folder_needs_overwrite_then_export_again(guard, capsys, tmp_path):
    zoo_dir, cache, store = guard
    fresh = tmp_path / "fresh"
    assert merge(zoo_dir, cache, fresh) == 0
    first_id = capsys.readouterr().out.strip().split("stored as run ")[-1]
    assert store.get(first_id)["result"]["export"] == str(fresh)

    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "notes.txt").write_text("my notes")
    assert merge(zoo_dir, cache, mine) == 2
    err = one_line_error(capsys)
    assert "is not empty" in err and "--overwrite" in err and str(mine) in err
    row = stored_run(err, store)
    assert sorted(p.name for p in mine.iterdir()) == ["notes.txt"]
    assert (mine / "notes.txt").read_text() == "my notes"

    # the stored run alone (no --zoo) rebuilds the same merge
    assert main(["export", row["id"], str(mine), "--cache-dir", str(cache), "--quiet"]) == 2
    assert "is not empty" in one_line_error(capsys)
    assert main(["export", row["id"], str(mine), "--overwrite", "--cache-dir", str(cache),
                 "--quiet"]) == 0
    assert not (mine / "notes.txt").exists()
    assert {"config.json", "model.safetensors", "recipe.json"} <= {p.name for p in mine.iterdir()}
    ours, theirs = load_file(mine / "model.safetensors"), load_file(fresh / "model.safetensors")
    assert ours.keys() == theirs.keys() and all(ours[k].equal(theirs[k]) for k in ours)
    assert json.loads((mine / "recipe.json").read_text())["run_id"] == row["id"]


def test_existing_file_and_unwritable_parent(guard, capsys, tmp_path):
    zoo_dir, cache, store = guard
    a_file = tmp_path / "model.bin"
    a_file.write_bytes(b"keep me")
    assert merge(zoo_dir, cache, a_file) == 2
    err = one_line_error(capsys)
    assert "existing file" in err and str(a_file) in err
    stored_run(err, store)
    assert merge(zoo_dir, cache, a_file / "sub") == 2  # the parent is a file: mkdir fails
    err = one_line_error(capsys)
    assert "cannot write the export folder" in err and str(a_file / "sub") in err
    row = stored_run(err, store)
    assert a_file.read_bytes() == b"keep me"
    assert main(["export", row["id"], str(tmp_path / "again"), "--cache-dir", str(cache), "--quiet"]) == 0
    assert (tmp_path / "again" / "model.safetensors").is_file()


def test_failed_write_leaves_the_old_folder_intact(tiny_ws, tmp_path):
    """A write that fails midway (here: a bad tensor) replaces nothing, even with overwrite."""
    from engine.merge.export import export_merge

    state = tiny_ws.zoo.state_dict("de-DE")
    old = tmp_path / "old"
    export_merge(state, tiny_ws.zoo.path("de-DE"), old, {"method": "linear"})
    before = tree_hashes(old)
    broken = dict(state)
    broken["classifier.out_proj.weight"] = "not a tensor"
    with pytest.raises(AttributeError):
        export_merge(broken, tiny_ws.zoo.path("de-DE"), old, {"method": "linear"}, overwrite=True)
    assert tree_hashes(old) == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["old"]  # no partial folder left


def test_export_refuses_a_changed_zoo(zoo, capsys, tmp_path):
    """A stored run is exported again only from the inputs it was scored on."""
    zoo_dir, cache = zoo
    changed = tmp_path / "zoo"
    shutil.copytree(zoo_dir, changed)
    assert main(["merge", "--target", "de-DE", "--method", "linear", "--sources", "nl-NL", "en-US",
                 *ws_args(changed, cache)]) == 0
    run_id = capsys.readouterr().out.strip().split("stored as run ")[-1]
    shutil.copyfile(changed / "e5small_massive_k_es-ES" / "model.safetensors",
                    changed / "e5small_massive_k_nl-NL" / "model.safetensors")
    assert main(["export", run_id, str(tmp_path / "out"), "--cache-dir", str(cache), "--quiet"]) == 2
    err = one_line_error(capsys)
    assert "changed since it ran" in err and run_id in err
    assert not (tmp_path / "out").exists()


def test_app_export_into_the_zoo_keeps_the_run(guard):
    """The app's path (a background job) refuses the zoo too and records why on the run."""
    from engine.experiments import Candidate
    from engine.candidate_runs import submit_candidate
    from engine.jobs import JobRunner
    from engine.workspace import Settings, open_workspace

    zoo_dir, cache, store = guard
    ws = open_workspace(Settings(zoo=str(zoo_dir), cache_dir=str(cache), device="cpu"))
    runner = JobRunner(store)
    try:
        cand = Candidate("merge", "linear", "de-DE", ["nl-NL", "en-US"], [1.0, 1.0])
        run_id = submit_candidate(runner, ws, cand, export_path=zoo_dir / "base", overwrite=True)
        row = runner.wait(run_id, timeout=300)
    finally:
        runner.shutdown()
    assert row["status"] == "done" and "base model" in row["result"]["export_error"]
    assert row["result"]["workspace"]["zoo"] == str(zoo_dir.resolve())


def test_subprocess_export_error_is_one_line(guard, tmp_path):
    zoo_dir, cache, store = guard
    env = {**os.environ, "PYTHONPATH": str(ROOT), "HF_HUB_OFFLINE": "1"}
    proc = subprocess.run([sys.executable, "-m", "engine", "merge", "--target", "de-DE", "--method",
                           "linear", "--sources", "nl-NL", "--export",
                           str(zoo_dir / "e5small_massive_k_nl-NL"), *ws_args(zoo_dir, cache)],
                          capture_output=True, text=True, cwd=ROOT, env=env, timeout=300)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    err = proc.stderr.strip()
    assert err.startswith("error:") and "\n" not in err and "model for nl-NL" in err
    stored_run(err, store)


def test_merge_page_never_offers_the_zoo_and_replaces_only_when_ticked(app_cache, tiny_zoo_dir, tmp_path):
    from app_support import button, goto, open_app, rerun, wait_for

    before = tree_hashes(tiny_zoo_dir)
    at = goto(open_app(), "Merge")
    at.selectbox(key="merge_method").set_value("linear")
    at.text_input(key="merge_export_dir").set_value(str(tiny_zoo_dir / "base"))
    rerun(at)
    assert any("base model" in w.value and "nothing was written" in w.value for w in at.warning)
    assert button(at, "merge_run_button").disabled

    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "notes.txt").write_text("my notes")
    at.text_input(key="merge_export_dir").set_value(str(mine))
    rerun(at)
    assert any("not empty" in w.value for w in at.warning)
    assert button(at, "merge_run_button").disabled
    at.checkbox(key="merge_export_replace").check()
    rerun(at)
    assert not button(at, "merge_run_button").disabled
    button(at, "merge_run_button").click()
    rerun(at)
    row = wait_for(app_cache, at.session_state["merge_run"])
    assert row["result"]["export"] == str(mine)
    assert (mine / "model.safetensors").is_file() and not (mine / "notes.txt").exists()
    assert tree_hashes(tiny_zoo_dir) == before


def test_evolve_champion_export_into_the_zoo_is_refused_and_the_run_kept(guard, capsys, tmp_path):
    zoo_dir, cache, store = guard
    ws = ws_args(zoo_dir, cache)
    assert main(["evolve", "--target", "de-DE", "--sources", "nl-NL", "en-US", "--algorithm", "cmaes",
                 "--generations", "1", "--population", "2", "--dev-size", "8", "--layer-groups", "1",
                 "--no-merge-cache", "--export", str(zoo_dir / "base"), "--overwrite", *ws]) == 2
    err = one_line_error(capsys)
    assert "base model" in err and "nothing was written" in err
    run_id = err.split("stored as run ")[1].split(",")[0]
    assert store.get(run_id)["status"] == "done"
    assert f"python -m engine export {run_id} NEW_DIR" in err
    out = tmp_path / "champion"
    assert main(["export", run_id, str(out), *ws]) == 0
    assert json.loads((out / "recipe.json").read_text())["run_id"] == run_id


KILLED_WRITER = """
import sys, time
from engine.export_guard import export_folder
with export_folder(sys.argv[1], overwrite=True) as tmp:
    (tmp / "model.safetensors").write_bytes(b"half")
    print("writing", flush=True)
    time.sleep(60)
"""


def test_kill_9_mid_export_leaves_the_old_folder(tmp_path):
    """A real process killed while it writes a replacement: the old folder is untouched."""
    import signal

    old = tmp_path / "export"
    old.mkdir()
    (old / "model.safetensors").write_bytes(b"the old model")
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    proc = subprocess.Popen([sys.executable, "-c", KILLED_WRITER, str(old)], env=env,
                            stdout=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == "writing"
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=30)
    assert [p.name for p in old.iterdir()] == ["model.safetensors"]
    assert (old / "model.safetensors").read_bytes() == b"the old model"
    assert len(list(tmp_path.glob(".export.partial-*"))) == 1  # the dead writer's, hidden
    from engine.export_guard import export_folder

    with export_folder(old, overwrite=True) as tmp:  # the next export clears it away
        (tmp / "model.safetensors").write_bytes(b"the new model")
    assert [p.name for p in tmp_path.iterdir()] == ["export"]
    assert (old / "model.safetensors").read_bytes() == b"the new model"
