"""Issue 13 item 6: one home per constant and helper. The shared helpers behave as each old copy did,
and the tree no longer re-types what has a home (a re-typed copy drifts: that is how it went wrong)."""
import json
import math
import re
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from engine import paths
from engine.formats import json_default, jsonable, markdown_table, strict_json_default
from engine.store import ACTIVE, open_store

ROOT = Path(__file__).resolve().parent.parent
CODE = [p for d in ("engine", "dashboard", "pages") for p in sorted((ROOT / d).rglob("*.py"))] + [ROOT / "app.py"]


def _hits(pattern: str, home: str):
    """Files outside ``home`` whose code matches ``pattern``."""
    rx = re.compile(pattern)
    return [str(p.relative_to(ROOT)) for p in CODE
            if str(p.relative_to(ROOT)) != home and rx.search(p.read_text(encoding="utf-8"))]


@pytest.mark.parametrize("pattern, home", [
    (r"""\(\s*["']queued["']\s*,\s*["']running["']\s*\)""", "engine/store.py"),        # store.ACTIVE
    (r"""["']runs\.sqlite["']""", "engine/paths.py"),                                  # paths.store_path
    (r"""def default_cache_dir\b""", "engine/paths.py"),
    (r"""[(\[]\s*["']local["']\s*,\s*["']ray["']\s*[)\]]""", "engine/jobs.py"),       # jobs.EXECUTORS
    (r"""["']\{base\}_massive_k_\{locale\}["']""", "engine/zoo.py"),                   # zoo.DEFAULT_PATTERN
    (r"""def (_clean|_plain|_json_default)\b""", ""),                                 # formats.jsonable/json_default
    (r"""join\(\s*["']---["']""", "engine/formats.py"),                               # formats.markdown_table
    (r"""["']zoo\.json["']""", "engine/zoo.py"),                                        # zoo.MANIFEST
    (r"""["']train["']\s*,\s*["']validation["']\s*,\s*["']test["']""", "engine/data/base.py"),  # SPLITS
    (r"""["']AmazonScience/massive["']""", "engine/data/loaders.py"),                    # loaders.MASSIVE_ID
    (r"""["']cancelled["']\s*,\s*["']interrupted["']\s*,\s*["']failed["']""", "engine/store.py"),  # STOPPED
])
def test_constant_has_one_home(pattern, home):
    assert _hits(pattern, home) == [], f"re-typed outside {home or 'engine/formats.py'}"


def test_cache_dir_and_store_path(monkeypatch, tmp_path):
    monkeypatch.setenv(paths.CACHE_ENV, "")          # empty = unset, in every caller now
    assert paths.default_cache_dir() == paths.DEFAULT_CACHE
    monkeypatch.setenv(paths.CACHE_ENV, str(tmp_path))
    assert paths.store_path() == tmp_path / "runs.sqlite"
    assert paths.store_path(tmp_path / "other") == tmp_path / "other" / "runs.sqlite"
    store = open_store(tmp_path)
    run = store.create("merge", target="de-DE")
    assert store.get(run)["status"] in ACTIVE
    assert (tmp_path / "runs.sqlite").is_file()
    store.close()


def test_json_default_covers_every_old_copy():
    data = {"a": np.arange(3), "b": np.float32(0.5), "t": torch.tensor([1.0, 2.0]), "p": Path("/x/y"),
            "d": torch.bfloat16, "o": object}
    out = json.loads(json.dumps(data, default=json_default))
    assert out["a"] == [0, 1, 2] and out["b"] == 0.5 and out["t"] == [1.0, 2.0]
    assert out["p"] == "/x/y" and out["d"] == "bfloat16" and out["o"].startswith("<class")
    with pytest.raises(TypeError, match="not JSON-serialisable: type"):
        json.dumps({"o": object}, default=strict_json_default)   # recipe.json refuses unknown values


def test_jsonable_keeps_or_drops_nan_as_asked():
    value = {1: (np.int64(2), np.array([1.5, np.nan])), "x": np.float64("inf")}
    assert jsonable(value)["1"][0] == 2 and type(jsonable(value)["1"][0]) is int
    assert math.isnan(jsonable(value)["1"][1][1])                   # the store keeps NaN
    strict = jsonable(value, nan_to_none=True)
    assert strict == {"1": [2, [1.5, None]], "x": None}
    json.dumps(strict, allow_nan=False)                             # results.json is strict JSON


def test_text_settings_are_checked_as_text():
    from engine.registry import Param

    assert Param("data_path", "text", "").check("/data/x.tsv") == "/data/x.tsv"
    with pytest.raises(ValueError, match="parameter 'data_path' must be text, got 3"):
        Param("data_path", "text", "").check(3)


def test_markdown_table_missing_cells_and_escapes():
    frame = pd.DataFrame({"m": ["a|b", "two\nlines"], "acc": [0.12345, np.nan]})
    assert markdown_table(frame) == "| m | acc |\n| --- | --- |\n| a\\|b | 0.123 |\n| two lines |  |"
    assert markdown_table(frame, "{:.1f}", missing="–").endswith("| two lines | – |")
