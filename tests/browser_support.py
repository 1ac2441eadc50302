"""A real `streamlit run app.py` server and a headless Chromium driving it (selenium), for the
end-to-end test and for the README screenshots (docs/take_screenshots.py).

Only the processes started here are stopped, by their own handles.
"""
from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from contextlib import contextmanager
from pathlib import Path
from typing import Dict, Iterator, Optional

ROOT = Path(__file__).resolve().parent.parent
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser") or "/usr/bin/chromium"
CHROMEDRIVER = shutil.which("chromedriver") or "/usr/bin/chromedriver"


def browser_missing() -> Optional[str]:
    """Why a browser test cannot run here, or None."""
    if not Path(CHROMIUM).exists():
        return "chromium is not installed (apt-get install chromium chromium-driver)"
    if not Path(CHROMEDRIVER).exists():
        return "chromedriver is not installed (apt-get install chromium-driver)"
    try:
        import selenium  # noqa: F401
    except ImportError:
        return "selenium is not installed (pip install selenium)"
    return None


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextmanager
def streamlit_server(env: Dict[str, str], log_path: Path, timeout: float = 120.0) -> Iterator[str]:
    """Starts the app on a free localhost port; yields its URL; always stops the server."""
    port = free_port()
    cmd = [sys.executable, "-m", "streamlit", "run", str(ROOT / "app.py"), "--server.port", str(port),
           "--server.address", "127.0.0.1", "--server.headless", "true",
           "--browser.gatherUsageStats", "false"]
    full_env = {**os.environ, **env}
    with open(log_path, "wb") as log:
        proc = subprocess.Popen(cmd, cwd=str(ROOT), env=full_env, stdout=log, stderr=subprocess.STDOUT)
        try:
            url = f"http://127.0.0.1:{port}"
            deadline = time.monotonic() + timeout
            while True:
                if proc.poll() is not None:
                    raise RuntimeError(f"streamlit exited with {proc.returncode}; see {log_path}")
                try:
                    with urllib.request.urlopen(url + "/_stcore/health", timeout=2) as r:
                        if r.status == 200:
                            break
                except OSError:
                    pass
                if time.monotonic() > deadline:
                    raise TimeoutError(f"streamlit did not answer within {timeout} s; see {log_path}")
                time.sleep(0.3)
            yield url
        finally:
            proc.terminate()
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout=10)


@contextmanager
def chromium(profile_dir: Path, width: int = 1400, height: int = 1000) -> Iterator[object]:
    """A headless Chromium with a fresh profile; always quit."""
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    opts = webdriver.ChromeOptions()
    opts.binary_location = CHROMIUM
    for flag in ("--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync",
                 "--disable-dev-shm-usage", f"--user-data-dir={profile_dir}",
                 f"--window-size={width},{height}", "--hide-scrollbars", "--force-device-scale-factor=1"):
        opts.add_argument(flag)
    driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=opts)
    try:
        driver.set_page_load_timeout(30)
        yield driver
    finally:
        driver.quit()


def wait_for(driver, condition, timeout: float = 30.0, what: str = "condition", poll: float = 0.25):
    """Polls ``condition(driver)`` until it returns something truthy; returns it."""
    deadline = time.monotonic() + timeout
    last_exc = None
    while time.monotonic() < deadline:
        try:
            value = condition(driver)
            if value:
                return value
        except Exception as exc:  # stale elements while streamlit redraws
            last_exc = exc
        time.sleep(poll)
    raise TimeoutError(f"timed out after {timeout} s waiting for {what}" + (f" ({last_exc})" if last_exc else ""))


def page_text(driver) -> str:
    return driver.find_element("css selector", "body").text


def wait_for_text(driver, text: str, timeout: float = 30.0) -> None:
    wait_for(driver, lambda d: text in page_text(d), timeout, f"text {text!r}")


def wait_idle(driver, timeout: float = 30.0, settle: float = 0.8) -> None:
    """Until the script is no longer running (the status widget's 'Running…' is gone) for a moment."""
    def idle(d) -> bool:
        widgets = d.find_elements("css selector", '[data-testid="stStatusWidget"]')
        return not any("Running" in w.text for w in widgets)

    wait_for(driver, idle, timeout, "the app to finish running")
    time.sleep(settle)
    wait_for(driver, idle, timeout, "the app to finish running")


