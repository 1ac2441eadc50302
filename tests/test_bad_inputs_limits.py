"""Issue 11, items 7, 8 and 10: settings outside their declared ranges, jobs far beyond the machine,
data that is empty / not UTF-8 / labelled in another order, and resuming evolutions.

Each case asserts the one-line message and that nothing was lost: the zoo's files (hashed; every
damaged zoo is a copy of the tiny test zoo) and the store's earlier runs.
"""
import hashlib
import json
import re
import shutil
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from engine.cli import main
from engine.evolve import EvolveConfig, EvolveError, evolve_job, resolve_config, submit_evolution
from engine.jobs import JobRunner
from engine.store import Store

torch.set_num_threads(1)
TARGET, SOURCES = "nl-NL", ["de-DE", "en-US"]


def tree_hash(folder: Path) -> str:
    h = hashlib.sha256()
    for f in sorted(Path(folder).rglob("*")):
        if f.is_file():
            h.update(str(f.relative_to(folder)).encode())
            h.update(f.read_bytes())
    return h.hexdigest()


@pytest.fixture
def zoo_copy(tiny_zoo_dir, tmp_path):
    dest = tmp_path / "zoo"
    shutil.copytree(tiny_zoo_dir, dest)
    return dest


def cli(capsys, *argv):
    """(exit code, stdout, stderr) of ``python -m engine ...``, argparse's exits included."""
    try:
        rc = main([str(a) for a in argv])
    except SystemExit as exc:
        rc = exc.code
    out = capsys.readouterr()
    return rc, out.out, out.err


def run_rows(cache: Path):
    if not (cache / "runs.sqlite").exists():
        return []
    store = Store(cache / "runs.sqlite")
    rows = [(r["id"], r["status"], r["parent"]) for r in store.runs(limit=10 ** 6)]
    store.close()
    return rows


# ---- item 7: declared ranges, estimates, elites ----------------------------------------------

def test_population_and_generations_beyond_their_range_are_refused_everywhere(tiny_zoo_dir, tmp_path, capsys):
    """The CLI (argparse type), the engine config (pages) and sweep specs read one table."""
    from engine.cli import UsageError, build_parser
    from engine.sweep.spec import SweepSpecError, parse_spec

    # parsed only: today's code would accept these and run for ever
    for argv, message in [
            (["evolve", "--target", TARGET, "--population", "1000000000"],
             "argument --population: population must be in [2, 1000], got 1000000000"),
            (["evolve", "--target", TARGET, "--generations", "1000000000"],
             "argument --generations: generations must be in [0, 10000], got 1000000000"),
            (["merge", "--target", TARGET, "--method", "linear", "--sinkhorn-iters", "1000000000"],
             "sinkhorn_iters must be in [0, 1000]"),
            (["sweep", "spec.yaml", "--ray-cpus", "0"], "ray_cpus must be in [1, 4096], got 0")]:
        with pytest.raises(UsageError, match=re.escape(message)):
            build_parser().parse_args(argv)
    rc, _, err = cli(capsys, "evolve", "--target", TARGET, "--population", "0")
    assert rc == 2 and err.strip().splitlines() == [
        "error: argument --population: population must be in [2, 1000], got 0 "
        "(see python -m engine evolve --help)"]
    with pytest.raises(EvolveError, match="population must be in"):
        EvolveConfig(target=TARGET, population=10 ** 9).check()
    with pytest.raises(EvolveError, match="'accuracy' fitness_weight must be finite"):
        EvolveConfig(target=TARGET, fitness_weights={"accuracy": float("inf")}).check()
    with pytest.raises(SweepSpecError, match="sinkhorn_iters must be in"):
        parse_spec({"methods": ["merge:linear"], "sinkhorn_iters": 10 ** 9})
    with pytest.raises(SweepSpecError, match="40,000 combinations"):  # refused before expanding
        parse_spec({"methods": [{"merge": "ties", "grid": {"density": [0.5] * 200,
                                                           "lambda": [1.0] * 200}}]})
    assert run_rows(tmp_path) == []  # nothing was started


def test_a_run_far_beyond_the_machine_is_refused_before_it_starts(tiny_ws, tmp_path):
    """10,000 generations × 1,000: within each range, but months of work; no run row is made."""
    store = Store(tmp_path / "runs.sqlite")
    earlier = store.create("merge", name="earlier", status="done")
    runner = JobRunner(store)
    try:
        with pytest.raises(EvolveError, match=r"candidates would take about .* days.*--force"):
            submit_evolution(runner, tiny_ws, EvolveConfig(
                target=TARGET, sources=SOURCES, generations=10_000, population=1000))
        assert [r["id"] for r in store.runs()] == [earlier]
    finally:
        runner.shutdown()
        store.close()


def test_population_two_derives_its_elites_and_the_cli_offers_them(capsys):
    from engine.cli import UsageError, build_parser

    config = EvolveConfig(target=TARGET, population=2).check()
    assert config.elites == 1
    assert EvolveConfig(target=TARGET).check().elites == 2  # seed 004: 2 of 8
    args = build_parser().parse_args(["evolve", "--target", TARGET, "--population", "2", "--elites", "1"])
    assert args.elites == 1
    with pytest.raises(EvolveError, match=r"elites must be in 1..population-1, got 2 \(population 2\)"):
        EvolveConfig(target=TARGET, population=2, elites=2).check()


