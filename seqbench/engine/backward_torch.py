"""Backward, one layer, on the pure-torch path: the native path's algorithm (the same
power-of-two rescaling of the backward signal) in torch operations, without a host
synchronisation per step, for CUDA tensors, other dtypes, or where no compiler is available."""

from __future__ import annotations

import math

import torch
from torch import Tensor

from seqbench.cells import Cell
from seqbench.engine.backward_native import LayerGrads
from seqbench.engine.constants import CUT, NEG
from seqbench.engine.states import normalised_rows, unscaled_rows


class BackwardState:
    """What a cell's ``backward_step(state, t, dh, b, d)`` reads and updates.

    ``rec`` (B, H): the recurrent carry into step t (the cell sets it for step t-1); ``cc``
    (B, H): the cell-state carry of cells with one, else None; ``saved``: the cell forward's
    tensors; ``h_all`` (T+1, B, H); ``w_hh`` (a matrix, a vector for a diagonal recurrence,
    None for none); ``hidden``: H.
    """

    __slots__ = ("cc", "h_all", "hidden", "rec", "saved", "w_hh")

    def __init__(self, rec, cc, saved, h_all, w_hh) -> None:  # fmt: skip
        self.rec, self.cc, self.saved, self.h_all, self.w_hh = rec, cc, saved, h_all, w_hh
        self.hidden = h_all.shape[2]


