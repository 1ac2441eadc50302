"""RegMean++ on small real XLM-R classifiers (2 layers, fine-tuned by real Adam steps from one base):
its definition, layer by layer, and parity with FusionBench 0.2.33's RegMeanAlgorithmPlusPlus."""
import copy

import pytest
import torch
from transformers import XLMRobertaConfig, XLMRobertaForSequenceClassification

from engine.merge import MERGES, MergeContext, merge_state_dicts
from engine.merge.data_aware import linear_grams
from engine.merge.regmean_plusplus import forward_blocks

torch.set_num_threads(1)
CONFIG = dict(vocab_size=100, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
              intermediate_size=64, max_position_embeddings=40, num_labels=4)
EXAMPLES = 32
LAYER = "roberta.encoder.layer.{}."


def _batch(gen, size=8, length=10):
    ids = torch.randint(3, 100, (size, length), generator=gen)
    ids[:, 0] = 0
    return {"input_ids": ids, "attention_mask": torch.ones_like(ids),
            "labels": torch.randint(0, 4, (size,), generator=gen)}


@pytest.fixture(scope="module")
def zoo():
    """Three classifiers fine-tuned from one random base; unpadded batches per source (a
    different token range per source, so their activations differ)."""
    config = XLMRobertaConfig(**CONFIG)
    torch.manual_seed(0)
    base = XLMRobertaForSequenceClassification(config).state_dict()
    sources, data = [], []
    for i in range(3):
        torch.manual_seed(10 + i)
        model = XLMRobertaForSequenceClassification(config)
        model.load_state_dict(base)
        model.train()
        opt = torch.optim.Adam(model.parameters(), lr=3e-3)
        gen = torch.Generator().manual_seed(i)
        for _ in range(12):
            loss = model(**_batch(gen)).loss
            opt.zero_grad()
            loss.backward()
            opt.step()
        sources.append({k: v.detach().clone() for k, v in model.state_dict().items()})
        gen = torch.Generator().manual_seed(100 + i)
        data.append([_batch(gen) for _ in range(EXAMPLES // 8)])

    def build(state):
        m = XLMRobertaForSequenceClassification(config)
        m.load_state_dict(state)
        return m.eval()

    return {"sources": sources, "data": data, "build": build,
            "context": MergeContext(build, lambda i: data[i])}


def merge(zoo, method, sources=None, weights=None, alpha=0.9):
    return merge_state_dicts(method, sources or zoo["sources"], weights,
                             params={"examples": EXAMPLES, "alpha": alpha}, context=zoo["context"])


def _layer(state, i):
    return {k: v for k, v in state.items() if k.startswith(LAYER.format(i)) and k.endswith("weight")
            and v.dim() == 2}


def test_blocks_follow_the_forward_order(zoo):
    blocks = forward_blocks(zoo["build"](zoo["sources"][0]), zoo["data"][0][0])
    assert [label for label, _ in blocks] == [None, "roberta.encoder.layer.0",
                                              "roberta.encoder.layer.1", None]
    assert blocks[0][1][0] == "roberta.embeddings.word_embeddings.weight"
    assert blocks[-1][1] == ["classifier.dense.weight", "classifier.dense.bias",
                             "classifier.out_proj.weight", "classifier.out_proj.bias"]


def test_layer_zero_is_regmean_where_the_embeddings_are_shared(zoo):
    """With one embedding table for all sources the first layer's inputs are the same as
    RegMean's, so is its merge; the second layer's inputs come from the merged first layer and
    its merge differs from RegMean's."""
    shared = [{k: (zoo["sources"][0][k] if k.startswith("roberta.embeddings.") else v)
               for k, v in s.items()} for s in zoo["sources"]]
    plus, plain = merge(zoo, "regmean_plusplus", shared), merge(zoo, "regmean", shared)
    for k in _layer(plain, 0):
        torch.testing.assert_close(plus[k], plain[k], rtol=1e-5, atol=1e-5, msg=k)
        assert plus.report.treatment[k] == "regmean++"
    assert max(float((plus[k] - plain[k]).abs().max()) for k in _layer(plain, 1)) > 1e-3


def test_each_block_is_regmean_on_the_merged_models_activations(zoo):
    """Layer 1 and the head, rebuilt from the definition: source i's Gram matrices read from a model
    holding the merged result's lower blocks and source i's own rest (a full forward pass), then
    the RegMean formula with the weights; the sources' own activations give another result."""
    weights = [0.5, 0.3, 0.2]
    out = merge(zoo, "regmean_plusplus", weights=weights)
    regmean = MERGES.get("regmean")
    w = torch.tensor(weights)
    for lower, prefix in ((("roberta.embeddings.", LAYER.format(0)), LAYER.format(1)),
                          (("roberta.",), "classifier.")):
        grams, own = [], []
        for s, batches in zip(zoo["sources"], zoo["data"]):
            hybrid = {k: out[k] if k.startswith(lower) else v for k, v in s.items()}
            grams.append(linear_grams(zoo["build"](hybrid), batches))
            own.append(linear_grams(zoo["build"](s), batches))
        keys = [k for k in grams[0] if k.startswith(prefix)]
        assert len(keys) == (6 if prefix != "classifier." else 2)
        moved = 0.0
        for k in keys:
            tensors = [s[k] for s in zoo["sources"]]
            expected = regmean.fn(tensors, w, None, key=k, alpha=0.9, grams=[g[k] for g in grams])
            torch.testing.assert_close(out[k], expected, rtol=1e-5, atol=1e-6, msg=k)
            other = regmean.fn(tensors, w, None, key=k, alpha=0.9, grams=[g[k] for g in own])
            moved = max(moved, float((other - expected).abs().max()))
        assert moved > 1e-3, prefix
    linear_avg = sum(wi * s["roberta.encoder.layer.1.output.LayerNorm.weight"]
                     for wi, s in zip(weights, zoo["sources"]))
    torch.testing.assert_close(out["roberta.encoder.layer.1.output.LayerNorm.weight"], linear_avg)


# ---- FusionBench -------------------------------------------------------------------------------

def _fusionbench_merge(zoo, alpha):
    """FusionBench's RegMeanAlgorithmPlusPlus.run with its model-specific steps written for XLM-R
    as its CLIP adapter (clip_regmean_plusplus.py) writes them for CLIP."""
    from fusion_bench.method.regmean_plusplus.regmean_plusplus import RegMeanAlgorithmPlusPlus
    from fusion_bench.modelpool import BaseModelPool

    data = {f"m{i}": batches for i, batches in enumerate(zoo["data"])}

    class Pool(BaseModelPool):
        def load_train_dataset(self, name, *args, **kwargs):
            return data[name]

    class XLMRRegMeanPlusPlus(RegMeanAlgorithmPlusPlus):
        def merge_embedding_layer(self, models_to_merge_dict):
            states = [m.state_dict() for m in models_to_merge_dict.values()]
            return {k: torch.stack([s[k] for s in states]).mean(dim=0) for k in states[0]
                    if k.startswith("roberta.embeddings.")}

        def get_input_for_first_layer(self, model, train_dataset):
            return [model.roberta.embeddings(input_ids=b["input_ids"]).detach() for b in train_dataset]

        def get_layers(self, model):
            return model.roberta.encoder.layer

        def update_merged_params_dict(self, merged_params_dict, new_merged_params, layer_idx):
            merged_params_dict.update({f"{LAYER.format(layer_idx)}{k}": v
                                       for k, v in new_merged_params.items()})
            return merged_params_dict

        def layer_batches_forward(self, layer, batches_input):
            return [layer(b).detach() for b in batches_input]

        def get_regmean_weights(self, model_name, layer, batches_input, linear_modules_to_merge):
            grams, rows = {}, {}

            def hook_for(module_name):
                def hook(module, inputs, output):
                    x = inputs[0].detach().reshape(-1, inputs[0].shape[-1])
                    xtx = x.T @ x
                    if module_name not in grams:
                        grams[module_name], rows[module_name] = xtx / x.shape[0], x.shape[0]
                    else:
                        grams[module_name] = (grams[module_name] * rows[module_name] + xtx) / (
                            rows[module_name] + x.shape[0])
                        rows[module_name] += x.shape[0]
                return hook

            handles = [m.register_forward_hook(hook_for(n)) for n, m in linear_modules_to_merge.items()]
            self.layer_batches_forward(layer, batches_input)
            for h in handles:
                h.remove()
            return grams

    models = {f"m{i}": zoo["build"](s) for i, s in enumerate(zoo["sources"])}
    models["_pretrained_"] = copy.deepcopy(models["m0"])
    algorithm = XLMRRegMeanPlusPlus(num_regmean_examples=EXAMPLES, exclude_param_names_regex=[],
                                    reduce_non_diagonal_ratio=alpha, weight_transpose=True)
    return algorithm.run(Pool(models)).state_dict()


@pytest.mark.parametrize("alpha", [0.9, 0.6])
def test_matches_fusionbench_regmean_plusplus(zoo, alpha):
    """Embeddings and every encoder layer as FusionBench merges them (its float32 inverse vs our
    float64 solve with a 1e-6 ridge: ≤ 1e-4; 7.2e-6 measured at α 0.9); past the last layer FusionBench keeps its
    pretrained model's head where ours RegMean-merges the head on the merged encoder's outputs."""
    pytest.importorskip("fusion_bench", reason="fusion-bench 0.2.33 not installed")
    theirs = _fusionbench_merge(zoo, alpha)
    ours = merge(zoo, "regmean_plusplus", alpha=alpha)
    encoder = [k for k in ours if k.startswith("roberta.")]
    assert len(encoder) > 30
    for k in encoder:
        torch.testing.assert_close(ours[k], theirs[k], rtol=1e-4, atol=1e-4, msg=k)
    assert ours.report.treatment["classifier.out_proj.weight"] == "regmean++"
    assert not torch.equal(ours["classifier.out_proj.weight"], theirs["classifier.out_proj.weight"])


class BagOfWords(torch.nn.Module):
    """A real classifier without numbered layers: an embedding bag and one linear layer."""

    def __init__(self):
        super().__init__()
        self.embed = torch.nn.EmbeddingBag(100, 8)
        self.out = torch.nn.Linear(8, 4)

    def forward(self, input_ids, attention_mask=None):
        from types import SimpleNamespace

        return SimpleNamespace(logits=self.out(self.embed(input_ids)))


def test_bad_input_names_what_is_missing(zoo):
    from engine.merge import MergeError

    torch.manual_seed(0)
    states = [BagOfWords().state_dict() for _ in range(2)]

    def build(state):
        model = BagOfWords()
        model.load_state_dict(state)
        return model

    context = MergeContext(build, lambda i: zoo["data"][i])
    with pytest.raises(MergeError, match="no numbered layers.*use regmean"):
        merge_state_dicts("regmean_plusplus", states, context=context)
    assert set(merge_state_dicts("regmean", states, context=context)) == set(states[0])
    with pytest.raises(MergeError, match="no data for model 'de'"):
        merge_state_dicts("regmean_plusplus", zoo["sources"][:2], names=["de", "en"],
                          context=MergeContext(zoo["build"], lambda i: []))


def test_progress_runs_through_the_layers_and_cancel_stops_it(zoo):
    from engine.progress import Cancelled

    seen = []
    merge_state_dicts("regmean_plusplus", zoo["sources"], params={"examples": EXAMPLES},
                      context=zoo["context"], progress=seen.append)
    messages = " ".join(p.message for p in seen)
    assert seen[-1].fraction == 1.0 and "layer.1" in messages and "the ends" in messages

    def cancel(p):
        if 0.3 < p.fraction < 0.9:  # between layers of the pre-pass
            raise Cancelled()
    with pytest.raises(Cancelled):
        merge_state_dicts("regmean_plusplus", zoo["sources"], params={"examples": EXAMPLES},
                          context=zoo["context"], progress=cancel)