# ---- item 10: resume ---------------------------------------------------------------------------

@pytest.fixture(scope="module")
def stopped_run(tiny_zoo_dir, tmp_path_factory):
    """A CMA-ES run on a copy of the tiny zoo, cancelled after generation 0 as the app does it,
    recorded as submit_evolution records it; the cache sits outside the working folder."""
    from engine.evolve import run_fields
    from engine.workspace import Settings, open_workspace

    root = tmp_path_factory.mktemp("resume")
    zoo = root / "zoo"
    shutil.copytree(tiny_zoo_dir, zoo)
    cache = root / "cache"
    ws = open_workspace(Settings(zoo=str(zoo), cache_dir=str(cache), device="cpu"))
    store = Store(cache / "runs.sqlite")
    runner = JobRunner(store)
    config = resolve_config(ws, EvolveConfig(target=TARGET, sources=SOURCES, algorithm="cmaes",
                                             generations=2, population=2, layer_groups=0,
                                             dev_size=4, patience=0, merge_cache=False))
    inner = evolve_job(ws, config)

    def job(ctx):
        log = ctx.log

        def log_then_cancel(name, step, value):
            log(name, step, value)
            if name == "evals_per_s" and step == 0:
                runner.cancel(ctx.run_id)
        ctx.log = log_then_cancel
        return inner(ctx)

    run_id = runner.submit("evolve", job, **run_fields(ws, config))
    row = runner.wait(run_id, timeout=300)
    runner.shutdown()
    store.close()
    assert row["status"] == "cancelled" and row["result"]["generation"] == 0
    return {"run_id": run_id, "zoo": zoo, "cache": cache, "root": root}


def test_resume_on_another_zoo_is_refused_before_any_run_is_made(stopped_run, tmp_path, capsys):
    other = tmp_path / "other"
    shutil.copytree(stopped_run["zoo"], other)
    manifest = json.loads((other / "zoo.json").read_text())
    models = manifest["models"]
    models["de-DE"], models["en-US"] = models["en-US"], models["de-DE"]  # other weights per source
    (other / "zoo.json").write_text(json.dumps(manifest))
    before, zoo_hash = run_rows(stopped_run["cache"]), tree_hash(stopped_run["zoo"])
    rc, _, err = cli(capsys, "evolve", "--resume", stopped_run["run_id"], "--zoo", other,
                     "--cache-dir", stopped_run["cache"], "--device", "cpu", "--quiet")
    assert rc == 2 and "models or data differ" in err and f"--resume {stopped_run['run_id']}" in err
    assert run_rows(stopped_run["cache"]) == before  # no new (failed) run
    assert tree_hash(stopped_run["zoo"]) == zoo_hash


def test_resume_hint_alone_continues_the_run_and_a_finished_run_says_so(stopped_run, tmp_path,
                                                                          capsys, monkeypatch):
    from engine.cli.evolve import _summary

    run_id, cache = stopped_run["run_id"], stopped_run["cache"]
    store = Store(cache / "runs.sqlite")
    hint = _summary(store.get(run_id)).splitlines()[-1]
    store.close()
    assert hint.startswith("resume with: python -m engine evolve --resume ")
    argv = hint.split("python -m engine ", 1)[1].split()
    monkeypatch.chdir(tmp_path)  # elsewhere: the default zoo / cache would be the wrong ones
    before = run_rows(cache)
    rc, out, err = cli(capsys, *argv, "--device", "cpu", "--quiet", "--json")
    assert rc == 0, err
    data = json.loads(out)
    assert data["status"] == "done" and data["result"]["generation"] == 2
    child = data["run_id"]
    assert set(before) <= set(run_rows(cache))  # the earlier runs are untouched
    after = run_rows(cache)
    rc, _, err = cli(capsys, *argv, "--quiet")
    assert rc == 2 and f"already resumed as run {child} (done)" in err
    rc, _, err = cli(capsys, "evolve", "--resume", child, "--cache-dir", cache, "--quiet")
    assert rc == 2 and f"run {child} already finished" in err
    assert run_rows(cache) == after  # no duplicate


# ---- item 8: clear messages -----------------------------------------------------------------

def test_non_utf8_data_names_the_file(zoo_copy, tmp_path, capsys):
    data = tmp_path / "data"
    shutil.copytree(zoo_copy / "data", data)
    bad = data / "es-ES.jsonl"
    bad.write_bytes(bad.read_bytes().replace("é".encode(), b"\xe9") + b'{"utt": "caf\xe9"}\n')
    rc, _, err = cli(capsys, "info", "--zoo", zoo_copy, "--data", "jsonl", "--data-path", data,
                     "--cache-dir", tmp_path / "cache")
    assert rc == 2 and f"{bad}: not UTF-8 text (byte 0xe9)" in err


