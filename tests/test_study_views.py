"""The study views' data path without the page: an in-memory TPE run's stored trials (read back from
its checkpoint) rebuild into Optuna's figures — the history's best-so-far line is the running best
of the stored fitness — and a view that needs more trials says so instead of drawing."""
import json

import numpy as np
import torch

from dashboard.study_figures import study_views
from engine.evolve.optuna_storage import study_record
from test_evolve_optuna import optuna_config, run

torch.set_num_threads(1)


def test_an_in_memory_runs_trials_are_read_from_its_checkpoint_and_drawn(tiny_ws, tmp_path):
    evo = run(tiny_ws, optuna_config("optuna_tpe", generations=1, population=3, startup_trials=2),
              checkpoint_dir=tmp_path)
    record = study_record(json.loads(json.dumps(evo.result())))  # as the store keeps it
    stored = [t for step in evo.search.history for t in step]
    assert [t["number"] for t in record["trials"]] == [t["trial"] for t in stored] == [0, 1, 2, 3]
    assert [t["generation"] for t in record["trials"]] == [0, 1, 1, 1]
    assert [t["values"] for t in record["trials"]] == [t["values"] for t in stored]
    assert record["coordinates"] == evo.search.coordinate_names()

    figures, missing = study_views(record)
    assert set(figures) == {"Optimisation history", "Slice", "Contour"}
    assert missing == {"Parameter importances": "needs 8 scored trials (4 so far)"}
    history = figures["Optimisation history"].to_plotly_json()["data"]
    best = next(trace for trace in history if trace.get("name") == "Best Value")
    values = [t["values"][0] for t in record["trials"]]
    assert list(best["y"]) == list(np.maximum.accumulate(values))

    assert study_record({"algorithm": "evomerge", "checkpoint": None}) is None  # not an Optuna run
