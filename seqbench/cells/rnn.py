"""tanh RNN (as nn.RNN): h_t = tanh(W_ih x_t + b_ih + W_hh h_{t-1} + b_hh).

Engine kernels: ``rnn.cpp`` (native) and the pure-torch equations below. The pre-activations
are written straight into the hidden-state buffer, so nothing is kept beside it. PyTorch has
no dynamic-quantized nn.RNN.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from seqbench.cells.base import BackwardState, Cell, EngineKernels, LayerForward, kernel_file


def step(x_proj: Tensor, h_proj: Tensor, h: Tensor, c: Tensor) -> tuple[Tensor, Tensor]:
    return torch.tanh(x_proj + h_proj), c


def forward(layer: LayerForward) -> tuple[Tensor, ...]:
    T, B, H = layer.steps, layer.batch, layer.hidden
    h_all = layer.h_all
    project = layer.projector(h_all[1:], layer.b_ih + layer.b_hh)
    if layer.native:
        fn = layer.kernel()
        P = layer.params(B, H, h_all.data_ptr(), layer.lens)
        hs = h_all.unbind(0)
        for t in range(T):
            project(t)
            if t:
                hs[t + 1].addmm_(hs[t], layer.w_hh_t)
            fn(P, t)
    else:
        project(0)
        for t in range(T):
            h = h_all[t + 1]
            if t:
                h.addmm_(h_all[t], layer.w_hh_t)
            h.tanh_()
            if layer.valid is not None:
                h.mul_(layer.valid[t])
    return ()


def backward_step(state: BackwardState, t: int, dh: Tensor, b: Tensor, d: Tensor) -> None:
    torch.mul(dh, 1 - state.h_all[t + 1].square(), out=d)
    if t:
        state.rec = d @ state.w_hh


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
)
