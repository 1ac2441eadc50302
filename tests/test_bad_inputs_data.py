"""Bad inputs against weights, caches and stores (issue 11, items 3, 4, 6, 9).

Every test works on a copy of the tiny zoo (never on the shared one) and checks both the message
and that nothing was lost: the zoo's files are unchanged, earlier runs are still in the store.
"""
import hashlib
import json
import pickle
import shutil
import sqlite3
import warnings
from pathlib import Path

import numpy as np
import pytest
from safetensors import safe_open
from safetensors.torch import load_file, save_file

from engine.cli import main

TARGET = "de-DE"


def tree_hashes(folder: Path) -> dict:
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.fixture
def zoo(tiny_zoo_dir, tmp_path) -> Path:
    """A private copy of the tiny zoo (tests may break its models)."""
    return Path(shutil.copytree(tiny_zoo_dir, tmp_path / "zoo"))


def open_ws(zoo: Path, cache: Path):
    from engine.workspace import Settings, open_workspace

    return open_workspace(Settings(zoo=str(zoo), cache_dir=str(cache), device="cpu"))


def cli(zoo: Path, cache: Path, *args) -> list:
    return [*args, "--zoo", str(zoo), "--cache-dir", str(cache), "--device", "cpu", "--quiet"]


def poison(model_dir: Path, value=float("nan")) -> str:
    """Writes ``value`` into one entry of the classifier head; returns the tensor's name."""
    path = model_dir / "model.safetensors"
    with safe_open(str(path), framework="pt") as handle:
        meta = handle.metadata()
    state = load_file(str(path))
    key = next(k for k in sorted(state) if k.startswith("classifier") and k.endswith("weight"))
    state[key] = state[key].clone()
    state[key].view(-1)[3] = value
    save_file(state, str(path), metadata=meta)
    return key


def cached_logits(cache: Path) -> list:
    """Every logits array in a cache folder, read without unpickling."""
    import diskcache

    from engine.evaluate import _unpack
    from engine.logits_cache import RawDisk

    with diskcache.Cache(str(cache / "logits"), disk=RawDisk) as c:
        return [_unpack(c[k])[0] for k in list(c)]


# ---- 3: named sources get URIEL weights among themselves ----------------------------------------
def test_named_sources_get_uriel_weights_over_exactly_those(zoo, tmp_path, capsys):
    """The issue's case: nl-NL and es-ES for de-DE; es-ES is outside the zoo-wide URIEL top-2, and
    used to get weight 0 (the merge was nl-NL alone)."""
    from engine.languages import target_weights

    zoo_before = tree_hashes(zoo)
    expected = target_weights(TARGET, sources=["nl-NL", "es-ES"], top_k=2)
    assert set(expected) == {"nl-NL", "es-ES"}
    args = cli(zoo, tmp_path / "c", "merge", "--target", TARGET, "--method", "linear",
               "--sources", "nl-NL", "es-ES", "--json")
    assert main(args) == 0
    cand = json.loads(capsys.readouterr().out)["candidate"]
    assert cand["sources"] == ["nl-NL", "es-ES"]
    assert cand["weights"] == pytest.approx([expected["nl-NL"], expected["es-ES"]])
    assert min(cand["weights"]) > 0.4
    assert tree_hashes(zoo) == zoo_before


@pytest.mark.parametrize("kind, method", [("ensemble", "weighted_logits"), ("merge", "slerp")])
def test_named_sources_weights_for_ensemble_and_slerp(tiny_ws, kind, method):
    """The same engine function for every kind (parsed as the CLI parses; no evaluation needed)."""
    from engine.cli import build_parser
    from engine.cli.methods import candidate_from_args
    from engine.experiments import source_weights

    args = build_parser().parse_args([kind, "--target", TARGET, "--method", method, "--sources", "es-ES",
                                      "nl-NL", "en-US", "--top-k", "1"])
    cand = candidate_from_args(tiny_ws, args, kind)
    _, expected = source_weights(tiny_ws, TARGET, ["es-ES", "nl-NL", "en-US"])
    assert cand.sources == ["es-ES", "nl-NL", "en-US"]
    assert cand.weights == pytest.approx(expected) and min(cand.weights) > 0
    args = build_parser().parse_args([kind, "--target", TARGET, "--method", method, "--sources", "es-ES",
                                      "nl-NL"])
    assert min(candidate_from_args(tiny_ws, args, kind).weights) > 0


