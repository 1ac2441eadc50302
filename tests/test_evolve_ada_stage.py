"""AdaMerging as an evolution's final stage (issue 14): the champion's per-source / per-layer-group
weights are AdaMerging's starting coefficients, refined on unlabelled target text; the refined
model is kept only when its dev fitness beats the champion's, and the stage's run records both
the labelled dev data (fitness) and the unlabelled text it learned on. Real tiny-zoo searches."""
import json

import pytest
import torch

from engine.evolve import EvolveConfig, Evolution
from engine.evolve.ada_stage import champion_prior, refine, refine_champion
from engine.evolve.build import build_grouped, layer_partition
from engine.merge.rows import complete_state
from engine.runinfo import run_target_data, target_data_text

TARGET, SOURCES = "nl-NL", ["de-DE", "en-US"]
pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def cma(tiny_ws):
    evo = Evolution(tiny_ws, EvolveConfig(target=TARGET, sources=SOURCES, algorithm="cmaes", method="ties",
                                          generations=1, population=2, layer_groups=1, dev_size=12,
                                          patience=0, seed=5))
    evo.run()
    return evo


def test_the_prior_is_the_champions_weights_per_layer_group(cma):
    recipe = cma.champion_recipe()
    keys = cma.sources.keys
    prior = champion_prior(recipe, SOURCES, keys)
    for group, (name, group_keys) in zip(recipe["groups"], layer_partition(keys, 1)):
        assert group["group"] == name
        total = sum(group["weights"].values())
        assert all(prior[k] == pytest.approx([group["weights"][s] / total for s in SOURCES]) for k in group_keys)
    flat = champion_prior({"weights": {"de-DE": 3.0, "en-US": 1.0}}, SOURCES, keys)
    assert set(flat) == set(keys) and all(v == [0.75, 0.25] for v in flat.values())
    with pytest.raises(ValueError, match="no weights for layer group"):
        champion_prior({**recipe, "groups": recipe["groups"][1:]}, SOURCES, keys)


def test_with_no_steps_the_stage_is_the_champions_weights_as_a_linear_merge(tiny_ws, cma):
    """AdaMerging starts exactly from the champion's coefficients: zero steps give, per layer
    group, the sources' weighted average with that group's weights (head: the head group's)."""
    recipe = cma.champion_recipe()
    prior = champion_prior(recipe, SOURCES, cma.sources.keys)
    state, lam, groups, *_ = refine(tiny_ws, cma.sources.states, cma.sources.base, prior, SOURCES, TARGET,
                                    {"steps": 0, "examples": 16})
    settings = [([g["weights"][s] for s in SOURCES], {}) for g in recipe["groups"]]
    linear = complete_state(build_grouped("linear", layer_partition(cma.sources.keys, 1), settings,
                                          cma.sources))  # the search's sources merge only read rows
    assert set(state) == set(linear)
    for k in linear:
        assert torch.allclose(state[k].float(), linear[k].float(), atol=1e-5), k
    assert lam.shape == (len(SOURCES), len(groups)) and "layer 0" in groups


def test_the_stage_keeps_the_better_by_dev_fitness_and_records_both_data(tiny_ws, cma, tmp_path):
    text = tmp_path / "nl.txt"
    text.write_text("\n".join(tiny_ws.dataset.get(TARGET, "train").texts[:20]), encoding="utf-8")
    out = refine_champion(tiny_ws, cma, {"steps": 4, "examples": 20, "learning_rate": 0.05},
                          target_text=str(text))
    assert out["kept"] == ("refined" if out["refined"]["fitness"] > out["champion"]["fitness"] else "champion")
    assert out["champion"]["fitness"] == cma.champion.fitness
    assert 0 <= out["refined"]["test"]["accuracy"] <= 1 and out["entropy"]["examples"] == 20
    assert len(out["entropy"]["curve"]) == 4
    assert out["target_data"]["target"] == "labelled target dev"
    assert out["target_data"]["text"].startswith("file: nl.txt, 20 lines")
    kept = out["state"]
    fitness, _ = cma.fitness(kept)
    assert fitness == pytest.approx(max(out["refined"]["fitness"], out["champion"]["fitness"]))


