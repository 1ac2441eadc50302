"""Iterative training with periodic merges (MergingUriel's Workflow 4), as a resumable job.

K source locales train together from the pretrained base, one step each in turn. Every N steps
their weights are merged with a registered merge method (URIEL or equal weights) and the merge goes
back into every model (fully, or blended). The target is scored on its dev split after every merge;
the run ends with a final merge, scored once on the target's test split. Alongside, the same
sources train independently (no merges; same seeds and batch order): their post-hoc merge at the same
steps is the honest baseline.

Controls: ``adaptive`` doubles the interval after a merge that did not raise the target's dev
accuracy (back to N after one that did); ``plateau`` > 0 merges instead when a would-be merge's dev
accuracy (checked every N steps) has not improved for that many checks; ``convergence`` > 0 stops
once a merge changes the dev accuracy by less than it. Those three decide with the target's dev
labels, so such a run records ``target_data = "labelled target dev"``; otherwise the dev scores
only draw the curve and it records ``"none"``. The whole state is checkpointed before each merge
(safetensors + JSON), so a killed run resumes to the same result; a finished run keeps only its
merged weights (``keep_checkpoint`` keeps the last checkpoint too).
"""
from __future__ import annotations

import json
import shutil
import time
import uuid
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any, Dict, List, Optional

from safetensors.torch import save_file

from ..progress import Cancelled, Tracker
from ..store import STOPPED
from .finetune import TrainError, checkpoint_dir, launch, load_base, resume_fields
from .loop import Trainer


@dataclass
class PeriodicConfig:
    target: str
    sources: List[str] = field(default_factory=list)   # empty = the target's URIEL top-k
    top_k: int = 3
    weighting: str = "uriel"       # uriel or equal
    method: str = "linear"
    method_params: Dict[str, Any] = field(default_factory=dict)
    steps: int = 60                # optimizer steps per source
    merge_every: int = 20
    adaptive: bool = False
    plateau: int = 0
    convergence: float = 0.0
    blend: float = 1.0             # 1: every model becomes the merge; b: b·merge + (1−b)·own weights
    lr: float = 4e-4
    batch_size: int = 32
    warmup: int = -1
    seed: int = 0
    baseline: bool = True          # also train the sources independently for the post-hoc merge
    keep_checkpoint: bool = False  # keep the last checkpoint (every model + optimizer) after success
    weights: List[float] = field(default_factory=list)  # filled in by check_periodic

    @classmethod
    def from_dict(cls, data: Dict[str, Any]) -> "PeriodicConfig":
        known = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in known})

    def to_dict(self) -> Dict[str, Any]:
        return asdict(self)

    @property
    def target_data(self) -> str:
        return "labelled target dev" if (self.adaptive or self.plateau > 0 or self.convergence > 0) else "none"


def check_periodic(ws, config: PeriodicConfig) -> PeriodicConfig:
    """Raises TrainError for settings that cannot run; picks sources and weights."""
    from ..merge import MERGES

    if config.steps < 1 or config.merge_every < 1:
        raise TrainError(f"steps={config.steps}, merge every {config.merge_every}: both must be at least 1")
    if config.batch_size < 1 or not config.lr > 0:
        raise TrainError(f"batch size {config.batch_size} and learning rate {config.lr} must be positive")
    if not 0 < config.blend <= 1:
        raise TrainError(f"blend factor {config.blend} must be in (0, 1]")
    if config.weighting not in ("uriel", "equal"):
        raise TrainError(f"weighting '{config.weighting}' must be uriel or equal")
    if config.method not in MERGES.names():
        raise TrainError(f"unknown merge method '{config.method}'; registered: {', '.join(MERGES.names())}")
    if MERGES.get(config.method).traits.needs_data:
        raise TrainError(f"merge method '{config.method}' needs data batches; choose one that does not")
    if ws.zoo.base is None:
        raise TrainError("the zoo has no pretrained base to train from")
    if list(ws.dataset.labels) != list(ws.zoo.labels):
        raise TrainError("the dataset's labels do not match the zoo's; train on data with the zoo's label set")
    if not ws.dataset.has(config.target, "validation") or not ws.dataset.has(config.target, "test"):
        raise TrainError(f"target '{config.target}' needs validation and test splits")
    if not config.sources:
        from ..experiments import suggest_sources

        uriel = suggest_sources(ws, config.target, top_k=config.top_k)
        config.sources = [s for s in uriel if ws.dataset.has(s, "train") and s != config.target]
    missing = [s for s in config.sources if not ws.dataset.has(s, "train")]
    if missing or not config.sources:
        raise TrainError(f"source locale(s) {', '.join(missing) or '(none)'} have no train split")
    if config.target in config.sources:
        raise TrainError(f"the target {config.target} cannot be one of its own sources")
    if config.weighting == "equal":
        config.weights = [1.0 / len(config.sources)] * len(config.sources)
    else:
        from ..languages import target_weights

        w = target_weights(config.target, sources=config.sources, top_k=len(config.sources))
        config.weights = [float(w.get(s, 0.0)) for s in config.sources]
        if sum(config.weights) <= 0:
            config.weights = [1.0 / len(config.sources)] * len(config.sources)
    return config


