"""Similarity: URIEL vectors → cosine similarity → top-K → Sinkhorn → source weights for a target."""
import streamlit as st

from dashboard import runs as runs_view
from dashboard import state, tasks, widgets
from engine import figures
from engine.languages import FEATURE_SETS, NAMES, locale_table, similarity_matrix, target_similarity

st.title("Similarity")
st.caption("Which source languages are typologically close to the target (URIEL, via lang2vec), and the "
           "weights that closeness gives: cosine similarity → keep the top-K per language → Sinkhorn "
           "balancing → the target's row, normalised. The target's own model is never a source.")
ws = state.require_workspace()

if not tasks.uriel_ready():
    active = state.store().runs(kind="uriel", status=("queued", "running"), limit=1)
    run_id = active[0]["id"] if active else tasks.submit_uriel(state.runner())
    st.info("Reading the URIEL vectors once (lang2vec); later visits read a small cache.")
    runs_view.watch(run_id, key="uriel")
    st.stop()

targets = ws.target_locales()
selection = st.session_state.get(state.SELECTION_KEY) or {}
if "sim_target" not in st.session_state and selection.get("target") in targets:
    st.session_state["sim_target"] = selection["target"]
c = st.columns([2, 3, 2, 2], gap="medium")
target = c[0].selectbox("Target language", targets, key="sim_target",
                        format_func=lambda l: f"{l} ({NAMES.get(l, '?')})")
features = c[1].multiselect("URIEL feature sets", list(FEATURE_SETS), default=["syntax_knn"], key="sim_features",
                            help="several are concatenated, e.g. syntax_knn + fam")
pool_all = [l for l in ws.zoo.locales if l != target]
k_max = max(1, len(pool_all))
top_k = c[2].slider("Top-K neighbours", 1, k_max, min(5, k_max), key="sim_top_k",
                    help="sources kept per language before balancing") if k_max > 1 else 1
iters = c[3].slider("Sinkhorn iterations", 0, 100, 20, key="sim_iters",
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
with state.engine_errors():
    result = target_similarity(target, sources=pool, features=feature_spec, top_k=top_k, sinkhorn_iters=iters)
    raw = target_similarity(target, sources=pool, features=feature_spec, top_k=top_k, sinkhorn_iters=0)

for note in result.notes:
    st.caption(f"ℹ️ {note}")
left, right = st.columns(2, gap="large")
widgets.chart(figures.weights_bars(raw.weights, result.weights, iters, title=f"Source weights for {target}"),
              "sim_weights", left)
widgets.chart(figures.neighbours_bar(result.neighbours, result.weights, NAMES,
                                     title=f"{target}'s top-{result.top_k} neighbours"), "sim_neighbours", right)
table = result.table()
table["weight (Sinkhorn 0)"] = table["locale"].map(lambda l: raw.weights.get(l, 0.0))
table = table.rename(columns={"weight": f"weight (Sinkhorn {iters})"})
st.dataframe(table, hide_index=True, width="stretch",
             column_config={c: st.column_config.NumberColumn(format="%.4f") for c in table.columns[2:]})
moved = max((abs(result.weights.get(l, 0) - raw.weights.get(l, 0)) for l in table["locale"]), default=0.0)
if moved > 0.05:
    st.caption(f"Sinkhorn moved up to {moved:.2f} of weight between sources: balancing the whole matrix "
               "takes weight from sources that are everyone's neighbour.")
use = st.container()
with use:
    if st.button("Use these sources", type="primary", icon=":material/check:", key="sim_use"):
        st.session_state[state.SELECTION_KEY] = {
            "target": target, "sources": list(result.weights), "weights": dict(result.weights),
            "features": feature_spec, "top_k": result.top_k, "sinkhorn_iters": iters}
        st.session_state["selection_version"] = st.session_state.get("selection_version", 0) + 1
        for key in ("merge_target", "ens_target", "evo_target"):
            st.session_state[key] = target
        st.success(f"Stored for Merge, Ensemble and Evolve: {target} ← "
                   + ", ".join(f"{s} ({w:.2f})" for s, w in result.weights.items()))
        l1, l2 = st.columns(2)
        l1.page_link("pages/3_Merge.py", label="Go to Merge", icon=":material/merge:")
        l2.page_link("pages/4_Ensemble.py", label="Go to Ensemble", icon=":material/groups:")
    else:
        st.caption("Hands the target, these sources and their Sinkhorn weights to the Merge, Ensemble and "
                   "Evolve pages (editable there).")

matrix = similarity_matrix(None, feature_spec) if whole else result.matrix
heat, _ = st.columns([3, 1]) if len(matrix) <= 16 else (st.container(), None)
widgets.chart(figures.similarity_heatmap(matrix, target, f"URIEL cosine similarity ({feature_spec})"),
              "sim_heatmap", heat)

with st.expander("MASSIVE locales and their ISO 639-3 codes"):
    st.dataframe(locale_table(), hide_index=True, width="stretch")
