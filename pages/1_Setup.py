"""Setup: which zoo, which data, which device; what was found, and what is wrong if anything."""
PAGE = {"title": "Setup", "icon": ":material/settings:", "order": 1,
        "summary": "Choose the model zoo, the dataset and the device."}
from dataclasses import replace
from pathlib import Path

import pandas as pd
import streamlit as st

from dashboard import runs as runs_view
from dashboard import state
from dashboard.widgets import params_text
from engine.data.sources import DATA_SOURCES, data_kinds, source_fields
from engine.limits import SETTINGS, bounds
from engine.merge.trim_store import usage_line as trim_store_usage
from engine.workspace import default_demo_dir
from engine.zoo import DEFAULT_PATTERN, MANIFEST

st.title("Setup")


def rows_height(n: int) -> int:
    """Tall enough for every row up to ~20, then it scrolls."""
    return min(740, 3 + 35 * (n + 1))


st.caption("Where the source models and the evaluation data come from. Nothing is downloaded: "
           "local folders, or the Hugging Face cache when models/data were fetched beforehand.")

current = state.settings()
ZOO_KINDS = {"demo": "Built-in demo zoo", "folder": "Local folder + name pattern", "manifest": "Manifest file (zoo.json)"}
zoo_kind = "demo" if not current.zoo else (
    "manifest" if current.zoo.endswith(".json") or (Path(current.zoo) / MANIFEST).is_file() else "folder")

# No form: choosing a kind reruns the page at once, so the fields that do not apply to it are
# disabled (greyed, their help says why) rather than left editable and silently ignored. Nothing
# is opened before "Open".
st.subheader("Model zoo")
kind = st.radio("Zoo", list(ZOO_KINDS), index=list(ZOO_KINDS).index(zoo_kind),
                format_func=ZOO_KINDS.get, horizontal=True, key="setup_zoo_kind")
demo = kind == "demo"
c1, c2, c3 = st.columns([3, 2, 2])
zoo_path = c1.text_input("Folder or manifest path", value=current.zoo, key="setup_zoo_path", disabled=demo,
                         help=f"the built-in demo zoo lives in {default_demo_dir()}" if demo else
                         "a folder of model folders, or a zoo.json manifest")
pattern = c2.text_input("Name pattern (folder scan)", value=current.pattern or DEFAULT_PATTERN, key="setup_pattern",
                        disabled=kind != "folder",
                        help="{locale} marks the locale in each model folder's name, e.g. "
                             "xlmr_massive_k_{locale}; {base} matches any prefix (folder scan only)")
base = c3.text_input("Pretrained base (optional)", value=current.base or "", key="setup_base", disabled=demo,
                     help="the demo zoo brings its own base" if demo else
                     "folder or cached hub id; task-vector merges need it")
st.subheader("Dataset")
kinds = data_kinds()   # the registered data sources (engine/data/sources.py), titled and in order
data = st.radio("Data", kinds, index=kinds.index(current.data) if current.data in kinds else 0,
                format_func=lambda k: DATA_SOURCES.get(k).title, horizontal=True, key="setup_data")
# A field is editable when the chosen source declares it among its settings; its help is the source's.
reads = {p.name: p for p in DATA_SOURCES.get(data).params}


def field_help(field: str) -> str:
    if field in reads:
        return reads[field].help
    users = [DATA_SOURCES.get(k).title for k, _ in source_fields().get(field, [])]
    return f"not used by this source (used by: {', '.join(users) or 'none'})"


d1, d2, d3 = st.columns([3, 1, 1])
data_path = d1.text_input("Data path (jsonl folder, CSV or JSONL file; MASSIVE: hub id or local copy)",
                          value=current.data_path, key="setup_data_path", disabled="data_path" not in reads,
                          help=field_help("data_path"))
text_col = d2.text_input("Text column", value=current.text_column, key="setup_text_column",
                         disabled="text_column" not in reads, help=field_help("text_column"))
label_col = d3.text_input("Label column", value=current.label_column, key="setup_label_column",
                          disabled="label_column" not in reads, help=field_help("label_column"))
