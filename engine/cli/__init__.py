"""``python -m engine COMMAND``: the engine from the command line, for scripts and GPU boxes.

Every command has ``--help`` and ``--json``; errors print one line to stderr and exit with 2.
Commands register themselves with :func:`core.command` in their group's module (core: workspace
commands; methods: merge/ensemble/runs/export; evolve; sweep; transfer; train), imported here in the
order ``--help`` lists them.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import warnings
from contextlib import contextmanager
from typing import List, Optional

from ..formats import json_default
from .core import COMMANDS, command, table_text  # noqa: F401  (the registry, for callers and tests)
from . import methods, evolve, evolve_stage, sweep, transfer, train, mirror  # noqa: F401,E402,I001  (each registers its commands, in --help order)


class UsageError(ValueError):
    """A command line argparse refuses (unknown option, value outside its declared range)."""


class _Parser(argparse.ArgumentParser):
    def error(self, message):  # one line and exit 2, like every other error (not the usage block)
        raise UsageError(f"{message} (see {self.prog} --help)")


def build_parser() -> argparse.ArgumentParser:
    from ..limits import declare_ranges

    parser = _Parser(prog="python -m engine", description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name, (help_text, add_args, _) in COMMANDS.items():
        p = sub.add_parser(name, help=help_text, description=help_text)
        p.add_argument("--json", action="store_true", help="print machine-readable JSON on stdout")
        p.add_argument("--quiet", action="store_true", help="no progress bar")
        add_args(p)
        declare_ranges(p)  # every numeric option checked against engine/limits.py
    return parser


def main(argv: Optional[List[str]] = None) -> int:
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except UsageError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    if not args.command:
        parser.print_help()
        return 2
    _, _, fn = COMMANDS[args.command]
    try:
        with warnings.catch_warnings(), _mlflow_env(getattr(args, "mlflow", ""), getattr(args, "mlflow_model", False)):
            warnings.showwarning = _one_line_warning
            data, text = fn(args)
    except KeyboardInterrupt:
        print("\ninterrupted", file=sys.stderr)
        return 130
    except Exception as exc:  # one line, never a bare traceback
        msg = str(exc).strip() or type(exc).__name__
        if isinstance(exc, KeyError) and msg.startswith(("'", '"')):
            msg = msg[1:-1]
        print(f"error: {msg}", file=sys.stderr)
        if getattr(args, "debug", False):
            raise
        return 2
    print(json.dumps(data, indent=2, default=json_default, ensure_ascii=False) if args.json else text)
    return 0


@contextmanager
def _mlflow_env(uri: str, model: bool = False):
    """``--mlflow URI`` (and ``--mlflow-model``): every store this command opens mirrors its finished
    runs there (checked first, so a bad URI stops before any work)."""
    from ..mlflow_mirror import ENV_MODEL, ENV_URI, normalise_uri

    if model and not (uri or os.environ.get(ENV_URI, "").strip()):
        raise ValueError("--mlflow-model logs the exported model to MLflow: give --mlflow URI too")
    uri = uri or (os.environ.get(ENV_URI, "") if model else "")
    if not uri:
        yield
        return
    normalise_uri(uri)
    wanted = {ENV_URI: uri, **({ENV_MODEL: "1"} if model else {})}
    before = {name: os.environ.get(name) for name in wanted}
    os.environ.update(wanted)
    try:
        yield
    finally:
        for name, value in before.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


def _one_line_warning(message, category, filename, lineno, file=None, line=None) -> None:
    """Warnings (a cache moved aside, a refused cache entry) as one line on stderr, like errors."""
    print(f"warning: {message}", file=file or sys.stderr)

