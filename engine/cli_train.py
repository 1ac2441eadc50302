"""``python -m engine train``: fine-tune one locale from the zoo's pretrained base.

The run is stored like the app's (``<cache>/runs.sqlite``), so the Train page and Compare show it;
Ctrl-C stops it after a checkpoint, and ``--resume RUN_ID`` continues it to the same result.
"""
from __future__ import annotations

from .cli import command, open_from_args, progress_for, workspace_args


def _train_args(p) -> None:
    from .train.finetune import REGISTER_MODES, FinetuneConfig

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
    from .cli_methods import open_store
    from .train.finetune import FinetuneConfig, TrainError, resume_finetune_here, run_finetune

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
