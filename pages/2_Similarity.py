"""Similarity: URIEL vectors → cosine similarity → top-K → Sinkhorn → source weights for a target."""
PAGE = {"title": "Similarity", "icon": ":material/hub:", "order": 2,
        "summary": "Pick a target language; URIEL similarity → top-K → Sinkhorn → source weights."}
from dataclasses import replace

import streamlit as st

from dashboard import runs as runs_view
from dashboard import experiment as xp
from dashboard import figures, state, widgets
from dashboard.navigation import page_path
from engine import tasks
from engine.store import ACTIVE
from engine.languages import (ALL_FEATURE_SETS, NAMES, locale_table, parse_features, similarity_matrix,
                              target_similarity)
from engine.uriel_plus import URIEL_PLUS_SETS, distance_of, pair_confidence

st.title("Similarity")
st.caption("Which source languages are typologically close to the target (URIEL, via lang2vec; or URIEL+'s "
           "distances, the urielplus_* sets, similarity = 1 − distance), and the weights that closeness gives: "
           "cosine similarity → keep the top-K per language → Sinkhorn balancing → the target's row, normalised. "
           "The target's own model is never a source. Ties at the top-K cut (similarities equal to 12 decimals, "
           "e.g. fr-FR, pl-PL and ru-RU at 0.8648 for pt-PT) are broken by locale name, alphabetically, and "
           "named in a note.")
ws = state.require_workspace()

if not tasks.uriel_ready():
    active = state.store().runs(kind="uriel", status=ACTIVE, limit=1)
    run_id = active[0]["id"] if active else tasks.submit_uriel(state.runner())
    st.info("Reading the URIEL vectors once (lang2vec); later visits read a small cache.")
    runs_view.watch(run_id, key="uriel")
    st.stop()

exp = state.experiment(ws, derive=False)
c = st.columns([2, 3, 2, 2], gap="medium")
target = widgets.target_picker(ws, "sim", where=c[0])
weighting = widgets.weighting_radio(ws, "sim", where=c[0])


def settings_changed() -> None:
    """Features, K or Sinkhorn moved here: the experiment's URIEL weights follow them."""
    chosen = st.session_state["sim_features"]
    if not chosen:
        return  # the page says so; the experiment keeps its last valid feature set
    current = state.experiment(ws, derive=False)
    k = st.session_state.get("sim_top_k", current.top_k)
    state.set_experiment(xp.with_settings(current, "+".join(chosen), int(k), int(st.session_state["sim_iters"])))


widgets.seed("sim_features", list(parse_features(exp.features)))
features = c[1].multiselect("URIEL feature sets", list(ALL_FEATURE_SETS), key="sim_features", on_change=settings_changed,
                            help="lang2vec sets are concatenated, e.g. syntax_knn + fam; URIEL+ sets "
                                 "(urielplus_*) add their 1 − distance, and the parts are averaged")
pool_all = [l for l in ws.zoo.locales if l != target]
k_max = max(1, len(pool_all))
if k_max > 1:
    widgets.seed("sim_top_k", min(exp.top_k, k_max))
    top_k = c[2].slider("Top-K neighbours", 1, k_max, key="sim_top_k", on_change=settings_changed,
                        help="sources kept per language before balancing")
else:
    top_k = 1
widgets.seed("sim_iters", exp.sinkhorn_iters)
iters = c[3].slider("Sinkhorn iterations", 0, xp.MAX_SINKHORN, key="sim_iters", on_change=settings_changed,
                    help="0 = the filtered similarities themselves; more = rows and columns balanced")
with st.expander(f"Available sources and heatmap options ({len(pool_all)} models besides {target})"):
    pool = st.multiselect("Available sources", pool_all, default=pool_all, key=f"sim_pool_{target}",
                          help="the zoo's models other than the target; drop one to see the weights without it")
    whole = st.toggle("Heatmap over all 52 MASSIVE locales", key="sim_whole",
                      help="off: only the target and the available sources")

if not pool:
    st.warning("choose at least one available source")
    st.stop()
if not features:
    st.warning("choose at least one feature set")
    st.stop()
feature_spec = "+".join(features)
uplus = [distance_of(f) for f in features if f in URIEL_PLUS_SETS]
if uplus and not tasks.uriel_plus_ready():
    active = state.store().runs(kind="urielplus", status=ACTIVE, limit=1)
    run_id = active[0]["id"] if active else tasks.submit_uriel_plus(state.runner())
    st.info("Computing URIEL+'s distances once (from the urielplus package's files); later visits read a cache.")
    runs_view.watch(run_id, key="urielplus")
    st.stop()
with state.engine_errors():
    result = target_similarity(target, sources=pool, features=feature_spec, top_k=top_k, sinkhorn_iters=iters)

