"""The evolution-algorithm registry: one entry per search, registered where the search is written.

An entry's function is its search class (a subclass of ``search.Search``), its ``params`` the
settings the CLI (``--flag`` per setting), the Evolve page (one control per setting) and
``EvolveConfig.check`` (the declared range) all draw from, as merge methods' are. Kept a leaf
module (it imports only the generic Registry) so the config, the searches and the runner can all
read it without an import cycle.
"""
from __future__ import annotations

from ..registry import Method, Registry

EVOLUTIONS = Registry("evolution")


def algorithm(name: str) -> Method:
    """The registered algorithm, or KeyError listing the known ones."""
    return EVOLUTIONS.get(name)


def setting_params():
    """Every algorithm setting by name, first declaration wins (the CLI's one flag per name)."""
    out = {}
    for method in EVOLUTIONS:
        for p in method.params:
            out.setdefault(p.name, (p, []))[1].append(method.name)
    return out
