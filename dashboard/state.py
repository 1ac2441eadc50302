"""Where the pages get their objects: one Store + JobRunner per cache folder (shared by every browser
session of this server, so a job outlives the tab that started it) and, per session, the current
Workspace opened from :class:`~engine.workspace.Settings`.

Defaults come from the environment, so a test or a demo can point the app somewhere else:
``FUSION_ZOO`` (zoo manifest/folder; empty = the demo zoo), ``FUSION_DATA`` / ``FUSION_DATA_PATH``,
``FUSION_DEVICE`` and ``FUSION_CACHE_DIR`` (cache, logits and ``runs.sqlite``).
"""
from __future__ import annotations

import json
import os
from contextlib import contextmanager
from dataclasses import asdict, replace
from pathlib import Path
from typing import Iterator, List, Optional

import streamlit as st

from engine.jobs import JobRunner
from engine.paths import default_cache_dir
from engine.store import Store, StoreError, open_store
from engine.zoo import MANIFEST
from engine.workspace import Settings, Workspace, default_demo_dir, open_workspace

from . import experiment as xp
from .navigation import page_path
from .experiment import Experiment

SETTINGS_KEY = "settings"
EXPERIMENT_KEY = "experiment"   # the current experiment (dashboard.experiment.Experiment), canonical copy
EXPERIMENT_VERSION_KEY = "experiment_version"  # bumped on changes from outside a sources table
EXPERIMENT_NOTES_KEY = "experiment_notes"      # what was dropped from the address or for this zoo


def default_settings() -> Settings:
    env = os.environ
    return Settings(zoo=env.get("FUSION_ZOO", ""), data=env.get("FUSION_DATA", "zoo"),
                    data_path=env.get("FUSION_DATA_PATH", ""), device=env.get("FUSION_DEVICE", "auto"),
                    cache_dir=env.get("FUSION_CACHE_DIR", ""))


def settings() -> Settings:
    if SETTINGS_KEY not in st.session_state:
        st.session_state[SETTINGS_KEY] = default_settings()
    return st.session_state[SETTINGS_KEY]


def set_settings(new: Settings) -> None:
    st.session_state[SETTINGS_KEY] = new


def cache_dir(s: Optional[Settings] = None) -> Path:
    s = s or settings()
    return Path(s.cache_dir) if s.cache_dir else default_cache_dir()


def export_dir() -> Path:
    return cache_dir() / "exports"


# ---- singletons --------------------------------------------------------------------------------
@st.cache_resource(show_spinner=False)
def services(cache: str) -> tuple:
    """(Store, JobRunner) for one cache folder; created once per server process."""
    store = open_store(cache)
    return store, JobRunner(store)


def _services() -> tuple:
    """The services, or the store's own message (its file, how to recover) and a stopped page."""
    try:
        return services(str(cache_dir().resolve()))
    except StoreError as exc:
        st.error(str(exc), icon=":material/error:")
        st.stop()


def store() -> Store:
    return _services()[0]


def runner() -> JobRunner:
    return _services()[1]


def mlflow_uri() -> str:
    """The MLflow store this server's runs are mirrored to ("" = none), shared by every session."""
    return getattr(store().mirror, "uri", "")


def apply_mlflow_uri(uri: str) -> str:
    """Mirrors finished runs to ``uri`` from now on ("" stops) when it differs from the current one;
    returns the one-line problem with it, or ""."""
    from engine.mlflow_mirror import MlflowMirrorError, normalise_uri

    try:
        if (normalise_uri(uri) if uri.strip() else "") != mlflow_uri():
            store().mirror_to(uri)
    except MlflowMirrorError as exc:
        return str(exc)
    return ""


@st.cache_resource(show_spinner="Opening the workspace…", max_entries=4)
def _open(settings_json: str) -> Workspace:
    return open_workspace(Settings(**json.loads(settings_json)))


def settings_key(s: Settings) -> str:
    return json.dumps(asdict(s), sort_keys=True)


def open_current(s: Optional[Settings] = None) -> Workspace:
    """The workspace for the settings (cached); raises the engine's error when it cannot open.
    The cache folder is made explicit, so the cache key changes with FUSION_CACHE_DIR."""
    s = s or settings()
    return _open(settings_key(replace(s, cache_dir=str(cache_dir(s)))))


def workspace() -> Optional[Workspace]:
    """The current workspace, or None (the reason is kept in ``workspace_error()``)."""
    try:
        ws = open_current()
    except Exception as exc:  # the engine's errors say what to fix
        st.session_state["workspace_error"] = message(exc)
        return None
    st.session_state.pop("workspace_error", None)
    return ws


def workspace_error() -> str:
    return st.session_state.get("workspace_error", "")


def require_workspace() -> Workspace:
    """The workspace, or an error box that says what is wrong and where to fix it (page stops)."""
    ws = workspace()
    if ws is None:
        st.error(workspace_error())
        if not demo_built() and not settings().zoo:
            st.info("The built-in demo zoo is not built yet: build it from the overview page, or open "
                    "your own zoo on the Setup page.")
        st.page_link(page_path("Setup"), label="Open Setup", icon=":material/settings:")
        st.stop()
    return ws


def demo_built() -> bool:
    return (default_demo_dir() / MANIFEST).is_file()


