"""Merging only the rows of a tensor that evaluation reads.

A search scores every candidate on the same few dev sentences, and an embedding matrix is read only
at the rows of their token ids: a few hundred of XLM-R's 250,002, the tensor that holds 70 % of its
parameters. ``merge_rows`` computes just those rows, bit for bit the rows the whole merge gives.
How a method allows it is its registry trait ``row_local`` (engine/registry.py Traits):

- ``"entrywise"``: each output entry depends only on the same entry of the inputs (linear, task
  arithmetic): the kernel runs on the row slices.
- ``"trim"``: TIES' magnitude trim. Each source's cut is a per-tensor statistic, taken from the
  whole tensor (an index lookup in the MergeCache's sorted magnitudes, else a selection), and so
  are the entries kept among ties at the cut; the trimmed rows and the sign election that follows
  are entrywise.
- ``""`` (the default): some statistic needs the merged tensor itself (DARE's L1 rescale of the
  dropped delta, SLERP's norms, ...): there is no restricted merge and callers merge whole.

Every entry goes through the same float operations as in the whole merge, in the same SIMD lane
(rows whose width is a multiple of 64 entries; others are merged whole), so the rows are bit-identical
(tests/test_rows.py checks every declared method against its whole merge).
"""
from __future__ import annotations

from typing import Callable, Dict, List, Mapping, Optional, Sequence

import torch
from torch import Tensor

from ..registry import ROW_RULES  # noqa: F401  (the trait's values, documented above)
from .common import MergeError, all_finite, each, normalise_weights

LANES = 64  # row widths that keep every entry in its SIMD lane of the whole-tensor op

StateDict = Mapping[str, Tensor]


class RowMerged(dict):
    """A merged state dict in which the tensors named in ``rows`` hold only those rows of the full
    merge (``rows[key]``: sorted, unique int64 row ids; ``self[key]``: a [len(rows), ...] tensor).
    ``complete()`` returns the full merge; anything that reads more than those rows (an export,
    another split) must call it."""

    def __init__(self, *args, rows: Optional[Dict[str, Tensor]] = None,
                 complete: Optional[Callable[[], Dict[str, Tensor]]] = None, **kwargs):
        super().__init__(*args, **kwargs)
        self.rows: Dict[str, Tensor] = dict(rows or {})
        self._complete = complete

    def complete(self) -> Dict[str, Tensor]:
        if not self.rows:
            return self
        if self._complete is None:
            raise MergeError("this merge holds only some rows of "
                             f"{', '.join(sorted(self.rows))} and cannot be completed")
        return self._complete()

    def covers(self, ids: Tensor) -> bool:
        """Whether every id in ``ids`` is a merged row of every partial tensor."""
        return all(bool(torch.isin(ids, r).all()) for r in self.rows.values())


def complete_state(state: Mapping[str, Tensor]) -> Mapping[str, Tensor]:
    """The whole merge of a state that may hold only some rows (a RowMerged); others as they are."""
    return state.complete() if getattr(state, "rows", None) else state


def row_ids(values) -> Tensor:
    """Sorted unique int64 row ids from token ids (tensors or ints)."""
    if isinstance(values, Tensor):
        flat = values.reshape(-1)
    else:
        parts = [torch.as_tensor(v).reshape(-1) for v in values]
        flat = torch.cat(parts) if parts else torch.empty(0, dtype=torch.long)
    return torch.unique(flat.to(torch.long))


def restrictable(method, shape: Sequence[int]) -> bool:
    """Whether ``merge_rows`` gives rows of this tensor for this method (else merge whole)."""
    rule = method.traits.row_local
    return (rule in ("entrywise", "trim") and len(shape) == 2 and shape[1] % LANES == 0
            and method.hooks.prepare is None and not method.traits.needs_data
            and not method.traits.random)


