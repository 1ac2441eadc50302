"""A user's unlabelled target text file (issue 14): one sentence per line, UTF-8, for AdaMerging and
the entropy-minimised ensemble. Real files on disk: the checks name the file and the fix, the
methods learn on the file's lines (not the train split), and every run records the file by name,
line count and sha256 — in its target data, its parameters and its content key."""
import hashlib
import json
import shutil

import pytest

from engine.data.target_text import (TargetTextError, parse_text, read_target_text, reads_target_text,
                                     store_target_text)
from engine.experiments import Candidate, build_merge, evaluate_candidate, merge_context
from engine.preflight import preflight
from engine.runinfo import candidate_key, recipe_key_fields, target_data_text, target_data_use

TARGET, SOURCES, WEIGHTS = "de-DE", ["en-US", "es-ES", "nl-NL"], [0.5, 0.3, 0.2]
QUICK = {"steps": 3, "examples": 32, "batch_size": 16}

pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture
def de_text(tiny_ws, tmp_path):
    """The target's validation sentences as a user's file (CRLF, a BOM, blank lines between)."""
    lines = tiny_ws.dataset.get(TARGET, "validation").texts[:24]
    path = tmp_path / "deutsch.txt"
    path.write_bytes(b"\xef\xbb\xbf" + "\r\n\r\n".join(lines).encode("utf-8") + b"\r\n  \r\n")
    return path, list(lines)


def test_a_good_file_gives_its_non_blank_lines(de_text):
    path, lines = de_text
    text = read_target_text(path)
    assert text.lines == [s.strip() for s in lines] and text.name == "deutsch.txt"
    assert text.sha256 == hashlib.sha256(path.read_bytes()).hexdigest()
    assert text.describe() == f"file: deutsch.txt, {len(lines)} lines, sha256 {text.sha256[:16]}…"


