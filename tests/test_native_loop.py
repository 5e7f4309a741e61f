"""The native time loop (engine/csrc/loops.h: a layer's whole forward and backward in one call)
against the Python loop around the same per-step kernels (SEQBENCH_NATIVE_LOOP=0): the same
bits on one thread, for every engine cell, in float32 and float64, with padding, dropout, two
layers, the norms, the lag probe, and losses whose scales force the per-sequence exponents and
the weight-gradient rescaling (the loop's every branch)."""

from __future__ import annotations

import pytest
import torch

from seqbench.cells import CELLS, get_cell
from seqbench.engine import GradNormRecorder, backward_native, native, recurrent
from seqbench.model import ReferenceStack

ENGINE = sorted(name for name, c in CELLS.items() if c.engine is not None)

pytestmark = pytest.mark.skipif(
    not native.native_available() or not native.native().gemm,
    reason="no C++ compiler, or torch exports no BLAS gemm: the Python loop is the only one",
)


def one_pass(cell, weights, x, upstream, lengths, monkeypatch, loop: bool, state=None, **kw):
    """By name: outputs, every gradient, the recorder's norms, rows and probe, with or without
    the loop. ``state``: (h0, c0 or None, dL/dh_n, dL/dc_n): run from that initial state, with
    a loss that also reads the final state (then also its gradients and the final state)."""
    monkeypatch.setenv("SEQBENCH_NATIVE_LOOP", "1" if loop else "0")
    torch.manual_seed(5)  # the dropout masks
    x = x.detach().clone().requires_grad_()
    recorder = GradNormRecorder(track_log10=True)
    recorder.per_row = True
    recorder.probe = (torch.tensor([0, 1, 1]), torch.tensor([x.shape[1] - 1, 2, 4]))
    starts, final = {}, {}
    if state is not None:
        h0, c0, g_h, g_c = state
        starts = {"h0": h0.clone().requires_grad_()}
        if c0 is not None:
            starts["c0"] = c0.clone().requires_grad_()
        kw = {**kw, **starts, "return_state": True}
    out = recurrent(get_cell(cell), x, weights, num_layers=2, hidden_size=upstream.shape[2],
                    lengths=lengths, recorder=recorder, **kw)  # fmt: skip
    if state is not None:
        out, state_n = out
        final = dict(zip(("h_n", "c_n"), state_n if "c0" in starts else (state_n,), strict=False))
    loss = (out * upstream).sum()
    if final:
        loss = loss + (final["h_n"] * g_h).sum()
        loss = loss + (final["c_n"] * g_c).sum() if "c_n" in final else loss
    grads = torch.autograd.grad(loss, [x, *weights, *starts.values()])
    names = ["dx", *(f"weight {i}" for i in range(len(weights))), *(f"d{k}" for k in starts)]
    return {"output": out.detach(), **dict(zip(names, grads, strict=True)),
            "norms": recorder.norms, "log10": recorder.log10_norms, "rows": recorder.row_log10,
            "probe": recorder.probe_log10, **{k: v.detach() for k, v in final.items()}}  # fmt: skip


@pytest.mark.parametrize("chunk", [None, 3], ids=["one-chunk", "chunks-of-3"])
@pytest.mark.parametrize("start", ["zero", "state"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("cell", ENGINE)
def test_native_loop_is_the_python_loop_bit_for_bit(cell, dtype, start, chunk, monkeypatch):
    """start="state": from a given initial state (step 0's recurrent product, its share of
    W_hh's gradient and the carry into h_0), with a loss on the final state as well. chunk=3:
    the weight-gradient products in chunks of 3 steps (by default all 17 steps are one), so
    that the reference exponent moves up between chunks and the accumulators are rescaled."""
    torch.set_num_threads(1)
    if chunk is not None:
        monkeypatch.setattr(backward_native, "chunk_steps", lambda *shape: chunk)
    B, T, n_in, H = 5, 17, 3, 6
    torch.manual_seed(2)
    stack = ReferenceStack(get_cell(cell), n_in, H, 2).to(dtype)
    weights = [getattr(stack, f"{name}_l{layer}") for layer in range(2)
               for name in stack.cell.parameter_names]  # fmt: skip
    g = torch.Generator().manual_seed(3)
    x = torch.randn(B, T, n_in, generator=g, dtype=dtype)
    upstream = torch.randn(B, T, H, generator=g, dtype=dtype)
    # sequence 0 read only at the end, 1e-30 below the others: its own exponent (sep rows) and
    # the weight gradients' reference rescaled when the large signals come in
    upstream[0, :-1] = 0.0
    upstream[0, -1] *= 1e-30
    upstream[2, 8:] *= 1e-25
    lengths = torch.tensor([T, 9, T, 4, 12])
    kw = dict(dropout=0.3, training=True)
    if start == "state":
        h0, c0, g_h, g_c = torch.randn(4, 2, B, H, generator=g, dtype=dtype)
        kw["state"] = (h0, c0 if get_cell(cell).cell_state else None, g_h, g_c)
    calls = []
    nat = native.native()
    for kind in ("fwd_loop", "bwd_loop"):  # count the loops' calls: one per layer and pass
        fn = nat.fns[(f"{cell}_{kind}", dtype)]
        monkeypatch.setitem(
            nat.fns,
            (f"{cell}_{kind}", dtype),
            lambda *a, fn=fn, kind=kind: (calls.append(kind), fn(*a))[1],
        )
    python = one_pass(cell, weights, x, upstream, lengths, monkeypatch, loop=False, **kw)
    assert calls == []
    native_ = one_pass(cell, weights, x, upstream, lengths, monkeypatch, loop=True, **kw)
    assert calls == ["fwd_loop"] * 2 + ["bwd_loop"] * 4  # 2 layers; training and probe
    assert python.keys() == native_.keys()
    for name, a in python.items():
        b = native_[name]
        assert a.dtype == b.dtype and torch.equal(a, b), name


def test_the_loop_is_used_by_default_and_can_be_switched_off(monkeypatch):
    """Default: the native loop (one call per layer); SEQBENCH_NATIVE_LOOP=0: the Python one."""
    nat = native.native()
    monkeypatch.setenv("SEQBENCH_NATIVE_LOOP", "1")
    assert nat.loop(torch.float32) == nat.gemm[torch.float32] != 0
    monkeypatch.setenv("SEQBENCH_NATIVE_LOOP", "0")
    assert nat.loop(torch.float32) is None
