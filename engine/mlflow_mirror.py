"""An optional mirror of finished runs to an MLflow tracking store (``mlflow-skinny``).

The engine's store (``runs.sqlite``) stays the source of truth; the mirror only copies each run as it
ends ``done``, so researchers can compare our runs in the MLflow UI beside their other experiments.
Local stores only (a folder, ``file:`` or ``sqlite:`` URI): a run never waits on a network server.
What is logged: params (method, target, sources, weights, seed, every method parameter), metrics
(every numeric leaf, e.g. ``test.accuracy``) and per-step curves from the store's ``series`` table
(an evolution's fitness per generation, a training loss curve) as step metrics, and tags (kind,
target data use, method traits, parent run). Artifacts: ``recipe.json`` and, for a merge mergekit
can express, ``mergekit.yaml`` (both on by default, a few KB); the exported model folder (``model/``)
only when asked (``model=True``, ``FUSION_MLFLOW_MODEL=1``, ``--mlflow-model``): it is the model's size.
A failed mirror never loses the run: it is already stored, and ``python -m engine mlflow-export``
copies it later. Each run carries the tag ``fusion.run_id``, so copying twice logs it once.
"""
from __future__ import annotations

import json
import os
import re
import threading
import time
from pathlib import Path
from typing import Any, Dict, Iterable, List, Optional, Tuple

ENV_URI = "FUSION_MLFLOW_URI"
ENV_EXPERIMENT = "FUSION_MLFLOW_EXPERIMENT"
ENV_RECIPE = "FUSION_MLFLOW_RECIPE"      # "0": no recipe.json / mergekit.yaml artifacts (default: logged)
ENV_MODEL = "FUSION_MLFLOW_MODEL"        # "1": also log the exported model folder as artifacts
DEFAULT_EXPERIMENT = "fusion"
LOCAL_SCHEMES = ("file", "sqlite")
RUN_ID_TAG = "fusion.run_id"
MAX_PARAM_CHARS = 6000                   # MLflow's limit on a param value


class MlflowMirrorError(RuntimeError):
    """The MLflow mirror cannot be used; the message names the URI and what to do."""


def normalise_uri(uri: str) -> str:
    """A local tracking URI: a bare folder becomes ``file:///abs/folder``; network schemes are
    refused (a run must never wait on a server)."""
    uri = (uri or "").strip()
    if not uri:
        raise MlflowMirrorError(f"empty MLflow tracking URI: give a local folder, file:/path or sqlite:///path.db")
    scheme = re.match(r"^([A-Za-z][A-Za-z0-9+.-]*):", uri)
    if scheme is None or len(scheme.group(1)) == 1:   # a plain path (or a Windows drive letter)
        return Path(uri).expanduser().resolve().as_uri()
    if scheme.group(1).lower() not in LOCAL_SCHEMES:
        raise MlflowMirrorError(f"MLflow tracking URI {uri!r} is not local: use a folder, file:/path or "
                                f"sqlite:///path.db (runs are never sent to a server while they run)")
    return uri


def _key(name: str) -> str:
    """A valid MLflow param/metric key (letters, digits, _ - . / and spaces)."""
    return re.sub(r"[^A-Za-z0-9_\-./ ]", "_", str(name))[:250]


def _leaves(value: Any, prefix: str = "") -> Iterable[Tuple[str, Any]]:
    if isinstance(value, dict):
        for k, v in value.items():
            yield from _leaves(v, f"{prefix}.{k}" if prefix else str(k))
    else:
        yield prefix, value


def _number(value: Any) -> Optional[float]:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    return float(value)


def _text(value: Any) -> str:
    text = value if isinstance(value, str) else json.dumps(value, sort_keys=True, default=str)
    return text[:MAX_PARAM_CHARS]


