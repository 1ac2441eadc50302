"""``python -m engine transfer``: how well each URIEL feature set and the transfer predictor rank
source models, against the zoo's true zero-shot accuracies (every target held out in turn)."""
from __future__ import annotations

import math

from .core import command, open_from_args, progress_for, table_text, workspace_args


def _transfer_args(p):
    workspace_args(p)
    p.add_argument("--split", default="test", choices=["test", "validation"],
                   help="split of the true zero-shot accuracies ranked against (the predictor is "
                        "always fitted on validation, leave-target-out)")
    p.add_argument("--ndcg-k", type=int, default=3, help="cut-off of NDCG")
    p.add_argument("--target", default=None,
                   help="also list this target's predicted transfer and weights per source")
    p.add_argument("--top-k", type=int, default=5, help="with --target: sources to weight")
    p.add_argument("--typology", default="lang2vec", choices=["lang2vec", "urielplus", "both"],
                   help="distances the rankers and the predictor use: lang2vec's URIEL vectors "
                        "(default), URIEL+'s distances and coverage, or both")


def _fmt(value: float) -> str:
    return "n/a" if value is None or (isinstance(value, float) and math.isnan(value)) else f"{value:.3f}"


@command("transfer", "rank sources: Spearman / NDCG of URIEL cosines vs the transfer predictor",
         _transfer_args)
def cmd_transfer(args):
    from ..transfer import predicted_transfer, predicted_weights, predictor_for, transfer_report

    if args.ndcg_k < 1:
        raise ValueError(f"--ndcg-k must be at least 1, got {args.ndcg_k}")
    ws = open_from_args(args)
    report = transfer_report(ws, args.split, args.ndcg_k, progress_for(args), typology=args.typology)
    k = report["k"]
    rows = [{"ranker": r["ranker"], "spearman": _fmt(r["spearman"]), f"ndcg@{k}": _fmt(r[f"ndcg@{k}"])}
            for r in report["table"]]
    text = (f"zoo {report['zoo']} ({report['models']} models), {report['targets']} held-out targets; "
            f"predictor ({args.typology}) fitted on {report['fit_split']} (leave-target-out), truth: "
            f"{report['truth_split']} split\n\n" + table_text(rows))
    if args.target:
        from ..languages import resolve_locale

        target = resolve_locale(args.target)
        predicted = predicted_transfer(ws, target, typology=args.typology)
        weights = predicted_weights(ws, target, top_k=args.top_k, typology=args.typology)
        report["target"] = {"target": target, "predicted": predicted, "weights": weights,
                            "coefficients": predictor_for(ws, target, typology=args.typology).coefficients()}
        per_source = [{"source": s, "predicted accuracy": predicted[s], "weight": weights.get(s, 0.0)}
                      for s in sorted(predicted, key=lambda s: (-predicted[s], s))]
        text += f"\n\npredicted transfer to {target}:\n" + table_text(per_source)
    return report, text
