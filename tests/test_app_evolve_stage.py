"""The Evolve page's AdaMerging stage (issue 14): a finished evolution's champion refined on
unlabelled target text from a button, as its own merge run that records the stage's target data.
A real tiny evolution and a real stage run in the app's runner, on the tiny zoo."""
import pytest

from app_support import button, goto, open_app, rerun, run_evolution, runner, wait_for
from dashboard.evolve_stage import TITLE
from dashboard.target_text import FILE
from engine.runinfo import run_target_data, target_data_text

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def test_the_stage_button_refines_the_champion_as_a_merge_run(app_cache, tmp_path):
    at = goto(open_app(), "Evolve")
    evo = run_evolution(at, app_cache, generations=1, population=2, dev_size=8)
    evo_id = at.session_state["evo_run"]
    assert [e.label for e in at.expander if e.label == TITLE]
    for name, value in (("steps", 2), ("examples", 3), ("batch_size", 2)):  # the stage's own Params
        at.number_input(key=f"evo_ada_{name}").set_value(value)
    at.radio(key="evo_ada_text_source").set_value(FILE)
    rerun(at)
    at.text_input(key="evo_ada_text_path").set_value(str(tmp_path / "missing.txt"))
    rerun(at)
    store = runner(app_cache).store
    before = len(store.runs(kind="merge"))
    button(at, "evo_ada_run").click()
    rerun(at)
    assert any("missing.txt" in e.value for e in at.error), [e.value for e in at.error]  # named, nothing queued
    assert len(store.runs(kind="merge")) == before

    text = tmp_path / "nl.txt"
    text.write_text("zet het licht aan\nhoe warm is het\nstop de timer\n", encoding="utf-8")
    at.text_input(key="evo_ada_text_path").set_value(str(text))
    rerun(at)
    button(at, "evo_ada_run").click()
    rerun(at)
    stage = wait_for(app_cache, at.session_state["evo_ada_stage"], timeout=180)
    assert stage["kind"] == "merge" and stage["method"] == "adamerging" and stage["target"] == evo["target"]
    params = stage["params"]
    assert params["stage_of"] == evo_id and params["steps"] == 2 and params["examples"] == 3
    assert params["target_text"].startswith("file: nl.txt, 3 lines")
    assert target_data_text(run_target_data(stage)).startswith("● labelled target dev (file: nl.txt, 3 lines")
    assert [p["step"] for p in store.series(stage["id"], "entropy")] == [1, 2]
    result = stage["result"]
    assert result["kept"] == ("refined" if result["refined"]["fitness"] > result["champion"]["fitness"]
                              else "champion")
    rerun(at)
    line = " ".join(m.value for m in at.markdown)
    assert f"Stage run {stage['id']} (done): kept the **{result['kept']}**" in line, line
    assert f"{result['refined']['fitness']:.4f} refined vs {result['champion']['fitness']:.4f} champion" in line
    button(at, "evo_ada_compare").click()
    rerun(at)
    assert at.title[0].value == "Compare" and store.pinned() == [stage["id"]]
