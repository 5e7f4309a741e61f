"""Backward, one layer, on the native path.

Per step: one call of the cell's fused backward kernel (gate derivatives, the rescaled signal,
its float64 sum of squares for the norms, the bias-gradient column sums) and one matrix product
for the recurrence. The gate gradients of K steps (about 2,048 rows, :func:`chunk_steps`) are
kept, and each chunk makes one product for the input gradient and one per weight gradient
(``addmm_``): per-step products of B rows paid BLAS's packing and the accumulator's memory
traffic every step.

Vanishing gradients would turn float32 values into denormals, on which x86 matrix products are
10-100x slower. The engine never produces them: the backward signal is carried as
``2**e_t * g_t`` with an integer exponent ``e_t`` per step and ``g_t`` renormalised so that
``max|g_t|`` is about 1 (exact: scaling by a power of two). The exponent is kept per sequence
(``e[t, b]``, see ``csrc/seqbench.h``): sequences within ``2**CUT`` of the step's largest share
its exponent ``M_t``; one further below keeps its own, so that its gradient (its rows of
``dL/dx`` and of the signal passed to the layer below) is not lost to the others' scale.
Weight gradients are accumulated from rows scaled by ``2**(M_t - R)`` (exact; a result below
the smallest normal number is flushed to zero) for a running reference exponent ``R``, which
moves up, rescaling the accumulators, when a chunk's largest ``M_t`` is more than ``2**30``
above it; a step more than ``2**CUT`` below ``R``, and the rows of a sequence more than
``2**CUT`` below ``M_t``, stay out of them.
"""

from __future__ import annotations

import ctypes
import math

import torch
from torch import Tensor

from seqbench.cells import Cell
from seqbench.engine.buffers import cache
from seqbench.engine.constants import BLOOP_SLOTS, BWD_SLOTS, CUT, NEG
from seqbench.engine.native import Native, bwd_plan, params, ptr
from seqbench.engine.states import normalised_rows, unscaled_rows


class LayerGrads:
    """One layer's backward results; ``d_in`` (T, B, n_in) holds normalised rows
    (true ``d_in[t, b] = row * 2**d_in_exp[t, b]``)."""

    __slots__ = (
        "d_c0", "d_h0", "d_in", "d_in_exp", "db_hh", "db_ih", "dw_hh", "dw_ih", "log10", "norms",
        "row_log10",
    )  # fmt: skip


def ldexp_tensor(x: Tensor, e: int, dtype: torch.dtype) -> Tensor:
    """x * 2**e computed in float64, returned as dtype."""
    if e == 0:
        return x.to(dtype)
    if e > 1023:
        scale = math.inf
    elif e < -1074:
        scale = 0.0
    else:
        scale = math.ldexp(1.0, e)
    return (x.double() * scale).to(dtype)


def bwd_params(**slots: int) -> ctypes.Array:
    """The backward kernels' parameter block, slots named as in the header's ``enum Bwd``."""
    if set(slots) != set(BWD_SLOTS):
        raise ValueError(f"backward parameter slots {sorted(slots)} != {sorted(BWD_SLOTS)}")
    return params(*(slots[name] for name in BWD_SLOTS))


