"""Evolutionary merge search on the real tiny demo zoo: EvoMerge's generation 0, elitism, mutation
ranges, the three-stage build, fitness, CMA-ES per layer group, early stopping, determinism, and
the job's streaming, cancellation, resume and export."""
import json
import math

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from engine.evolve import (EvolveConfig, EvolveError, Evolution, evolve_job, export_evolution,
                           parse_fitness_weights, resolve_config, resumable_runs,
                           resume_evolution)
from engine.evolve.build import Sources, build_evomerge, build_grouped, layer_partition
from engine.evolve.evomerge import EvoMergeSearch
from engine.evolve.fitness import Fitness, subsample
from engine.evolve.member import Member
from engine.evolve.runner import read_checkpoint
from engine.evolve.genome import (COMBOS, STAGE_METHODS, Genome, blend, check_genome,
                                  combo_label, combo_methods, default_genome, diversity,
                                  gene_vector, genes, get_gene, mutate, mutate_value)
from engine.jobs import JobRunner
from engine.merge import MERGES, merge_state_dicts
from engine.store import Store

torch.set_num_threads(1)
TARGET, SOURCES = "nl-NL", ["de-DE", "en-US"]


def evo_config(**overrides):
    """Tiny but complete: gen 0 = the 8 combinations, then 1 elite × 2 mutants + 1 merged child."""
    settings = dict(target=TARGET, sources=SOURCES, weights=[0.6, 0.4], generations=3,
                    population=4, elites=1, mutants_per_elite=2, group_size=3, dev_size=12,
                    patience=0, seed=3)
    settings.update(overrides)
    return EvolveConfig(**settings)


def cma_config(**overrides):
    settings = dict(target=TARGET, sources=SOURCES, algorithm="cmaes", method="ties",
                    generations=2, population=3, layer_groups=1, dev_size=12, patience=0, seed=5)
    settings.update(overrides)
    return EvolveConfig(**settings)


def curves(history):
    return [(h["generation"], h["best"], h["mean"], h["worst"], h["champion"], h["diversity"])
            for h in history]


@pytest.fixture(scope="module")
def reference(tiny_ws):
    """One uninterrupted EvoMerge run, stepped so that every generation's population is kept."""
    evo = Evolution(tiny_ws, evo_config())
    populations = []
    while True:
        more = evo.step()
        populations.append([m.to_dict() for m in evo.search.population])
        if not more:
            break
    return evo, populations


# ---- the genome ------------------------------------------------------------------------------

def test_combinations_follow_seed_bits():
    assert combo_methods(0) == ("linear", "dare_linear", "frankenmerge")
    assert combo_methods(0b011) == ("slerp", "ties", "frankenmerge")
    assert combo_label(0b001) == "100"  # bit 0 first: SLERP + DARE + frankenmerge
    assert combo_methods(7) == ("slerp", "ties", "inverse_variance")
    with pytest.raises(ValueError, match="0..7"):
        combo_methods(8)


def test_generation_zero_has_exactly_the_eight_combinations(reference):
    search = EvoMergeSearch(evo_config(), SOURCES, [0.6, 0.4])
    cands = search.initial(np.random.default_rng(0))
    assert sorted(c["genome"].combo for c in cands) == list(COMBOS)
    for c in cands:  # registry defaults, starting weights
        assert c["genome"].weights == pytest.approx([0.6, 0.4])
        assert c["genome"].params["ties"]["density"] == [0.2, 0.2]
    evo, _ = reference
    first = evo.history[0]
    assert first["generation"] == 0 and first["evaluations"] == 8
    # every combination used once in generation 0, then 3 offspring per generation
    assert sum(evo.result()["combo_counts"].values()) == 8 + 3 * evo.config.generations


def test_mutation_stays_within_declared_ranges():
    rng = np.random.default_rng(1)
    parent = default_genome(0b010, [0.5, 0.5])
    for combo in COMBOS:
        genome = parent.copy()
        genome.combo = combo
        for _ in range(60):  # wild steps: σ = the whole range, every gene
            genome = mutate(genome, rng, sigma=1.0, rate=1.0)
            check_genome(genome)  # Param.check for every value of every stage method
            assert sum(genome.weights) == pytest.approx(1.0) and min(genome.weights) >= 0
            for gene in genes(genome):
                p, v = gene.param, get_gene(genome, gene)
                if p.kind in ("float", "int"):
                    assert p.low <= v <= p.high
                    if p.low_open:
                        assert v > p.low
                elif p.kind == "choice":
                    assert v in p.choices


