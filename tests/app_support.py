"""What the AppTest modules share: small helpers to drive pages and wait on the app's runner (the
``app_cache`` fixture, in conftest.py, points the app at the tiny zoo and a fresh results folder)."""
from pathlib import Path

from streamlit.testing.v1 import AppTest

from dashboard.navigation import discover, page_path

ROOT = Path(__file__).resolve().parent.parent
APP = ROOT / "app.py"
PAGES = [p.title for p in discover()]   # every page, by the name it declares
TIMEOUT = 60
LOAD_TIMES = {}


def runner(cache):
    from dashboard import state

    return state.services(str(Path(cache).resolve()))[1]


def open_app() -> AppTest:
    at = AppTest.from_file(str(APP), default_timeout=TIMEOUT)
    at.run()
    assert not at.exception, [e.value for e in at.exception]
    return at


def goto(at: AppTest, page: str) -> AppTest:
    at.switch_page(page_path(page)).run()
    assert not at.exception, [e.value for e in at.exception]
    assert at.title[0].value == page
    return at


def rerun(at: AppTest) -> AppTest:
    at.run()
    assert not at.exception, [e.value for e in at.exception]
    return at


def metric(at: AppTest, label: str) -> str:
    found = [m.value for m in at.metric if m.label == label]
    assert found, f"no metric {label!r}; have {[m.label for m in at.metric]}"
    return found[0]


def button(at: AppTest, key: str):
    return at.button(key=key)


def wait_for(cache, run_id: str, timeout: float = 120) -> dict:
    row = runner(cache).wait(run_id, timeout=timeout)
    assert row["status"] == "done", (row["status"], row.get("error"))
    return row


def run_evolution(at: AppTest, cache, **numbers) -> dict:
    """Sets the Evolve page's number inputs (``evo_<name>``), starts the run, waits until it is
    done and redraws the page: the row of the finished run (its id: session_state["evo_run"])."""
    for name, value in numbers.items():
        at.number_input(key=f"evo_{name}").set_value(value)
    rerun(at)
    button(at, "evo_start").click()
    rerun(at)
    row = wait_for(cache, at.session_state["evo_run"], timeout=180)
    rerun(at)
    return row
