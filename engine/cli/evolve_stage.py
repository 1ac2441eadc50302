"""``python -m engine evolve-ada RUN_ID``: AdaMerging as the final stage of a stored evolution."""
from __future__ import annotations

from pathlib import Path

from .core import command, open_from_args, progress_for, workspace_args


def _stage_args(p):
    from ..evolve.ada_stage import STAGE_DEFAULTS
    from ..merge.adamerging import GRANULARITIES

    workspace_args(p)
    p.add_argument("run_id", metavar="RUN_ID", help="a stored evolution (finished or stopped)")
    p.add_argument("--granularity", choices=GRANULARITIES, default=STAGE_DEFAULTS["granularity"],
                   help="one λ per source and transformer layer (layer), per source (task) or per tensor")
    p.add_argument("--steps", type=int, default=STAGE_DEFAULTS["steps"], help="Adam steps on the entropy")
    p.add_argument("--learning-rate", type=float, default=STAGE_DEFAULTS["learning_rate"])
    p.add_argument("--examples", type=int, default=STAGE_DEFAULTS["examples"],
                   help="unlabelled target texts used")
    p.add_argument("--target-text", default="", metavar="FILE",
                   help="unlabelled target text, one sentence per line (UTF-8); default: the target's "
                        "train split with its labels withheld")
    p.add_argument("--export", default="", metavar="DIR", help="write the kept model (HF folder) here")
    p.add_argument("--overwrite", action="store_true", help="replace DIR if it is not empty")


def stage_workspace(args, row):
    """The evolution's own workspace (as it recorded it) unless --zoo/--data say otherwise."""
    from ..workspace import Settings, open_workspace

    recorded = (row.get("params") or {}).get("settings")
    if args.zoo or not recorded:
        return open_from_args(args)
    settings = Settings(**{k: v for k, v in recorded.items() if k in Settings.__dataclass_fields__})
    settings.device = args.device if args.device != "auto" else settings.device
    return open_workspace(settings)


@command("evolve-ada", "refine an evolution's champion by AdaMerging on unlabelled target text "
                       "(a final stage; kept only if its dev fitness is higher)", _stage_args)
def cmd_evolve_ada(args):
    from ..data.target_text import read_target_text
    from ..evolve.ada_stage import stage_fields, stage_job
    from ..jobs import run_here
    from ..store import open_store

    store = open_store(args.cache_dir)
    row = store.get(args.run_id)
    if row["kind"] != "evolve":
        raise ValueError(f"run {args.run_id} is a '{row['kind']}' run, not an evolution")
    if args.target_text:
        read_target_text(args.target_text)  # a bad file: refused before the zoo is opened
    ws = stage_workspace(args, row)
    params = {"granularity": args.granularity, "steps": args.steps, "learning_rate": args.learning_rate,
              "examples": args.examples}
    keep: dict = {}
    done = run_here(store, "merge", stage_job(ws, row, params, args.target_text, keep),
                    echo=progress_for(args), **stage_fields(row, params, args.target_text))
    result = done["result"]
    if args.export:
        from ..candidate_runs import protected_folders
        from ..merge.export import export_merge

        champion_method = ((row.get("result") or {}).get("champion") or {}).get("export_method")
        recipe = {"method": "adamerging" if result["kept"] == "refined" else champion_method,
                  "stage": "adamerging", "stage_of": args.run_id, "kept": result["kept"],
                  "coefficients": result["refined"]["coefficients"], "target": row["target"],
                  "sources": row.get("sources"), "text": result["text"]}
        result["export"] = str(export_merge(keep["state"], ws.zoo.path(row["sources"][0]), Path(args.export),
                                            recipe, overwrite=args.overwrite, protected=protected_folders(ws),
                                            mergekit_note="an evolution's champion with an AdaMerging stage "
                                                          "(learned per-layer coefficients): no mergekit config"))
    lines = [f"AdaMerging stage on evolution {args.run_id} → {row['target']}: kept the {result['kept']}",
             f"  champion: dev fitness {result['champion']['fitness']:.4f}, test accuracy "
             f"{result['champion']['test']['accuracy']:.3f}",
             f"  refined:  dev fitness {result['refined']['fitness']:.4f}, test accuracy "
             f"{result['refined']['test']['accuracy']:.3f}",
             f"  entropy on {result['entropy']['examples']} unlabelled texts ({result['text']}): "
             f"{result['entropy']['start']:.4f} → {result['entropy']['end']:.4f}",
             f"stored as run {done['id']}" + (f"; exported to {result['export']}" if args.export else "")]
    return {"run_id": done["id"], **result}, "\n".join(lines)
