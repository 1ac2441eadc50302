"""Sweeps: a spec (targets × methods × grids × sources) expanded into cells (:mod:`.spec`) and run
as one resumable background job that stores every cell as its own run (:mod:`.runner`; on Ray
through :mod:`engine.parallel`). The names below are the package's public API."""
from .runner import (EXECUTORS, SweepError, compute_cell, find_cells, resume_sweep, submit_sweep,
                     sweep_cells, sweep_job, target_reference)
from .spec import (MAX_CELLS, MAX_VARIANTS, Cell, MethodSpec, SweepSpec, SweepSpecError, expand_cells,
                   load_spec, parse_spec)

__all__ = ["EXECUTORS", "SweepError", "compute_cell", "find_cells", "resume_sweep", "submit_sweep",
           "sweep_cells", "sweep_job", "target_reference", "MAX_CELLS", "MAX_VARIANTS", "Cell", "MethodSpec",
           "SweepSpec", "SweepSpecError", "expand_cells", "load_spec", "parse_spec"]
