"""Streamlit helpers shared by the pages: state (store, runner, workspace), widgets, job views.

Pages stay thin: they read the store, call the engine, and draw. Nothing here runs method logic.
"""
import ast as _ast
import sys as _sys
import threading as _threading


def _serialise_ast_parse() -> None:
    """One ``ast.parse`` at a time in the app's process. CPython before 3.13 keeps the AST
    constructor's recursion depth in per-interpreter state, so two threads parsing at once (a
    session's page script compiled by Streamlit's magic while another session or a job parses) can
    fail with "SystemError: AST constructor recursion depth mismatch" (CPython gh-106905, seen here
    under load). Parsing happens once per script and is cheap, so a lock costs nothing."""
    if _sys.version_info >= (3, 13) or getattr(_ast.parse, "_serialised", False):
        return
    lock, parse = _threading.RLock(), _ast.parse

    def locked_parse(*args, **kwargs):
        with lock:
            return parse(*args, **kwargs)

    locked_parse._serialised = True
    _ast.parse = locked_parse


_serialise_ast_parse()