def _trainers(ws, config: PeriodicConfig, device) -> List[Trainer]:
    out = []
    for i, locale in enumerate(config.sources):
        model, tok = load_base(ws, config.seed + i, device)
        out.append(Trainer(model, tok, ws.dataset.get(locale, "train"), config.steps, config.batch_size,
                           config.lr, config.seed + i, None if config.warmup < 0 else config.warmup, device=device))
    return out


def merge_weights(ws, config: PeriodicConfig, states) -> Dict[str, Any]:
    from ..merge import merge_state_dicts

    return merge_state_dicts(config.method, states, config.weights, base=ws.zoo.base_state_dict(),
                             params=config.method_params, names=config.sources, seed=config.seed)


def _save(ckpt: Path, together, apart, info: dict) -> None:
    """The whole run state, written whole into a sibling folder and swapped in."""
    tmp = ckpt.with_name(ckpt.name + f".partial-{uuid.uuid4().hex[:6]}")
    for i, t in enumerate(together):
        t.save(tmp / "together" / str(i))
    for i, t in enumerate(apart):
        t.save(tmp / "apart" / str(i))
    (tmp / "state.json").write_text(json.dumps(info))
    old = ckpt.with_name(ckpt.name + ".old")
    shutil.rmtree(old, ignore_errors=True)
    if ckpt.exists():
        ckpt.rename(old)
    tmp.rename(ckpt)
    shutil.rmtree(old, ignore_errors=True)


