"""How to add an evolution algorithm, in one file: this test is that file. A toy random search is
registered from here, with one setting of its own declared as a Param; without touching any other
file it runs through the normal Evolution runner on the tiny zoo, is offered by the CLI (flag and
choice included) and by the schema the Evolve page draws its controls from, and its setting is
range-checked by EvolveConfig.check — then it is unregistered again."""
import json

import pytest
import torch

from engine.evolve import EVOLUTIONS, EvolveConfig, EvolveError, Evolution
from engine.evolve.grouped import GROUPED_PARAMS, GroupedSearch
from engine.registry import Param

torch.set_num_threads(1)
TARGET, SOURCES = "nl-NL", ["de-DE", "en-US"]
NAME = "toy_random_search"


def register_toy():
    @EVOLUTIONS.register(NAME, title="Toy random search", random=True,
                         summary="uniform samples of the per-layer-group recipe, around the start",
                         params=[*GROUPED_PARAMS,
                                 Param("spread", "float", 0.5, 0.0, 1.0, low_open=True,
                                       help="half-width of the box sampled around the start point")])
    class RandomSearch(GroupedSearch):
        """Each generation samples ``population`` candidates uniformly in a box around x0."""

        def initial(self, rng):
            return [{"x": self.x0, "origin": "start"}]

        def propose(self, generation, rng):
            spread = self.config.setting("spread")  # a setting without an EvolveConfig field
            return [{"x": list(map(float, (self.x0 + rng.uniform(-spread, spread, self.dim)).clip(0, 1))),
                     "origin": "random"} for _ in range(self.config.population)]

    return RandomSearch


@pytest.fixture
def toy():
    cls = register_toy()
    try:
        yield cls
    finally:
        EVOLUTIONS.unregister(NAME)
    assert NAME not in EVOLUTIONS


def toy_config(**overrides):
    settings = dict(target=TARGET, sources=SOURCES, algorithm=NAME, method="ties", generations=2,
                    population=2, layer_groups=1, dev_size=8, patience=0, seed=4)
    settings.update(overrides)
    return EvolveConfig.with_settings(**settings)


def test_a_toy_algorithm_runs_and_shows_up_everywhere(toy, tiny_ws, tiny_zoo_dir, tmp_path, capsys):
    from engine.cli import main

    # the runner: two generations after the start point, the champion tested, a result recorded
    evo = Evolution(tiny_ws, toy_config(spread=0.3))
    result = evo.run()
    assert [h["generation"] for h in result["history"]] == [0, 1, 2]
    assert result["evaluations"] == 1 + 2 * 2 and result["algorithm"] == NAME
    assert result["champion"]["fitness"] >= result["start_fitness"]
    assert 0.0 <= result["champion"]["test"]["accuracy"] <= 1.0
    assert result["config"]["options"] == {"spread": 0.3}
    assert result["champion"]["recipe"]["algorithm"] == NAME

    # validation: the declared range of its own setting, named in one line
    with pytest.raises(EvolveError, match=r"spread must be in \(0.0, 1.0\], got 0"):
        toy_config(spread=0).check()
    with pytest.raises(EvolveError, match="has no setting"):
        toy_config(sigma=1).check()

    # the schema the Evolve page draws its algorithm list and controls from
    schema = EVOLUTIONS.schema()[NAME]
    assert schema["title"] == "Toy random search"
    assert [p["name"] for p in schema["params"]] == ["method", "layer_groups", "spread"]

    # the CLI: a choice of --algorithm, a --spread flag with its range, and a run through the store
    with pytest.raises(SystemExit):
        main(["evolve", "--help"])
    help_text = capsys.readouterr().out
    assert NAME in help_text and "--spread" in help_text and "(>0.0..1.0)" in help_text
    assert main(["evolve", "--algorithm", NAME, "--spread", "2", "--target", TARGET]) == 2
    assert "spread must be in (0.0, 1.0], got 2" in capsys.readouterr().err
    rc = main(["evolve", "--zoo", str(tiny_zoo_dir), "--cache-dir", str(tmp_path), "--device", "cpu",
               "--target", TARGET, "--sources", *SOURCES, "--algorithm", NAME, "--spread", "0.2",
               "--generations", "1", "--population", "2", "--dev-size", "8", "--layer-groups", "0",
               "--json", "--quiet"])
    assert rc == 0
    data = json.loads(capsys.readouterr().out)
    assert data["status"] == "done" and data["params"]["options"] == {"spread": 0.2}
    assert data["params"]["algorithm"] == NAME and data["result"]["generation"] == 1


def test_the_evolve_page_offers_a_registered_algorithm(toy, app_cache):
    from app_support import goto, open_app, rerun

    at = goto(open_app(), "Evolve")
    assert "Toy random search" in at.segmented_control(key="evo_algorithm").options  # its title
    at.segmented_control(key="evo_algorithm").set_value(NAME)
    rerun(at)
    assert not at.exception
    assert at.slider(key="evo_spread").value == 0.5  # its Param's control, default and range
    assert at.selectbox(key="evo_method").value == "ties"