def run_params(row: Dict[str, Any]) -> Dict[str, str]:
    """What the run was asked to do: method, target, sources with their weights, seed, parameters."""
    result, params = row.get("result") or {}, row.get("params") or {}
    out: Dict[str, str] = {"kind": row["kind"]}
    for field in ("method", "target"):
        if row.get(field):
            out[field] = str(row[field])
    if row.get("sources"):
        out["sources"] = ",".join(row["sources"])
    for i, source in enumerate(row.get("sources") or []):
        if i < len(row.get("weights") or []):
            out[_key(f"weight.{source}")] = repr(float(row["weights"][i]))
    for key, value in _leaves(params):
        if key and key != "workspace":
            out.setdefault(_key(key), _text(value))
    for key, value in _leaves(result.get("method_params") or {}):
        out.setdefault(_key(key), _text(value))
    return out


def run_metrics(row: Dict[str, Any]) -> Dict[str, float]:
    """Every numeric leaf of the run's metrics, e.g. ``test.accuracy``."""
    out = {}
    for key, value in _leaves(row.get("metrics") or {}):
        number = _number(value)
        if number is not None and key:
            out[_key(key)] = number
    return out


def run_tags(row: Dict[str, Any]) -> Dict[str, str]:
    """Who and what: the engine run id, kind, status, parent, target data use, method traits."""
    result = row.get("result") or {}
    tags = {RUN_ID_TAG: row["id"], "fusion.kind": row["kind"], "fusion.status": row["status"]}
    if row.get("parent"):
        tags["fusion.parent"] = row["parent"]
    for field in ("origin", "role", "sweep"):
        if result.get(field):
            tags[f"fusion.{field}"] = _text(result[field])
    use = result.get("target_data")
    if use is not None:
        tags["fusion.target_data"] = _text(use)
    tags.update(method_traits(row))
    return tags


def method_traits(row: Dict[str, Any]) -> Dict[str, str]:
    """The method's registry traits (family, data use, needs_base, ...) when its registry is loaded
    (always, in the process that ran it; ``mlflow-export`` loads them). Read through
    ``Registry.LOADED``: importing the method packages from here would close an import cycle."""
    from .registry import Registry

    registry = Registry.LOADED.get(row["kind"])
    if registry is None or not row.get("method") or row["method"] not in registry:
        return {}
    traits = registry.get(row["method"]).traits
    fields = getattr(traits, "__dataclass_fields__", {})
    return {f"trait.{name}": _text(getattr(traits, name)) for name in fields}


def series_points(store, run_id: str) -> List[Tuple[str, int, float]]:
    """The run's curves as (metric key, step, value); a dict point gives one key per numeric leaf."""
    points = []
    for point in store.series(run_id):
        for key, value in _leaves(point["value"], point["name"]):
            number = _number(value)
            if number is not None:
                points.append((_key(key), int(point["step"]), number))
    return points


def _recipe(row: Dict[str, Any]) -> Dict[str, Any]:
    """The export folder's recipe.json when there is one, else the run's own recipe fields."""
    folder = (row.get("result") or {}).get("export")
    path = Path(folder) / "recipe.json" if isinstance(folder, str) else None
    if path is not None and path.is_file():
        return json.loads(path.read_text())
    return {k: row.get(k) for k in ("kind", "method", "target", "sources", "weights", "params")}


def mergekit_text(row: Dict[str, Any]) -> Optional[str]:
    """The run's mergekit.yaml: its export folder's, else (a merge run) written from the recipe it
    recorded with the zoo's real model folders, as an export would. None when mergekit cannot
    express the merge, the run is no merge, or its zoo is gone."""
    result = row.get("result") or {}
    folder = result.get("export")
    if isinstance(folder, str) and (Path(folder) / "mergekit.yaml").is_file():
        return (Path(folder) / "mergekit.yaml").read_text(encoding="utf-8")
    cand, ws = result.get("candidate"), result.get("workspace") or {}
    if row["kind"] != "merge" or not cand or not ws.get("zoo"):
        return None
    from .merge.export import mergekit_yaml
    from .zoo import DEFAULT_PATTERN, Zoo, ZooError

    try:
        zoo = Zoo.open(ws["zoo"], ws.get("pattern") or DEFAULT_PATTERN, ws.get("base") or None)
        sources = [str(zoo.path(s).resolve()) for s in cand["sources"]]
    except (ZooError, OSError, KeyError, TypeError):
        return None
    recipe = {**cand, "sources": sources, "base": str(zoo.base.resolve()) if zoo.base else None}
    return mergekit_yaml(recipe)[0]


