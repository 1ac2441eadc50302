"""How to add an ensemble rule, proven: one ``ENSEMBLES.register`` call (here, in this test)
and the rule is in the schema the Ensemble page draws from, in the CLI's method listing, through
the whole conformance suite, and usable by ``combine`` on real cached logits; no other file
touched."""
import json

import numpy as np
import pytest

from engine.cli import main
from engine.ensemble import ENSEMBLES, EnsembleError, combine, softmax
from engine.ensemble.checks import run_checks
from engine.registry import Param


@pytest.fixture
def power_mean():
    """The toy rule: the weighted power mean of the models' probabilities, renormalised."""
    @ENSEMBLES.register(
        "power_mean", family="pool", max_sources=4,
        params=[Param("power", "float", 2.0, 0.1, 4.0, help="1: soft vote; larger: follow the "
                                                             "most confident model")],
        summary="Weighted power mean of the models' probabilities, renormalised.")
    def rule(logits, weights, power):
        mean = np.tensordot(weights.astype(np.float32), softmax(logits) ** power, axes=(0, 0))
        mean = mean ** (1.0 / power)
        return mean / mean.sum(axis=1, keepdims=True)

    yield ENSEMBLES.get("power_mean")
    ENSEMBLES.unregister("power_mean")
    assert "power_mean" not in ENSEMBLES


def test_a_rule_registered_in_one_place_is_everywhere(power_mean, tiny_ws, capsys):
    schema = ENSEMBLES.schema()["power_mean"]
    assert schema["params"][0]["name"] == "power" and schema["params"][0]["default"] == 2.0
    assert (schema["needs_fit"], schema["data_use"], schema["max_sources"]) == (False, "none", 4)

    assert main(["methods", "--kind", "ensemble", "--json"]) == 0
    listed = json.loads(capsys.readouterr().out)
    assert listed["power_mean"]["summary"].startswith("Weighted power mean")
    assert main(["methods", "--kind", "ensemble"]) == 0
    assert "power_mean" in capsys.readouterr().out

    results = run_checks(power_mean)
    assert set(results.values()) == {"passed"}, results  # a plain weighted rule: nothing exempt

    sources, target = ["en-US", "es-ES", "nl-NL"], "de-DE"
    logits = np.stack([tiny_ws.evaluator.source_logits(s, target, "validation").logits for s in sources])
    weights = np.array([0.5, 0.3, 0.2])
    probs = combine("power_mean", logits, weights=weights, params={"power": 3})
    expected = (np.tensordot(weights, softmax(logits).astype(np.float64) ** 3, axes=(0, 0))) ** (1 / 3)
    np.testing.assert_allclose(probs, expected / expected.sum(1, keepdims=True), atol=1e-5)
    np.testing.assert_allclose(combine("power_mean", logits, weights=weights, params={"power": 1}),
                               combine("soft", logits, weights=weights), atol=1e-5)
    with pytest.raises(EnsembleError, match="'power_mean' combines 1 to 4 models, got 5"):
        combine("power_mean", np.concatenate([logits, logits[:2]]))  # max_sources from its traits
