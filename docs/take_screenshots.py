"""Screenshots of every page for the README: `python docs/take_screenshots.py [--zoo PATH] [--out DIR]`.

Starts the app on the demo zoo (cache/demo_zoo) when it is built, else on the test zoo
(cache/test_zoo), in a throw-away results folder, walks through the steps in headless Chromium
(similarity → merge → ensemble → evolve → compare) and saves one PNG per page.
`--only evolve-optuna` instead runs a small NSGA-II search (accuracy + sparsity) with the CLI into
that folder and shows it on the Evolve page with Optuna's views (5_evolve_optuna.png);
`--only merge-ensemble` retakes just the Merge and Ensemble pages (3_merge.png, 4_ensemble.png).
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))

from browser_support import (browser_missing, chromium, choose, click_button, click_tab, expand,  # noqa: E402
                             full_screenshot, navigate, page_text, set_number, streamlit_server, wait_for, wait_for_text, wait_idle)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    demo = ROOT / "cache" / "demo_zoo"
    ap.add_argument("--zoo", default=str(demo if (demo / "zoo.json").exists() else ROOT / "cache" / "test_zoo"))
    ap.add_argument("--out", default=str(ROOT / "docs" / "screenshots"))
    ap.add_argument("--sweeps-from", default="",
                    help="only the Sweeps page, showing the sweeps stored in this results folder (copied)")
    ap.add_argument("--only", choices=["evolve-optuna", "merge-ensemble"], default="",
                    help="evolve-optuna: only the Evolve page on a small Optuna NSGA-II run made here "
                         "first; merge-ensemble: only the Merge and Ensemble pages")
    args = ap.parse_args()
    reason = browser_missing()
    if reason:
        print(f"cannot take screenshots: {reason}", file=sys.stderr)
        return 2
    out = Path(args.out)
    work = Path(tempfile.mkdtemp(prefix="fusion-shots-"))
    cache = work / "cache"
    cache.mkdir()
    if (ROOT / "cache" / "uriel_vectors.npz").exists():
        shutil.copy(ROOT / "cache" / "uriel_vectors.npz", cache)
    if (ROOT / "cache" / "logits").is_dir():  # what `build-demo` leaves: the N×N, so baselines are instant
        shutil.copytree(ROOT / "cache" / "logits", cache / "logits")
    for f in Path(args.sweeps_from).glob("runs.sqlite*") if args.sweeps_from else []:
        shutil.copy(f, cache)
    env = {"FUSION_ZOO": args.zoo, "FUSION_CACHE_DIR": str(cache), "FUSION_DEVICE": "cpu",
           "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
    try:
        if args.only == "evolve-optuna":
            small_nsga2_run(args.zoo, cache, env)
        with streamlit_server(env, work / "server.log") as url, chromium(work / "profile") as d:
            def visit(title: str, text: str, timeout: float = 60) -> None:
                navigate(d, title, heading="Cross-lingual model fusion" if title == "Overview" else None)
                wait_for_text(d, text, timeout)
                wait_idle(d, 120)

            def shot(name: str) -> None:
                full_screenshot(d, out / f"{name}.png")
                print("saved", out / f"{name}.png")

            d.get(url)
            wait_for_text(d, "Where to start", 60)
            wait_idle(d)
            if args.only == "evolve-optuna":
                visit("Evolve", "Evolve")
                wait_idle(d, 60)
                if "No evolutionary run for" in page_text(d):  # the run's target is not the page's
                    d.find_element("xpath", "//label[contains(., 'Show runs of every target')]//input").click()
                wait_for_text(d, "Pareto front", 90)
                if any(b.is_displayed() and "Start evolution" in b.text for b in d.find_elements("css selector", "button")):
                    expand(d, "New evolutionary run")  # the form collapsed: the run fills the picture
                click_tab(d, "Pareto front")
                wait_idle(d, 60)
                shot("5_evolve_optuna")
                return 0
            if args.sweeps_from:
                visit("Sweeps", "Which strategy is best", 300)
                click_tab(d, "Method × target")
                wait_idle(d, 60)
                shot("7_sweeps")
                return 0
            if not args.only:
                visit("Setup", "Data per locale")
                shot("1_setup")
            visit("Similarity", "Use these sources")
            click_button(d, "Use these sources")
            wait_for_text(d, "Stored for Merge, Ensemble and Evolve")
            if not args.only:
                shot("2_similarity")
            visit("Merge", "Run merge")
            click_button(d, "Run merge")
            wait_for_text(d, "Test accuracy", 600)
            wait_idle(d, 60)
            shot("3_merge")
            visit("Ensemble", "Kind")
            if "Compute the sources" in page_text(d):
                click_button(d, "Compute the sources' outputs")
            wait_for_text(d, "Test accuracy", 600)
            click_button(d, "learned fusion")  # weights fitted on unlabelled target text: its choice shows
            choose(d, "Method", "Entropy min")
            wait_for_text(d, "Unlabelled target text")
            wait_for_text(d, "Learned per-model weights", 300)
            click_button(d, "Save as a run")
            wait_for_text(d, "Saved as run", 300)
            wait_idle(d, 60)
            shot("4_ensemble")
            if args.only:
                return 0
            visit("Evolve", "Start evolution")  # CMA-ES first: per-layer-group recipes
            click_button(d, "CMA-ES (per-layer groups)")
            wait_idle(d)
            set_number(d, "Generations", 3)
            set_number(d, "Population", 4)
            click_button(d, "Start evolution")
            wait_for(d, lambda d: "Send to Compare" in page_text(d), 1500, "the CMA-ES run to finish")
            wait_idle(d, 60)
            shot("5_evolve_cmaes")
            expand(d, "New evolutionary run")
            click_button(d, "EvoMerge (8 combinations)")
            wait_idle(d)
            set_number(d, "Generations", 1)
            set_number(d, "Population", 4)
            click_button(d, "Start evolution")
            # finished when the EvoMerge-only chart and the champion's buttons are both on the page
            wait_for(d, lambda d: "Combinations tried" in page_text(d) and "Send to Compare" in page_text(d),
                     1500, "the EvoMerge run to finish")
            if any(b.is_displayed() and "Start evolution" in b.text for b in d.find_elements("css selector", "button")):
                expand(d, "New evolutionary run")  # collapse the form again for the picture
            wait_idle(d, 60)
            shot("5_evolve")
            visit("Compare", "Merge vs ensemble")
            shot("6_compare")
            click_tab(d, "Zero-shot matrix")
            click_button(d, "Compute the N×N matrix")
            wait_for_text(d, "Matrix as CSV", 1200)
            wait_idle(d, 60)
            shot("6_compare_nxn")
            visit("Overview", "Where to start")
            shot("0_overview")
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return 0


def small_nsga2_run(zoo: str, cache: Path, env: dict) -> None:
    """A finished NSGA-II run (accuracy vs sparsity) in the throw-away store: 3 generations of 6
    trials (ties, --layer-groups 2) on 24 dev examples, about half a minute on 2 CPU cores."""
    pick = {"target": "da-DK", "sources": ["en-US", "de-DE"]}  # da-DK: the page's first target
    locales = set(json.loads((Path(zoo) / "zoo.json").read_text())["models"])
    if not {pick["target"], *pick["sources"]} <= locales:  # another zoo: its first three locales
        first = sorted(locales)[:3]
        pick = {"target": first[0], "sources": first[1:]}
    cmd = [sys.executable, "-m", "engine", "evolve", "--quiet", "--zoo", zoo, "--cache-dir", str(cache),
           "--device", "cpu", "--target", pick["target"], "--sources", *pick["sources"],
           "--algorithm", "optuna_nsga2", "--objectives", "accuracy+sparsity", "--method", "ties",
           "--layer-groups", "2", "--generations", "3", "--population", "6", "--dev-size", "24",
           "--patience", "0", "--seed", "1"]
    subprocess.run(cmd, cwd=str(ROOT), env={**os.environ, **env}, check=True, timeout=900)


if __name__ == "__main__":
    sys.exit(main())
