"""``python -m engine train``: fine-tune one locale from the zoo's pretrained base.

The run is stored like the app's (``<cache>/runs.sqlite``), so the Train page and Compare show it;
Ctrl-C stops it after a checkpoint, and ``--resume RUN_ID`` continues it to the same result.
"""
from __future__ import annotations

from .core import command, open_from_args, open_store, progress_for, table_text, workspace_args


def _train_args(p) -> None:
    from ..train.finetune import REGISTER_MODES, FinetuneConfig

    d = FinetuneConfig(locale="")
    workspace_args(p)
    p.add_argument("--locale", help="the locale whose train split to fine-tune on (required unless --resume)")
    p.add_argument("--name", default="", help="new model folder in the zoo's folder (default: ft_<locale>_<time>)")
    p.add_argument("--lr", type=float, default=d.lr, help="peak learning rate (AdamW)")
    p.add_argument("--steps", type=int, default=d.steps, help="optimizer steps (0: use --epochs)")
    p.add_argument("--epochs", type=float, default=d.epochs, help="passes over the train split when --steps is 0")
    p.add_argument("--train-batch-size", type=int, default=d.batch_size, help="examples per step")
    p.add_argument("--warmup", type=int, default=d.warmup, help="linear warm-up steps (-1: 10%% of the steps)")
    p.add_argument("--freeze-embeddings", action="store_true", help="do not train the input embeddings")
    p.add_argument("--seed", type=int, default=d.seed)
    p.add_argument("--eval-every", type=int, default=d.eval_every,
                   help="validation (dev split) accuracy every N steps (0: ten times per run)")
    p.add_argument("--patience", type=int, default=d.patience,
                   help="early stopping: validations without gain before stopping, keeping the best (0: off)")
    p.add_argument("--checkpoint-every", type=int, default=d.checkpoint_every, help="0: at every validation")
    p.add_argument("--register", choices=REGISTER_MODES, default=d.register,
                   help="add the model to the zoo manifest: auto (unless the locale has one), replace, no")
    p.add_argument("--resume", metavar="RUN_ID", help="continue a cancelled/interrupted fine-tune")


@command("train", "fine-tune one locale's classifier from the zoo's pretrained base", _train_args)
def cmd_train(args):
    from ..train.finetune import FinetuneConfig, TrainError, resume_finetune_here, run_finetune

    ws = open_from_args(args)
    store = open_store(ws)
    if args.resume:
        row = resume_finetune_here(store, ws, args.resume, echo=progress_for(args))
    else:
        if not args.locale:
            raise TrainError("choose a --locale to train (or --resume RUN_ID)")
        config = FinetuneConfig(locale=args.locale, name=args.name, lr=args.lr, steps=args.steps,
                                epochs=args.epochs, batch_size=args.train_batch_size, warmup=args.warmup,
                                freeze_embeddings=args.freeze_embeddings, seed=args.seed,
                                eval_every=args.eval_every, patience=args.patience,
                                checkpoint_every=args.checkpoint_every, register=args.register)
        row = run_finetune(store, ws, config, echo=progress_for(args))
    result = row["result"]
    test = (row["metrics"].get("test") or {}).get("accuracy")
    text = (f"run {row['id']}: {result['output']} ({result['record']['steps_done']} steps, "
            f"{result['seconds']:.1f} s)" + (f", test accuracy {test:.3f}" if test is not None else "")
            + f"\n{result['note']}")
    return {"run_id": row["id"], "status": row["status"], "metrics": row["metrics"], "result": result}, text


def _periodic_args(p) -> None:
    from ..train.periodic import PeriodicConfig

    d = PeriodicConfig(target="")
    workspace_args(p)
    p.add_argument("--target", help="target locale, scored on its dev split after each merge (required unless --resume)")
    p.add_argument("--sources", nargs="*", default=None, help="source locales to train (default: the target's URIEL top-k)")
    p.add_argument("--top-k", type=int, default=d.top_k)
    p.add_argument("--weighting", choices=["uriel", "equal"], default=d.weighting)
    p.add_argument("--method", default=d.method, help="any registered merge method without data batches")
    p.add_argument("--steps", type=int, default=d.steps, help="optimizer steps per source")
    p.add_argument("--merge-every", type=int, default=d.merge_every, help="merge every N steps")
    p.add_argument("--adaptive", action="store_true", help="double the interval after a merge without dev gain")
    p.add_argument("--plateau", type=int, default=d.plateau,
                   help="merge when a would-be merge's target dev accuracy has not improved for N checks (0: off)")
    p.add_argument("--convergence", type=float, default=d.convergence,
                   help="stop when a merge moves the target dev accuracy by less than this (0: off)")
    p.add_argument("--blend", type=float, default=d.blend, help="1: models become the merge; b: b·merge + (1−b)·own")
    p.add_argument("--lr", type=float, default=d.lr)
    p.add_argument("--train-batch-size", type=int, default=d.batch_size)
    p.add_argument("--warmup", type=int, default=d.warmup)
    p.add_argument("--seed", type=int, default=d.seed)
    p.add_argument("--no-baseline", action="store_true", help="skip the independently trained post-hoc merge baseline")
    p.add_argument("--resume", metavar="RUN_ID", help="continue a cancelled/interrupted run")


@command("train-merge", "train K source locales together, merging them every N steps, for a target",
         _periodic_args)