def click_button(driver, label: str, timeout: float = 20.0) -> None:
    def find(d):
        for b in d.find_elements("css selector", "button"):
            if b.text.strip().endswith(label) and b.is_enabled() and b.is_displayed():
                return b
        return None

    button = wait_for(driver, find, timeout, f"button {label!r}")
    driver.execute_script("arguments[0].scrollIntoView({block: 'center'});", button)
    button.click()


def full_screenshot(driver, path: Path, width: int = 1400, min_height: int = 1000, max_height: int = 3200) -> None:
    """Resizes the window to the page's content height (Streamlit scrolls inside its main block)."""
    height = driver.execute_script(
        "const m = document.querySelector('[data-testid=\"stMain\"]') || document.body;"
        "const b = document.querySelector('[data-testid=\"stMainBlockContainer\"]');"
        "return Math.max(m.scrollHeight, b ? b.scrollHeight + 120 : 0);")
    driver.set_window_size(width, max(min_height, min(max_height, int(height or min_height))))
    time.sleep(0.8)
    path.parent.mkdir(parents=True, exist_ok=True)
    driver.save_screenshot(str(path))


def navigate(driver, title: str, timeout: float = 20.0, heading: Optional[str] = None) -> None:
    """Clicks a page in the sidebar navigation (same session, unlike loading its URL)."""
    def find(d):
        for a in d.find_elements("css selector", '[data-testid="stSidebarNav"] a'):
            if a.text.strip().split("\n")[-1] == title:  # the icon's ligature name comes first
                return a
        return None

    wait_for(driver, find, timeout, f"sidebar link {title!r}").click()
    heading = heading or title
    wait_for(driver, lambda d: any(h.text.strip() == heading for h in d.find_elements("css selector", "h1")),
             timeout, f"page {title!r}")


def click_tab(driver, label: str, timeout: float = 20.0) -> None:
    def find(d):
        for t in d.find_elements("css selector", '[role="tab"]'):
            if label in t.text:
                return t
        return None

    wait_for(driver, find, timeout, f"tab {label!r}").click()


def set_number(driver, label: str, value, timeout: float = 20.0) -> None:
    """Types a value into a labelled number/text input and commits it (Enter)."""
    from selenium.webdriver.common.keys import Keys

    field = wait_for(driver, lambda d: next((i for i in d.find_elements("css selector", "input")
                                             if i.get_attribute("aria-label") == label and i.is_displayed()), None),
                     timeout, f"input {label!r}")
    field.send_keys(Keys.CONTROL, "a")
    field.send_keys(str(value), Keys.ENTER)
    wait_idle(driver)


def expand(driver, label: str, timeout: float = 20.0) -> None:
    """Toggles an st.expander (opens a collapsed one, closes an open one) by its label."""
    summary = wait_for(driver, lambda d: next((s for s in d.find_elements("css selector", "details summary")
                                               if label in s.text), None), timeout, f"expander {label!r}")
    summary.click()
    wait_idle(driver)


def _selectbox(driver, label: str):
    """The selectbox whose label reads exactly ``label`` (page or sidebar), or None."""
    for box in driver.find_elements("css selector", '[data-testid="stSelectbox"]'):
        labels = box.find_elements("css selector", '[data-testid="stWidgetLabel"]')
        if labels and labels[0].text.strip() == label and box.is_displayed():
            return box
    return None


def selected(driver, label: str, timeout: float = 20.0) -> str:
    """What a labelled selectbox shows as chosen."""
    box = wait_for(driver, lambda d: _selectbox(d, label), timeout, f"selectbox {label!r}")
    return (box.find_element("css selector", '[role="combobox"]').get_attribute("value") or "").strip()


def choose(driver, label: str, option: str, timeout: float = 20.0) -> None:
    """Opens a labelled selectbox and clicks the option whose text is ``option``."""
    box = wait_for(driver, lambda d: _selectbox(d, label), timeout, f"selectbox {label!r}")
    driver.execute_script("arguments[0].scrollIntoView({block: 'center'});", box)
    box.find_element("css selector", 'button[aria-haspopup="listbox"]').click()

    def find(d):
        return next((o for o in d.find_elements("css selector", '[role="option"]')
                     if o.text.strip() == option and o.is_displayed()), None)

    try:  # a long list is virtualised around the selected option: type to filter it if not drawn
        hit = wait_for(driver, find, 2.0, f"option {option!r} of {label!r}")
    except TimeoutError:
        box.find_element("css selector", "input").send_keys(option)
        hit = wait_for(driver, find, timeout, f"option {option!r} of {label!r}")
    hit.click()
    wait_for(driver, lambda d: selected(d, label) == option, timeout, f"{label!r} = {option!r}")
    wait_idle(driver)