def test_cli_stage_on_a_stored_evolution(tiny_zoo_dir, tmp_path, capsys):
    from engine.cli import main
    from engine.store import open_store

    ws = ["--zoo", str(tiny_zoo_dir), "--cache-dir", str(tmp_path), "--device", "cpu", "--quiet"]
    assert main(["evolve", "--target", TARGET, "--sources", *SOURCES, "--algorithm", "evomerge",
                 "--generations", "1", "--population", "2", "--dev-size", "8", "--json", *ws]) == 0
    evo_id = json.loads(capsys.readouterr().out)["run_id"]
    out_dir = tmp_path / "kept"
    assert main(["evolve-ada", evo_id, "--steps", "2", "--examples", "16", "--export", str(out_dir),
                 "--json", *ws]) == 0
    data = json.loads(capsys.readouterr().out)
    store = open_store(str(tmp_path))
    row = store.get(data["run_id"])
    assert row["kind"] == "merge" and row["method"] == "adamerging" and row["params"]["stage_of"] == evo_id
    use = run_target_data(row)
    assert target_data_text(use) == "● labelled target dev (the target's train split, labels withheld)"
    assert row["metrics"]["test"]["accuracy"] == data[data["kept"]]["test"]["accuracy"]
    assert [p["step"] for p in store.series(row["id"], "entropy")] == [1, 2]
    assert (out_dir / "model.safetensors").exists()
    assert json.loads((out_dir / "recipe.json").read_text())["stage_of"] == evo_id

    from engine.evolve.ada_stage import submit_stage
    from engine.jobs import JobRunner
    from engine.workspace import Settings, open_workspace

    text = tmp_path / "nl.txt"
    text.write_text("zet het licht aan\nzet de muziek uit\n", encoding="utf-8")
    runner = JobRunner(store)  # the app's path: a queued run on the compute lane
    try:
        queued = submit_stage(runner, open_workspace(Settings(zoo=str(tiny_zoo_dir), cache_dir=str(tmp_path),
                                                              device="cpu")),
                              store.get(evo_id), {"steps": 1, "examples": 2}, str(text))
        done = runner.wait(queued, timeout=300)
    finally:
        runner.shutdown()
    assert done["status"] == "done", done.get("error")
    assert done["params"]["target_text"].startswith("file: nl.txt, 2 lines")
    assert target_data_text(run_target_data(done)).startswith("● labelled target dev (file: nl.txt, 2 lines")

    binary = tmp_path / "x.bin"
    binary.write_bytes(b"\x00\x01\x02")
    assert main(["evolve-ada", evo_id, "--target-text", str(binary), *ws]) == 2
    assert "looks binary" in capsys.readouterr().err
    assert main(["evolve-ada", row["id"], *ws]) == 2
    assert "not an evolution" in capsys.readouterr().err


def test_evolve_with_the_ada_stage_flag(tiny_zoo_dir, tmp_path, capsys):
    """`evolve --ada-stage`: the evolution, then the stage as its own run on the champion."""
    from engine.cli import main
    from engine.store import open_store

    text = tmp_path / "nl.txt"
    text.write_text("zet het licht aan\nhoe warm is het\nstop de timer\n", encoding="utf-8")
    ws = ["--zoo", str(tiny_zoo_dir), "--cache-dir", str(tmp_path), "--device", "cpu", "--quiet"]
    assert main(["evolve", "--target", TARGET, "--sources", *SOURCES, "--generations", "1", "--population", "2",
                 "--dev-size", "8", "--ada-stage", "--target-text", str(text), "--json", *ws]) == 0
    data = json.loads(capsys.readouterr().out)
    stage = open_store(str(tmp_path)).get(data["ada_stage"]["run_id"])
    assert stage["params"]["stage_of"] == data["run_id"] and stage["status"] == "done"
    assert stage["params"]["target_text"].startswith("file: nl.txt, 3 lines")
    assert main(["evolve", "--target", TARGET, "--ada-stage", "--target-text", str(tmp_path / "none.txt"),
                 *ws]) == 2
    assert "none.txt does not exist" in capsys.readouterr().err
