"""minGRU (Feng, Tung, Ahmed, Bengio & Hajimirsadegh 2024, "Were RNNs All We Needed?"): a GRU
whose gate and candidate read only the input,

    z_t = sigmoid(W_z x_t + b_z),  h~_t = W_h x_t + b_h,  h_t = (1 - z_t) * h_{t-1} + z_t * h~_t,

so h_{t-1} enters only the convex combination (no recurrent weight: training could run as a
parallel scan; here it runs through the engine, with exact per-timestep norms). ``weight_ih``
holds the blocks z, h~.

Engine kernels: ``mingru.cpp`` (native) and the pure-torch equations below. The forward keeps
(T, B, 2H): the keep gate 1 - z_t (the memory gate: the share of h_{t-1} kept) and h~_t. The
backward writes the recurrent carry dL/dh_{t-1} = dh_t * (1 - z_t) itself.
"""

from __future__ import annotations

import torch
from torch import Tensor

from seqbench.cells.base import BackwardState, Cell, EngineKernels, LayerForward, kernel_file


def step(x_proj: Tensor, h_proj: Tensor | None, h: Tensor, c: Tensor) -> tuple[Tensor, Tensor]:
    x_z, candidate = x_proj.chunk(2, dim=1)
    z = torch.sigmoid(x_z)
    return (1 - z) * h + z * candidate, c


def gate_activations(x_proj: Tensor, h_proj: Tensor | None) -> Tensor:
    x_z, _ = x_proj.chunk(2, dim=1)
    return (1 - torch.sigmoid(x_z))[:, None]  # (B, 1, H): keep


def forward(layer: LayerForward) -> tuple[Tensor, ...]:
    T, B, H = layer.steps, layer.batch, layer.hidden
    h_all = layer.h_all
    act = layer.empty((T, B, 2 * H))  # projections in, keep and h~ out
    if layer.native:
        P = layer.params(B, H, act.data_ptr(), h_all.data_ptr(), layer.lens)
        layer.run_native(P, act, layer.b_ih, act, 0)
    else:
        layer.projector(act, layer.b_ih)(0)
        for t in range(T):
            keep, candidate = act[t].chunk(2, 1)
            keep.neg_().sigmoid_()  # 1 - sigmoid(x) = sigmoid(-x)
            torch.lerp(candidate, h_all[t], keep, out=h_all[t + 1])
            if layer.valid is not None:
                h_all[t + 1].mul_(layer.valid[t])
    return (act,)


def backward_step(state: BackwardState, t: int, dh: Tensor, b: Tensor, d: Tensor) -> None:
    (act,) = state.saved
    keep, candidate = act[t].chunk(2, 1)
    dz, dcandidate = d.chunk(2, 1)
    torch.mul(dh * (candidate - state.h_all[t]), keep * (1 - keep), out=dz)
    torch.mul(dh, 1 - keep, out=dcandidate)
    state.rec = dh * keep


CELL = Cell(
    name="mingru",
    gates=2,
    step=step,
    recurrence="none",
    nonlinearities=("identity",),  # the candidate is linear in x_t
    engine=EngineKernels(
        forward=forward,
        backward_step=backward_step,
        dgate_blocks=2,
        native_saved=lambda saved, h_all: (saved[0], h_all, None),
        native_source=kernel_file(__file__),
        carry_in_kernel=True,
        saved_elements=lambda T, B, H: T * B * 2 * H,
        gate_blocks=(0,),  # act holds keep, h~
    ),
    gate_names=("keep",),
    memory_gate="keep",
    gate_activations=gate_activations,
)