def model_folder(row: Dict[str, Any]) -> Optional[Path]:
    """The run's exported model folder (a merge's HF folder, a fitted fusion's folder), if it exists."""
    result = row.get("result") or {}
    for key in ("export", "fusion"):
        if isinstance(result.get(key), str) and Path(result[key]).is_dir():
            return Path(result[key])
    return None


MLFLOW_STATUS = {"done": "FINISHED", "failed": "FAILED"}   # cancelled / interrupted: KILLED


class MlflowMirror:
    """Copies finished engine runs into one MLflow experiment at ``uri``."""

    def __init__(self, uri: str, experiment: Optional[str] = None, recipe: Optional[bool] = None,
                 model: Optional[bool] = None):
        self.uri = normalise_uri(uri)
        self.experiment = experiment or os.environ.get(ENV_EXPERIMENT) or DEFAULT_EXPERIMENT
        self.recipe = os.environ.get(ENV_RECIPE, "1") != "0" if recipe is None else recipe
        self.model = os.environ.get(ENV_MODEL, "") == "1" if model is None else model
        self._client = None
        self._experiment_id: Optional[str] = None
        self._lock = threading.Lock()    # job threads of both lanes may finish runs at once

    def _open(self):
        if self._client is None:
            if self.uri.startswith("file:"):
                # MLflow 3 keeps the folder store in maintenance mode behind this switch; it needs no database
                os.environ.setdefault("MLFLOW_ALLOW_FILE_STORE", "true")
            from mlflow import MlflowClient

            client = MlflowClient(tracking_uri=self.uri)
            found = client.get_experiment_by_name(self.experiment)
            self._experiment_id = found.experiment_id if found else client.create_experiment(self.experiment)
            self._client = client
        return self._client

    def logged(self, run_id: str) -> Optional[str]:
        """The MLflow run id that already mirrors engine run ``run_id``, if any."""
        client = self._open()
        found = client.search_runs([self._experiment_id], filter_string=f"tags.`{RUN_ID_TAG}` = '{run_id}'",
                                   max_results=1)
        return found[0].info.run_id if found else None

    def mirrored_ids(self) -> Dict[str, str]:
        """Engine run id -> MLflow run id for every run already mirrored (one paged search)."""
        client, found, token = self._open(), {}, None
        while True:
            page = client.search_runs([self._experiment_id], max_results=10_000, page_token=token)
            found.update({r.data.tags[RUN_ID_TAG]: r.info.run_id for r in page if RUN_ID_TAG in r.data.tags})
            token = page.token
            if not token:
                return found

    def log_run(self, store, run_id: str, check: bool = True) -> str:
        """Mirrors one stored run (once, unless ``check`` is False: the caller knows it is new);
        returns its MLflow run id. Raises :class:`MlflowMirrorError`."""
        try:
            with self._lock:
                return self._log_run(store, run_id, check)
        except MlflowMirrorError:
            raise
        except Exception as exc:
            detail = " ".join(str(exc).split())[:300] or type(exc).__name__
            raise MlflowMirrorError(f"cannot log run {run_id} to MLflow at {self.uri} ({detail}); the run is kept "
                                    f"in the engine store: fix the URI and run `python -m engine mlflow-export "
                                    f"URI` to copy it") from None

    def _log_run(self, store, run_id: str, check: bool) -> str:
        from mlflow.entities import Metric, Param

        row = store.get(run_id)
        client = self._open()
        existing = self.logged(run_id) if check else None
        if existing:
            return existing
        start = int(1000 * (row.get("started") or row["created"]))
        run = client.create_run(self._experiment_id, start_time=start, tags=run_tags(row),
                                run_name=(row.get("name") or run_id)[:250])
        mlflow_id = run.info.run_id
        end = int(1000 * (row.get("finished") or time.time()))
        metrics = [Metric(k, v, end, 0) for k, v in run_metrics(row).items()]
        metrics += [Metric(k, v, end, step) for k, step, v in series_points(store, run_id)]
        params = [Param(k, v) for k, v in run_params(row).items()]
        for lo in range(0, len(params), 100):      # MLflow's batch limits: 100 params, 1000 metrics
            client.log_batch(mlflow_id, params=params[lo:lo + 100])
        for lo in range(0, len(metrics), 1000):
            client.log_batch(mlflow_id, metrics=metrics[lo:lo + 1000])
        if self.recipe:
            client.log_dict(mlflow_id, _recipe(row), "recipe.json")
            yaml_text = mergekit_text(row)
            if yaml_text:
                client.log_text(mlflow_id, yaml_text, "mergekit.yaml")
        folder = model_folder(row) if self.model else None
        if folder is not None:
            client.log_artifacts(mlflow_id, str(folder), "model")
        client.set_terminated(mlflow_id, status=MLFLOW_STATUS.get(row["status"], "KILLED"), end_time=end)
        return mlflow_id

    def __call__(self, store, run_id: str) -> None:
        """The store's hook: mirrors a run that just finished; a failure is one warning line."""
        import warnings

        try:
            self.log_run(store, run_id)
        except MlflowMirrorError as exc:
            warnings.warn(str(exc), stacklevel=2)