def test_mutation_changes_only_active_genes_and_at_least_one():
    rng = np.random.default_rng(2)
    parent = default_genome(0b111, [0.5, 0.5])  # slerp + ties + inverse_variance
    for _ in range(20):
        child = mutate(parent, rng, sigma=0.05, rate=0.0)  # rate 0: still exactly one gene moves
        changed = [g for g in genes(parent, active_only=False)
                   if get_gene(parent, g) != get_gene(child, g)]
        assert 1 <= len(changed) <= 2  # one gene (+ the other weight after renormalising)
        assert all(g.method in ("", "ties", "inverse_variance") for g in changed)


def test_mutate_value_by_kind():
    rng = np.random.default_rng(0)
    ties, dare = MERGES.get("ties"), MERGES.get("dare_linear")
    assert mutate_value(ties.param("normalize"), True, 0.1, rng) is False
    rescale = dare.param("rescale")
    assert all(mutate_value(rescale, "l1", 0.1, rng) in ("inverse_density", "none")
               for _ in range(10))
    density = ties.param("density")
    draws = [mutate_value(density, 0.5, 0.05, np.random.default_rng(s)) for s in range(200)]
    assert np.std(draws) == pytest.approx(0.05, rel=0.2)  # σ × range (range 1)


def test_blend_is_the_convex_combination():
    a, b = default_genome(0, [1.0, 0.0]), default_genome(7, [0.0, 1.0])
    a.params["ties"]["density"], b.params["ties"]["density"] = [0.2, 0.4], [0.6, 0.8]
    a.mix, b.mix = 0.0, 1.0
    child = blend([a, b], [0.25, 0.75], combo=5, rng=np.random.default_rng(0))
    assert child.combo == 5
    assert child.weights == pytest.approx([0.25, 0.75])
    assert child.mix == pytest.approx(0.75)
    assert child.params["ties"]["density"] == pytest.approx([0.5, 0.7])
    check_genome(child)


def test_diversity_is_mean_pairwise_gene_distance():
    a = default_genome(0, [0.5, 0.5])
    b = a.copy()
    b.combo = 1  # one bit of the whole gene vector differs
    n = len(gene_vector(a))
    assert diversity([a, a.copy()]) == 0.0
    assert diversity([a, b]) == pytest.approx(1 / n)
    assert diversity([a, b, b.copy()]) == pytest.approx((1 / n + 1 / n + 0) / 3)


def test_offspring_are_mutants_merged_losers_and_reseeds():
    """Seed 004's defaults: 2 elites × 3 mutants, ranks 3–5 and 6–8 merged into one child each,
    random hybrids only when diversity collapses; then elites + the best 6 offspring."""
    search = EvoMergeSearch(evo_config(population=8, elites=2, mutants_per_elite=3,
                                       diversity_threshold=0.0), SOURCES, [0.5, 0.5])
    rng = np.random.default_rng(0)
    members = []
    for rank, cand in enumerate(search.initial(rng)):  # fitness falls with rank; weights mark it
        genome = cand["genome"]
        genome.weights = [0.1 * (rank + 1), 1 - 0.1 * (rank + 1)]
        members.append(Member(search.plain(cand), 1.0 - 0.1 * rank, {}, "init", 0))
    search.accept(0, members)
    assert [m.fitness for m in search.population] == sorted((m.fitness for m in members),
                                                            reverse=True)
    offspring = search.propose(1, rng)
    assert [c["origin"] for c in offspring] == ["mutant"] * 6 + ["merged"] * 2
    first, second = (c["genome"].weights[0] for c in offspring[6:])
    assert 0.3 - 1e-9 <= first <= 0.5 + 1e-9 and 0.6 - 1e-9 <= second <= 0.8 + 1e-9
    assert search.reseeded == 0

    search.config.diversity_threshold = 1.0  # "collapsed": two random hybrids join
    offspring = search.propose(1, rng)
    assert [c["origin"] for c in offspring][-2:] == ["reseed", "reseed"]
    assert search.reseeded == 2 and len(offspring) == 10
    elites = search.population[:2]
    children = [Member(search.plain(c), 0.01 * i, {}, c["origin"], 1)
                for i, c in enumerate(offspring)]
    search.accept(1, children)
    assert search.population[:2] == elites and len(search.population) == 8
    assert [m.fitness for m in search.population[2:]] == [0.09, 0.08, 0.07, 0.06, 0.05, 0.04]