@pytest.mark.parametrize("extra", [[], ["--weights", "1", "2"], ["--equal"]])
def test_a_duplicated_source_is_an_error(zoo, tmp_path, capsys, extra):
    args = cli(zoo, tmp_path / "c", "merge", "--target", TARGET, "--method", "linear",
               "--sources", "nl-NL", "nl-NL", *extra)
    assert main(args) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error:") and "nl-NL is listed more than once" in err and "\n" not in err


def test_check_candidate_refuses_duplicates_for_pages_and_sweeps(tiny_ws):
    """Pages, sweeps and recipes all pass through check_candidate (explicit weights included)."""
    from engine.experiments import Candidate, CandidateError, check_candidate

    for kind, method in (("merge", "linear"), ("ensemble", "soft"), ("merge", "slerp")):
        cand = Candidate(kind, method, TARGET, ["nl-NL", "es-ES", "nl-NL"], [0.3, 0.3, 0.4])
        with pytest.raises(CandidateError, match="nl-NL is listed more than once"):
            check_candidate(tiny_ws, cand)


def test_weights_without_sources_are_refused(zoo, tmp_path, capsys):
    args = cli(zoo, tmp_path / "c", "ensemble", "--target", TARGET, "--method", "soft", "--weights", "1", "2")
    assert main(args) == 2
    assert "--weights needs --sources" in capsys.readouterr().err


def test_ticking_a_source_outside_the_proposal_gives_it_uriel_weight(tiny_ws):
    """The Merge/Ensemble table: a source ticked beside the URIEL proposal used to keep weight 0."""
    from dashboard.widgets import ticked_weights
    from engine.experiments import source_weights

    shown = {"nl-NL": 0.51, "en-US": 0.49}
    weights, note = ticked_weights(tiny_ws, TARGET, shown, ["nl-NL", "es-ES"], [0.51, 0.0])
    assert weights == pytest.approx(source_weights(tiny_ws, TARGET, ["nl-NL", "es-ES"])[1])
    assert min(weights) > 0 and "URIEL weights over the 2 ticked sources" in note
    # weights the user typed are kept as they are
    assert ticked_weights(tiny_ws, TARGET, shown, ["nl-NL", "es-ES"], [0.51, 0.2])[0] == [0.51, 0.2]
    assert ticked_weights(tiny_ws, TARGET, shown, ["nl-NL", "en-US"], [0.51, 0.49])[0] == [0.51, 0.49]


# ---- 4: non-finite weights never score, never get cached ----------------------------------------
def test_nan_weights_are_refused_by_evaluate_and_nxn(zoo, tmp_path, capsys):
    key = poison(zoo / "e5small_massive_k_en-US")
    zoo_before = tree_hashes(zoo)
    cache = tmp_path / "c"
    assert main(cli(zoo, cache, "evaluate", "--model", "en-US", "--locale", TARGET)) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error:") and "\n" not in err
    assert "en-US" in err and str(zoo / "e5small_massive_k_en-US" / "model.safetensors") in err
    assert key in err and "NaN/inf" in err

    assert main(cli(zoo, cache, "nxn")) == 2
    err = capsys.readouterr().err
    assert "en-US" in err and "model.safetensors" in err
    logits = cached_logits(cache)
    assert len(logits) == 4 and all(np.isfinite(x).all() for x in logits)   # de-DE's row, before en-US
    assert tree_hashes(zoo) == zoo_before


def test_inf_in_a_model_folder_given_to_evaluate_names_the_file(zoo, tmp_path, capsys):
    folder = tmp_path / "my_model"
    shutil.copytree(zoo / "e5small_massive_k_en-US", folder)
    key = poison(folder, float("inf"))
    assert main(cli(zoo, tmp_path / "c", "evaluate", "--model", str(folder), "--locale", TARGET)) == 2
    err = capsys.readouterr().err
    assert f"model folder {folder}" in err and str(folder / "model.safetensors") in err and key in err