def layer_backward_torch(
    cell: Cell, up_bt, up_exp, inp, h_all, saved, w_ih, w_hh, valid, need_wgrad, need_din,
    want_norms, per_row=False, from_h0=False, final_c=None, want_h0=False,
):  # fmt: skip
    """up_bt(t) -> (B,H) upstream at step t; up_exp: (T, B) float64 exponents or None;
    ``per_row`` (with ``want_norms``): also each sequence's log10 ||dL/dh_t|| in ``row_log10``;
    ``from_h0``, ``final_c``, ``want_h0``: as on the native path (``layer_backward_native``).

    The exponents are per sequence, as on the native path (``csrc/seqbench.h``): ``E[t, b]``
    is the step's ``M_t`` for sequences within ``2**CUT`` of the largest, else the sequence's
    own; the scales ``a``, ``b`` passed to the cell are (B, 1). At a padded step a sequence's
    gate gradients and recurrent carry are zero and its cell-state carry passes unchanged, as
    the native kernels' ``skip``."""
    k = cell.engine
    T, B, n_in = inp.shape
    H = h_all.shape[2]
    dt, dev = inp.dtype, inp.device
    G = k.dgate_blocks * H
    cut = float(CUT.get(dt, 60))
    neg = torch.tensor(float(NEG), dtype=torch.float64, device=dev)
    zero64 = torch.zeros((), dtype=torch.float64, device=dev)
    dG = torch.zeros(T, B, G, dtype=dt, device=dev)
    # a diagonal weight's gradient contributions, per step and sequence (in the row's scale)
    diag = torch.zeros(T, B, k.diag_blocks * H, dtype=dt, device=dev) if k.diag_blocks else None
    state = BackwardState(
        torch.zeros(B, H, dtype=dt, device=dev),
        torch.zeros(B, H, dtype=dt, device=dev) if cell.cell_state else None,
        saved, h_all, w_hh,
    )  # fmt: skip
    s_step = zero64.clone()  # the step's exponent M of the step after t
    s = torch.zeros(B, dtype=torch.float64, device=dev)  # each sequence's exponent after t
    if final_c is not None:  # dL/dc_T starts the cell-state carry, in each sequence's exponent
        rows, s = normalised_rows(final_c)
        state.cc = rows.to(dt)
    sq = torch.zeros(T, dtype=torch.float64, device=dev)
    sqb = torch.zeros(T, B, dtype=torch.float64, device=dev) if want_norms and per_row else None
    ms = torch.zeros(T, dtype=torch.float64, device=dev)
    es = torch.zeros(T, B, dtype=torch.float64, device=dev)
    nzs = torch.zeros(T, dtype=torch.bool, device=dev)

    def expo(t: Tensor, base: Tensor) -> Tensor:
        """Per row: base + the exponent of the row's largest magnitude, NEG for a zero row."""
        mx = t.abs().amax(-1).double()
        ok = mx > 0
        e = torch.frexp(torch.where(torch.isfinite(mx), mx, 1.0))[1].double() - 1.0
        return torch.where(ok, base + e, neg)

    for t in range(T - 1, -1, -1):
        u = up_bt(t)
        if valid is not None:
            u = torch.where(valid[t] > 0, u, 0.0)
        sig = up_exp[t] if up_exp is not None else zero64
        eu = expo(u, sig)
        rec, cc = state.rec, state.cc
        er = expo(rec, s) if cc is None else torch.maximum(expo(rec, s), expo(cc, s))
        own = torch.maximum(eu, er)
        m = own.amax()
        nz = m > neg
        m = torch.where(nz, m, s_step)
        e = torch.where((own == neg) | (own >= m - cut), m, own)
        a = torch.where((eu == neg) | (eu - own < -cut), 0.0, torch.exp2(sig - e))[:, None]
        b = torch.where((er == neg) | (er - own < -cut), 0.0, torch.exp2(s - e))[:, None]
        dh = (u.double() * a + rec.double() * b).to(dt)
        if want_norms:
            sq[t] = (dh.double().square() * torch.exp2(2.0 * (e - m))[:, None]).sum()
            if sqb is not None:  # each sequence in its own scale 2**e
                sqb[t] = dh.double().square().sum(1)
        ms[t] = m
        es[t] = e
        nzs[t] = nz
        s, s_step = e, m
        cc_after = state.cc
        k.backward_step(state, t, dh, b, dG[t])
        if valid is not None:  # padding: no gate gradient, the cell-state carry passes on
            real = valid[t] > 0  # (B, 1)
            dG[t].masked_fill_(~real, 0.0)
            state.rec = torch.where(real, state.rec, 0.0)
            if cc_after is not None:
                state.cc = torch.where(real, state.cc, (cc_after.double() * b).to(dt))
        if diag is not None:
            diag[t] = k.diagonal_grad(state, t, dG[t])
    out = LayerGrads()
    out.norms = (sq.sqrt() * torch.exp2(ms)).cpu()
    out.log10 = (0.5 * torch.log10(sq) + ms * math.log10(2.0)).cpu()
    out.row_log10 = None
    if sqb is not None:
        out.row_log10 = (0.5 * torch.log10(sqb) + es * math.log10(2.0)).cpu()
    dg_in, dg_h, w_in = k.split_dgates(dG, w_ih, H)
    out.d_in = dg_in @ w_in if need_din else None  # normalised rows; true = row * 2**es
    out.d_in_exp = es
    out.d_h0 = out.d_c0 = None
    if want_h0:  # the carries after step 0, in the exponents e[0, b]
        if cell.recurrence == "full" and not k.carry_in_kernel:  # its step 0 made no carry
            state.rec = k.split_dgates(dG[0], w_ih, H)[1] @ w_hh
        out.d_h0 = unscaled_rows(state.rec, s, dt)
        out.d_c0 = None if state.cc is None else unscaled_rows(state.cc, s, dt)
    out.dw_hh = out.dw_ih = out.db_hh = out.db_ih = None
    if need_wgrad:
        big = torch.where(nzs, ms, neg).amax()
        wts = torch.where(nzs & (ms - big >= -cut), torch.exp2(ms - big), 0.0)
        keep = (es == ms[:, None]).double()  # (T, B): 0 for sequences far below M_t
        wts = wts[:, None] * keep
        rel_h = dg_h * wts.to(dt)[:, :, None]
        rel_i = dg_in * wts.to(dt)[:, :, None]
        scale = torch.exp2(torch.clamp(big, -1100.0, 1100.0))
        if cell.recurrence == "full":  # step 0 reads h_0: zero unless from_h0
            first = 0 if from_h0 else 1
            dw_hh = rel_h[first:].reshape(-1, rel_h.shape[-1]).t() @ h_all[first:T].reshape(-1, H)
            out.dw_hh = (dw_hh.double() * scale).to(dt)
        elif cell.recurrence == "diagonal":
            out.dw_hh = (((diag.double() * keep[:, :, None]).sum(1) * torch.exp2(ms)[:, None])
                         .sum(0).to(dt))  # fmt: skip
        dw_ih = rel_i.reshape(-1, rel_i.shape[-1]).t() @ inp.reshape(-1, n_in)
        dw_ih = (dw_ih.double() * scale).to(dt)
        colsum = ((dG.double() * keep[:, :, None]).sum(1) * torch.exp2(ms)[:, None]).sum(0)
        out.dw_ih, out.db_ih, out.db_hh = k.pytorch_grads(dw_ih, colsum, H, dt)
    return out