def cmd_train_merge(args):
    from ..train.finetune import TrainError
    from ..train.periodic import PeriodicConfig, resume_periodic_here, run_periodic

    ws = open_from_args(args)
    store = open_store(ws)
    if args.resume:
        row = resume_periodic_here(store, ws, args.resume, echo=progress_for(args))
    else:
        if not args.target:
            raise TrainError("choose a --target locale (or --resume RUN_ID)")
        config = PeriodicConfig(target=args.target, sources=args.sources or [], top_k=args.top_k,
                                weighting=args.weighting, method=args.method, steps=args.steps,
                                merge_every=args.merge_every, adaptive=args.adaptive, plateau=args.plateau,
                                convergence=args.convergence, blend=args.blend, lr=args.lr,
                                batch_size=args.train_batch_size, warmup=args.warmup, seed=args.seed,
                                baseline=not args.no_baseline)
        row = run_periodic(store, ws, config, echo=progress_for(args))
    result = row["result"]
    lines = [f"run {row['id']}: {len(result['merges'])} merges of {', '.join(row['sources'])} → {row['target']}"]
    lines += [f"  step {m['step']}: merged dev {m['dev_accuracy']:.3f}"
              + (f", post-hoc dev {m['posthoc_dev_accuracy']:.3f}" if "posthoc_dev_accuracy" in m else "")
              for m in result["merges"]]
    lines.append(f"merged model test accuracy {row['metrics']['test']['accuracy']:.3f}"
                 + (f"; post-hoc merge {result['posthoc']['accuracy']:.3f}" if result.get("posthoc") else ""))
    lines.append(f"merged weights: {result['merged']}")
    return {"run_id": row["id"], "status": row["status"], "metrics": row["metrics"], "result": result}, "\n".join(lines)


def _labels_args(p) -> None:
    workspace_args(p)
    p.add_argument("--target", required=True, help="target locale: its train split gives the n labels, test scores")
    p.add_argument("--fused", required=True, help="a stored merge / periodic-merge run id, or a model folder")
    p.add_argument("--ns", nargs="*", type=int, default=[0, 8, 16, 32, 64, 128], help="label counts")
    p.add_argument("--steps", type=int, default=30, help="fine-tuning steps at each n")
    p.add_argument("--train-batch-size", type=int, default=16)
    p.add_argument("--lr", type=float, default=4e-4)
    p.add_argument("--seed", type=int, default=0)


@command("train-labels", "what a merge is worth in target labels: base vs fused model fine-tuned on n target labels",
         _labels_args)
def cmd_train_labels(args):
    from ..train.labels import LabelCurveConfig, run_label_curve

    ws = open_from_args(args)
    config = LabelCurveConfig(target=args.target, fused=args.fused, ns=args.ns, steps=args.steps,
                              batch_size=args.train_batch_size, lr=args.lr, seed=args.seed)
    row = run_label_curve(open_store(ws), ws, config, echo=progress_for(args))
    result = row["result"]
    saved = result["labels_saved"]
    text = (table_text(result["curve"]) + f"\nrun {row['id']}: the base needs "
            + (f"{saved} target labels" if saved is not None else f"more than {result['max_n']} target labels")
            + " to match the fused model with none")
    return {"run_id": row["id"], "result": result}, text


def _pseudo_args(p) -> None:
    from ..experiments import WEIGHTINGS
    from ..train.pseudo import LABELLERS, PseudoConfig

    d = PseudoConfig(target="")
    workspace_args(p)
    p.add_argument("--target", required=True, help="target locale: its train split's texts (labels withheld) are pseudo-labelled")
    p.add_argument("--sources", nargs="*", default=None, help="source locales (default: the target's top-k by --weighting)")
    p.add_argument("--top-k", type=int, default=d.top_k)
    p.add_argument("--weighting", choices=WEIGHTINGS, default=d.weighting)
    p.add_argument("--method", default=d.method, help="the merge to fine-tune (any registered merge without data)")
    p.add_argument("--labeller", choices=LABELLERS, default=d.labeller,
                   help="who labels the target's texts: the soft vote of the sources, the merge itself, or the "
                        "sources' weighted-logits vote recentred on those texts (shifted)")
    p.add_argument("--threshold", type=float, default=d.threshold,
                   help="keep texts whose top pseudo-label probability is at least this")
    p.add_argument("--steps", type=int, default=d.steps, help="fine-tuning steps on the pseudo-labelled texts")
    p.add_argument("--train-batch-size", type=int, default=d.batch_size)
    p.add_argument("--lr", type=float, default=d.lr)
    p.add_argument("--warmup", type=int, default=d.warmup, help="linear warm-up steps (-1: 10%% of the steps)")
    p.add_argument("--seed", type=int, default=d.seed)


@command("train-pseudo", "self-train a merge on the target's unlabelled text, pseudo-labelled by the "
         "sources' soft vote (or the merge)", _pseudo_args)
def cmd_train_pseudo(args):
    from ..train.pseudo import PseudoConfig, run_pseudo

    ws = open_from_args(args)
    config = PseudoConfig(target=args.target, sources=args.sources or [], top_k=args.top_k, weighting=args.weighting,
                          method=args.method, labeller=args.labeller, threshold=args.threshold, steps=args.steps,
                          batch_size=args.train_batch_size, lr=args.lr, warmup=args.warmup, seed=args.seed)
    row = run_pseudo(open_store(ws), ws, config, echo=progress_for(args))
    result = row["result"]
    test = (row["metrics"].get("test") or {}).get("accuracy")
    text = (f"run {row['id']}: {result['kept']} of {result['texts']} {row['target']} texts pseudo-labelled "
            f"({', '.join(row['sources'])}); test accuracy "
            + (f"{test:.3f}" if test is not None else "n/a")
            + f" (the {args.method} merge: {result['start_accuracy'].get('test', float('nan')):.3f})"
            + f"\nweights: {result['merged']}")
    return {"run_id": row["id"], "status": row["status"], "metrics": row["metrics"], "result": result}, text
