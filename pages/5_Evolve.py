"""Evolve: search merge recipes (any registered algorithm: EvoMerge, CMA-ES, Optuna, ...) on the
target's dev data; watch it live. The algorithm list and its settings' controls come from the
registry (engine/evolve/algorithms.py)."""
PAGE = {"title": "Evolve", "icon": ":material/genetics:", "order": 5,
        "summary": "Search merge recipes evolutionarily; watch fitness live."}
import streamlit as st

from dashboard import runs as runs_view
from dashboard import evolve_stage, figures, state, study_figures, widgets
from dashboard.experiment import language
from engine import tasks
from engine.evolve import (DEFAULT_FITNESS, EVOLUTIONS, FITNESS_TERMS, SEED_FITNESS, EvolveConfig,
                           resume_evolution, submit_evolution)
from engine.evolve.config import DEV_SUBSETS
from engine.evolve.estimate import candidates_per_generation
from engine.evolve.genome import combo_name
from engine.evolve.objectives import dev_passes, extra_targets
from engine.evolve.optuna_storage import record_stamp, study_record
from engine.limits import bounds
from engine.merge import MERGES
from engine.jobs import EXECUTORS
from engine.store import ACTIVE, STOPPED


def setting_control(p, key: str, where):
    """The control of one algorithm setting, drawn from its Param (an empty default: 'auto')."""
    label = p.name.replace("_", " ").capitalize()
    if p.kind == "choice" and all(c in MERGES for c in p.choices):
        return widgets.method_picker(MERGES, p.choices, label, key, default=p.default, where=where,
                                     help=p.help or None)
    if p.kind == "text":  # a path or a name; empty: the Param's meaning of empty (its help)
        return where.text_input(label, p.default, key=key, help=p.help or None)
    if p.default is None:
        value = where.number_input(label, *bounds(p), value=None, key=key, help=p.help or None,
                                   placeholder="auto")
        return None if value is None else (int(value) if p.kind == "int" else float(value))
    return widgets.scalar_control(p, label, key, where)


st.title("Evolve")
st.caption("Search merge recipes for the target: fitness is measured on the target's dev (validation) "
           "data; the best-ever champion is scored on the untouched test split whenever it changes.")
ws = state.require_workspace()
history = state.store().runs(kind="evolve", limit=50)

