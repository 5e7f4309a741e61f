"""Initial and final states: what lets :func:`seqbench.engine.recurrent` start from a given state
and return the final one (stateful truncated BPTT carries it from one window to the next).

Forward, a layer's ``h_all[0]`` holds ``h0`` (and a cell-state cell's ``c_all[0]`` holds ``c0``);
step 0 then makes the recurrent product that a zero state lets it skip. The final state of
sequence ``b`` is its state after its last real step, ``h_all[last[b]]`` with ``last[b]`` its
length (``T`` without lengths; 0 gives back the initial state).

Backward, the gradients of the final state enter where the final state was read:

* dL/dh_n of a layer joins the upstream gradient of that layer at step ``last[b] - 1`` (the
  output there *is* the final state). Below the top layer the upstream rows are carried as
  ``row * 2**e`` (see ``backward_native.py``): the sum is formed in float64 and the row
  renormalised (:func:`add_at_last_step`), so no value becomes a denormal.
* dL/dc_n (a cell with a cell state) starts the cell-state carry at the last step, as a
  normalised row and its exponent (:func:`normalised_rows`); a padded step passes the carry on
  unchanged, as it passes the cell state forward.

After step 0, the recurrent carry and the cell-state carry are dL/dh_0 and dL/dc_0, in the
sequences' exponents ``e[0, b]`` (:func:`unscaled_rows`).
"""

from __future__ import annotations

from typing import NamedTuple

import torch
from torch import Tensor

from seqbench.cells import Cell


def final_steps(lens_cpu: Tensor | None, steps: int, batch: int) -> Tensor:
    """(B,) int64 on the CPU: the index into ``h_all`` of each sequence's final state."""
    if lens_cpu is None:
        return torch.full((batch,), steps, dtype=torch.int64)
    return lens_cpu.clone()


def _exponent(magnitude: Tensor) -> Tensor:
    """frexp's exponent of each (non-negative, float64) value: v = m * 2**e with m in [0.5, 1);
    inf and NaN count as 1 (they propagate through the values, not the exponents)."""
    finite = torch.where(torch.isfinite(magnitude), magnitude, 1.0)
    return torch.frexp(finite)[1].double()


def scale_pow2(x: Tensor, k: Tensor) -> Tensor:
    """x (float64, (N, H)) times 2**k[n] per row, in two factors so that no factor overflows
    where the product does not."""
    half = torch.floor(k / 2)
    return x * torch.exp2(half)[:, None] * torch.exp2(k - half)[:, None]


def normalised_rows(g: Tensor) -> tuple[Tensor, Tensor]:
    """g (B, H) as float64 rows with max |.| in [0.5, 1) and exponents e (B,) float64, so that
    g = rows * 2**e (a zero row: itself, e = 0)."""
    gd = g.double()
    top = gd.abs().amax(1)
    e = torch.where(top > 0, _exponent(top), 0.0)
    return scale_pow2(gd, -e), e


def unscaled_rows(rows: Tensor, e: Tensor, dtype: torch.dtype) -> Tensor:
    """rows (B, H) times 2**e[b], as ``dtype``; a value below the dtype's smallest normal number
    is returned as 0 (as the engine's dL/dx), never as a denormal."""
    true = scale_pow2(rows.double(), e.double())
    return true.masked_fill(true.abs() < torch.finfo(dtype).tiny, 0.0).to(dtype)


def add_at_last_step(up: Tensor, up_exp: Tensor | None, last: Tensor, g: Tensor) -> Tensor:
    """Add g[b] (B, H), the gradient of sequence b's final state, to the upstream gradient of
    step ``last[b] - 1`` (sequences with ``last[b] = 0`` get nothing: their final state is the
    initial one). Returns the upstream to use.

    ``up_exp`` None: ``up`` is (B, T, H) in its true scale (the top layer's gradient); a copy is
    returned with g added. Otherwise ``up`` (T, B, H) holds rows ``row * 2**up_exp[t, b]``
    (int32 or float64 exponents); each touched row is summed in float64, renormalised to a
    largest magnitude in [0.5, 1) and written back with its new exponent, in place.
    """
    rows = torch.nonzero(last > 0).squeeze(1).to(up.device)
    steps = (last.to(up.device)[rows] - 1).long()
    if up_exp is None:
        up = up.contiguous().clone()
        up[rows, steps] += g[rows]
        return up
    row = up[steps, rows].double()  # (k, H)
    where = (steps.to(up_exp.device), rows.to(up_exp.device))
    e = up_exp[where].double().to(up.device)
    add = g[rows].double()
    top_row, top_add = row.abs().amax(1), add.abs().amax(1)
    neg_inf = torch.tensor(-torch.inf, dtype=torch.float64, device=up.device)
    e_row = torch.where(top_row > 0, e + _exponent(top_row), neg_inf)
    e_add = torch.where(top_add > 0, _exponent(top_add), neg_inf)
    total = torch.maximum(e_row, e_add)
    keep = torch.isfinite(total)  # a pair of zero rows stays as it is
    total = torch.where(keep, total, 0.0)
    shift = torch.where(top_row > 0, e - total, 0.0)
    summed = scale_pow2(row, shift) + scale_pow2(add, -total)
    up[steps[keep], rows[keep]] = summed[keep].to(up.dtype)
    kept = keep.to(up_exp.device)
    up_exp[where[0][kept], where[1][kept]] = total[keep].to(up_exp.device, up_exp.dtype)
    return up


class FinalGrads(NamedTuple):
    """What a backward brings for the final state: dL/dh_n and dL/dc_n (L, B, H) or None,
    where each sequence's final state is (``last`` (B,), from :func:`final_steps`), and whether
    dL/dh_0 (and dL/dc_0) is wanted."""

    h_n: torch.Tensor | None = None
    c_n: torch.Tensor | None = None
    last: torch.Tensor | None = None
    want_h0: bool = False


NO_FINAL = FinalGrads()


def check_state(spec: Cell, x, h0, c0, num_layers: int, hidden_size: int) -> None:
    """Refuse an initial state of the wrong shape, dtype or device, or a c0 where it cannot go."""
    shape = (num_layers, x.shape[0], hidden_size)
    if spec.cell_state and (h0 is None) != (c0 is None):
        raise ValueError(f"cell {spec.name!r} carries a cell state: give h0 and c0, or neither")
    if c0 is not None and not spec.cell_state:
        raise ValueError(f"cell {spec.name!r} has no cell state: c0 must be None")
    for name, state in (("h0", h0), ("c0", c0)):
        if state is None:
            continue
        if tuple(state.shape) != shape:
            raise ValueError(
                f"{name} must have shape (num_layers, B, hidden_size) = {shape}, got "
                f"{tuple(state.shape)}"
            )
        if state.dtype != x.dtype or state.device != x.device:
            raise ValueError(f"{name} must have the dtype and device of x")
