"""End to end in a real browser: `streamlit run app.py` on the tiny zoo, headless Chromium (selenium).

The demo's main path: choose a target on Similarity and use its sources, go to Merge, leave it and
come back (the target is still the chosen one), run the merge, read its result card (it names that
target), send it to Compare and see it there; a reload keeps the experiment (the page address)."""
import shutil
import time
from pathlib import Path

import pytest

from browser_support import (browser_missing, choose, chromium, click_button, navigate, page_text, selected,
                             streamlit_server, wait_for, wait_for_text, wait_idle)

ROOT = Path(__file__).resolve().parent.parent


@pytest.mark.skipif(browser_missing() is not None, reason=str(browser_missing()))
def test_demo_main_path_in_a_real_browser(tiny_zoo_dir, tmp_path):
    cache = tmp_path / "cache"
    cache.mkdir()
    uriel = ROOT / "cache" / "uriel_vectors.npz"
    if uriel.exists():
        shutil.copy(uriel, cache / uriel.name)
    env = {"FUSION_ZOO": str(tiny_zoo_dir), "FUSION_CACHE_DIR": str(cache), "FUSION_DEVICE": "cpu",
           "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
    begun = time.monotonic()
    with streamlit_server(env, tmp_path / "server.log") as url, chromium(tmp_path / "profile") as driver:
        print(f"\nbrowser: server and Chromium up after {time.monotonic() - begun:.1f} s")
        driver.get(url)
        wait_for_text(driver, "Where to start", 30)
        navigate(driver, "Similarity")
        wait_for_text(driver, "Use these sources", 30)
        choose(driver, "Target language", "nl-NL (Dutch)")
        click_button(driver, "Use these sources")
        wait_for_text(driver, "Stored for Merge, Ensemble and Evolve: nl-NL (Dutch)", 20)
        navigate(driver, "Merge")
        wait_for_text(driver, "Run merge", 20)
        wait_idle(driver, 20)
        assert selected(driver, "Target language") == "nl-NL (Dutch)"
        assert selected(driver, "Target") == "nl-NL (Dutch)"   # the sidebar, on every page
        assert "from the Similarity page" in page_text(driver)
        navigate(driver, "Ensemble")                            # leave and come back
        wait_idle(driver, 20)
        navigate(driver, "Merge")
        wait_for_text(driver, "Run merge", 20)
        wait_idle(driver, 20)
        assert selected(driver, "Target language") == "nl-NL (Dutch)"
        assert "nl-NL" in driver.current_url                    # the address keeps it across a reload
        print(f"browser: Similarity → Merge → Ensemble → Merge after {time.monotonic() - begun:.1f} s")
        choose(driver, "Method", "Linear")  # the quickest merge: the path is the point here
        started = time.monotonic()
        click_button(driver, "Run merge")
        wait_for_text(driver, "Test accuracy", 420)  # generous: a loaded machine (load 16 on 2 cores: ~4 min)
        print(f"\nbrowser: the merge's result after {time.monotonic() - started:.1f} s")
        wait_for_text(driver, "Exported Hugging Face folder", 60)
        wait_idle(driver, 20)
        text = page_text(driver)
        (tmp_path / "merge.txt").write_text(text)
        assert "vs best source" in text and "Exported Hugging Face folder" in text
        assert "for nl-NL (Dutch) from" in text
        assert "Traceback" not in text
        assert not driver.find_elements("css selector", '[data-testid="stException"]')
        shot = tmp_path / "merge.png"
        driver.save_screenshot(str(shot))
        click_button(driver, "Send to Compare")
        wait_for(driver, lambda d: any(h.text.strip() == "Compare" for h in d.find_elements("css selector", "h1")),
                 20, "the Compare page")
        wait_for_text(driver, "1 pinned", 20)
        wait_idle(driver, 20)
        titles = " ".join(t.get_attribute("textContent") for t in driver.find_elements("css selector", ".gtitle"))
        assert "nl-NL" in titles, titles                        # the run's bar chart, for its target
        assert not driver.find_elements("css selector", '[data-testid="stException"]')
        driver.refresh()                                         # a reload: a new session, same experiment
        wait_for_text(driver, "Current experiment", 30)
        wait_idle(driver, 20)
        assert selected(driver, "Target") == "nl-NL (Dutch)"
        print(f"browser: the whole path in {time.monotonic() - begun:.1f} s")
    assert shot.stat().st_size > 10_000
    runs = list((cache / "exports").iterdir())
    assert len(runs) == 1 and (runs[0] / "model.safetensors").is_file()