with st.expander("New evolutionary run", expanded=not history, icon=":material/add:"):
    settings, target, sources, weights = widgets.recipe_columns(ws, "evo")
    with settings:
        algorithm = st.segmented_control(
            "Algorithm", EVOLUTIONS.names(), default="evomerge", key="evo_algorithm",
            format_func=lambda n: EVOLUTIONS.get(n).title,
            help="; ".join(f"{m.title}: {m.summary}" for m in EVOLUTIONS),
        ) or "evomerge"
        spec = EVOLUTIONS.get(algorithm)
        c = st.columns(4)
        generations = c[0].number_input("Generations", *bounds("generations"), 10, key="evo_generations")
        population = c[1].number_input("Population", *bounds("population"), 8, key="evo_population")
        patience = c[2].number_input("Patience", *bounds("patience"), 5, key="evo_patience",
                                     help="stop after this many generations without a champion gain; 0 = off")
        seed = c[3].number_input("Seed", *bounds("seed"), 0, key="evo_seed")
        c = st.columns([3, 2, 2], vertical_alignment="bottom")
        dev_size = c[0].number_input("Dev examples (0 = the whole validation split)", *bounds("dev_size"), 0,
                                    key="evo_dev_size")
        dev_subset = c[1].selectbox("Dev subset", DEV_SUBSETS, key="evo_dev_subset", disabled=not dev_size,
                                    help="random sample, or the examples the sources disagree on (MERGE³-style, "
                                         "stratified by label; docs/results/dev_subset.md measures both)")
        merge_cache = c[2].toggle("Merge cache", True, key="evo_merge_cache",
                                  help="keep task vectors, sorted magnitudes and random draws between merges: "
                                       "several times faster, identical results, up to ~3× the sources' memory")
        st.markdown("**Fitness weights**")
        preset = st.toggle("Cost-aware fitness (accuracy .3, loss .4, latency .2, memory .1)",
                           key="evo_seed_fitness",
                           help="the composite fitness of the EvoMerge recipe this search follows; off: accuracy "
                                ".5 and loss .5, no cost terms")
        base_fitness = SEED_FITNESS if preset else DEFAULT_FITNESS
        fc = st.columns(len(FITNESS_TERMS))
        fitness = {t: float(fc[i].number_input(t, 0.0, 10.0, float(base_fitness[t]), step=0.05,
                                               key=f"evo_fit_{t}_{preset}"))
                   for i, t in enumerate(FITNESS_TERMS)}
        extra = {}
        with st.expander(f"{spec.title} settings", expanded=algorithm != "evomerge"):
            st.caption(spec.summary)
            e = st.columns(4)
            for i, p in enumerate(spec.params):  # one control per declared setting
                extra[p.name] = setting_control(p, f"evo_{p.name}", e[i % 4])
            if "method" in extra:  # a grouped search: which of the method's parameters it tunes
                tunable = [p.name for p in MERGES.get(extra["method"]).params
                           if p.kind == "float" and p.per_model]
                if tunable:
                    extra["tune"] = st.multiselect("Parameters tuned per group (besides the weights)",
                                                   tunable, default=tunable,
                                                   key=f"evo_tune_{extra['method']}") or None
        c = st.columns([2, 3])
        executor = c[0].segmented_control(
            "Evaluate candidates", list(EXECUTORS), default=EXECUTORS[0], key="evo_executor",
            help="local: one after another in this server; ray: each generation's candidates as parallel "
                 "Ray tasks (a local instance, or a cluster address) — the same results") or "local"
        address = c[1].text_input("Ray address (empty: a local instance)", "", key="evo_address",
                                  disabled=executor != "ray") or None
        extra.update(executor=executor, address=address if executor == "ray" else None)
        planned = EvolveConfig.with_settings(target=target, algorithm=algorithm,
                                             generations=int(generations), population=int(population),
                                             **extra)
        others = extra_targets(planned) if dev_passes(planned) > 1 else []
        st.caption(f"{candidates_per_generation(planned).text()} Each is one merge and one pass over "
                   f"{', '.join([target, *others])}'s dev data"
                   + (" (frankenmerge candidates: one more pass per layer choice)."
                      if algorithm == "evomerge" else "."))
        if st.button("Start evolution", type="primary", icon=":material/play_arrow:", key="evo_start",
                     disabled=not sources):
            config = EvolveConfig.with_settings(
                target=target, algorithm=algorithm, sources=sources, weights=weights,
                generations=int(generations), population=int(population), seed=int(seed),
                patience=int(patience), dev_size=int(dev_size), dev_subset=dev_subset, fitness_weights=fitness,
                merge_cache=bool(merge_cache), **extra)
            with state.engine_errors():
                st.session_state["evo_run"] = submit_evolution(state.runner(), ws, config)
            st.rerun()

history = state.store().runs(kind="evolve", limit=50)
every_target = bool(history) and st.toggle(f"Show runs of every target, not only {language(target)}",
                                           key="evo_every_target")
shown_runs = history if every_target else [r for r in history if r.get("target") == target]
if not shown_runs:
    st.info(f"No evolutionary run for {language(target)} yet."
            + (" Other targets have runs: tick 'Show runs of every target' to see them." if history else ""))
    st.stop()
history = shown_runs
ids = [r["id"] for r in history]
chosen = st.session_state.get("evo_run")
chosen = chosen if chosen in ids else ids[0]
labels = {r["id"]: runs_view.run_label(r) + (" (resumed)" if r.get("parent") else "") for r in history}
run_id = st.selectbox("Run", ids, index=ids.index(chosen), format_func=labels.get, key=f"evo_show_{chosen}")
was_active = state.store().get(run_id)["status"] in ACTIVE


