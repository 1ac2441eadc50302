"""End to end in a real browser: `streamlit run app.py` on the tiny zoo, headless Chromium (selenium),
navigate to Merge, run a merge, wait for its result, save a screenshot."""
import shutil
from pathlib import Path

import pytest

from browser_support import (browser_missing, chromium, click_button, navigate, page_text,
                             streamlit_server, wait_for_text, wait_idle)

ROOT = Path(__file__).resolve().parent.parent


@pytest.mark.skipif(browser_missing() is not None, reason=str(browser_missing()))
def test_merge_in_a_real_browser(tiny_zoo_dir, tmp_path):
    cache = tmp_path / "cache"
    cache.mkdir()
    uriel = ROOT / "cache" / "uriel_vectors.npz"
    if uriel.exists():
        shutil.copy(uriel, cache / uriel.name)
    env = {"FUSION_ZOO": str(tiny_zoo_dir), "FUSION_CACHE_DIR": str(cache), "FUSION_DEVICE": "cpu",
           "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
    with streamlit_server(env, tmp_path / "server.log") as url, chromium(tmp_path / "profile") as driver:
        driver.get(url)
        wait_for_text(driver, "Where to start", 30)
        navigate(driver, "Merge")
        wait_for_text(driver, "Run merge", 20)
        wait_idle(driver, 20)
        click_button(driver, "Run merge")
        wait_for_text(driver, "Test accuracy", 240)  # generous: a loaded CI machine
        wait_idle(driver, 20)
        text = page_text(driver)
        assert "vs best source" in text and "Exported Hugging Face folder" in text
        assert "Traceback" not in text
        assert not driver.find_elements("css selector", '[data-testid="stException"]')
        shot = tmp_path / "merge.png"
        driver.save_screenshot(str(shot))
    assert shot.stat().st_size > 10_000
    runs = list((cache / "exports").iterdir())
    assert len(runs) == 1 and (runs[0] / "model.safetensors").is_file()
