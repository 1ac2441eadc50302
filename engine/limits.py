"""The declared range of every numeric setting, checked in one place.

A setting typed on the command line, chosen on a page, written in a sweep spec or stored in a
recipe goes through :func:`check_setting` against this table, so ``--population 1000000000``
and ``population: 1000000000`` in a spec are refused with the same one line. The CLI reads the
table for the type and help of every numeric option whose name is a setting
(:func:`declare_ranges`), the pages for their widget bounds (:func:`bounds`). Method parameters (density, λ, ...) are declared the same way, as ``Param``s next
to each method in its registry. The bounds are generous for real work and stop values that could
only be typos or would run for years / exhaust memory.
"""
from __future__ import annotations

import argparse
from typing import Any, Callable, Dict, Tuple, Type, Union

from .registry import Param

SEED_MAX = 2 ** 31 - 1

SETTINGS: Dict[str, Param] = {p.name: p for p in (
    # workspace / similarity / candidates
    Param("batch_size", "int", 64, 1, 4096, help="examples per forward pass"),
    Param("trim_store_gb", "float", 16.0, 0.0, 100_000.0,
          help="GB of disk for TIES' sorts kept between merges and searches (0: off)"),
    Param("top_k", "int", 5, 1, 100, help="URIEL neighbours kept (MASSIVE has 51 locales)"),
    Param("sinkhorn_iters", "int", 20, 0, 1000, help="Sinkhorn balancing rounds"),
    Param("seed", "int", 0, 0, SEED_MAX, help="random seed"),
    Param("data_examples", "int", 64, 1, 100_000, help="examples per locale for data-aware methods"),
    Param("sources", "int", 3, 1, 100, help="number of URIEL top-K sources (sweeps)"),
    # evolution (each algorithm's own settings are Params in its registration: engine/evolve/)
    Param("generations", "int", 50, 0, 10_000, help="generations after generation 0"),
    Param("population", "int", 8, 2, 1000, help="candidates kept per generation"),
    Param("dev_size", "int", 0, 0, 1_000_000, help="dev examples (0: the whole split)"),
    Param("patience", "int", 5, 0, 10_000, help="generations without gain before stopping (0: never)"),
    Param("min_delta", "float", 0.001, 0.0, 1.0),
    Param("fitness_weight", "float", 0.0, 0.0, 1000.0),
    # executors, reports, listings, demo builds
    Param("ray_cpus", "int", 2, 1, 4096, help="CPUs of a local Ray instance"),
    Param("gpus_per_cell", "float", 0.0, 0.0, 64.0),
    Param("alpha", "float", 0.05, 0.0, 0.5, low_open=True, help="significance level"),
    Param("limit", "int", 30, 1, 1_000_000, help="rows listed"),
    Param("steps", "int", 80, 1, 100_000, help="fine-tuning steps per locale"),
)}


class SettingError(ValueError):
    """A setting outside its declared range; the message names it, the range and the value."""


def check_setting(name: str, value: Any, where: str = "", error: Type[ValueError] = SettingError) -> Any:
    """``value`` coerced to the declared type, or ``error`` saying '<where><name> must be in [lo, hi],
    got <value>'."""
    return check_param(SETTINGS[name], value, where, error)


def _param(name: Union[str, Param]) -> Param:
    return SETTINGS[name] if isinstance(name, str) else name


def check_param(param: Param, value: Any, where: str = "", error: Type[ValueError] = SettingError) -> Any:
    """check_setting for a Param declared elsewhere (an evolution algorithm's settings)."""
    name = param.name
    if isinstance(value, bool) and param.kind in ("int", "float"):
        raise error(f"{where}{name} must be a number, got {value!r}")
    try:
        return param.check(value)
    except ValueError as exc:
        text = str(exc)
        reason = text[text.index(" must "):] if " must " in text else f": {text}"
        raise error(f"{where}{name}{reason}") from None


def bounds(name: Union[str, Param]) -> Tuple[Any, Any]:
    """(low, high) of a setting, typed as the setting is (for a page's number input)."""
    p = _param(name)
    cast = int if p.kind == "int" else float
    return cast(p.low), cast(p.high)


def arg_type(name: Union[str, Param]) -> Callable[[str], Any]:
    """An argparse ``type=`` that checks the value against the table (exit 2 with one line)."""
    param = _param(name)
    name = param.name

    def parse(text: str):
        try:
            number = float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
        try:
            return check_param(param, number if param.kind == "float" else _whole(text, number))
        except SettingError as exc:
            raise argparse.ArgumentTypeError(str(exc)) from None
    parse.__name__ = name  # argparse names the type in its messages
    return parse


def declare_ranges(parser: argparse.ArgumentParser) -> None:
    """Every int/float option of ``parser`` named like a setting (``--top-k`` -> top_k) gets the
    setting's checked type and its range in the help, so no command can forget one."""
    for action in parser._actions:
        if action.dest in SETTINGS and action.type in (int, float):
            action.type = arg_type(action.dest)
            action.help = arg_help(action.dest, action.help or "")


def _whole(text: str, number: float):
    return int(text) if text.strip().lstrip("+-").isdigit() else number


def arg_help(name: Union[str, Param], text: str = "") -> str:
    """Help text ending with the declared range, e.g. 'population (2..1000)'."""
    p = _param(name)
    low, high = bounds(p)
    span = f"{'>' if p.low_open else ''}{low}..{high}"
    return f"{text or p.help} ({span})".strip()