def test_nan_base_and_resident_loads_name_model_and_file(zoo, tmp_path, capsys):
    from engine.zoo import ZooError

    key = poison(zoo / "base")
    args = cli(zoo, tmp_path / "c", "merge", "--target", TARGET, "--method", "task_arithmetic",
               "--sources", "nl-NL", "en-US")
    assert main(args) == 2
    err = capsys.readouterr().err
    assert "the base model" in err and str(zoo / "base" / "model.safetensors") in err and key in err

    poison(zoo / "e5small_massive_k_es-ES")
    ws = open_ws(zoo, tmp_path / "c2")
    with pytest.raises(ZooError, match="es-ES") as info:
        ws.zoo.state_dict("es-ES")
    assert str(zoo / "e5small_massive_k_es-ES" / "model.safetensors") in str(info.value)


def test_non_finite_logits_are_never_cached(zoo, tmp_path):
    ws = open_ws(zoo, tmp_path / "c")
    state = {k: v.clone() for k, v in ws.zoo.state_dict("en-US").items()}
    head = next(k for k in sorted(state) if k.startswith("classifier") and k.endswith("bias"))
    state[head][0] = float("nan")
    with pytest.raises(FloatingPointError, match="NaN/inf logits") as info:
        ws.evaluator.state_logits(state, TARGET, "test")
    assert f"{TARGET}/test" in str(info.value)
    assert cached_logits(tmp_path / "c") == []


def test_a_cached_nan_entry_is_recomputed(zoo, tmp_path):
    """Caches written before this fix may hold NaN logits: they are a miss, not a result."""
    from engine.evaluate import _pack

    ws = open_ws(zoo, tmp_path / "c")
    good = ws.evaluator.evaluate_source("nl-NL", TARGET)["accuracy"]
    key = ws.evaluator._key(ws.zoo.fingerprint("nl-NL"), TARGET, "test")
    n = len(ws.evaluator.encoded(TARGET, "test"))
    ws.evaluator.cache.set(key, _pack(np.full((n, len(ws.zoo.labels)), np.nan, np.float32),
                                      {"seconds": 0.0, "peak_mem_mb": 0.0}))
    with pytest.warns(RuntimeWarning, match="non-finite logits: recomputed"):
        again = ws.evaluator.evaluate_source("nl-NL", TARGET)["accuracy"]
    assert again == good
    assert all(np.isfinite(x).all() for x in cached_logits(tmp_path / "c"))


# ---- 6: the logits cache never unpickles ---------------------------------------------------------
class _CreatesFile:
    """Unpickling this opens (creates) a file: what an attacker's row would do."""

    def __init__(self, path):
        self.path = str(path)

    def __reduce__(self):
        return (open, (self.path, "w"))


def test_a_tampered_pickle_row_is_refused_and_never_runs(zoo, tmp_path):
    cache = tmp_path / "c"
    ws = open_ws(zoo, cache)
    good = ws.evaluator.evaluate_source("nl-NL", TARGET)
    marker = tmp_path / "pwned"
    payload = pickle.dumps(_CreatesFile(marker), protocol=2)
    assert b"_CreatesFile" not in payload   # the payload needs nothing from this test to run
    ws.evaluator.cache.close()
    db = cache / "logits" / "cache.db"
    with sqlite3.connect(str(db)) as conn:   # mode 4 is diskcache's MODE_PICKLE
        assert conn.execute("UPDATE Cache SET mode = 4, filename = NULL, value = ?",
                            (sqlite3.Binary(payload),)).rowcount >= 1
    conn.close()

    fresh = open_ws(zoo, cache)
    with pytest.warns(RuntimeWarning) as caught:
        again = fresh.evaluator.evaluate_source("nl-NL", TARGET)
    assert not marker.exists()
    text = " ".join(str(w.message) for w in caught)
    assert str(db) in text and "mode 4" in text and "refused and never decoded" in text
    assert again["accuracy"] == good["accuracy"]
    with warnings.catch_warnings():  # the refused row was overwritten with a raw one
        warnings.simplefilter("error")
        assert fresh.evaluator.source_logits("nl-NL", TARGET).cached


