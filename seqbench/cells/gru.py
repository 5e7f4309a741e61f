"""GRU (gates r, z, n, as nn.GRU): n = tanh(W_in x + b_in + r*(W_hn h + b_hn)),
h_t = (1-z)*n + z*h.

Engine kernels: ``gru.cpp`` (native) and the pure-torch equations below. The forward keeps the
activations r, z, n (T, B, 3H) and W_hn h + b_hn (T, B, H). The backward's dG has four blocks
[dn_pre, dr, dz, dn_pre*r]: the first three feed W_ih (rows reordered n, r, z), the last three
W_hh; the kernel writes dh_t * z_t into the recurrent carry itself.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from seqbench.cells.base import BackwardState, Cell, EngineKernels, LayerForward, kernel_file


def step(x_proj: Tensor, h_proj: Tensor, h: Tensor, c: Tensor) -> tuple[Tensor, Tensor]:
    x_r, x_z, x_n = x_proj.chunk(3, dim=1)
    h_r, h_z, h_n = h_proj.chunk(3, dim=1)
    r = torch.sigmoid(x_r + h_r)
    z = torch.sigmoid(x_z + h_z)
    n = torch.tanh(x_n + r * h_n)
    return (1 - z) * n + z * h, c


def gate_activations(x_proj: Tensor, h_proj: Tensor) -> Tensor:
    x_r, x_z, _ = x_proj.chunk(3, dim=1)
    h_r, h_z, _ = h_proj.chunk(3, dim=1)
    return torch.stack([x_r + h_r, x_z + h_z], dim=1).sigmoid()  # (B, 2, H): reset, update


def forward(layer: LayerForward) -> tuple[Tensor, ...]:
    T, B, H = layer.steps, layer.batch, layer.hidden
    h_all = layer.h_all
    gi = layer.empty((T, B, 3 * H))  # x-projection + b_ih in, activations r, z, n out
    ghn = layer.empty((T, B, H))
    gh = torch.empty(B, 3 * H, dtype=layer.dtype, device=layer.device)
    # b_hn sits inside r * (...): b_hh is added per step, with the recurrent product
    if layer.native:
        hs = h_all.unbind(0)

        def recurrent(t: int) -> None:
            if t or layer.from_h0:  # from a zero state step 0's recurrent term is b_hh
                torch.addmm(layer.b_hh, hs[t], layer.w_hh_t, out=gh)
            else:
                gh.copy_(layer.b_hh.expand(B, 3 * H))

        P = layer.params(
            B, H, gi.data_ptr(), gh.data_ptr(), ghn.data_ptr(), h_all.data_ptr(), layer.lens
        )
        layer.run_native(P, gi, layer.b_ih, gh, 0, layer.b_hh, recurrent)
    else:
        layer.projector(gi, layer.b_ih)(0)
        for t in range(T):
            torch.addmm(layer.b_hh, h_all[t], layer.w_hh_t, out=gh)
            x = gi[t]
            x[:, : 2 * H].add_(gh[:, : 2 * H]).sigmoid_()
            r, z, n = x.chunk(3, 1)
            ghn[t].copy_(gh[:, 2 * H :])
            n.addcmul_(r, ghn[t]).tanh_()
            h = torch.lerp(n, h_all[t], z, out=h_all[t + 1])
            if layer.valid is not None:
                h.mul_(layer.valid[t])
    return gi, ghn


def backward_step(state: BackwardState, t: int, dh: Tensor, b: Tensor, d: Tensor) -> None:
    H = state.hidden
    act, ghn = state.saved
    r, z, n = act[t].chunk(3, 1)
    dnp, dr, dz, dnr = d.chunk(4, 1)
    torch.mul(dh * (1 - z), 1 - n * n, out=dnp)
    torch.mul(dnp * ghn[t], r * (1 - r), out=dr)
    torch.mul(dh * (state.h_all[t] - n), z * (1 - z), out=dz)
    torch.mul(dnp, r, out=dnr)
    state.rec = dh * z + d[:, H:] @ state.w_hh


def split_dgates(dgates: Tensor, w_ih: Tensor, H: int) -> tuple[Tensor, Tensor, Tensor]:
    # dG columns [dn_pre, dr, dz, dn_pre*r]: input part (n, r, z order) and hidden part
    w_in = torch.cat([w_ih[2 * H :], w_ih[: 2 * H]])  # rows n, r, z
    return dgates[..., : 3 * H], dgates[..., H:], w_in


def pytorch_grads(
    dw_ih: Tensor, colsum: Tensor, H: int, dtype: torch.dtype
) -> tuple[Tensor, Tensor, Tensor]:
    dw_ih = torch.cat([dw_ih[H:], dw_ih[:H]])  # n, r, z -> r, z, n
    return dw_ih, torch.cat([colsum[H : 3 * H], colsum[:H]]).to(dtype), colsum[H:].to(dtype)


CELL = Cell(
    name="gru",
    gates=3,
    step=step,
    fused=nn.GRU,
    fused_cell=nn.GRUCell,
    quantizable=True,
    engine=EngineKernels(
        forward=forward,
        backward_step=backward_step,
        dgate_blocks=4,
        native_saved=lambda saved, h_all: (saved[0], saved[1], h_all),
        native_source=kernel_file(__file__),
        carry_in_kernel=True,
        split_dgates=split_dgates,
        pytorch_grads=pytorch_grads,
        saved_elements=lambda T, B, H: T * B * 3 * H + T * B * H,
        gate_blocks=(0, 1),  # gi holds r, z, n
    ),
    gate_names=("reset", "update"),
    memory_gate="update",
    gate_activations=gate_activations,
)