def layer_backward_native(
    nat: Native, cell: Cell, up, up_ts, up_rs, up_exp, inp, h_all, saved, w_ih, w_hh, lens_cpu,
    need_wgrad, need_din, want_norms, per_row=False, from_h0=False, final_c=None, want_h0=False,
):  # fmt: skip
    """up (B,T,H) or (T,B,H) upstream gradient with strides up_ts, up_rs; up_exp: int32 (T, B)
    exponents of its rows (overwritten with this layer's, returned as ``d_in_exp``) or None
    (exponent 0). ``per_row`` (with ``want_norms``): also each sequence's log10 ||dL/dh_t||,
    float64 (T, B), in ``row_log10``; ``inp`` is read only for the weight gradients (its shape
    otherwise). ``from_h0``: ``h_all[0]`` is a given initial state (step 0 adds to W_hh's
    gradient and makes the carry into it); ``final_c`` (B, H): dL/dc_T of a cell with a cell
    state, or None; ``want_h0``: return dL/dh_0 (and dL/dc_0) in ``d_h0`` (``d_c0``), see
    ``states.py``."""
    k = cell.engine
    T, B, n_in = inp.shape
    H = h_all.shape[2]
    full = cell.recurrence == "full"  # else the kernel writes the whole recurrent carry
    dt, dev = inp.dtype, inp.device
    G = k.dgate_blocks * H
    cut = CUT[dt]
    rec = torch.zeros(B, H, dtype=dt, device=dev)
    cc = torch.zeros(B, H, dtype=dt, device=dev) if cell.cell_state else None
    st = torch.zeros(1 + B, dtype=torch.int32)  # the step's exponent, then each sequence's
    if final_c is not None:  # dL/dc_T starts the cell-state carry, in each sequence's exponent
        rows, exps = normalised_rows(final_c)
        cc.copy_(rows)
        st[1:] = exps.to(torch.int32)
    # in: the upstream's per-sequence exponents; out, step by step: this layer's e[t, b]
    eb = up_exp if up_exp is not None else torch.zeros(T, B, dtype=torch.int32)
    sq = torch.empty(T, dtype=torch.float64)
    ms = torch.empty(T, dtype=torch.int32)
    # per step: dG's column sums (the bias gradients), then a diagonal weight's gradient
    cs = torch.empty(T, G + k.diag_blocks * H, dtype=dt)
    sqrow = torch.empty(H, dtype=torch.float64)
    sqb = torch.zeros(T, B, dtype=torch.float64) if want_norms and per_row else None
    # the dG rows of K steps are kept for one batch of products (csrc/loops.h: bwd_chunk)
    K = chunk_steps(T, B, G, inp.element_size())
    buf = cache.empty((K, B, G), dt, dev)
    act, aux1, aux2 = k.native_saved(saved, h_all)
    if cell.recurrence == "diagonal":  # the kernel reads the diagonal weight_hh in AUX2
        aux2 = w_hh.contiguous()
    P = bwd_params(
        B_=B, H_=H, UP=up.data_ptr(), UP_TS=up_ts, UP_RS=up_rs, UP_EXP=eb.data_ptr(),
        REC=rec.data_ptr(), CC=ptr(cc), ST=st.data_ptr(), ACT=ptr(act), AUX1=ptr(aux1),
        AUX2=ptr(aux2), DG=buf.data_ptr(), SQ=sq.data_ptr(), MS=ms.data_ptr(), CS=cs.data_ptr(),
        LEN=ptr(lens_cpu), SQROW=sqrow.data_ptr() if want_norms else 0, SQB=ptr(sqb),
    )  # fmt: skip
    fn = nat.fns[(f"{cell.name}_bwd", dt)]
    rexp = torch.empty(K * B, dtype=torch.int32)
    nzs = torch.zeros(T, dtype=torch.int32)
    dg_in, dg_h, w_in = k.split_dgates(buf.view(K * B, G), w_ih, H)
    acc_hh = torch.zeros(dg_h.shape[1] if full else 0, H, dtype=dt, device=dev)
    acc_ih = torch.zeros(n_in, dg_in.shape[1], dtype=dt, device=dev)  # transposed (loops.h)
    d_in = cache.empty((T, B, n_in), dt, dev) if need_din else None
    w_hh_c = w_hh.contiguous() if full else None  # 0 in the plan: no product with it
    w_in_c = w_in.contiguous()
    size = buf.element_size()
    gemm = nat.loop(dt)  # None: the same loop in Python (SEQBENCH_NATIVE_LOOP=0)
    plan = bwd_plan(
        BL_T=T, BL_GH=acc_hh.shape[0], BL_HOFF=(dg_h.data_ptr() - buf.data_ptr()) // size,
        BL_GIN=dg_in.shape[1], BL_INOFF=(dg_in.data_ptr() - buf.data_ptr()) // size,
        BL_NIN=n_in, BL_WHH=ptr(w_hh_c), BL_WIN=w_in_c.data_ptr(), BL_DIN=ptr(d_in),
        BL_NEEDW=int(need_wgrad), BL_ACCHH=acc_hh.data_ptr(), BL_ACCIH=acc_ih.data_ptr(),
        BL_HALL=h_all.data_ptr(), BL_X=inp.data_ptr(), BL_CARRY=int(k.carry_in_kernel),
        BL_CUT=cut, BL_R=NEG, BL_GEMM=gemm or 0, BL_H0=int(from_h0), BL_CHUNK=K,
        BL_DGBUF=buf.data_ptr(), BL_REXP=rexp.data_ptr(), BL_NZ=nzs.data_ptr(),
    )  # fmt: skip
    if gemm is not None:  # the loop below, in native code (csrc/loops.h)
        nat.fns[(f"{cell.name}_bwd_loop", dt)](P, plan)
    else:
        _python_loop(nat, fn, P, plan, cell, T, B, G, K, buf, rec, dg_in, dg_h, w_in_c, w_hh_c,
                     acc_hh, acc_ih, d_in, h_all, inp, ms, eb, nzs, rexp)  # fmt: skip
    reached = plan[BLOOP_SLOTS.index("BL_R")]  # the reference exponent the loop reached
    R = None if reached == NEG else reached
    out = _finish(cell, dt, H, need_wgrad, sq, ms, cs, sqb, eb, d_in, acc_hh, acc_ih, R)
    return _initial(out, want_h0, rec, cc, eb, dt)