def test_the_raw_disk_stores_bytes_only_and_refuses_pickled_keys(tmp_path):
    import diskcache

    from engine.logits_cache import RawDisk, UnsafeCacheEntry

    with diskcache.Cache(str(tmp_path / "l"), disk=RawDisk) as c:
        with pytest.raises(TypeError, match="bytes only"):
            c.set("k", {"a": 1})
        with pytest.raises(TypeError, match="keys are str"):
            c.set(("k",), b"x")
        c.set("k", b"x" * 100_000)   # large values go to a file, still raw bytes
        assert c.get("k") == b"x" * 100_000
    with sqlite3.connect(str(tmp_path / "l" / "cache.db")) as conn:
        conn.execute("UPDATE Cache SET raw = 0, key = ?", (sqlite3.Binary(pickle.dumps(("k",))),))
        conn.execute("INSERT INTO Cache (key, raw, store_time, access_time, mode, filename, size) "
                     "VALUES ('evil', 1, 0, 0, 2, '../../outside.val', 3)")
    conn.close()
    (tmp_path / "outside.val").write_bytes(b"abc")
    with diskcache.Cache(str(tmp_path / "l"), disk=RawDisk) as c:
        with pytest.raises(UnsafeCacheEntry, match="pickled, not raw"):
            list(c)
        with pytest.raises(UnsafeCacheEntry, match="points outside its folder"):
            c.get("evil")
        c.delete("evil")
    assert (tmp_path / "outside.val").read_bytes() == b"abc"   # never read, never deleted