def periodic_job(ws, config: PeriodicConfig, ckpt: Path):
    def job(ctx):
        device = ws.evaluator.device
        together = _trainers(ws, config, device)
        apart = _trainers(ws, config, device) if config.baseline else []
        info = {"step": 0, "interval": config.merge_every, "next_merge": config.merge_every, "merges": [],
                "best_dev": None, "best_candidate": None, "since_best": 0, "stopped": "", "seconds": 0.0}
        if (ckpt / "state.json").exists():
            info = json.loads((ckpt / "state.json").read_text())
            for i, t in enumerate(together):
                t.load(ckpt / "together" / str(i))
            for i, t in enumerate(apart):
                t.load(ckpt / "apart" / str(i))
        tracker = Tracker(ctx.progress, config.steps, f"training {len(config.sources)} sources")
        tracker.start -= info["seconds"]
        tracker.set(info["step"])
        started = time.perf_counter()

        def dev(state) -> float:
            return float(ws.evaluator.evaluate_state(state, config.target, "validation")["accuracy"])

        def merge_now(step: int, final: bool) -> Dict[str, Any]:
            nonlocal started
            info["seconds"] += time.perf_counter() - started
            started = time.perf_counter()
            info["pending"] = {"step": step, "final": final}
            _save(ckpt, together, apart, info)  # checkpoint before each merge (a kill redoes it)
            merged = merge_weights(ws, config, [t.weights() for t in together])
            acc = dev(merged)
            ctx.log("merged_dev_accuracy", step, acc)
            entry = {"step": step, "dev_accuracy": acc}
            if apart:
                posthoc = dev(merge_weights(ws, config, [t.weights() for t in apart]))
                ctx.log("posthoc_dev_accuracy", step, posthoc)
                entry["posthoc_dev_accuracy"] = posthoc
            if not final:
                for t in together:
                    own = t.weights()
                    t.load_weights(merged if config.blend >= 1 else
                                   {k: config.blend * merged[k] + (1 - config.blend) * own[k]
                                    if own[k].is_floating_point() else own[k] for k in own})
            previous = info["merges"][-1]["dev_accuracy"] if info["merges"] else None
            info["merges"].append(entry)
            if config.adaptive and previous is not None:
                info["interval"] = config.merge_every if acc > previous else info["interval"] * 2
            if config.convergence > 0 and previous is not None and abs(acc - previous) < config.convergence:
                info["stopped"] = f"converged: dev accuracy moved {abs(acc - previous):.4f} < {config.convergence}"
            info["next_merge"] = step + info["interval"]
            info["pending"] = None
            return merged

        try:
            pending = info.get("pending")
            if pending and not pending["final"]:  # killed during a merge: redo it
                merge_now(pending["step"], False)
            while info["step"] < config.steps and not info["stopped"]:
                for i, t in enumerate(together):
                    ctx.log(f"loss/{config.sources[i]}", info["step"] + 1, t.step())
                for t in apart:
                    t.step()
                info["step"] += 1
                step = info["step"]
                if step < config.steps:
                    if config.plateau > 0 and step % config.merge_every == 0:
                        acc = dev(merge_weights(ws, config, [t.weights() for t in together]))
                        ctx.log("candidate_dev_accuracy", step, acc)
                        if info["best_candidate"] is None or acc > info["best_candidate"]:
                            info.update(best_candidate=acc, since_best=0)
                        else:
                            info["since_best"] += 1
                        if info["since_best"] >= config.plateau:
                            merge_now(step, False)
                            info.update(best_candidate=None, since_best=0)
                    elif config.plateau == 0 and step >= info["next_merge"]:
                        merge_now(step, False)
                tracker.advance(1, f"step {step}/{config.steps}, merges {len(info['merges'])}, loss "
                                   + ", ".join(f"{t.recent_loss():.3f}" for t in together))
        except (Cancelled, KeyboardInterrupt):
            info["seconds"] += time.perf_counter() - started
            started = time.perf_counter()
            _save(ckpt, together, apart, info)
            raise
        merged = merge_now(info["step"], True)
        save_file({k: v.contiguous() for k, v in merged.items()}, str(ckpt / "merged.safetensors"))
        metrics = {"validation": ws.evaluator.evaluate_state(merged, config.target, "validation"),
                   "test": ws.evaluator.evaluate_state(merged, config.target, "test")}
        baselines = {}
        if apart:
            posthoc = merge_weights(ws, config, [t.weights() for t in apart])
            baselines["posthoc_merge"] = {"model": "post-hoc merge of independently trained sources",
                                          **ws.evaluator.evaluate_state(posthoc, config.target, "test")}
        if not config.keep_checkpoint:  # K models with their optimizer moments: often gigabytes
            for part in ("together", "apart"):
                shutil.rmtree(ckpt / part, ignore_errors=True)
        acc = metrics["test"]["accuracy"]
        return {"metrics": metrics, "message": f"{len(info['merges'])} merges; merged model test accuracy {acc:.3f}",
                "result": {"merges": info["merges"], "stopped": info["stopped"], "checkpoint": str(ckpt),
                           "merged": str(ckpt / "merged.safetensors"), "posthoc": baselines.get("posthoc_merge"),
                           "target_data": config.target_data, "steps_done": info["step"],
                           "seconds": round(info["seconds"], 2)}}
    return job


def _fields(config: PeriodicConfig, ckpt: Path) -> dict:
    return dict(name=f"train + merge every {config.merge_every} ({config.method}) → {config.target}",
                target=config.target, method="periodic-merge", sources=config.sources, weights=config.weights,
                params={**config.to_dict(), "target_data": config.target_data, "checkpoint": str(ckpt)})


def submit_periodic(runner, ws, config: PeriodicConfig) -> str:
    config = check_periodic(ws, config)
    ckpt = checkpoint_dir(ws, f"periodic-{config.target}-{uuid.uuid4().hex[:8]}")
    return launch(periodic_job(ws, config, ckpt), _fields(config, ckpt), runner=runner)


def run_periodic(store, ws, config: PeriodicConfig, echo=None) -> dict:
    config = check_periodic(ws, config)
    ckpt = checkpoint_dir(ws, f"periodic-{config.target}-{uuid.uuid4().hex[:8]}")
    return launch(periodic_job(ws, config, ckpt), _fields(config, ckpt), store=store, echo=echo)


def periodic_resumable(row: dict) -> bool:
    ckpt = (row.get("params") or {}).get("checkpoint")
    return (row.get("method") == "periodic-merge" and row["status"] in STOPPED
            and bool(ckpt) and (Path(ckpt) / "state.json").exists())


def _resume_fields(store, run_id: str):
    return resume_fields(store, run_id, periodic_resumable, PeriodicConfig, _fields, "periodic-merge")


def resume_periodic(runner, ws, run_id: str) -> str:
    config, ckpt, run_fields = _resume_fields(runner.store, run_id)
    return launch(periodic_job(ws, config, ckpt), run_fields, runner=runner)


def resume_periodic_here(store, ws, run_id: str, echo=None) -> dict:
    config, ckpt, run_fields = _resume_fields(store, run_id)
    return launch(periodic_job(ws, config, ckpt), run_fields, store=store, echo=echo)