def chunk_steps(T: int, B: int, G: int, size: int) -> int:
    """K: the steps whose dG rows are kept for one batch of weight-gradient products, about
    2,048 rows (per-step products of B rows pay BLAS's packing and the accumulator's traffic
    every step) within 4 MiB."""
    return max(1, min(T, 2048 // B, (4 << 20) // (B * G * size)))


def _python_loop(nat, fn, P, plan, cell, T, B, G, K, buf, rec, dg_in, dg_h, w_in, w_hh,
                 acc_hh, acc_ih, d_in, h_all, inp, ms, eb, nzs, rexp):  # fmt: skip
    """``bwd_loop`` of csrc/loops.h in Python around the same kernels: the same products with
    the same arguments, so the same bits on one thread."""
    k = cell.engine
    slot = {name: i for i, name in enumerate(BLOOP_SLOTS)}
    P_DG = BWD_SLOTS.index("DG")
    from_h0 = plan[slot["BL_H0"]] != 0
    cut, n_in = plan[slot["BL_CUT"]], inp.shape[2]
    step_rows = buf.view(K, B, G)
    ms_c = (ctypes.c_int * T).from_address(ms.data_ptr())
    nz_c = (ctypes.c_int * T).from_address(nzs.data_ptr())
    scale = nat.fns[("scale_rows", buf.dtype)]
    t1 = T
    for t in range(T - 1, -1, -1):
        t0 = t - t % K
        P[P_DG] = step_rows[t - t0].data_ptr()
        nz = fn(P, t)
        nz_c[t] = nz
        if not nz:  # no signal at or after this step (e.g. padding): everything is zero
            if not k.carry_in_kernel:
                rec.zero_()
            step_rows[t - t0].zero_()
        elif (t or from_h0) and w_hh is not None:  # from a zero state, nothing goes into h_0
            dgh = dg_h[(t - t0) * B : (t - t0 + 1) * B]
            if k.carry_in_kernel:
                rec.addmm_(dgh, w_hh)
            else:
                torch.mm(dgh, w_hh, out=rec)
        if t != t0:
            continue
        rows = (t1 - t0) * B
        if d_in is not None:
            torch.mm(dg_in[:rows], w_in, out=d_in[t0:t1].view(rows, n_in))
        top = max((ms_c[s] for s in range(t0, t1) if nz_c[s]), default=NEG)
        if plan[slot["BL_NEEDW"]] and top != NEG:
            R = plan[slot["BL_R"]]
            if R == NEG:
                R = top
            elif top > R + 30:  # rescale the accumulators to the larger reference
                acc_hh.mul_(math.ldexp(1.0, R - top))
                acc_ih.mul_(math.ldexp(1.0, R - top))
                R = top
            plan[slot["BL_R"]] = R
            d = ms[t0:t1].to(torch.int64) - R
            step_kept = (nzs[t0:t1] != 0) & (d >= -cut)
            keep = step_kept[:, None] & (eb[t0:t1] == ms[t0:t1, None])
            rexp[:rows] = torch.where(keep, d[:, None], NEG).reshape(-1).to(torch.int32)
            kept = step_kept.nonzero()
            if len(kept):  # only the steps from the first to the last kept one
                lo, hi = t0 + int(kept[0]), t0 + int(kept[-1]) + 1
                a, n = (lo - t0) * B, (hi - lo) * B
                scale(buf[lo - t0].data_ptr(), n, G, rexp[a:].data_ptr())
                skip = B if lo == 0 and not from_h0 else 0  # from a zero state, h_0 adds nothing
                if w_hh is not None and n > skip:
                    hs = h_all[lo:hi].reshape(n, -1)
                    acc_hh.addmm_(dg_h[a + skip : a + n].t(), hs[skip:])
                acc_ih.addmm_(inp[lo:hi].reshape(n, n_in).t(), dg_in[a : a + n])
        t1 = t0


def _initial(out: LayerGrads, want_h0: bool, rec, cc, eb, dt) -> LayerGrads:
    """dL/dh_0 (and dL/dc_0): the carries after step 0, in the exponents e[0, b]."""
    out.d_h0 = out.d_c0 = None
    if want_h0:
        out.d_h0 = unscaled_rows(rec, eb[0], dt)
        out.d_c0 = None if cc is None else unscaled_rows(cc, eb[0], dt)
    return out


def _finish(cell, dt, H, need_wgrad, sq, ms, cs, sqb, eb, d_in, acc_hh, acc_ih, R) -> LayerGrads:
    """A layer's results from what its backward loop accumulated."""
    k = cell.engine
    out = LayerGrads()
    ms64 = ms.double()
    out.norms = sq.sqrt() * torch.exp2(ms64)
    out.log10 = 0.5 * torch.log10(sq) + ms64 * math.log10(2.0)
    out.d_in, out.d_in_exp = d_in, eb
    out.row_log10 = None if sqb is None else 0.5 * torch.log10(sqb) + eb.double() * math.log10(2.0)
    out.dw_hh = out.dw_ih = out.db_hh = out.db_ih = None
    if need_wgrad:
        R = 0 if R is None else R
        dw_ih = ldexp_tensor(acc_ih.t(), R, dt).contiguous()
        sums = (cs.double() * torch.exp2(ms64)[:, None]).sum(0)  # the steps' sums, rescaled
        G = k.dgate_blocks * H
        out.dw_ih, out.db_ih, out.db_hh = k.pytorch_grads(dw_ih, sums[:G], H, dt)
        if cell.recurrence == "full":
            out.dw_hh = ldexp_tensor(acc_hh, R, dt)
        elif cell.recurrence == "diagonal":
            out.dw_hh = sums[G:].to(dt)
    return out
