"""Vanilla (Elman) RNN, as nn.RNN: h_t = f(W_ih x_t + b_ih + W_hh h_{t-1} + b_hh) with
f = tanh (``model.nonlinearity=tanh``, the default) or ReLU (``relu``: with ``model.init=identity``
the IRNN of Le, Jaitly & Hinton, 2015).

Engine kernels: ``rnn.cpp`` (native) and the pure-torch equations below. The pre-activations
are written straight into the hidden-state buffer, so nothing is kept beside it: both
derivatives are read from h_t (tanh: 1 - h_t^2; ReLU: 1 where h_t > 0). The ReLU cell is
:data:`CELL`'s variant (``CELL.with_nonlinearity("relu")``): the same name, weights and kernel
file; its forward kernel gets a flag, its backward kernel finds h in the ``AUX1`` slot instead
of ``AUX2``. PyTorch has no dynamic-quantized nn.RNN.
"""

from __future__ import annotations

from dataclasses import replace
from functools import partial

import torch
from torch import Tensor, nn

from seqbench.cells.base import BackwardState, Cell, EngineKernels, LayerForward, kernel_file

NONLINEARITIES = ("tanh", "relu")


def step(x_proj: Tensor, h_proj: Tensor, h: Tensor, c: Tensor) -> tuple[Tensor, Tensor]:
    return torch.tanh(x_proj + h_proj), c


def relu_step(x_proj: Tensor, h_proj: Tensor, h: Tensor, c: Tensor) -> tuple[Tensor, Tensor]:
    return torch.relu(x_proj + h_proj), c


def forward(layer: LayerForward, relu: bool = False) -> tuple[Tensor, ...]:
    T, B, H = layer.steps, layer.batch, layer.hidden
    h_all = layer.h_all
    bias = layer.b_ih + layer.b_hh
    if layer.native:
        hs = h_all.unbind(0)

        def recurrent(t: int) -> None:
            if t or layer.from_h0:  # from a zero state step 0 has no recurrent term
                hs[t + 1].addmm_(hs[t], layer.w_hh_t)

        P = layer.params(B, H, h_all.data_ptr(), layer.lens, int(relu))
        layer.run_native(P, h_all[1:], bias, h_all[1:], B * H, recurrent=recurrent)
    else:
        layer.projector(h_all[1:], bias)(0)
        for t in range(T):
            h = h_all[t + 1]
            if t or layer.from_h0:
                h.addmm_(h_all[t], layer.w_hh_t)
            if relu:
                h.relu_()
            else:
                h.tanh_()
            if layer.valid is not None:
                h.mul_(layer.valid[t])
    return ()


def backward_step(state: BackwardState, t: int, dh: Tensor, b: Tensor, d: Tensor) -> None:
    torch.mul(dh, 1 - state.h_all[t + 1].square(), out=d)
    if t:
        state.rec = d @ state.w_hh


def relu_backward_step(state: BackwardState, t: int, dh: Tensor, b: Tensor, d: Tensor) -> None:
    torch.mul(dh, (state.h_all[t + 1] > 0).to(dh.dtype), out=d)
    if t:
        state.rec = d @ state.w_hh


class ReluRNN(nn.RNN):
    """nn.RNN with ``nonlinearity="relu"``, the ReLU cell's fused layer."""

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, nonlinearity="relu", **kwargs)


class ReluRNNCell(nn.RNNCell):
    """nn.RNNCell with ``nonlinearity="relu"``."""

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, nonlinearity="relu", **kwargs)


def variant(nonlinearity: str) -> Cell:
    """The RNN computing with ReLU (``nonlinearity="relu"``)."""
    if nonlinearity != "relu":
        raise ValueError(f"no RNN variant for nonlinearity {nonlinearity!r}")
    return RELU_CELL


CELL = Cell(
    name="rnn",
    gates=1,
    step=step,
    fused=nn.RNN,
    fused_cell=nn.RNNCell,
    engine=EngineKernels(
        forward=forward,
        backward_step=backward_step,
        dgate_blocks=1,
        native_saved=lambda saved, h_all: (None, None, h_all),
        native_source=kernel_file(__file__),
    ),
    nonlinearities=NONLINEARITIES,
    variant=variant,
)

RELU_CELL = replace(
    CELL,
    step=relu_step,
    fused=ReluRNN,
    fused_cell=ReluRNNCell,
    engine=replace(
        CELL.engine,
        forward=partial(forward, relu=True),
        backward_step=relu_backward_step,
        native_saved=lambda saved, h_all: (None, h_all, None),  # h in AUX1: ReLU's derivative
    ),
)
