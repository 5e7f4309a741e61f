"""minLSTM (Feng, Tung, Ahmed, Bengio & Hajimirsadegh 2024, "Were RNNs All We Needed?"): an LSTM
whose gates and candidate read only the input, the forget and input gates normalised to sum to 1,

    f_t = sigmoid(W_f x_t + b_f),  i_t = sigmoid(W_i x_t + b_i),  h~_t = W_h x_t + b_h,
    h_t = f_t / (f_t + i_t) * h_{t-1} + i_t / (f_t + i_t) * h~_t,

with no recurrent weight (training could run as a parallel scan; here through the engine, with
exact per-timestep norms). ``weight_ih`` holds the blocks f, i, h~; ``model.forget_bias`` sets
the forget block's bias.

Engine kernels: ``minlstm.cpp`` (native) and the pure-torch equations below. The forward keeps
(T, B, 4H): the normalised forget gate f' (the memory gate: the share of h_{t-1} kept), the
normalised input gate i', h~ and the raw f (for the derivatives); the backward writes the
recurrent carry dL/dh_{t-1} = dh_t * f'_t itself.
"""

from __future__ import annotations

import torch
from torch import Tensor

from seqbench.cells.base import BackwardState, Cell, EngineKernels, LayerForward, kernel_file


def step(x_proj: Tensor, h_proj: Tensor | None, h: Tensor, c: Tensor) -> tuple[Tensor, Tensor]:
    x_f, x_i, candidate = x_proj.chunk(3, dim=1)
    f, i = torch.sigmoid(x_f), torch.sigmoid(x_i)
    return (f * h + i * candidate) / (f + i), c


def gate_activations(x_proj: Tensor, h_proj: Tensor | None) -> Tensor:
    x_f, x_i, _ = x_proj.chunk(3, dim=1)
    f, i = torch.sigmoid(x_f), torch.sigmoid(x_i)
    return torch.stack([f / (f + i), i / (f + i)], dim=1)  # (B, 2, H): forget, input


def forward(layer: LayerForward) -> tuple[Tensor, ...]:
    T, B, H = layer.steps, layer.batch, layer.hidden
    h_all = layer.h_all
    proj = layer.empty((T, B, 3 * H))  # the projections x_f, x_i, x_h
    act = layer.empty((T, B, 4 * H))  # f', i', h~, f
    if layer.native:
        P = layer.params(B, H, proj.data_ptr(), act.data_ptr(), h_all.data_ptr(), layer.lens)
        layer.run_native(P, proj, layer.b_ih, proj, 0)
    else:
        layer.projector(proj, layer.b_ih)(0)
        for t in range(T):
            x_f, x_i, candidate = proj[t].chunk(3, 1)
            f, i = torch.sigmoid(x_f), torch.sigmoid(x_i)
            total = f + i
            kept, written, cand, raw_f = act[t].chunk(4, 1)
            torch.div(f, total, out=kept)
            torch.div(i, total, out=written)
            cand.copy_(candidate)
            raw_f.copy_(f)
            torch.addcmul(written * cand, kept, h_all[t], out=h_all[t + 1])
            if layer.valid is not None:
                h_all[t + 1].mul_(layer.valid[t])
    return (act,)


def backward_step(state: BackwardState, t: int, dh: Tensor, b: Tensor, d: Tensor) -> None:
    (act,) = state.saved
    kept, written, cand, f = act[t].chunk(4, 1)
    i = f / kept - f  # f' = f / (f + i)
    d_kept, d_written = dh * state.h_all[t], dh * cand
    both = kept * written
    df, di, dcand = d.chunk(3, 1)
    torch.mul(both * (1 - f), d_kept - d_written, out=df)
    torch.mul(both * (1 - i), d_written - d_kept, out=di)
    torch.mul(dh, written, out=dcand)
    state.rec = dh * kept


CELL = Cell(
    name="minlstm",
    gates=3,
    step=step,
    recurrence="none",
    forget_gate=0,
    nonlinearities=("identity",),  # the candidate is linear in x_t
    engine=EngineKernels(
        forward=forward,
        backward_step=backward_step,
        dgate_blocks=3,
        native_saved=lambda saved, h_all: (saved[0], h_all, None),
        native_source=kernel_file(__file__),
        carry_in_kernel=True,
        saved_elements=lambda T, B, H: T * B * 4 * H,
        gate_blocks=(0, 1),  # act holds f', i', h~, f
    ),
    gate_names=("forget", "input"),
    memory_gate="forget",
    gate_activations=gate_activations,
)
