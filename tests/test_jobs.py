"""Job runner and results store: progress, cancellation, failure isolation, restart persistence."""
import threading
import time

import pytest

from engine.jobs import JobRunner
from engine.progress import Tracker
from engine.store import Store


@pytest.fixture()
def store(tmp_path):
    s = Store(tmp_path / "runs.sqlite")
    yield s
    s.close()


def counting_job(n, pause=0.01, gate=None):
    def job(ctx):
        tracker = Tracker(ctx.progress, n, "counting")
        for i in range(n):
            if gate is not None:
                gate.wait(5)
            time.sleep(pause)
            ctx.log("value", i, i * i)
            tracker.advance(1, f"step {i}")
        return {"metrics": {"accuracy": 0.5}, "result": {"n": n}}
    return job


def test_job_runs_records_progress_metrics_and_series(store):
    runner = JobRunner(store)
    run_id = runner.submit("merge", counting_job(5), name="test", target="de-DE", sources=["nl-NL"], weights=[1.0])
    row = runner.wait(run_id, timeout=10)
    assert row["status"] == "done"
    assert row["progress"] == 1.0
    assert row["metrics"] == {"accuracy": 0.5}
    assert row["result"] == {"n": 5}
    assert row["sources"] == ["nl-NL"] and row["weights"] == [1.0]
    assert [p["value"] for p in store.series(run_id, "value")] == [0, 1, 4, 9, 16]
    runner.shutdown()


def test_cancel_stops_a_running_job_and_others_go_on(store):
    runner = JobRunner(store, compute_workers=1, light_workers=1)
    gate = threading.Event()
    slow = runner.submit("evolve", counting_job(1000, pause=0.005))
    other = runner.submit("ensemble", counting_job(3), lane="light")
    time.sleep(0.2)
    assert store.get(slow)["status"] == "running"
    assert runner.cancel(slow)
    assert runner.wait(slow, timeout=10)["status"] == "cancelled"
    assert runner.wait(other, timeout=10)["status"] == "done"
    assert not runner.cancel(slow)  # no longer active
    gate.set()
    runner.shutdown()


def test_failing_job_records_error_and_runner_survives(store):
    runner = JobRunner(store)

    def broken(ctx):
        raise ValueError("weights must not all be zero")

    bad = runner.submit("merge", broken)
    good = runner.submit("merge", counting_job(2))
    row = runner.wait(bad, timeout=10)
    assert row["status"] == "failed"
    assert "weights must not all be zero" in row["error"]
    assert runner.wait(good, timeout=10)["status"] == "done"
    runner.shutdown()


def test_queued_job_cancelled_before_it_starts(store):
    runner = JobRunner(store, compute_workers=1)
    gate = threading.Event()
    first = runner.submit("merge", counting_job(1, gate=gate))
    second = runner.submit("merge", counting_job(1))
    assert runner.cancel(second)
    gate.set()
    assert runner.wait(first, timeout=10)["status"] == "done"
    assert runner.wait(second, timeout=10)["status"] == "cancelled"
    runner.shutdown()


def test_runs_survive_a_restart_and_stale_ones_show_interrupted(tmp_path):
    path = tmp_path / "runs.sqlite"
    first = Store(path)
    runner = JobRunner(first)
    done = runner.wait(runner.submit("merge", counting_job(2), name="kept"), timeout=10)
    assert done["status"] == "done"
    stale = first.create("evolve", name="was running")
    first.update(stale, status="running", progress=0.4)
    first.close()  # the app stops: its store's active runs are now orphaned

    second = Store(path)
    assert second.get(done["id"])["status"] == "done"
    assert second.get(done["id"])["name"] == "kept"
    row = second.get(stale)
    assert row["status"] == "interrupted"
    assert row["progress"] == pytest.approx(0.4)
    assert "interrupted" in row["message"]
    second.close()
    runner.shutdown()


def test_store_rejects_unknown_fields_and_ids(store):
    run_id = store.create("merge")
    with pytest.raises(ValueError, match="unknown run fields"):
        store.update(run_id, colour="red")
    with pytest.raises(ValueError, match="unknown status"):
        store.update(run_id, status="exploded")
    with pytest.raises(KeyError, match="no run"):
        store.get("nope")


def test_runner_rejects_unknown_lane(store):
    runner = JobRunner(store)
    with pytest.raises(ValueError, match="unknown lane"):
        runner.submit("merge", counting_job(1), lane="gpu9")
    runner.shutdown()


def test_pins_persist_and_vanish_with_their_run(tmp_path):
    first = Store(tmp_path / "runs.sqlite")
    a, b = first.create("merge", name="a"), first.create("merge", name="b")
    first.pin(b)
    first.pin(a)
    first.pin(a)                      # pinning twice is one pin
    with pytest.raises(KeyError):
        first.pin("no-such-run")
    first.close()
    again = Store(tmp_path / "runs.sqlite")   # as after a restart
    assert again.pinned() == [b, a]
    again.pin(b, False)
    again.delete(a)
    assert again.pinned() == []
