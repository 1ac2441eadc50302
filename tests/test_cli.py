"""The command line: every command answers --help, --json is parseable, errors are one line + exit 2."""
import json
import os
import subprocess
import sys

import pytest

from engine.cli import COMMANDS, build_parser, main

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def run_cli(*args, env_extra=None):
    env = {**os.environ, "PYTHONPATH": ROOT, "HF_HUB_OFFLINE": "1", **(env_extra or {})}
    return subprocess.run([sys.executable, "-m", "engine", *args], capture_output=True, text=True,
                          cwd=ROOT, env=env, timeout=300)


def test_every_command_has_help(capsys):
    build_parser()
    assert {"locales", "similarity", "build-demo", "evaluate", "nxn", "merge", "ensemble", "methods",
            "runs", "info"} <= set(COMMANDS)
    for name in COMMANDS:
        with pytest.raises(SystemExit) as exit_info:
            main([name, "--help"])
        assert exit_info.value.code == 0
        assert "--json" in capsys.readouterr().out


def test_locales_json_lists_all_massive_locales(capsys):
    assert main(["locales", "--json"]) == 0
    rows = json.loads(capsys.readouterr().out)
    assert {"de-DE", "zh-CN", "zh-TW", "he-IL", "sv-SE", "nb-NO"} <= {r["locale"] for r in rows}
    assert len(rows) >= 51


def test_similarity_json_weights_sum_to_one(capsys):
    assert main(["similarity", "--target", "es-ES", "--top-k", "3", "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert len(data["weights"]) == 3 and "es-ES" not in data["weights"]
    assert sum(data["weights"].values()) == pytest.approx(1.0)


@pytest.mark.parametrize("args, message", [
    (["similarity", "--target", "xx-YY"], "unknown locale 'xx-YY'"),
    (["similarity", "--target", "de-DE", "--top-k", "0"], "top_k"),
    (["info", "--zoo", "/nonexistent/zoo"], "does not exist"),
])
def test_errors_are_one_line_on_stderr(args, message, capsys):
    assert main(args) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error:") and message in err and "\n" not in err
    assert "Traceback" not in err


def test_subprocess_error_has_no_traceback(tiny_zoo_dir):
    proc = run_cli("evaluate", "--zoo", str(tiny_zoo_dir), "--model", "de-DE", "--locale", "fr-FR", "--quiet")
    assert proc.returncode == 2
    assert proc.stderr.strip().startswith("error:") and "fr-FR" in proc.stderr
    assert "Traceback" not in proc.stderr


def test_evaluate_nxn_merge_ensemble_json(tiny_zoo_dir, tmp_path, capsys):
    ws = ["--zoo", str(tiny_zoo_dir), "--cache-dir", str(tmp_path), "--device", "cpu", "--quiet", "--json"]
    assert main(["evaluate", "--model", "de-DE", "--locale", "nl-NL", *ws]) == 0
    metrics = json.loads(capsys.readouterr().out)["metrics"]
    assert 0 <= metrics["accuracy"] <= 1 and "ece" in metrics and "latency_ms" in metrics

    assert main(["nxn", *ws]) == 0
    matrix = json.loads(capsys.readouterr().out)["matrix"]
    assert set(matrix) == {"de-DE", "en-US", "es-ES", "nl-NL"}
    assert matrix["de-DE"]["nl-NL"] == pytest.approx(metrics["accuracy"])

    out_dir = tmp_path / "merged"
    assert main(["merge", "--target", "de-DE", "--method", "ties", "--param", "density=0.5",
                 "--export", str(out_dir), *ws]) == 0
    merged = json.loads(capsys.readouterr().out)
    assert merged["candidate"]["sources"] and "de-DE" not in merged["candidate"]["sources"]
    assert (out_dir / "model.safetensors").exists() and (out_dir / "recipe.json").exists()

    assert main(["ensemble", "--target", "de-DE", "--method", "soft", "--equal", *ws]) == 0
    ens = json.loads(capsys.readouterr().out)
    assert 0 <= ens["metrics"]["test"]["accuracy"] <= 1
    assert set(ens["baselines"]) == {"best_source", "best_zero_shot", "target_model"}


def test_bad_method_parameter_is_clear(tiny_zoo_dir, tmp_path, capsys):
    ws = ["--zoo", str(tiny_zoo_dir), "--cache-dir", str(tmp_path), "--quiet"]
    assert main(["merge", "--target", "de-DE", "--method", "ties", "--param", "density=1.5", *ws]) == 2
    assert "density" in capsys.readouterr().err
    assert main(["merge", "--target", "de-DE", "--method", "nonsense", *ws]) == 2
    assert "unknown merge method 'nonsense'" in capsys.readouterr().err
    assert main(["merge", "--target", "de-DE", "--method", "linear", "--sources", "de-DE", "en-US", *ws]) == 2
    assert "leave-one-out" in capsys.readouterr().err


def test_runs_listing_is_the_compare_table(tmp_path, capsys):
    """`runs` reads engine/report/tables.runs_frame (the Compare page's table), not a copy of its own:
    a cancelled evolution shows its champion's test accuracy so far there, so it does here too."""
    from engine.report.tables import runs_frame
    from engine.store import Store

    store = Store(tmp_path / "runs.sqlite")
    evo = store.create("evolve", target="de-DE", method="evomerge", sources=["nl-NL"], weights=[1.0])
    store.update(evo, status="cancelled", result={"champion": {"test": {"accuracy": 0.625}, "dev": {}}})
    merge = store.create("merge", target="de-DE", method="linear", sources=["nl-NL"], weights=[1.0])
    store.update(merge, status="done", metrics={"test": {"accuracy": 0.5}})
    assert main(["runs", "--cache-dir", str(tmp_path)]) == 0
    lines = {line.split()[0]: line for line in capsys.readouterr().out.splitlines()[2:]}
    assert lines[evo].split()[-1] == "0.625" and lines[merge].split()[-1] == "0.500"
    assert list(runs_frame(store.runs())["id"]) == [merge, evo]