def mirror_from_env() -> Optional[MlflowMirror]:
    """The mirror ``FUSION_MLFLOW_URI`` names, or None when it is unset."""
    uri = os.environ.get(ENV_URI, "").strip()
    return MlflowMirror(uri) if uri else None


def log_runs(store, run_ids: Iterable[str], uri: str, model: bool = False) -> Dict[str, Any]:
    """Logs the chosen runs (the Compare page's selection) to ``uri``, each once; a run still queued
    or running is skipped (it is logged when it ends, by the store's mirror, or later). Returns the
    MLflow ids of the runs logged now and of those already there, and the skipped ones."""
    mirror = MlflowMirror(uri, model=model)
    out: Dict[str, Any] = {"uri": mirror.uri, "experiment": mirror.experiment, "logged": {}, "already": {},
                           "skipped": {}}
    already = _read(mirror, mirror.mirrored_ids)
    for run_id in dict.fromkeys(run_ids):
        row = store.get(run_id)
        if not row.get("finished"):          # queued or running: every ended run has its end time
            out["skipped"][run_id] = f"still {row['status']}"
        elif run_id in already:
            out["already"][run_id] = already[run_id]
        else:
            out["logged"][run_id] = mirror.log_run(store, run_id, check=False)
    return out


def mlflow_rows(out: Dict[str, Any]) -> List[Dict[str, str]]:
    """:func:`log_runs`'s answer as table rows: engine run, MLflow run id, what happened."""
    return ([{"run": r, "mlflow_run": m, "logged": "now"} for r, m in out["logged"].items()]
            + [{"run": r, "mlflow_run": m, "logged": "already"} for r, m in out["already"].items()]
            + [{"run": r, "mlflow_run": "", "logged": why} for r, why in out["skipped"].items()])


def _read(mirror: MlflowMirror, fn):
    """``fn()`` on the MLflow store, any failure one line naming the URI."""
    try:
        return fn()
    except Exception as exc:
        raise MlflowMirrorError(f"cannot read the MLflow store at {mirror.uri} "
                                f"({' '.join(str(exc).split())[:300]}): give a writable local folder, "
                                f"file:/path or sqlite:///path.db") from None


def export_runs(store, uri: str, since: Optional[float] = None, kinds: Optional[List[str]] = None,
                recipe: bool = True, model: bool = False) -> Dict[str, Any]:
    """Mirrors every finished run (created at or after ``since``, a UNIX time) not yet in the MLflow
    store; returns counts and the MLflow ids."""
    mirror = MlflowMirror(uri, recipe=recipe, model=model)
    rows = [r for r in store.runs(status=["done"], limit=1_000_000)
            if (since is None or r["created"] >= since) and (not kinds or r["kind"] in kinds)]
    already = _read(mirror, mirror.mirrored_ids)
    logged = {}
    for row in sorted(rows, key=lambda r: r["created"]):
        if row["id"] not in already:
            logged[row["id"]] = mirror.log_run(store, row["id"], check=False)
    return {"uri": mirror.uri, "experiment": mirror.experiment, "logged": logged,
            "already": sum(r["id"] in already for r in rows)}
