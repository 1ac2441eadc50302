"""One results store for every entry point (issue 11, item 5): the CLI's merge, ensemble, evaluate
and N×N runs are stored like the app's, and concurrent writers — several real processes, the app's
threads and a CLI at once — all land.
"""
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from engine import store as store_module
from engine.cli import main
from engine.store import Store

ROOT = Path(__file__).resolve().parent.parent
ENV = {**os.environ, "PYTHONPATH": str(ROOT), "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1"}

WRITER = """
import sys, time
from engine.store import Store
store, tag, n = Store(sys.argv[1]), sys.argv[2], int(sys.argv[3])
for i in range(n):
    run = store.create("evaluate", name=f"{tag}-{i}", status="running")
    store.add_point(run, "loss", 0, i)
    store.update(run, progress=0.5, message="half")
    store.update(run, status="done", finished=time.time(), metrics={"test": {"accuracy": i / n}})
    if i % 10 == 0:
        Store(sys.argv[1]).close()  # new openers (schema, stale-run sweep) amid the writes
print("done", tag)
"""


def test_concurrent_store_writers_all_land(tmp_path):
    path = tmp_path / "runs.sqlite"
    earlier = Store(path).create("merge", name="earlier", status="done")
    n, tags = 60, ["a", "b", "c", "d"]
    procs = [subprocess.Popen([sys.executable, "-c", WRITER, str(path), tag, str(n)], env=ENV,
                              cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for tag in tags]
    app = Store(path)  # this process writes too, as the app's job threads would
    for i in range(n):
        app.update(app.create("merge", name=f"app-{i}"), status="done", finished=time.time())
    outs = [p.communicate(timeout=120) for p in procs]
    assert [p.returncode for p in procs] == [0] * len(tags), [o[1][-500:] for o in outs]
    runs = Store(path).runs(limit=10000)
    names = {r["name"] for r in runs if r["status"] == "done"}
    assert names >= {f"{t}-{i}" for t in tags for i in range(n)} | {f"app-{i}" for i in range(n)}
    assert Store(path).get(earlier)["status"] == "done"
    points = [Store(path).series(r["id"], "loss") for r in runs if r["name"].split("-")[0] in tags]
    assert len(points) == len(tags) * n and all(len(p) == 1 for p in points)


HOLDER = """
import sqlite3, sys, time
conn = sqlite3.connect(sys.argv[1], isolation_level=None)
conn.execute("BEGIN IMMEDIATE")
conn.execute("UPDATE runs SET message='held' WHERE 0")
print("locked", flush=True)
time.sleep(float(sys.argv[2]))
conn.execute("COMMIT")
"""


def test_a_write_outlasts_another_process_holding_the_lock(tmp_path, monkeypatch):
    """Longer than the busy timeout: the write is retried instead of failing 'database is locked'."""
    path = tmp_path / "runs.sqlite"
    Store(path).close()
    monkeypatch.setattr(store_module, "BUSY_TIMEOUT_S", 0.1)
    store = Store(path)
    holder = subprocess.Popen([sys.executable, "-c", HOLDER, str(path), "1.5"], stdout=subprocess.PIPE,
                              text=True)
    assert holder.stdout.readline().strip() == "locked"
    started = time.monotonic()
    run_id = store.create("evaluate", name="patient")
    assert time.monotonic() - started > 1.0  # it did wait for the other process
    assert holder.wait(timeout=30) == 0
    assert Store(path).get(run_id)["name"] == "patient"


def test_concurrent_cli_processes_and_the_app_all_land(tiny_ws):
    """Two real `python -m engine evaluate` processes and an app-style job at the same time."""
    from engine.experiments import Candidate
    from engine.candidate_runs import submit_candidate
    from engine.jobs import JobRunner

    cache = tiny_ws.cache_dir
    store = Store(cache / "runs.sqlite")
    earlier = {r["id"] for r in store.runs(limit=10000)}
    models = ["en-US", "nl-NL"]
    procs = [subprocess.Popen([sys.executable, "-m", "engine", "evaluate", "--model", m, "--locale",
                               "de-DE", "--zoo", str(tiny_ws.zoo.root), "--cache-dir", str(cache),
                               "--device", "cpu", "--quiet", "--json"], env=ENV, cwd=ROOT,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for m in models]
    runner = JobRunner(store)
    try:
        app_run = submit_candidate(runner, tiny_ws, Candidate("ensemble", "soft", "de-DE",
                                                               ["en-US", "nl-NL"], [1.0, 1.0]))
        assert runner.wait(app_run, timeout=300)["status"] == "done"
    finally:
        runner.shutdown()
    outs = [p.communicate(timeout=300) for p in procs]
    assert [p.returncode for p in procs] == [0, 0], [o[1][-500:] for o in outs]
    ids = [json.loads(o[0])["run_id"] for o in outs]
    rows = [store.get(i) for i in ids]
    assert [r["params"]["model"] for r in rows] == models
    assert all(r["kind"] == "evaluate" and r["status"] == "done" and r["target"] == "de-DE"
               and 0 <= r["metrics"]["test"]["accuracy"] <= 1 for r in rows)
    assert earlier <= {r["id"] for r in store.runs(limit=10000)}


def test_cli_runs_are_stored_like_the_apps(tiny_ws, capsys):
    """merge, ensemble, evaluate and nxn from the CLI: stored with the app's fields, so Compare
    (and its N×N tab) shows them; a failing command leaves a failed run with its error."""
    from engine.report import tables
    from engine.candidate_runs import zoo_signature

    cache = tiny_ws.cache_dir
    ws = ["--zoo", str(tiny_ws.zoo.root), "--cache-dir", str(cache), "--device", "cpu", "--quiet",
          "--json"]
    ids = {}
    for kind, args in [("merge", ["merge", "--target", "de-DE", "--method", "linear", "--sources",
                                  "en-US", "nl-NL", "--equal"]),
                       ("ensemble", ["ensemble", "--target", "de-DE", "--method", "soft",
                                     "--sources", "en-US", "nl-NL", "--equal"]),
                       ("evaluate", ["evaluate", "--model", "nl-NL", "--locale", "de-DE"]),
                       ("nxn", ["nxn"])]:
        assert main([*args, *ws]) == 0
        ids[kind] = json.loads(capsys.readouterr().out)["run_id"]
    store = Store(cache / "runs.sqlite")
    rows = {k: store.get(i) for k, i in ids.items()}
    assert all(r["status"] == "done" and r["kind"] == k and r["finished"] >= r["started"]
               for k, r in rows.items())
    merge = rows["merge"]
    assert merge["sources"] == ["en-US", "nl-NL"] and merge["params"]["seed"] == 0
    assert {"provenance", "baselines", "candidate", "workspace"} <= set(merge["result"])
    frame = tables.runs_frame([rows["merge"], rows["ensemble"]])
    assert frame["test_accuracy"].notna().all() and frame["gain_vs_best_source"].notna().all()
    assert rows["nxn"]["params"] == {"split": "test", **json.loads(json.dumps(zoo_signature(tiny_ws)))}
    assert set(rows["nxn"]["result"]["matrix"]) == set(tiny_ws.zoo.locales)

    assert main(["evaluate", "--model", str(cache / "no_such_model"), "--locale", "de-DE", *ws]) == 2
    err = capsys.readouterr().err
    failed = store.runs(kind="evaluate", limit=1)[0]
    assert failed["status"] == "failed" and "no_such_model" in failed["error"]
    assert "no_such_model" in err