# ---- 9: corrupt stores and caches -----------------------------------------------------------------
def test_a_corrupt_store_names_the_file_and_is_never_overwritten(tmp_path, capsys):
    from engine.store import Store, StoreError

    cache = tmp_path / "c"
    store = Store(cache / "runs.sqlite")
    run = store.create("merge", name="earlier run", target=TARGET, status="done")
    store.close()
    path = cache / "runs.sqlite"
    header = path.read_bytes()[:100]
    with open(path, "r+b") as handle:
        handle.write(b"this is not sqlite" * 5)
    damaged = hashlib.sha256(path.read_bytes()).hexdigest()

    with pytest.raises(StoreError) as info:
        Store(path)
    msg = str(info.value)
    assert str(path) in msg and "corrupt" in msg and "left untouched" in msg and ".recover" in msg
    assert main(["runs", "--cache-dir", str(cache)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error:") and str(path) in err and "\n" not in err
    assert hashlib.sha256(path.read_bytes()).hexdigest() == damaged   # nothing written over it

    with open(path, "r+b") as handle:   # once repaired, the earlier run is all there
        handle.write(header)
    assert Store(path).get(run)["name"] == "earlier run"


def test_an_unopenable_store_names_the_file(tmp_path):
    from engine.store import Store, StoreError

    (tmp_path / "runs.sqlite").mkdir()   # a folder where the file should be
    with pytest.raises(StoreError, match=str(tmp_path / "runs.sqlite")):
        Store(tmp_path / "runs.sqlite")


@pytest.mark.parametrize("damage", ["header", "pages"])
def test_a_corrupt_logits_cache_is_moved_aside_and_rebuilt(zoo, tmp_path, damage):
    cache = tmp_path / "c"
    ws = open_ws(zoo, cache)
    good = ws.evaluator.evaluate_source("nl-NL", TARGET)["accuracy"]
    ws.evaluator.cache.close()
    db = cache / "logits" / "cache.db"
    with open(db, "r+b") as handle:
        if damage == "header":
            handle.write(b"garbage!" * 64)
        else:   # every page after the first: the schema page opens, the tables do not read
            size = db.stat().st_size
            handle.seek(4096)
            handle.write(b"\xff" * max(0, size - 4096))
    damaged = hashlib.sha256(db.read_bytes()).hexdigest()

    with pytest.warns(RuntimeWarning, match="is corrupt") as caught:
        fresh = open_ws(zoo, cache)
        again = fresh.evaluator.evaluate_source("nl-NL", TARGET)["accuracy"]
    assert again == good
    aside = [p for p in cache.iterdir() if p.name.startswith("logits.corrupt-")]
    assert len(aside) == 1 and hashlib.sha256((aside[0] / "cache.db").read_bytes()).hexdigest() == damaged
    text = " ".join(str(w.message) for w in caught)
    assert str(db) in text and str(aside[0]) in text and "moved it aside" in text
    assert fresh.evaluator.source_logits("nl-NL", TARGET).cached   # the rebuilt cache works


def test_a_saved_fusion_with_nan_is_refused(tmp_path):
    from engine.ensemble import EnsembleError, fit, load_fitted

    rng = np.random.default_rng(0)
    logits, labels = rng.normal(size=(3, 40, 4)).astype(np.float32), rng.integers(0, 4, 40)
    folder = fit("learned_weights", logits, labels).save(tmp_path / "fusion")
    path = folder / "tensors.safetensors"
    tensors = load_file(str(path))
    name = sorted(k for k in tensors if tensors[k].is_floating_point())[0]
    tensors[name] = tensors[name].clone()
    tensors[name].view(-1)[0] = float("nan")
    save_file(tensors, str(path))
    with pytest.raises(EnsembleError, match="NaN/inf") as info:
        load_fitted(folder)
    assert str(path) in str(info.value) and name in str(info.value)


def test_processes_sharing_a_corrupt_logits_cache_move_it_aside_once(tmp_path):
    """Real concurrent processes: one moves the corrupt cache aside, none fails, and none moves
    aside the cache another one has just rebuilt (nor loses what it wrote there)."""
    import os
    import subprocess
    import sys

    folder = tmp_path / "logits"
    folder.mkdir()
    (folder / "cache.db").write_bytes(b"not a database" * 100)
    root = Path(__file__).resolve().parent.parent
    script = ("import sys, time; from pathlib import Path; from engine.logits_cache import LogitsCache\n"
              "while time.time() < float(sys.argv[2]): time.sleep(0.005)\n"
              "c = LogitsCache(Path(sys.argv[1])); c.set(sys.argv[3], b'v' + sys.argv[3].encode())\n"
              "print(c.get(sys.argv[3]).decode())")
    start = f"{__import__('time').time() + 1.5}"
    env = {**os.environ, "PYTHONPATH": str(root)}
    procs = [subprocess.Popen([sys.executable, "-c", script, str(folder), start, f"k{i}"], stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True, env=env) for i in range(4)]
    outs = [p.communicate(timeout=60) for p in procs]
    assert [p.returncode for p in procs] == [0] * 4, [err for _, err in outs]
    assert [out.strip() for out, _ in outs] == [f"vk{i}" for i in range(4)]
    aside = [p for p in tmp_path.iterdir() if p.name.startswith("logits.corrupt-")]
    assert len(aside) == 1 and (aside[0] / "cache.db").read_bytes() == b"not a database" * 100
    assert sum("moved it aside" in err for _, err in outs) == 1
    from engine.logits_cache import LogitsCache

    assert all(LogitsCache(folder).get(f"k{i}") == f"vk{i}".encode() for i in range(4))  # all landed


def test_the_app_shows_a_corrupt_store_as_one_message(tiny_zoo_dir, tmp_path, monkeypatch):
    from streamlit.testing.v1 import AppTest

    path = tmp_path / "runs.sqlite"
    path.write_bytes(b"not a database" * 300)
    before = path.read_bytes()
    monkeypatch.setenv("FUSION_ZOO", str(tiny_zoo_dir))
    monkeypatch.setenv("FUSION_CACHE_DIR", str(tmp_path))
    at = AppTest.from_file(str(Path(__file__).resolve().parent.parent / "app.py"), default_timeout=60)
    at.run()
    assert not at.exception, [e.value for e in at.exception]
    assert any(str(path) in e.value and "corrupt" in e.value for e in at.error)
    assert path.read_bytes() == before


def test_the_cli_says_a_cache_was_moved_aside_in_one_line(zoo, tmp_path, capsys):
    cache = tmp_path / "c"
    (cache / "logits").mkdir(parents=True)
    (cache / "logits" / "cache.db").write_bytes(b"\0garbage" * 50)
    assert main(cli(zoo, cache, "evaluate", "--model", "nl-NL", "--locale", TARGET)) == 0
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("warning: the logits cache ") and "moved it aside to" in err[0]