for note in result.notes:
    st.caption(f"ℹ️ {note}")
order = [loc for loc, _ in result.neighbours]  # one order on this page: by similarity, as top-K picks them
left, right = st.columns(2, gap="large")
widgets.chart(figures.weights_bars(result.unbalanced_weights, result.weights, iters, order=order,
                                   title=f"Source weights for {xp.language(target)}"), "sim_weights", left)
widgets.chart(figures.neighbours_bar(result.neighbours, result.weights, NAMES,
                                     title=f"{target}'s top-{result.top_k} neighbours"), "sim_neighbours", right)
table = result.table()
if uplus:  # URIEL+'s confidence in each (target, source) distance, averaged over the chosen URIEL+ sets
    conf = pair_confidence(target, list(table["locale"]), uplus)
    table["URIEL+ agreement"] = conf["agreement"].to_numpy()
    table["URIEL+ coverage"] = conf["coverage"].to_numpy()
number = lambda label: st.column_config.NumberColumn(label, format="%.4f")  # noqa: E731
st.dataframe(table, hide_index=True, width="stretch",
             column_config={"similarity": number("similarity"),
                            "URIEL+ agreement": number("URIEL+ agreement (sources agree)"),
                            "URIEL+ coverage": number("URIEL+ coverage (features known)"),
                            "weight before Sinkhorn": number("weight before Sinkhorn (top-K similarities)"),
                            "weight": number(f"weight (Sinkhorn {iters})")})
moved = max((abs(result.weights.get(l, 0) - result.unbalanced_weights.get(l, 0)) for l in table["locale"]),
            default=0.0)
if moved > 0.05:
    st.caption(f"Sinkhorn moved up to {moved:.2f} of weight between sources: balancing the whole matrix "
               "takes weight from sources that are everyone's neighbour.")
current = state.experiment(ws, derive=False)
chosen = tuple(result.weights.items())
if weighting == "equal":  # the same top-K, weighted equally (the CLI's --weighting equal)
    chosen = tuple((s, 1.0 / len(chosen)) for s, _ in chosen)
elif weighting == "predicted":  # top-K of the pool by predicted transfer (the CLI's --weighting predicted)
    if not state.predicted_ready(ws):
        st.stop()
    from engine.transfer import predicted_weights

    with state.engine_errors():
        chosen = tuple(predicted_weights(ws, target, pool, result.top_k).items())
if weighting != "uriel":
    st.caption(f"Weights handed over ({xp.WEIGHTING_TEXT[weighting]}): " + xp.sources_text(chosen, 3))
in_use = [s for s, _ in current.weights] == [s for s, _ in chosen] and all(
    abs(a - b) < 1e-6 for (_, a), (_, b) in zip(current.weights, chosen))
if st.button("Use these sources", type="primary", icon=":material/check:", key="sim_use"):
    state.set_experiment(replace(current, weights=chosen, origin=xp.SIMILARITY))
    st.success(f"Stored for Merge, Ensemble and Evolve: {xp.describe(state.experiment(ws))}")
    l1, l2 = st.columns(2)
    l1.page_link(page_path("Merge"), label="Go to Merge", icon=":material/merge:")
    l2.page_link(page_path("Ensemble"), label="Go to Ensemble", icon=":material/groups:")
elif in_use:
    st.caption("These are the current experiment's sources (shown in the sidebar; Merge, Ensemble and Evolve "
               "use them).")
else:
    st.caption("Hands the target, these sources and their Sinkhorn weights to the Merge, Ensemble and "
               "Evolve pages (editable there). The current sources: " + xp.sources_text(current.weights))

raw_matrix = similarity_matrix(None, feature_spec) if whole else result.matrix
raw_fig = figures.similarity_heatmap(raw_matrix, target, f"URIEL cosine similarity ({feature_spec})")
done_fig = figures.weights_heatmap(result.balanced, target,
                                   f"After top-{result.top_k} and Sinkhorn ({iters} iterations)")
if len(raw_matrix) <= 16:
    h1, h2 = st.columns(2, gap="large")
    widgets.chart(raw_fig, "sim_heatmap", h1)
    widgets.chart(done_fig, "sim_heatmap_balanced", h2)
else:
    widgets.chart(raw_fig, "sim_heatmap")
    widgets.chart(done_fig, "sim_heatmap_balanced")
st.caption("Left: the similarities themselves. Right: what the weights are read from — each row keeps its "
           "top-K, then Sinkhorn balances rows and columns; the target's row, normalised, gives the weights.")

with st.expander("MASSIVE locales and their ISO 639-3 codes"):
    st.dataframe(locale_table(), hide_index=True, width="stretch")
