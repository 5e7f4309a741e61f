"""IndRNN (Li, Li, Cook, Zhu & Gao 2018, "Independently Recurrent Neural Network"):
h_t = relu(W_ih x_t + b_ih + u * h_{t-1}), one recurrent weight per unit (a diagonal
``weight_hh``, the vector u): each unit keeps its own memory, and |u| near 1 carries a ReLU
unit's value, and its gradient, over thousands of steps. The paper's constraint on u, which
keeps the gradient from exploding over T steps, is ``model.recurrent_max`` (e.g. 2**(1/T)):
every recurrent weight is clipped to [-max, max] after each update.

Engine kernels: ``indrnn.cpp`` (native) and the pure-torch equations below. As in the vanilla
RNN, the input projection is written straight into the hidden-state buffer and the derivative
is read from h_t (1 where h_t > 0). The backward writes the whole recurrent carry itself,
dL/dh_{t-1} = dpre_t * u (no matrix product), and sums u's gradient dpre_t * h_{t-1} per step.
"""

from __future__ import annotations

import torch
from torch import Tensor

from seqbench.cells.base import BackwardState, Cell, EngineKernels, LayerForward, kernel_file


def step(x_proj: Tensor, h_proj: Tensor, h: Tensor, c: Tensor) -> tuple[Tensor, Tensor]:
    return torch.relu(x_proj + h_proj), c  # h_proj = u * h_{t-1}


def forward(layer: LayerForward) -> tuple[Tensor, ...]:
    T, B, H = layer.steps, layer.batch, layer.hidden
    h_all = layer.h_all
    if layer.native:
        P = layer.params(B, H, h_all.data_ptr(), layer.lens, layer.w_hh.data_ptr())
        layer.run_native(P, h_all[1:], layer.b_ih, h_all[1:], 0)
    else:
        layer.projector(h_all[1:], layer.b_ih)(0)
        for t in range(T):
            h = h_all[t + 1]
            h.addcmul_(layer.w_hh, h_all[t]).relu_()
            if layer.valid is not None:
                h.mul_(layer.valid[t])
    return ()


def backward_step(state: BackwardState, t: int, dh: Tensor, b: Tensor, d: Tensor) -> None:
    torch.mul(dh, (state.h_all[t + 1] > 0).to(dh.dtype), out=d)
    state.rec = d * state.w_hh


def diagonal_grad(state: BackwardState, t: int, dgates: Tensor) -> Tensor:
    """Each sequence's contribution to u's gradient at step t: dpre_t * h_{t-1}."""
    return dgates * state.h_all[t]


CELL = Cell(
    name="indrnn",
    gates=1,
    step=step,
    recurrence="diagonal",
    nonlinearities=("relu",),
    engine=EngineKernels(
        forward=forward,
        backward_step=backward_step,
        dgate_blocks=1,
        native_saved=lambda saved, h_all: (None, h_all, None),  # AUX2: u, from the engine
        native_source=kernel_file(__file__),
        carry_in_kernel=True,
        diag_blocks=1,
        diagonal_grad=diagonal_grad,
    ),
)