# ---- building and scoring --------------------------------------------------------------------

def test_three_stages_compose_as_documented(tiny_ws):
    sources = Sources(tiny_ws, SOURCES, need_base=True)
    genome = default_genome(0b110, [0.7, 0.3])  # linear + ties + inverse variance
    genome.mix = 0.0  # stage 3 gives all weight to stage 1: the hand-computed linear merge
    out = build_evomerge(genome, sources)
    for key, tensor in out.items():
        expected = 0.7 * sources.states[0][key] + 0.3 * sources.states[1][key]
        torch.testing.assert_close(tensor, expected, rtol=1e-5, atol=1e-6)
    genome.mix = 1.0  # ... all weight to stage 2: TIES over the sources' task vectors
    out = build_evomerge(genome, sources)
    ties = merge_state_dicts("ties", sources.states, [0.7, 0.3], base=sources.base,
                             params=genome.params["ties"])
    for key in out:
        torch.testing.assert_close(out[key], ties[key], rtol=1e-5, atol=1e-6)


def test_layer_groups_get_their_own_weights(tiny_ws):
    sources = Sources(tiny_ws, SOURCES, need_base=False)
    groups = layer_partition(sources.keys, 1)
    assert [name for name, _ in groups] == ["embeddings", "layer 0", "head"]
    assert sorted(k for _, keys in groups for k in keys) == sorted(sources.keys)
    settings = [([1.0, 0.0], {}), ([0.0, 1.0], {}), ([0.5, 0.5], {})]
    out = build_grouped("linear", groups, settings, sources)
    for (name, keys), (w, _) in zip(groups, settings):
        for key in keys:
            expected = w[0] * sources.states[0][key] + w[1] * sources.states[1][key]
            torch.testing.assert_close(out[key], expected)
    assert layer_partition(sources.keys, 0) == [("all", sources.keys)]


def test_fitness_terms_by_hand(tiny_ws):
    fit = Fitness(tiny_ws, TARGET, {"accuracy": 0.3, "loss": 0.4, "latency": 0.2, "memory": 0.1})
    fit.reference = {"latency_ms": 2.0, "peak_mem_mb": 10.0}
    m = {"accuracy": 0.6, "nll": math.log(2), "latency_ms": 4.0, "peak_mem_mb": 5.0}
    assert fit.terms(m) == pytest.approx({"accuracy": 0.6, "loss": 0.5, "latency": 0.5,
                                          "memory": 1.0})
    assert fit.combine(m) == pytest.approx(0.3 * 0.6 + 0.4 * 0.5 + 0.2 * 0.5 + 0.1 * 1.0)
    assert parse_fitness_weights("accuracy=1, loss=0") == {"accuracy": 1.0, "loss": 0.0,
                                                           "latency": 0.0, "memory": 0.0}
    with pytest.raises(EvolveError, match="speed"):
        parse_fitness_weights("speed=1")


def test_dev_sample_keeps_examples_and_labels_aligned(tiny_ws):
    ev = tiny_ws.evaluator
    full = ev.encoded(TARGET, "validation")
    sample = subsample(full, 10, seed=4)
    assert len(sample) == 10 and sample.fingerprint != full.fingerprint
    model = ev.working_model(tiny_ws.zoo.state_dict("de-DE"))
    all_logits = ev.forward(model, full).logits
    part_logits = ev.forward(model, sample).logits
    keep = np.sort(np.random.default_rng([4, 404]).choice(len(full), 10, replace=False))
    np.testing.assert_allclose(part_logits, all_logits[keep], rtol=1e-4, atol=1e-5)
    np.testing.assert_array_equal(sample.labels, np.asarray(full.labels)[keep])
    assert subsample(full, 0, 1) is full