def _gathered_piece(piece: Callable[[int, int], Tensor], rows: List[int], width: int):
    """A Piece over the rows' compact flat index space [0, len(rows)·width) from a Piece over the
    whole tensor's: each compact slice is cut into row runs, taken at their true positions."""
    def compact(start: int, stop: int) -> Tensor:
        parts, pos = [], start
        while pos < stop:
            r, offset = divmod(pos, width)
            run = 1  # consecutive row ids form one run
            while (r + run) * width < stop and r + run < len(rows) and rows[r + run] == rows[r] + run:
                run += 1
            end = min(stop, (r + run) * width)
            origin = rows[r] * width + offset
            parts.append(piece(origin, origin + end - pos))
            pos = end
        return parts[0] if len(parts) == 1 else torch.cat(parts)
    return compact


def merge_rows(method, originals: Sequence[Tensor], base: Optional[Tensor],
               weights: Sequence[float], params: Mapping, rows: Tensor, *, key: str,
               names: Sequence[str], device: torch.device, seed: int = 0, cache=None) -> Tensor:
    """Rows ``rows`` of ``merge_state_dicts``'s output for one 2-D tensor, the same bits.

    ``method`` a registry Method with ``restrictable`` true; ``weights`` and ``params`` as given to
    merge_state_dicts (normalised and resolved here the same way); ``base`` the base's tensor
    (needed by task-vector methods); ``cache`` the search's MergeCache, which keeps the checked
    float32 inputs and TIES' sorted magnitudes between calls. Inputs are checked for NaN/inf
    whole, as the whole merge checks them, and so is the output's part. Runs on ``device``."""
    from .run import key_generator, resolve_params

    if not restrictable(method, originals[0].shape):
        raise MergeError(f"{method.name} cannot merge only some rows of '{key}'; merge it whole")
    if method.traits.needs_base and base is None:
        raise MergeError(f"{method.name} needs the base's '{key}' to merge its rows")
    count = len(originals)
    w = normalise_weights(list(weights), count, names)
    resolved = resolve_params(method, params, count)
    kernel_params = {p.name: resolved[p.name] for p in method.params}
    weight_tensor = torch.tensor(w, dtype=torch.float32, device=device)
    inputs = None
    if cache is not None:
        inputs = cache.inputs(key, originals, base, names, device)
        tensors, base_t = inputs.tensors, inputs.base if base is not None else None
    else:
        for t, name in zip(originals, names):
            if not all_finite(t):
                raise MergeError(f"model '{name}' tensor '{key}' contains NaN or inf")
        if base is not None and not all_finite(base):
            raise MergeError(f"model 'base' tensor '{key}' contains NaN or inf")
        tensors = [t.to(device=device, dtype=torch.float32) for t in originals]
        base_t = base.to(device=device, dtype=torch.float32) if base is not None else None
    index = rows.to(device=device, dtype=torch.long)
    if method.traits.row_local == "entrywise":
        merged = method.fn([t.index_select(0, index) for t in tensors], weight_tensor,
                           base_t.index_select(0, index) if base_t is not None else None, key=key,
                           generator=key_generator(seed, key, device), **kernel_params)
    else:
        merged = _trim_rows(tensors, base_t, weight_tensor, kernel_params, index, inputs)
    if not all_finite(merged):
        raise MergeError(f"merge method '{method.name}' produced NaN/inf in tensor '{key}'")
    return merged.to(device=originals[0].device, dtype=originals[0].dtype)


