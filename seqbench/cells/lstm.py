"""LSTM (gates i, f, g, o, as nn.LSTM): c_t = f*c + i*g, h_t = o*tanh(c_t).

Engine kernels: ``lstm.cpp`` (native) and the pure-torch equations below. The forward keeps the
gate activations (T, B, 4H) and the cell states (T+1, B, H); the backward carries dL/dc_t in
``state.cc`` beside the recurrent carry.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from seqbench.cells.base import BackwardState, Cell, EngineKernels, LayerForward, kernel_file


def step(x_proj: Tensor, h_proj: Tensor, h: Tensor, c: Tensor) -> tuple[Tensor, Tensor]:
    i, f, g, o = (x_proj + h_proj).chunk(4, dim=1)
    c = torch.sigmoid(f) * c + torch.sigmoid(i) * torch.tanh(g)
    return torch.sigmoid(o) * torch.tanh(c), c


def gate_activations(x_proj: Tensor, h_proj: Tensor) -> Tensor:
    i, f, _, o = (x_proj + h_proj).chunk(4, dim=1)
    return torch.stack([i, f, o], dim=1).sigmoid()  # (B, 3, H): input, forget, output


def forward(layer: LayerForward) -> tuple[Tensor, ...]:
    T, B, H = layer.steps, layer.batch, layer.hidden
    h_all = layer.h_all
    act = layer.empty((T, B, 4 * H))  # pre-activations in, activations i, f, g, o out
    bias = layer.b_ih + layer.b_hh
    c_all = layer.empty((T + 1, B, H))
    if layer.c0 is None:
        c_all[0].zero_()
    else:
        c_all[0].copy_(layer.c0)
    if layer.native:
        acts, hs = act.unbind(0), h_all.unbind(0)

        def recurrent(t: int) -> None:
            if t or layer.from_h0:  # from a zero state step 0 has no recurrent term
                acts[t].addmm_(hs[t], layer.w_hh_t)

        P = layer.params(B, H, act.data_ptr(), c_all.data_ptr(), h_all.data_ptr(), layer.lens)
        layer.run_native(P, act, bias, act, B * 4 * H, recurrent=recurrent)
    else:
        layer.projector(act, bias)(0)
        for t in range(T):
            g = act[t]
            if t or layer.from_h0:
                g.addmm_(h_all[t], layer.w_hh_t)
            g[:, : 2 * H].sigmoid_()
            g[:, 2 * H : 3 * H].tanh_()
            g[:, 3 * H :].sigmoid_()
            i, f, gg, o = g.chunk(4, 1)
            c = torch.addcmul(f * c_all[t], i, gg, out=c_all[t + 1])
            torch.mul(o, torch.tanh(c), out=h_all[t + 1])
            if layer.valid is not None:
                h_all[t + 1].mul_(layer.valid[t])
    return act, c_all


def cell_states(saved: tuple[Tensor, ...]) -> Tensor:
    """c_0..c_T (T+1, B, H) from what the forward keeps."""
    return saved[1]


def backward_step(state: BackwardState, t: int, dh: Tensor, b: Tensor, d: Tensor) -> None:
    act, c_all = state.saved
    i, f, g, o = act[t].chunk(4, 1)
    tc = torch.tanh(c_all[t + 1])
    dc = (state.cc.double() * b).to(dh.dtype) + dh * o * (1 - tc * tc)
    di, df, dgg, do = d.chunk(4, 1)
    torch.mul(dc * g, i * (1 - i), out=di)
    torch.mul(dc * c_all[t], f * (1 - f), out=df)
    torch.mul(dc * i, 1 - g * g, out=dgg)
    torch.mul(dh * tc, o * (1 - o), out=do)
    state.cc = dc * f
    if t:
        state.rec = d @ state.w_hh


CELL = Cell(
    name="lstm",
    gates=4,
    step=step,
    cell_state=True,
    forget_gate=1,
    fused=nn.LSTM,
    fused_cell=nn.LSTMCell,
    quantizable=True,
    engine=EngineKernels(
        forward=forward,
        backward_step=backward_step,
        dgate_blocks=4,
        native_saved=lambda saved, h_all: (saved[0], saved[1], None),
        native_source=kernel_file(__file__),
        saved_elements=lambda T, B, H: T * B * 4 * H + (T + 1) * B * H,
        gate_blocks=(0, 1, 3),  # act holds i, f, g, o
        cell_states=cell_states,
    ),
    gate_names=("input", "forget", "output"),
    memory_gate="forget",
    gate_activations=gate_activations,
)