@st.cache_resource(show_spinner=False, max_entries=8)
def study_views(stamp: tuple, _result: dict):
    """The run's stored trials and Optuna's views of them, read and drawn again only when the
    checkpoint or the journal changed (``stamp``); kept as objects, never pickled."""
    record = study_record(_result)
    return (record, *study_figures.study_views(record)) if record and record["trials"] else (None, {}, {})


def study_panel(result: dict) -> None:
    """An Optuna run's study as Optuna Dashboard shows it: history, importances, slice, contour, and
    the Pareto front (with its table) of a multi-objective run; live while the run goes on."""
    if not result.get("coordinates"):
        return
    record, figures_, missing = study_views(record_stamp(result), result)
    if record is None:
        return
    storage = result.get("storage")
    where = (f"study '{storage['study']}' in the journal {storage['journal']} ({len(record['trials'])} "
             f"trials of every worker)" if storage else "this run's in-memory study")
    st.markdown(f"**Optuna study**: {where}; objectives {', '.join(result.get('objectives') or ['fitness'])}")
    tabs = st.tabs(list(figures_) + list(missing))
    for tab, (title, fig) in zip(tabs, figures_.items()):
        widgets.chart(fig, f"evo_study_{title}", tab)
    for tab, (title, why) in zip(tabs[len(figures_):], missing.items()):
        tab.caption(f"{title}: {why}.")
    front = result.get("pareto_front")
    if front:  # multi-objective searches (NSGA-II): the non-dominated trials, champion first
        names = [label.rsplit(" (", 1)[0] for label in result.get("objectives") or []]
        st.markdown(f"**Pareto front**: {len(front)} non-dominated of {result.get('trials')} trials; "
                    f"the champion is its best on {names[0]}")
        st.dataframe([{k: p.get(k) for k in ("trial", "generation", *names)} for p in front],
                     hide_index=True)
        balanced = result.get("balanced")
        if balanced:
            st.caption(f"Best mean over the targets: trial {balanced['trial']} ("
                       + ", ".join(f"{n} {balanced[n]:.4f}" for n in names) + ")")