with st.container():
    st.subheader("Compute")
    e1, e2 = st.columns(2)
    devices = ["auto", "cpu", "cuda"]
    device = e1.selectbox("Device", devices, index=devices.index(current.device) if current.device in devices else 0,
                          key="setup_device",
                          help="auto = CUDA when a GPU is visible, else CPU")
    import torch

    e1.caption("A CUDA GPU is visible." if torch.cuda.is_available() else "No CUDA GPU visible: auto means CPU.")
    batch = e2.number_input("Batch size", min_value=1, max_value=4096, value=int(current.batch_size))
    trim_gb = e2.number_input("Trim store (GB of disk)", *bounds("trim_store_gb"),
                              value=float(current.trim_store_gb), step=1.0, key="setup_trim_store_gb",
                              help=SETTINGS["trim_store_gb"].help + ": TIES' sorted magnitudes and mergekit's "
                                   "tie orders depend only on a source and the base, so the next merge or search "
                                   "over the same models skips the sorts (~2 GB per XLM-R-base source)")
    e2.caption(trim_store_usage(state.cache_dir(current)))
    submitted = st.button("Open", type="primary", icon=":material/folder_open:", key="setup_open")

uri = st.text_input("MLflow tracking store (optional)", value=state.mlflow_uri(), key="setup_mlflow",
                    help="a local folder, file:/path or sqlite:///path.db: every run that finishes is also logged "
                         "there (params, metrics, curves), to compare in the MLflow UI; default $FUSION_MLFLOW_URI")
if problem := state.apply_mlflow_uri(uri):
    st.error(problem)

if submitted:
    new = replace(current, zoo="" if demo else zoo_path.strip(), pattern=pattern.strip() or DEFAULT_PATTERN,
                  base=None if demo else base.strip() or None, data=data, data_path=data_path.strip(),
                  text_column=text_col, label_column=label_col, device=device, batch_size=int(batch),
                  trim_store_gb=float(trim_gb))
    if kind != "demo" and not new.zoo:
        st.error("give the zoo's folder or manifest path")
        st.stop()
    state.set_settings(new)
    current = new

ws = state.workspace()
if ws is None:
    st.error(state.workspace_error())
    if not current.zoo and not state.demo_built():
        runs_view.demo_builder()
    st.stop()

st.success(f"Opened **{ws.zoo.name}**: {len(ws.zoo.locales)} models, {len(ws.zoo.labels)} labels, "
           f"data '{ws.dataset.name}', device `{ws.evaluator.device}`.")
for note in ws.notes:
    st.info(note)

d = ws.zoo.describe()
m = st.columns(4)
m[0].metric("Source models", len(d["locales"]))
m[1].metric("Labels", len(d["labels"]))
m[2].metric("Parameters / model", params_text(d["parameters"]), help=f"{d['parameters']:,} ({d['model_type']})")
m[3].metric("Target locales", len(ws.target_locales()), help="locales with a test split")

left, right = st.columns([3, 2], gap="large")
with left:
    st.subheader("Models")
    st.dataframe(pd.DataFrame([{"locale": loc, "folder": str(ws.zoo.path(loc))} for loc in ws.zoo.locales]),
                 hide_index=True, width="stretch", height=rows_height(len(ws.zoo.locales)))
    st.markdown(f"**Base:** `{d['base']}`" if d["base"] else "**Base:** none (task-vector merges unavailable)")
    st.subheader("Data per locale")
    sizes = pd.DataFrame(ws.dataset.summary())
    if not sizes.empty:
        sizes["has model"] = sizes["locale"].isin(ws.zoo.locales)
    st.dataframe(sizes, hide_index=True, width="stretch", height=rows_height(len(sizes)))
    missing = [l for l in ws.zoo.locales if l not in ws.dataset.locales]
    if missing:
        st.warning(f"no data for the models of {', '.join(missing)}: they can be sources but not targets")
with right:
    st.subheader("Label set")
    st.dataframe(pd.DataFrame({"id": range(len(d["labels"])), "label": d["labels"]}), hide_index=True,
                 width="stretch", height=rows_height(len(d["labels"])))
