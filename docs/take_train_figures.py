"""The README's training figures as PNGs: `python docs/take_train_figures.py --cache-dir DIR [--out DIR]`.

Reads the latest finished fine-tune, periodic-merge and label-curve runs of a results folder (what
`python -m engine train | train-merge | train-labels` stored), draws them with the Train page's own
figures (dashboard/train_figures.py) and, as kaleido is not installed, screenshots each as a
standalone HTML page (plotly.js inlined: no network) in headless Chromium.
"""
from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))

from browser_support import browser_missing, chromium  # noqa: E402
from PIL import Image  # noqa: E402

WIDTH, HEIGHT = 620, 400


def latest(store, method: str, run_id: str = "") -> dict:
    if run_id:
        return store.get(run_id)
    done = [r for r in store.runs(kind="train", status=["done"], limit=200) if r.get("method") == method]
    if not done:
        raise SystemExit(f"no finished {method} run in the store; run it first (python -m engine train …)")
    return done[0]


def pages(store, ids: dict) -> dict:
    """PNG name -> the figures drawn side by side in it."""
    from dashboard import figures, train_figures

    out = {}
    ft = latest(store, "finetune", ids.get("finetune", ""))
    frame = figures.series_frame(store.series(ft["id"]))
    out["train_finetune"] = [train_figures.loss_curves(frame, f"Fine-tuning {ft['target']}: training loss"),
                             train_figures.accuracy_curves(frame, title=f"{ft['target']}: validation accuracy")]
    pm = latest(store, "periodic-merge", ids.get("periodic", ""))
    frame = figures.series_frame(store.series(pm["id"]))
    out["train_periodic"] = [
        train_figures.loss_curves(frame, f"Sources {', '.join(pm['sources'])}: training loss"),
        train_figures.accuracy_curves(frame, title=f"{pm['target']} dev accuracy after each merge")]
    lc = latest(store, "label-curve", ids.get("curve", ""))
    out["train_labels"] = [train_figures.label_curve(lc["result"]["curve"],
                                                     f"{lc['target']}: what the merge is worth in target labels")]
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--cache-dir", required=True, help="results folder holding runs.sqlite")
    ap.add_argument("--out", default=str(ROOT / "docs" / "img"))
    for name in ("finetune", "periodic", "curve"):
        ap.add_argument(f"--{name}", default="", help=f"run id of the {name} run (default: the latest)")
    args = ap.parse_args()
    reason = browser_missing()
    if reason:
        print(f"cannot draw the figures: {reason}", file=sys.stderr)
        return 2
    from engine.store import Store

    store = Store(Path(args.cache_dir) / "runs.sqlite")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix="fusion-train-figs-"))
    todo = pages(store, {k: getattr(args, k) for k in ("finetune", "periodic", "curve")})
    with chromium(work / "profile", width=WIDTH * 2 + 40, height=HEIGHT + 40) as d:
        for name, figs in todo.items():
            divs = []
            for i, fig in enumerate(figs):
                fig.update_layout(width=WIDTH, height=HEIGHT, paper_bgcolor="white", plot_bgcolor="white")
                fig.update_xaxes(gridcolor="#eee")
                fig.update_yaxes(gridcolor="#eee")
                divs.append(fig.to_html(full_html=False, include_plotlyjs="inline" if i == 0 else False,
                                        config={"staticPlot": True}))
            html = work / f"{name}.html"
            html.write_text("<html><body style='margin:10px;display:inline-flex;gap:10px;background:white'>"
                            + "".join(f"<div>{d}</div>" for d in divs) + "</body></html>")
            d.set_window_size(len(figs) * (WIDTH + 10) + 40, HEIGHT + 300)  # headless keeps some height
            d.get(html.as_uri())
            deadline = time.monotonic() + 30
            while d.execute_script("return document.querySelectorAll('.main-svg').length") < len(figs) \
                    and time.monotonic() < deadline:
                time.sleep(0.2)
            time.sleep(0.5)
            d.save_screenshot(str(work / f"{name}.png"))
            w, h = d.execute_script("const r = document.body.getBoundingClientRect();"
                                    "return [Math.ceil(r.right) + 10, Math.ceil(r.bottom) + 10];")
            Image.open(work / f"{name}.png").crop((0, 0, w, h)).save(out / f"{name}.png", optimize=True)
            print("saved", out / f"{name}.png")
    return 0


if __name__ == "__main__":
    sys.exit(main())