# ---- the current experiment --------------------------------------------------------------------
# Widgets forget their state when their page is left, so the one canonical copy lives under a plain
# session key; every widget that shows a part of it is seeded from it before it is drawn and writes
# back through its on_change callback. The address (query parameters) mirrors it for reloads.
def experiment(ws: Workspace, derive: bool = True) -> Experiment:
    """The current experiment, valid for ``ws``. A new session starts from the page address.
    ``derive``: fill in URIEL weights when there are none yet (reads the URIEL cache)."""
    current = st.session_state.get(EXPERIMENT_KEY)
    notes = list(st.session_state.get(EXPERIMENT_NOTES_KEY) or [])
    if current is None:
        fields, notes = xp.from_query(st.query_params.to_dict())
        current = xp.Experiment(**{"target": "", **fields})
    checked, more = xp.validate(current, ws.target_locales(), ws.zoo.locales)
    notes += more
    if derive and not checked.weights and checked.origin == xp.URIEL:
        weights, why = derived_weights(ws, checked)
        checked = replace(checked, weights=weights)
        if why:
            notes.append(f"{checked.target}: {why}")
    st.session_state[EXPERIMENT_NOTES_KEY] = list(dict.fromkeys(notes))[-4:]
    if checked != current or EXPERIMENT_KEY not in st.session_state:
        set_experiment(checked, bump=current.weights != checked.weights)
    else:
        sync_query(checked)
    return checked


def predicted_ready(ws: Workspace) -> bool:
    """Whether predicted transfer can weigh sources without a forward pass: every zoo model's
    validation logits on every locale are cached (the matrix its predictor is fitted on)."""
    from engine.transfer import FIT_SPLIT
    from engine.workplan import missing_zero_shot

    return not missing_zero_shot(ws, ws.dataset.locales, FIT_SPLIT)


def derived_weights(ws: Workspace, exp: Experiment) -> tuple:
    """(weights, note): the top-K sources and weights under the experiment's weighting, chosen as the
    CLI's --weighting chooses them (engine.experiments.suggest_sources); equal weights and why when
    that fails. Predicted transfer waits (no weights yet) until its validation matrix is cached."""
    from engine.experiments import suggest_sources

    if exp.weighting == "predicted" and not predicted_ready(ws):
        return (), "predicted transfer waits for the zoo's zero-shot validation scores"
    if exp.weighting == "uriel":
        return xp.uriel_weights(exp, ws.zoo.locales)
    try:
        weights = suggest_sources(ws, exp.target, top_k=exp.top_k, features=exp.features,
                                  sinkhorn_iters=exp.sinkhorn_iters, weighting=exp.weighting)
        return tuple(weights.items()), ""
    except Exception as exc:  # URIEL or the predictor cannot weigh this target: equal weights, said so
        others = [l for l in ws.zoo.locales if l != exp.target]
        return tuple((l, 1.0 / len(others)) for l in others), f"equal weights ({message(exc)})"


def change_weighting(weighting: str) -> None:
    """A weighting chosen on any page: the sources and weights are derived again under it."""
    current = st.session_state.get(EXPERIMENT_KEY)
    if current is not None and weighting and weighting != current.weighting:
        st.session_state[EXPERIMENT_NOTES_KEY] = []
        set_experiment(xp.with_weighting(current, weighting))


def run_weighting(exp: Experiment) -> Optional[str]:
    """What a run records as its weighting: the experiment's, when its weights were derived by it
    (here or on the Similarity page); None for weights typed, ticked or read from the address."""
    return exp.weighting if exp.origin in (xp.URIEL, xp.SIMILARITY) else None


def set_experiment(exp: Experiment, bump: bool = True) -> None:
    """Stores the experiment (and the address); ``bump`` redraws the sources tables from it."""
    st.session_state[EXPERIMENT_KEY] = exp
    if bump:
        st.session_state[EXPERIMENT_VERSION_KEY] = st.session_state.get(EXPERIMENT_VERSION_KEY, 0) + 1
    sync_query(exp)


def experiment_version() -> int:
    return int(st.session_state.get(EXPERIMENT_VERSION_KEY, 0))


def experiment_notes() -> List[str]:
    return list(st.session_state.get(EXPERIMENT_NOTES_KEY) or [])


def sync_query(exp: Experiment) -> None:
    """Writes the experiment into the address (only what differs, other parameters untouched)."""
    if not exp.target:
        return
    for key, value in xp.to_query(exp).items():
        if st.query_params.get(key) != value:
            st.query_params[key] = value


def change_target(target: str) -> None:
    """A target chosen on any page: its sources and weights are derived again."""
    current = st.session_state.get(EXPERIMENT_KEY)
    if current is not None and target and target != current.target:
        st.session_state[EXPERIMENT_NOTES_KEY] = []
        set_experiment(xp.with_target(current, target))


# ---- errors ------------------------------------------------------------------------------------
def message(exc: BaseException) -> str:
    """The engine's message without the Python noise (KeyError quotes, empty messages)."""
    text = str(exc).strip()
    if isinstance(exc, KeyError) and len(exc.args) == 1 and isinstance(exc.args[0], str):
        text = exc.args[0]
    return text or type(exc).__name__


@contextmanager
def engine_errors(prefix: str = "") -> Iterator[None]:
    """Shows an engine error as ``st.error`` (its message, no traceback) and stops the page."""
    try:
        yield
    except Exception as exc:  # st.stop / st.rerun are BaseExceptions and pass through
        st.error(prefix + message(exc))
        st.stop()


def run_error(run: dict) -> str:
    """A failed run's error message, without the traceback the store keeps for the logs."""
    text = (run.get("error") or run.get("message") or "failed").split("\n\n", 1)[0]
    return text.split(": ", 1)[1] if text.split(": ", 1)[0].isidentifier() and ": " in text else text
