"""Searches merge only the embedding rows evaluation reads (engine/merge/rows.py): every
candidate scores exactly as with whole merges, the champion exported is the whole merge, a state
lacking a row evaluation needs is completed first, and tied embeddings never take the path."""
import pytest
import torch
from transformers import BertConfig, BertForMaskedLM, BertForSequenceClassification

from engine.evolve import Evolution, EvolveConfig
from engine.evolve.build import Sources, build_grouped
from engine.evolve.fitness import Fitness
from engine.evolve.resident import input_embedding_key
from engine.merge.rows import RowMerged

torch.set_num_threads(1)
TARGET, SOURCES = "nl-NL", ["de-DE", "en-US"]


class Recording(Evolution):
    """An Evolution that keeps every scored candidate's (fitness, accuracy, nll); keyword switches
    (restrict_rows, warm_kernels, ...) are set on it before it starts."""

    def __init__(self, *args, switches=None, **kwargs):
        self.scored = []
        for name, value in (switches or {}).items():
            setattr(self, name, value)
        super().__init__(*args, **kwargs)

    def _member(self, plain, cand, g, outcome):
        member = super()._member(plain, cand, g, outcome)
        self.scored.append((member.fitness, member.metrics.get("accuracy"),
                            member.metrics.get("nll")))
        return member


def config(algorithm, **kw):
    return EvolveConfig(target=TARGET, sources=SOURCES, algorithm=algorithm, method="ties",
                        generations=2, population=3, dev_size=16, layer_groups=1, patience=0,
                        seed=2, **kw)


@pytest.mark.parametrize("algorithm", ["cmaes", "optuna_tpe"])
def test_every_candidate_scores_as_with_whole_merges_and_the_champion_is_whole(tiny_ws, algorithm):
    restricted = Recording(tiny_ws, config(algorithm))
    key = input_embedding_key(tiny_ws.evaluator._model)
    rows = restricted.sources.rows[key]
    vocab = restricted.sources.states[0][key].shape[0]
    assert 0 < len(rows) < vocab / 2
    while restricted.step():
        pass
    whole = Recording(tiny_ws, config(algorithm), switches={"restrict_rows": False})
    assert whole.sources.rows == {}
    while whole.step():
        pass
    assert len(restricted.scored) == len(whole.scored) >= 5
    assert restricted.scored == whole.scored            # the same floats, every candidate
    timeless = lambda m: {k: v for k, v in m.items() if k != "latency_ms"}  # noqa: E731
    assert timeless(restricted.champion_test) == timeless(whole.champion_test)
    assert isinstance(restricted.champion_state, RowMerged)  # what was evaluated: the rows only
    champion = restricted.champion_model()
    assert not getattr(champion, "rows", None) and champion[key].shape[0] == vocab
    reference = Sources(tiny_ws, SOURCES, need_base=True, cache=False, resident=False)
    expected = build_grouped("ties", restricted.search.groups,
                             restricted.search.decode(restricted.champion.candidate["x"]), reference,
                             seed=2)
    assert list(champion) == list(expected)
    for k in expected:
        assert torch.equal(champion[k], expected[k]), k
    assert whole.champion.candidate == restricted.champion.candidate


def test_a_missing_row_is_merged_whole_before_evaluation(tiny_ws):
    evo = Recording(tiny_ws, config("cmaes"))
    key = next(iter(evo.sources.rows))
    fitness = Fitness(tiny_ws, TARGET, {"accuracy": 1.0, "loss": 1.0}, dev_size=16, seed=2)
    settings = evo.search.decode(evo.search.x0)
    state = build_grouped("ties", evo.search.groups, settings, evo.sources)
    assert isinstance(state, RowMerged)
    want = fitness.metrics(state.complete())
    needed = int(fitness.dev.input_ids[0][1])  # a token of the first dev sentence
    keep = state.rows[key][state.rows[key] != needed]
    lacking = RowMerged({k: (v[state.rows[key] != needed] if k == key else v) for k, v in state.items()},
                        rows={key: keep}, complete=state.complete)
    assert not lacking.covers(torch.tensor([needed]))
    got = fitness.metrics(lacking)
    assert got["accuracy"] == want["accuracy"] and got["nll"] == want["nll"]


def test_tied_embeddings_never_take_the_rows_path():
    small = dict(vocab_size=100, hidden_size=64, num_hidden_layers=1, num_attention_heads=2,
                 intermediate_size=64)
    tied = BertForMaskedLM(BertConfig(**small, tie_word_embeddings=True))
    assert input_embedding_key(tied) is None
    untied = BertForMaskedLM(BertConfig(**small, tie_word_embeddings=False))
    assert input_embedding_key(untied) == "bert.embeddings.word_embeddings.weight"
    classifier = BertForSequenceClassification(BertConfig(**small))
    assert input_embedding_key(classifier) == "bert.embeddings.word_embeddings.weight"
