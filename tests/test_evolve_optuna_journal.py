"""Optuna studies in a shared JSON journal (optuna_storage.py), on the real tiny zoo: one worker on a
journal proposes what the in-memory study does and writes only JSON; two real CLI processes add
their trials to one study; a stopped run resumes from the journal (its half-asked generation marked
failed); a worker with other settings, or a file that is no journal, is refused with one line."""
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import optuna
import pytest
import torch

from engine.evolve import EvolveError, Evolution
from engine.evolve.optuna_storage import MEANING_ATTR, WORKER_ATTR, WORKERS_ATTR, journal
from engine.evolve.runner import read_checkpoint
from test_evolve_optuna import SOURCES, TARGET, curves, optuna_config, run

torch.set_num_threads(1)
ROOT = Path(__file__).resolve().parent.parent


def journal_lines(path):
    """Every line of the journal as JSON (a pickled or binary record fails here)."""
    text = Path(path).read_bytes().decode("utf-8")
    records = [json.loads(line) for line in text.splitlines() if line]
    assert records and all(isinstance(r, dict) and "op_code" in r for r in records)
    assert not [s for s in strings(records) if PICKLE_HEX.match(s)]  # no pickle hidden as hex
    return records


PICKLE_HEX = re.compile(r"^80(0[2-5])[0-9a-f]{16,}$")  # pickle.dumps(...).hex(), as Optuna's CMA-ES writes


def strings(value):
    if isinstance(value, str):
        yield value
    elif isinstance(value, dict):
        for v in value.values():
            yield from strings(v)
    elif isinstance(value, list):
        for v in value:
            yield from strings(v)


def load(path, name=None):
    storage = journal(str(path))
    name = name or optuna.get_all_study_names(storage)[0]
    return optuna.load_study(study_name=name, storage=storage)


def test_one_worker_on_a_journal_is_the_in_memory_search_and_writes_json(tiny_ws, tmp_path):
    path = tmp_path / "study.journal"
    config = optuna_config("optuna_tpe", startup_trials=3, generations=2)
    memory = run(tiny_ws, config)
    shared = run(tiny_ws, optuna_config("optuna_tpe", startup_trials=3, generations=2, storage=str(path)))
    assert curves(shared) == curves(memory)
    assert shared.champion.candidate == memory.champion.candidate
    journal_lines(path)
    study = load(path)
    assert len(study.trials) == shared.result()["storage"]["trials"] == 1 + 2 * 3
    assert study.user_attrs[WORKERS_ATTR] == [shared.search.worker]
    assert study.user_attrs[MEANING_ATTR]["sources"] == SOURCES
    assert {t.user_attrs[WORKER_ATTR] for t in study.trials} == {shared.search.worker}


def test_a_stopped_run_resumes_from_the_journal_and_fails_its_half_asked_trials(tiny_ws, tmp_path):
    path = tmp_path / "study.journal"
    config = optuna_config("optuna_tpe", startup_trials=3, generations=3, storage=str(path))
    first = Evolution(tiny_ws, config, checkpoint_dir=tmp_path / "run")
    first.step()
    first.step()
    first.search.propose(2, first.rng)  # generation 2 asked, then the process "dies" mid-way
    assert len(load(path).get_trials(states=(optuna.trial.TrialState.RUNNING,))) == 3
    resumed = run(tiny_ws, None, state=read_checkpoint(tmp_path / "run"))
    study = load(path)
    states = [t.state.name for t in study.trials]
    assert states.count("FAIL") == 3 and states.count("RUNNING") == 0
    assert states.count("COMPLETE") == 1 + 3 * 3 == resumed.result()["trials"]
    assert resumed.search.worker == first.search.worker and len(resumed.history) == 4

    data = json.loads((tmp_path / "run" / "checkpoint.json").read_text())
    path.write_text("")  # the journal replaced by an empty one: the run's trials are gone
    with pytest.raises(EvolveError, match="no longer holds this run's trial 0"):
        Evolution(tiny_ws, state=data)


WORKER = """
import sys
from engine.cli import main
sys.exit(main(sys.argv[1:]))
"""


def test_two_processes_share_one_study_through_the_journal(tiny_zoo_dir, tmp_path):
    path = tmp_path / "shared.journal"
    env = {**os.environ, "FUSION_DEVICE": "cpu", "OMP_NUM_THREADS": "1",
           "PYTHONPATH": str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", "")}
    args = ["evolve", "--zoo", str(tiny_zoo_dir), "--device", "cpu", "--target", TARGET,
            "--sources", *SOURCES, "--algorithm", "optuna_tpe", "--method", "ties",
            "--layer-groups", "0", "--generations", "1", "--population", "2", "--dev-size", "8",
            "--patience", "0", "--startup-trials", "2", "--storage", str(path), "--quiet"]
    procs = [subprocess.Popen([sys.executable, "-c", WORKER, *args, "--cache-dir", str(tmp_path / f"w{i}")],
                              cwd=str(ROOT), env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                              text=True) for i in range(2)]
    outputs = [p.communicate(timeout=300) for p in procs]
    assert [p.returncode for p in procs] == [0, 0], outputs
    journal_lines(path)
    study = load(path)
    workers = study.user_attrs[WORKERS_ATTR]
    assert len(workers) == 2
    by_worker = {w: [t for t in study.trials if t.user_attrs[WORKER_ATTR] == w] for w in workers}
    assert [len(by_worker[w]) for w in workers] == [1 + 2, 1 + 2]
    assert all(t.state.name == "COMPLETE" for t in study.trials)
    first_x = [[t.params[k] for k in sorted(t.params)] for t in by_worker[workers[1]]][:3]
    second_x = [[t.params[k] for k in sorted(t.params)] for t in by_worker[workers[0]]][:3]
    assert first_x != second_x  # the second worker's sampler is seeded apart


def test_a_worker_with_other_settings_or_a_file_that_is_no_journal_is_refused(tiny_ws, tmp_path):
    path = tmp_path / "study.journal"
    run(tiny_ws, optuna_config("optuna_tpe", generations=0, population=2, storage=str(path),
                               study="mine"))
    other = optuna_config("optuna_tpe", generations=0, population=2, storage=str(path),
                          study="mine", fitness_weights={"accuracy": 1.0})
    with pytest.raises(EvolveError, match="study 'mine' .* holds trials of other settings "
                                          r"\(fitness_weights differ\)"):
        run(tiny_ws, other)  # refused as it joins, before its first trial
    with pytest.raises(EvolveError, match="optuna_cmaes has no setting.*storage"):
        optuna_config("optuna_cmaes", storage=str(path)).check()  # its sampler pickles its state
    (tmp_path / "notes.txt").write_text("hello\n")
    for bad, message in ((tmp_path / "notes.txt", "is not an Optuna journal file"),
                         (tmp_path, "is a folder"),
                         (tmp_path / "missing" / "s.journal", "does not exist; create it first")):
        with pytest.raises(EvolveError, match=message):
            optuna_config("optuna_tpe", storage=str(bad)).check()