def _trim_rows(tensors: Sequence[Tensor], base: Tensor, weights: Tensor, params: Mapping,
               rows: Tensor, inputs) -> Tensor:
    """TIES (sparse.py's kernel) on rows: each source's trim as the whole tensor's Piece (its cut
    and tie choice from the whole tensor, cached sorted magnitudes when a MergeCache is given),
    read at the rows only, then the same sign-consensus combine."""
    from .combine import combine
    from .sparse_trim import cached_ties, trimmed, trimmed_fast

    k, width = len(tensors), tensors[0].shape[1]
    dens = each(params.get("density", 1.0), k, "density")
    for d in dens:
        if not 0 < d <= 1:
            raise MergeError(f"ties: density must be in (0, 1], got {d}")
    w = weights.tolist()
    fast = params.get("selection", "exact") == "fast"
    pieces = []
    for i, t in enumerate(tensors):
        sorted_size = inputs.sorted_size(i) if inputs is not None and dens[i] < 1 else None
        untied = None if fast or sorted_size is None else \
            _untied_piece(t, base, dens[i], w[i], rows, sorted_size)
        if untied is not None:
            piece = untied
        elif fast:
            piece = trimmed_fast(t, base, dens[i], w[i], sorted_size)
        elif inputs is not None:
            piece = trimmed(t, base, dens[i], w[i], sorted_size, ties=cached_ties(inputs, i))
        else:
            piece = trimmed(t, base, dens[i], w[i])
        pieces.append(_gathered_piece(piece, rows.tolist(), width))
    return combine(pieces, w, base.index_select(0, rows), consensus=True,
                   normalize=params.get("normalize", True), scale=params.get("scale", 1.0))


def _untied_piece(x: Tensor, base: Tensor, density: float, weight: float, rows: Tensor,
                  sorted_size: Tensor):
    """sparse_trim.trimmed's Piece where more entries tie at the cut than TIES keeps, but none of
    them lies in ``rows``: which tied entries mergekit keeps (a full argsort of |δ|, ~30 s for an
    XLM-R embedding) then changes none of these rows, and every other entry takes trimmed's own
    ops (|δ| > cut kept, then × w). None where trimmed itself is needed (no surplus ties: it
    sorts nothing; a tied entry in the rows: it decides)."""
    from .sparse_trim import trim_cut

    cut, _, exact = trim_cut(density, x.numel(), sorted_size=sorted_size)
    if exact or cut == 0:
        return None
    if bool((torch.sub(x.index_select(0, rows), base.index_select(0, rows)).abs_() == cut).any()):
        return None
    fx, fb, value = x.reshape(-1), base.reshape(-1), float(cut)
    return lambda start, stop: torch.nn.functional.hardshrink(
        torch.sub(fx[start:stop], fb[start:stop]), value).mul_(weight)


def merge_state_rows(method, sources: Sequence[StateDict], weights: Sequence[float],
                     base: Optional[StateDict], params: Mapping, rows: Mapping[str, Tensor], *,
                     names: Sequence[str], device, seed: int = 0, cache=None,
                     complete: Optional[Callable[[], Dict[str, Tensor]]] = None) -> RowMerged:
    """``merge_state_dicts`` of ``sources``, except that each key in ``rows`` the method can
    restrict (``restrictable``, base present where needed) gets only those rows. ``complete``:
    what the result's ``complete()`` returns (default: the whole merge, made then)."""
    from .run import merge_state_dicts, resolve_method

    method = resolve_method(method)
    compute = torch.device(device) if device is not None else torch.device("cpu")
    first = sources[0]
    partial = {k: r for k, r in rows.items() if k in first and first[k].is_floating_point()
               and restrictable(method, first[k].shape)
               and (not method.traits.needs_base or (base is not None and k in base))}
    rest = [k for k in first if k not in partial]

    def whole() -> Dict[str, Tensor]:
        return dict(merge_state_dicts(method, sources, weights, base=base, params=params,
                                      names=names, device=compute, seed=seed, cache=cache))

    out = RowMerged(rows={k: r.to(torch.long) for k, r in partial.items()},
                    complete=complete or whole)
    if rest:
        subs = [{k: s[k] for k in rest} for s in sources]
        sub_base = {k: base[k] for k in rest if k in base} if base is not None else None
        out.update(merge_state_dicts(method, subs, weights, base=sub_base, params=params,
                                     names=names, device=compute, seed=seed, cache=cache))
    for k, r in partial.items():
        out[k] = merge_rows(method, [s[k] for s in sources], base[k] if method.traits.needs_base
                            else None, weights, params, r, key=k, names=names, device=compute,
                            seed=seed, cache=cache)
    return RowMerged({k: out[k] for k in first}, rows=out.rows, complete=out._complete)