def test_bad_settings_are_named(tiny_ws):
    with pytest.raises(EvolveError, match="leave-one-out"):
        evo_config(sources=["nl-NL", "de-DE"], weights=None).check()
    with pytest.raises(EvolveError, match="elites"):
        evo_config(elites=4).check()
    with pytest.raises(EvolveError, match="needs a data pass"):
        Evolution(tiny_ws, cma_config(method="frankenmerge"))
    with pytest.raises(EvolveError, match="unknown merge method"):
        Evolution(tiny_ws, cma_config(method="nope"))
    with pytest.raises(Exception, match="xx-XX"):
        Evolution(tiny_ws, evo_config(sources=["xx-XX"], weights=None))


# ---- the search ------------------------------------------------------------------------------

def test_elites_survive_unchanged(reference):
    evo, populations = reference
    for before, after in zip(populations, populations[1:]):
        elite = before[0]
        assert elite in after  # same genome, fitness, metrics, birth generation
    assert all(len(p) == evo.config.population for p in populations)
    assert [m["fitness"] for m in populations[-1]] == sorted(
        (m["fitness"] for m in populations[-1]), reverse=True)


def test_champion_is_best_ever_and_tested(reference):
    evo, populations = reference
    best_seen = max(m["fitness"] for p in populations for m in p)
    assert evo.champion.fitness == best_seen
    assert [h["champion"] for h in evo.history] == sorted(h["champion"] for h in evo.history)
    test = evo.result()["champion"]["test"]
    assert 0.0 <= test["accuracy"] <= 1.0 and test["n"] == len(tiny_test_labels(evo))


def tiny_test_labels(evo):
    return evo.ws.dataset.get(TARGET, "test").labels


def test_early_stopping_on_a_plateau(tiny_ws):
    seen = []
    evo = Evolution(tiny_ws, cma_config(generations=10, population=2, patience=2, min_delta=1.0),
                    progress=seen.append)
    evo.run()
    assert evo.generation == 2 and evo.stopped.startswith("plateau")
    assert evo.result()["stopped"] == evo.stopped
    fractions = [p.fraction for p in seen]
    assert fractions == sorted(fractions) and fractions[-1] == 1.0
    assert seen[-2].eta_s is not None  # generation 2 done: 3 of 11 generations, ETA known


def test_cmaes_is_deterministic_resumable_and_never_below_its_start(tiny_ws, tmp_path):
    a = Evolution(tiny_ws, cma_config())
    while a.step():
        pass
    interrupted = Evolution(tiny_ws, cma_config(), checkpoint_dir=tmp_path)
    interrupted.step()
    interrupted.step()  # generations 0 and 1, then "the app stops"
    b = Evolution(tiny_ws, state=read_checkpoint(tmp_path))  # CMA-ES state replayed from JSON
    assert b.generation == 1
    while b.step():
        pass
    assert curves(a.history) == curves(b.history)
    assert a.champion.candidate == b.champion.candidate
    assert a.champion.fitness >= a.history[0]["best"]  # the start point is generation 0
    recipe = a.champion_recipe()
    assert [g["group"] for g in recipe["groups"]] == ["embeddings", "layer 0", "head"]
    assert all(sum(g["weights"].values()) == pytest.approx(1) for g in recipe["groups"])
    assert all(0 < d <= 1 for g in recipe["groups"] for d in g["params"]["density"])


# ---- jobs: streaming, cancel, resume, export -------------------------------------------------