@pytest.mark.parametrize("content, message", [
    (None, "does not exist"),
    ("folder", "is not a file"),
    (b"", "has no text (empty"),
    (b"\n   \n\t\n", "has no text (empty"),
    (b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR", "looks binary"),
    ("Grüße\nda".encode("latin-1"), "is not UTF-8 (line 1, byte offset 2)"),
    ("ok\nnoch ok\nStraße".encode("cp1252"), "is not UTF-8 (line 3, byte offset 15)"),
])
def test_bad_files_are_refused_naming_the_file_and_the_fix(tmp_path, content, message):
    path = tmp_path / "user.txt"
    if content == "folder":
        path.mkdir()
    elif content is not None:
        path.write_bytes(content)
    with pytest.raises(TargetTextError) as err:
        read_target_text(path)
    text = str(err.value)
    assert message in text and str(path) in text and "\n" not in text
    assert any(fix in text for fix in ("one sentence per line", "UTF-8"))


def test_an_upload_is_kept_once_by_content(tmp_path):
    data = "erste Zeile\nzweite Zeile\n".encode()
    a = store_target_text(data, "../../etc/mein text.txt", tmp_path)
    b = store_target_text(data, "../../etc/mein text.txt", tmp_path)
    assert a.path == b.path and a.name == "mein_text.txt" and a.lines == ["erste Zeile", "zweite Zeile"]
    assert str(tmp_path / "target_texts") in a.path and read_target_text(a.path).sha256 == a.sha256
    with pytest.raises(TargetTextError, match="looks binary"):
        store_target_text(b"\x00\x01", "x.bin", tmp_path)
    assert len(list((tmp_path / "target_texts").rglob("*"))) == 2  # one folder, one file


def test_adamerging_learns_on_the_file_and_the_run_records_it(tiny_ws, de_text, tmp_path):
    path, lines = de_text
    cand = Candidate("merge", "adamerging", TARGET, SOURCES, WEIGHTS, params=QUICK, target_text=str(path))
    assert preflight(tiny_ws, cand) == []
    batches = list(merge_context(tiny_ws, cand).texts(16))
    assert sum(b["input_ids"].shape[0] for b in batches) == len(lines)  # the file, not the train split
    decoded = tiny_ws.evaluator.tokenizer.decode(batches[0]["input_ids"][0], skip_special_tokens=True)
    assert decoded.strip() == lines[0].strip()
    state = build_merge(tiny_ws, cand)
    assert any(f"on {len(lines)} unlabelled target texts" in n for n in state.report.notes)

    use = target_data_use(cand)
    assert use["target"] == "unlabelled target text" and use["text"] == read_target_text(path).describe()
    assert target_data_text(use).startswith("◐ unlabelled target text (file: deutsch.txt, 24 lines, sha256 ")
    split_run = Candidate("merge", "adamerging", TARGET, SOURCES, WEIGHTS, params=QUICK)
    assert "text" not in target_data_use(split_run) and "target_text_sha256" not in recipe_key_fields(split_run)
    copy = tmp_path / "elsewhere.txt"
    shutil.copy(path, copy)  # same content, other path: the same experiment
    same = Candidate("merge", "adamerging", TARGET, SOURCES, WEIGHTS, params=QUICK, target_text=str(copy))
    assert candidate_key(tiny_ws, same) == candidate_key(tiny_ws, cand) != candidate_key(tiny_ws, split_run)
    copy.write_text("\n".join(lines[:5]), encoding="utf-8")
    assert candidate_key(tiny_ws, same) != candidate_key(tiny_ws, cand)


def test_preflight_refuses_a_file_a_method_would_not_read_and_a_bad_file(tiny_ws, de_text, tmp_path):
    path, _ = de_text
    ties = Candidate("merge", "ties", TARGET, SOURCES, WEIGHTS, target_text=str(path))
    assert [p.about for p in preflight(tiny_ws, ties)] == ["data"]
    assert "does not learn from unlabelled target text" in preflight(tiny_ws, ties)[0].text
    bad = tmp_path / "leer.txt"
    bad.write_text("\n\n", encoding="utf-8")
    ada = Candidate("merge", "adamerging", TARGET, SOURCES, WEIGHTS, target_text=str(bad))
    assert [p.text for p in preflight(tiny_ws, ada)] == [str(read_error(bad))]


def read_error(path):
    try:
        read_target_text(path)
    except TargetTextError as exc:
        return exc


def test_entropy_min_ensemble_fits_on_the_file(tiny_ws, de_text):
    from engine.ensemble import ENSEMBLES

    path, lines = de_text
    assert reads_target_text("ensemble", ENSEMBLES.get("entropy_min").traits)
    assert not reads_target_text("ensemble", ENSEMBLES.get("learned_weights").traits)
    with_file = Candidate("ensemble", "entropy_min", TARGET, SOURCES, WEIGHTS, target_text=str(path))
    assert preflight(tiny_ws, with_file) == []
    few = path.parent / "wenig.txt"
    few.write_text(lines[0], encoding="utf-8")  # one sentence: another fit than 24
    one = Candidate("ensemble", "entropy_min", TARGET, SOURCES, WEIGHTS, target_text=str(few))
    a, b = (evaluate_candidate(tiny_ws, c, with_baselines=False)["learned_weights"] for c in (with_file, one))
    assert a != b and target_data_use(with_file)["text"].startswith("file: deutsch.txt, 24 lines")


def test_cli_merge_with_a_text_file_and_a_bad_one(tiny_zoo_dir, de_text, tmp_path, capsys):
    from engine.cli import main
    from engine.store import open_store

    path, lines = de_text
    ws = ["--zoo", str(tiny_zoo_dir), "--cache-dir", str(tmp_path / "cache"), "--device", "cpu", "--quiet"]
    recipe = ["merge", "--target", TARGET, "--method", "adamerging", "--sources", *SOURCES,
              "--param", "steps=2", "examples=16"]
    assert main([*recipe, "--target-text", str(path), "--json", *ws]) == 0
    run = open_store(str(tmp_path / "cache")).get(json.loads(capsys.readouterr().out)["run_id"])
    described = read_target_text(path).describe()
    assert run["params"]["target_text"] == described and run["result"]["target_data"]["text"] == described
    assert run["result"]["candidate"]["target_text"] == str(path)

    binary = tmp_path / "model.bin"
    binary.write_bytes(bytes(range(256)))
    assert main([*recipe, "--target-text", str(binary), *ws]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: target text file") and str(binary) in err and "looks binary" in err
    assert main(["merge", "--target", TARGET, "--method", "ties", "--target-text", str(path), *ws]) == 2
    assert "does not learn from unlabelled target text" in capsys.readouterr().err


def test_sweep_spec_gives_each_target_its_file_for_the_methods_that_read_text(tiny_ws, de_text, tmp_path):
    from engine.sweep.spec import SweepSpecError, expand_cells, parse_spec

    path, _ = de_text
    spec = parse_spec({"methods": ["merge:adamerging", "merge:ties", "ensemble:entropy_min"],
                       "targets": [TARGET, "nl-NL"], "sources": [2], "target_text": {TARGET: str(path)}})
    cells = [c for c in expand_cells(tiny_ws, spec) if c.role == "method"]
    files = {(c.candidate.method, c.candidate.target): c.candidate.target_text for c in cells}
    assert files[("adamerging", TARGET)] == files[("entropy_min", TARGET)] == str(path.resolve())
    assert files[("ties", TARGET)] == files[("adamerging", "nl-NL")] == ""
    ada = next(c for c in cells if c.candidate.method == "adamerging" and c.candidate.target == TARGET)
    assert ada.run_params()["target_text"].startswith("file: deutsch.txt, 24 lines")
    with pytest.raises(SweepSpecError, match=r"target_text\.de-DE: target text file .*missing\.txt does not exist"):
        parse_spec({"methods": ["merge:adamerging"], "target_text": {TARGET: str(tmp_path / "missing.txt")}})


def test_parse_text_keeps_unicode_lines():
    text = parse_text("  Schalte das Licht an \n\n开灯\n".encode(), "x.txt")
    assert text.lines == ["Schalte das Licht an", "开灯"]


def test_merge_page_takes_a_text_file_and_the_card_names_it(app_cache, tmp_path):
    """AdaMerging on the Merge page: the train split by default; choosing a file without giving
    one, or giving a bad one, keeps Run disabled with the reason; a good file runs and the result
    card says which file the merge learned on."""
    from app_support import button, goto, metric, open_app, rerun, wait_for
    from dashboard.target_text import FILE

    at = goto(open_app(), "Merge")
    at.selectbox(key="merge_method").set_value("adamerging")
    rerun(at)
    assert any("labels withheld" in c.value for c in at.caption)
    at.number_input(key="merge.adamerging.steps").set_value(2)
    at.number_input(key="merge.adamerging.examples").set_value(16)
    at.radio(key="merge_text_source").set_value(FILE)
    rerun(at)
    assert button(at, "merge_run_button").disabled
    assert any("choose the target text file" in w.value for w in at.warning)
    bad = tmp_path / "kaputt.txt"
    bad.write_bytes(b"\xff\xfe\x00a")
    at.text_input(key="merge_text_path").set_value(str(bad))
    rerun(at)
    assert button(at, "merge_run_button").disabled
    assert any("kaputt.txt looks binary" in w.value for w in at.warning)
    good = tmp_path / "saetze.txt"
    good.write_text("Schalte das Licht im Bad an\nMach die Musik leiser\nWie warm ist es?\n", encoding="utf-8")
    at.text_input(key="merge_text_path").set_value(str(good))
    rerun(at)
    assert any("file: saetze.txt, 3 lines, sha256" in c.value for c in at.caption)
    assert not button(at, "merge_run_button").disabled
    button(at, "merge_run_button").click()
    rerun(at)
    row = wait_for(app_cache, at.session_state["merge_run"])
    rerun(at)
    assert row["params"]["target_text"] == read_target_text(good).describe()
    assert metric(at, "Target data used").startswith("◐ unlabelled target text (file: saetze.txt, 3 lines")


def test_ensemble_page_fits_entropy_weights_on_a_text_file(app_cache, tmp_path):
    """entropy_min on the Ensemble page: a text file replaces the 'fit on' choice, the fit runs on
    its lines, and the saved run records the file."""
    from app_support import button, goto, open_app, rerun, runner, wait_for
    from dashboard.target_text import FILE

    at = goto(open_app(), "Ensemble")
    at.segmented_control(key="ens_family").set_value("learned fusion")
    rerun(at)
    at.selectbox(key="ens_method_learned fusion").set_value("entropy_min")
    rerun(at)
    assert "ens_fit_on" not in [s.key for s in at.selectbox]
    at.radio(key="ens_text_source").set_value(FILE)
    rerun(at)
    assert any("choose the target text file" in w.value for w in at.warning)
    good = tmp_path / "zeilen.txt"
    good.write_text("Licht an\nMusik aus\nTimer stoppen\nWie warm ist es\n", encoding="utf-8")
    at.text_input(key="ens_text_path").set_value(str(good))
    rerun(at)
    store = runner(app_cache).store
    if "ens_logits" in [b.key for b in at.button]:  # the sources' cached outputs first
        button(at, "ens_logits").click()
        rerun(at)
        wait_for(app_cache, store.runs(kind="logits", limit=1)[0]["id"])
        rerun(at)
    fit = store.runs(kind="fit", limit=1)[0]
    assert fit["method"] == "entropy_min"
    wait_for(app_cache, fit["id"])
    rerun(at)
    button(at, "ens_save").click()
    rerun(at)
    row = wait_for(app_cache, at.session_state["ens_run"])
    assert row["params"]["target_text"] == read_target_text(good).describe()
    assert row["result"]["target_data"]["text"].startswith("file: zeilen.txt, 4 lines")


def test_export_of_a_stored_run_refuses_a_changed_text_file(tiny_zoo_dir, tmp_path, capsys):
    """A stored AdaMerging run is rebuilt from its text file only while the file holds the content
    it learned on; changed, the export is refused and names the file (nothing written)."""
    from engine.cli import main

    text = tmp_path / "saetze.txt"
    text.write_text("Licht an\nMusik aus\nTimer stoppen\n", encoding="utf-8")
    ws = ["--zoo", str(tiny_zoo_dir), "--cache-dir", str(tmp_path / "cache"), "--device", "cpu", "--quiet"]
    assert main(["merge", "--target", TARGET, "--method", "adamerging", "--sources", *SOURCES, "--param",
                 "steps=1", "examples=3", "--target-text", str(text), "--json", *ws]) == 0
    run_id = json.loads(capsys.readouterr().out)["run_id"]
    assert main(["export", run_id, str(tmp_path / "same"), *ws]) == 0
    assert (tmp_path / "same" / "model.safetensors").exists()
    capsys.readouterr()
    text.write_text("ganz andere Sätze\n", encoding="utf-8")
    assert main(["export", run_id, str(tmp_path / "changed"), *ws]) == 2
    err = capsys.readouterr().err
    assert "saetze.txt, 3 lines" in err and "saetze.txt, 1 line," in err and "nothing was exported" in err
    assert not (tmp_path / "changed").exists()