def test_an_empty_locale_file_says_that_locale_has_no_data(zoo_copy, tmp_path, capsys):
    data = tmp_path / "data"
    shutil.copytree(zoo_copy / "data", data)
    (data / "nl-NL.jsonl").write_text("")
    zoo_hash = tree_hash(zoo_copy)
    common = ["--zoo", zoo_copy, "--data", "jsonl", "--data-path", data, "--cache-dir",
              tmp_path / "cache", "--device", "cpu", "--quiet"]
    rc, out, err = cli(capsys, "info", *common)
    assert rc == 0 and f"note: locale nl-NL has no data ({data / 'nl-NL.jsonl'} has no records)" in out
    rc, _, err = cli(capsys, "merge", *common, "--target", "nl-NL", "--method", "linear",
                     "--sources", "de-DE", "en-US", "--weights", "1", "1")
    assert rc == 2 and "has no data for locale 'nl-NL'" in err and "nl-NL.jsonl has no records" in err
    assert "it has: \n" not in err and not err.rstrip().endswith("it has:")
    assert tree_hash(zoo_copy) == zoo_hash


def test_an_empty_jsonl_file_says_it_is_empty(zoo_copy, tmp_path, capsys):
    empty = tmp_path / "de-DE.jsonl"
    empty.write_text("\n")
    rc, _, err = cli(capsys, "info", "--zoo", zoo_copy, "--data", "jsonl", "--data-path", empty,
                     "--cache-dir", tmp_path / "cache")
    assert rc == 2 and f"{empty} is empty (no records): locale 'de-DE' has no data" in err
    assert "not found" not in err
    from engine.data.loaders import load_massive_jsonl

    one = load_massive_jsonl(str(zoo_copy / "data" / "es-ES.jsonl"))  # one file = one locale
    assert one.locales == ["es-ES"] and one.has("es-ES", "test")


def test_a_zoo_whose_labels_are_not_alphabetical_maps_jsonl_labels_by_name(zoo_copy, tmp_path, tiny_ws):
    """id2label reversed in every model, the head's rows permuted to match: the same model, the
    same predictions; the jsonl loader must map label names onto the zoo's ids."""
    from engine.workspace import Settings, open_workspace

    for folder in [p for p in zoo_copy.iterdir() if p.name.startswith("e5small")]:
        config = json.loads((folder / "config.json").read_text())
        names = [config["id2label"][str(i)] for i in range(len(config["id2label"]))][::-1]
        config["id2label"] = {str(i): n for i, n in enumerate(names)}
        config["label2id"] = {n: i for i, n in enumerate(names)}
        (folder / "config.json").write_text(json.dumps(config))
        state = load_file(str(folder / "model.safetensors"))
        for key in ("classifier.out_proj.weight", "classifier.out_proj.bias"):
            state[key] = state[key].flip(0).contiguous()
        save_file(state, str(folder / "model.safetensors"), metadata={"format": "pt"})
    ws = open_workspace(Settings(zoo=str(zoo_copy), data="jsonl", data_path=str(zoo_copy / "data"),
                                 cache_dir=str(tmp_path / "cache"), device="cpu"))
    assert ws.dataset.labels == ws.zoo.labels == sorted(ws.zoo.labels, reverse=True)
    flipped = ws.evaluator.evaluate_source("de-DE", "de-DE", "test")["accuracy"]
    assert flipped == tiny_ws.evaluator.evaluate_source("de-DE", "de-DE", "test")["accuracy"]


def test_unknown_locale_points_at_the_locales_command():
    from engine.languages import UnknownLocaleError, resolve_locale

    with pytest.raises(UnknownLocaleError, match=r"list them with `python -m engine locales`"):
        resolve_locale("ge-DE")


def test_the_odd_model_out_is_named_not_the_good_ones(zoo_copy):
    """de-DE sorts first; with a wrong layer count it alone is named, against the majority."""
    from engine.zoo import Zoo, ZooError

    path = zoo_copy / "e5small_massive_k_de-DE" / "config.json"
    config = json.loads(path.read_text())
    config["num_hidden_layers"] += 6
    path.write_text(json.dumps(config))
    with pytest.raises(ZooError) as err:
        Zoo.open(zoo_copy).validate()
    lines = str(err.value).splitlines()[1:]
    assert len(lines) == 1, lines
    assert lines[0].strip().startswith("de-DE: num_hidden_layers=")
    assert "but en-US and 2 other models have" in lines[0]


def test_resume_of_a_run_whose_zoo_is_gone_says_what_it_needs(tmp_path, capsys):
    store = Store(tmp_path / "runs.sqlite")
    run_id = store.create("evolve", status="cancelled", params={"settings": {
        "zoo": str(tmp_path / "gone"), "data": "zoo", "cache_dir": str(tmp_path)}})
    store.close()
    rc, _, err = cli(capsys, "evolve", "--resume", run_id, "--cache-dir", tmp_path, "--quiet")
    assert rc == 2 and f"run {run_id} ran on zoo {tmp_path / 'gone'}" in err
    assert "pass --zoo/--data to resume it on a copy" in err
    assert [r[0] for r in run_rows(tmp_path)] == [run_id]