def test_job_streams_cancels_and_resumes_to_the_same_result(tiny_ws, tmp_path, reference):
    """Cancelled right after generation 1 (from inside the job, so the test does not race the
    worker), the app restarts, the run resumes: same curves and champion as the reference run —
    which is also a second run with the same seed (determinism)."""
    store = Store(tmp_path / "runs.sqlite")
    runner = JobRunner(store)
    config = resolve_config(tiny_ws, evo_config())
    inner = evolve_job(tiny_ws, config)

    def job(ctx):
        log = ctx.log

        def log_then_cancel(name, step, value):
            log(name, step, value)
            if name == "evals_per_s" and step == 1:
                runner.cancel(ctx.run_id)
        ctx.log = log_then_cancel
        return inner(ctx)

    run_id = runner.submit("evolve", job, target=TARGET, params=config.to_dict(),
                           sources=config.sources, weights=config.weights)
    row = runner.wait(run_id, timeout=120)
    assert row["status"] == "cancelled"
    assert row["result"]["generation"] == 1 and row["result"]["champion"]["recipe"]["stages"]
    assert row["progress"] < 1
    assert [p["step"] for p in store.series(run_id, "best")] == [0, 1]
    assert store.series(run_id, "champion_test_accuracy")[0]["step"] == 0
    runner.shutdown()
    store.close()  # "the app restarts"

    store = Store(tmp_path / "runs.sqlite")
    runner = JobRunner(store)
    assert [r["id"] for r in resumable_runs(tiny_ws, store)] == [run_id]
    child = resume_evolution(runner, tiny_ws, run_id)
    row = runner.wait(child, timeout=180)
    assert row["status"] == "done" and row["parent"] == run_id
    assert resumable_runs(tiny_ws, store) == []
    evo, _ = reference
    result = row["result"]
    assert curves(result["history"]) == curves(evo.history)  # continued at generation done + 1
    assert result["champion"]["candidate"] == evo.champion.candidate
    assert result["champion"]["test"]["accuracy"] == evo.champion_test["accuracy"]
    assert [p["step"] for p in store.series(child, "best")] == [0, 1, 2, 3]
    assert row["metrics"]["test"]["accuracy"] == evo.champion_test["accuracy"]
    with pytest.raises(EvolveError, match="already finished"):
        resume_evolution(runner, tiny_ws, child)
    runner.shutdown()
    store.close()


def test_champion_exports_like_a_merge(reference, tmp_path):
    evo, _ = reference
    out = export_evolution(evo, tmp_path / "champion")
    recipe = json.loads((out / "recipe.json").read_text())
    assert recipe["kind"] == "evolve" and recipe["method"] in STAGE_METHODS
    assert recipe["evolve"]["combo"] == combo_label(Genome.from_dict(
        evo.champion.candidate["genome"]).combo)
    saved = load_file(str(out / "model.safetensors"))
    for key, tensor in evo.champion_model().items():
        torch.testing.assert_close(saved[key], tensor)


def test_cli_runs_cmaes_and_exports(tiny_zoo_dir, tmp_path, capsys):
    from engine.cli import main

    out = tmp_path / "export"
    rc = main(["evolve", "--zoo", str(tiny_zoo_dir), "--cache-dir", str(tmp_path),
               "--device", "cpu", "--target", TARGET, "--sources", *SOURCES, "--algorithm",
               "cmaes", "--generations", "1", "--population", "2", "--dev-size", "8",
               "--layer-groups", "1", "--no-merge-cache", "--json", "--quiet", "--export", str(out)])
    assert rc == 0
    data = json.loads(capsys.readouterr().out)
    assert data["status"] == "done" and data["result"]["generation"] == 1
    assert data["params"]["merge_cache"] is False
    assert (tmp_path / "runs.sqlite").exists()
    assert not (out / "mergekit.yaml").exists()  # per-group weights: no single mergekit twin
    assert json.loads((out / "recipe.json").read_text())["evolve"]["method"] == "ties"


def test_ray_fitness_evaluations_give_the_local_run(tiny_ws, reference):
    """The same EvoMerge generations with every candidate merged and scored as a Ray task on a
    local instance: the same fitness curves, populations and champion as the local reference."""
    ray = pytest.importorskip("ray", reason="ray is not installed: the Ray executor is not tested")
    local, populations = reference
    try:
        remote = Evolution(tiny_ws, evo_config(generations=1, executor="ray", ray_cpus=2))
        seen = []
        while True:
            more = remote.step()
            seen.append([m.to_dict() for m in remote.search.population])
            if not more:
                break
        assert [h["generation"] for h in remote.history] == [0, 1]
        for mine, theirs in zip(curves(remote.history), curves(local.history[:2])):
            assert mine == pytest.approx(theirs, abs=1e-6)
        for mine, theirs in zip(seen, populations[:2]):
            assert [m["candidate"] for m in mine] == [m["candidate"] for m in theirs]
        assert remote.fitness.evaluations >= 12      # the workers' dev passes are counted
        champion_gen = remote.champion_generation
        if local.champion_generation <= 1:
            assert champion_gen == local.champion_generation
            assert remote.champion.candidate == local.champion.candidate
            assert remote.champion_test["accuracy"] == pytest.approx(local.champion_test["accuracy"])
    finally:
        ray.shutdown()
