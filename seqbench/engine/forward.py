"""Forward, one layer: what the engine hands to a cell's forward kernel.

The input projection of a layer is computed for all steps with a few large matrix products;
on the native path in chunks of about 1 MiB, just ahead of the recurrence, so the per-step
kernels still find them in cache. Per step, the cell's kernel does one in-place ``addmm_``
(the recurrent product) and one call of its fused elementwise kernel.
"""

from __future__ import annotations

import ctypes
from collections.abc import Callable

import torch
from torch import Tensor

from seqbench.cells import Cell
from seqbench.engine.buffers import cache
from seqbench.engine.native import Native, fwd_plan, params, ptr


def chunk_steps(steps: int, row_bytes: int) -> int:
    """Steps per input-projection chunk: about 1 MiB, so a chunk is still in L2 when the
    per-step kernels read it."""
    return max(1, min(steps, (1 << 20) // max(1, row_bytes)))


class LayerForward:
    """One layer's forward pass over ``inp`` (T, B, I), time-major.

    A cell's ``forward(layer)`` fills ``h_all`` (T+1, B, H; ``h_all[0]`` is the initial state:
    ``h0`` when given, else zero) and returns what its backward needs. It reads the weights
    (``w_ih``, ``w_hh``, ``b_ih``, ``b_hh``, and ``w_hh_t = w_hh.t()``), ``lens`` (pointer to the
    int64 lengths, or 0) and ``valid`` ((T, B, 1) 0/1 mask, or None) for padding, ``native``
    (whether to use its C++ kernel), ``from_h0`` (h_all[0] is a given state: step 0 makes the
    recurrent product too; from zero it is skipped) and ``c0`` (B, H), the initial cell state
    of a cell that carries one (None: zero).
    """

    params = staticmethod(params)

    def __init__(
        self,
        cell: Cell,
        inp: Tensor,
        weights: tuple[Tensor, Tensor, Tensor, Tensor],
        lens_cpu: Tensor | None,
        valid: Tensor | None,
        nat: Native | None,
        h0: Tensor | None = None,
        c0: Tensor | None = None,
    ) -> None:
        self.cell, self.inp, self.nat = cell, inp, nat
        self.steps, self.batch, _ = inp.shape
        self.w_ih, self.w_hh, self.b_ih, self.b_hh = weights
        self.hidden = self.w_ih.shape[0] // cell.gates
        self.dtype, self.device = inp.dtype, inp.device
        self.native = nat is not None
        self.lens, self.valid = ptr(lens_cpu), valid
        self.h_all = self.empty((self.steps + 1, self.batch, self.hidden))
        self.from_h0 = h0 is not None
        if h0 is None:
            self.h_all[0].zero_()
        else:
            self.h_all[0].copy_(h0)
        self.c0 = c0
        self.full = cell.recurrence == "full"  # a recurrent matrix: a product per step
        self.w_hh_t = self.w_hh.t() if self.full else None
        self.w_ih_t = self.w_ih.t()

    def empty(self, shape: tuple[int, ...]) -> Tensor:
        """A work buffer of the layer's dtype and device (recycled between calls)."""
        return cache.empty(shape, self.dtype, self.device)

    def run_native(
        self,
        P: ctypes.Array,
        proj: Tensor,
        bias: Tensor,
        rec: Tensor,
        rec_stride: int,
        rec_bias: Tensor | None = None,
        recurrent: Callable[[int], None] | None = None,
    ) -> None:
        """The layer's whole forward on the cell's native kernel ``fn(P, t)``.

        Where the native time loop (``csrc/loops.h``) is available it runs the whole layer: per
        chunk of steps ``proj[t:t1] = inp[t:t1] @ w_ih.T + bias`` (``proj`` (T, B, G)
        contiguous), per step ``rec_bias`` copied to ``rec + t * rec_stride`` (when given), the
        recurrent product ``h_all[t] @ w_hh.T`` added there (t > 0, and t = 0 when
        ``from_h0``), then ``fn(P, t)``. Otherwise the same calls run from Python, in the same
        order: per step ``project(t)``, the cell's ``recurrent(t)`` (its recurrent product;
        None: the kernel needs none) and ``fn(P, t)``."""
        gemm = self.nat.loop(self.dtype)
        if gemm is not None:
            T, B, G = self.steps, self.batch, proj.shape[-1]
            w_ih = self.w_ih.contiguous()
            w_hh = self.w_hh.contiguous() if self.full else None  # 0 in the plan: no product
            plan = fwd_plan(
                L_T=T, L_B=B, L_H=self.hidden, L_NIN=self.inp.shape[2],
                L_INP=self.inp.data_ptr(), L_WIH=w_ih.data_ptr(), L_PBIAS=bias.data_ptr(),
                L_POUT=proj.data_ptr(), L_PCOLS=G,
                L_K=chunk_steps(T, B * G * self.inp.element_size()),
                L_HALL=self.h_all.data_ptr(), L_WHH=ptr(w_hh), L_ROUT=rec.data_ptr(),
                L_RSTRIDE=rec_stride, L_RCOLS=rec.shape[-1], L_RBIAS=ptr(rec_bias),
                L_GEMM=gemm, L_H0=int(self.from_h0),
            )  # fmt: skip
            self.nat.fns[(f"{self.cell.name}_fwd_loop", self.dtype)](P, plan)
            return
        fn = self.nat.fns[(f"{self.cell.name}_fwd", self.dtype)]
        project = self.projector(proj, bias)
        for t in range(self.steps):
            project(t)
            if recurrent is not None:
                recurrent(t)
            fn(P, t)

    def projector(self, proj: Tensor, bias: Tensor) -> Callable[[int], None]:
        """``project(t)`` writes ``inp @ w_ih.T + bias`` into ``proj`` (T, B, G) for the chunk
        of steps starting at t when t starts a chunk; the pure-torch path does all steps at
        ``project(0)``."""
        T, inp, w_ih_t = self.steps, self.inp, self.w_ih_t
        G = proj.shape[-1]
        K = chunk_steps(T, self.batch * G * inp.element_size()) if self.native else T

        def project(t: int) -> None:
            if t % K == 0:
                t1 = min(T, t + K)
                torch.addmm(
                    bias, inp[t:t1].reshape(-1, inp.shape[2]), w_ih_t, out=proj[t:t1].view(-1, G)
                )

        return project


def layer_forward(
    cell: Cell,
    inp: Tensor,
    weights: tuple[Tensor, Tensor, Tensor, Tensor],
    lens_cpu: Tensor | None,
    valid: Tensor | None,
    nat: Native | None,
    h0: Tensor | None = None,
    c0: Tensor | None = None,
) -> tuple[Tensor, tuple[Tensor, ...]]:
    """(h_all (T+1, B, H) with h_all[0] = h0, or 0 without it; the cell's saved tensors).
    ``c0``: the initial cell state of a cell that carries one (None: zero)."""
    layer = LayerForward(cell, inp, weights, lens_cpu, valid, nat, h0, c0)
    saved = cell.engine.forward(layer)
    return layer.h_all, saved