@st.fragment(run_every=runs_view.POLL_S if was_active else None)
def live_panel() -> None:
    """Everything about the run, redrawn from the store every second while it runs."""
    row = state.store().get(run_id)
    active = row["status"] in ACTIVE
    if was_active and not active:
        st.rerun(scope="app")
    if active:
        runs_view.progress_row(row, key="evo")
    else:
        runs_view.status_line(row)
    result = row.get("result") or {}
    champion = result.get("champion") or {}
    base = result.get("baselines") or {}
    m = st.columns(5)
    m[0].metric("Generation", f"{result.get('generation', -1) + 1} / {row['params'].get('generations', 0) + 1}")
    m[1].metric("Champion fitness", f"{champion['fitness']:.4f}" if champion else "–",
                delta=f"{champion['fitness'] - result['start_fitness']:+.4f} vs gen 0"
                if champion and result.get("start_fitness") is not None else None)
    dev, test = (champion.get("dev") or {}), (champion.get("test") or {})
    m[2].metric("Champion dev accuracy", f"{dev['accuracy']:.3f}" if "accuracy" in dev else "–")
    best = (base.get("best_source") or {}).get("accuracy")
    m[3].metric("Champion test accuracy", f"{test['accuracy']:.3f}" if "accuracy" in test else "–",
                delta=f"{test['accuracy'] - best:+.3f} vs best source" if "accuracy" in test and best is not None else None)
    m[4].metric("Evaluations / s", f"{result['evals_per_s']:.2f}" if result.get("evals_per_s") else "–")
    if result.get("stopped"):
        st.caption(f"Stopped early: {result['stopped']}")
    subset = result.get("dev_subset")
    if subset:  # the cheaper fitness's error, measured once on the champion
        st.caption(f"Searched on {subset['examples']} of {subset['of']} dev examples "
                   f"({subset.get('subset', 'random')}): the champion's fitness "
                   f"{subset['fitness']:.4f} there vs {subset['fitness_full']:.4f} on the whole dev split "
                   f"(error {subset['error']:+.4f}; accuracy {subset['accuracy']:.3f} vs "
                   f"{subset['accuracy_full']:.3f})" + (f"; anchored on the sources' own shift, error "
                   f"{subset['error_anchored']:+.4f}" if "error_anchored" in subset else "") + ".")
    runs_view.champion_facts(row, test.get("accuracy"), base)
    frame = figures.series_frame(state.store().series(run_id))
    left, right = st.columns(2)
    if frame.empty:
        left.caption("Curves appear after generation 0.")
    else:
        widgets.chart(figures.fitness_curves(frame), "evo_fitness", left)
        widgets.chart(figures.champion_accuracy(frame, base), "evo_champion", right)
    if not champion:
        return
    recipe = champion.get("recipe") or {}
    left, right = st.columns(2)
    with left:
        frames = figures.recipe_frames(recipe)
        if frames:
            shown = st.selectbox("Champion recipe", list(frames), key="evo_recipe_view",
                                 help="per source and layer group: the weight, or a per-model parameter")
            widgets.chart(figures.layer_weights_heatmap(frames[shown], title=f"Champion {shown} per layer group"),
                          "evo_layers", st)
    with right:
        counts = result.get("combo_counts")
        if counts:
            named = {f"{k} {combo_name(int(k[::-1], 2))}": v for k, v in counts.items()}
            widgets.chart(figures.usage_bars(named, "Combinations tried (label bit 0 first)"), "evo_usage", st)
        elif result.get("sigma") is not None:
            st.metric("CMA-ES step size σ", f"{result['sigma']:.4f}")
            st.caption(f"{result.get('dimensions')} dimensions over groups: {', '.join(result.get('groups') or [])}")
        elif result.get("dimensions"):
            st.caption(f"{result.get('trials', '?')} trials over {result['dimensions']} dimensions, groups: "
                       f"{', '.join(result.get('groups') or [])}")
    study_panel(result)
    with st.expander("Champion recipe (JSON)"):
        st.json({"origin": champion.get("origin"), "generation": champion.get("generation"),
                 "export_method": champion.get("export_method"), **recipe}, expanded=2)


live_panel()

row = state.store().get(run_id)
result = row.get("result") or {}
b = st.columns(3)
if row["status"] in STOPPED and result.get("generation", -1) >= 0:
    if b[0].button("Resume", icon=":material/resume:", key="evo_resume",
                   help="continue from the last completed generation as a new run"):
        with state.engine_errors():
            st.session_state["evo_run"] = resume_evolution(state.runner(), ws, run_id)
        st.rerun()
if (result.get("champion") or {}).get("test"):
    runs_view.send_to_compare(run_id, "evo_compare", b[1])
    exports = [r for r in state.store().runs(kind="export", limit=50) if (r.get("params") or {}).get("run") == run_id]
    if exports:
        export_row = runs_view.watch(exports[0]["id"], key="evo-export")
        if export_row and export_row["status"] == "done":
            runs_view.export_panel(export_row)
        elif export_row:
            runs_view.status_line(export_row)
    elif b[2].button("Export champion", icon=":material/download:", key="evo_export",
                     help="rebuild the champion and write it as a Hugging Face folder with its recipe"):
        with state.engine_errors():
            tasks.submit_champion_export(state.runner(), ws, run_id, state.export_dir())
        st.rerun()
if row["status"] not in ACTIVE and result.get("champion"):
    evolve_stage.stage_panel(ws, row)
