"""Tests for seqbench.engine: hand-written BPTT against autograd, exact per-step norms."""

from __future__ import annotations

import copy
import math
import warnings

import pytest
import torch
from torch import nn

from seqbench import engine
from seqbench.cells import CELLS, get_cell
from seqbench.engine import GradNormRecorder, dropout_masks, native, recurrent
from seqbench.engine.backward_native import bwd_params
from seqbench.engine.constants import BWD_SLOTS, CUT, HEADER, NEG, THREADING_MIN_WORK
from tests.conftest import ENGINE_CELLS, run_engine
from tests.conftest import fused_layer as make


def run_module(mod, x, lengths=None):
    if lengths is None:
        return mod(x)[0]
    packed = nn.utils.rnn.pack_padded_sequence(x, lengths, batch_first=True, enforce_sorted=False)
    out = mod(packed)[0]
    return nn.utils.rnn.pad_packed_sequence(out, batch_first=True, total_length=x.shape[1])[0]


def assert_rel(a, b, rtol, what=""):
    """max|a-b| <= rtol * max|b| (relative to the tensor's scale)."""
    assert a.shape == b.shape, what
    scale = b.abs().max().item()
    err = (a - b).abs().max().item()
    assert err <= rtol * max(scale, 1e-300), f"{what}: max err {err:.3g}, scale {scale:.3g}"


def ref_unrolled(cell, mod, x, lengths=None, masks=None):
    """Autograd through an unrolled nn.*Cell loop with the module's weights.

    Returns (output (B,T,H), per-layer lists of the state tensors h_t (grads retained), cells).
    For t >= lengths[b] the state is carried and the output is zero. masks[l] (T,B,H)
    multiplies layer l's output before it enters layer l+1.
    """
    B, T, _ = x.shape
    L, H = mod.num_layers, mod.hidden_size
    cells = []
    for layer in range(L):
        c = get_cell(cell).fused_cell(mod.input_size if layer == 0 else H, H).to(x.dtype)
        with torch.no_grad():
            for name in ("weight_ih", "weight_hh", "bias_ih", "bias_hh"):
                getattr(c, name).copy_(getattr(mod, f"{name}_l{layer}"))
        cells.append(c)
    inp = [x[:, t] for t in range(T)]
    hs = []
    for layer, c in enumerate(cells):
        h = x.new_zeros(B, H)
        cs = x.new_zeros(B, H)
        outs, hl = [], []
        for t in range(T):
            if get_cell(cell).cell_state:
                hn, cn = c(inp[t], (h, cs))
            else:
                hn, cn = c(inp[t], h), None
            if lengths is not None:
                v = (t < lengths)[:, None]
                hn = torch.where(v, hn, h)
                if cn is not None:
                    cn = torch.where(v, cn, cs)
            hn.retain_grad()
            hl.append(hn)
            outs.append(hn if lengths is None else torch.where(v, hn, torch.zeros_like(hn)))
            h, cs = hn, cn
        hs.append(hl)
        if masks is not None and layer < L - 1:
            outs = [o * masks[layer][t] for t, o in enumerate(outs)]
        inp = outs
    return torch.stack(outs, 1), hs, cells


def ref_norms(hs, lengths=None):
    L, T = len(hs), len(hs[0])
    out = torch.zeros(L, T, dtype=torch.float64)
    for layer in range(L):
        for t in range(T):
            g = hs[layer][t].grad
            if lengths is not None:
                g = g * (t < lengths)[:, None]
            out[layer, t] = g.double().norm()
    return out


# ------------------------------------------------------------------ gradients vs nn modules


@pytest.mark.parametrize("cell", ENGINE_CELLS)
@pytest.mark.parametrize(
    "L,B,T,n_in,H,lengths",
    [
        (1, 3, 5, 2, 4, None),
        (2, 4, 9, 3, 5, None),
        (2, 4, 9, 3, 5, [9, 4, 1, 6]),
        (1, 1, 1, 1, 3, None),
    ],
)
def test_grads_match_module(path, cell, L, B, T, n_in, H, lengths):
    mod = make(cell, n_in, H, L)
    lens = None if lengths is None else torch.tensor(lengths)
    x = torch.randn(B, T, n_in, dtype=torch.float64, requires_grad=True)
    go = torch.randn(B, T, H, dtype=torch.float64)
    params = [x, *mod._flat_weights]
    ref = run_module(mod, x, lens)
    g_ref = torch.autograd.grad(ref, params, go)
    out = run_engine(cell, mod, x, lengths=lens)
    g_eng = torch.autograd.grad(out, params, go)
    assert_rel(out, ref, 1e-10, "output")
    names = ["x", *mod._flat_weights_names]
    for a, b, name in zip(g_eng, g_ref, names, strict=True):
        assert_rel(a, b, 1e-10, name)


@pytest.mark.parametrize("cell", ENGINE_CELLS)
def test_grads_match_module_float32(path, cell):
    mod = make(cell, 3, 16, 2, dtype=torch.float32)
    x = torch.randn(6, 20, 3, requires_grad=True)
    go = torch.randn(6, 20, 16)
    params = [x, *mod._flat_weights]
    g_ref = torch.autograd.grad(mod(x)[0], params, go)
    out = run_engine(cell, mod, x)
    g_eng = torch.autograd.grad(out, params, go)
    assert_rel(out, mod(x)[0], 1e-5, "output")
    for a, b, name in zip(g_eng, g_ref, ["x", *mod._flat_weights_names], strict=True):
        assert_rel(a, b, 1e-5, name)


@pytest.mark.parametrize("cell", ENGINE_CELLS)
def test_dropout_same_masks(path, cell):
    B, T, n_in, H, L, p = 3, 6, 2, 4, 3, 0.4
    mod = make(cell, n_in, H, L)
    x = torch.randn(B, T, n_in, dtype=torch.float64, requires_grad=True)
    go = torch.randn(B, T, H, dtype=torch.float64)
    torch.manual_seed(123)
    out = run_engine(cell, mod, x, dropout=p, training=True)
    g_eng = torch.autograd.grad(out, [x, *mod._flat_weights], go)
    torch.manual_seed(123)
    masks = dropout_masks(L, T, B, H, p, dtype=torch.float64)
    assert len(masks) == L - 1 and (masks[0] == 0).any()
    ref, _, cells = ref_unrolled(cell, mod, x, masks=masks)
    cell_params = [w for c in cells for w in (c.weight_ih, c.weight_hh, c.bias_ih, c.bias_hh)]
    g_ref = torch.autograd.grad(ref, [x, *cell_params], go)
    assert_rel(out, ref, 1e-10, "output")
    for a, b, name in zip(g_eng, g_ref, ["x", *mod._flat_weights_names], strict=True):
        assert_rel(a, b, 1e-10, name)
    # not training (or p=0): no dropout, equal to the module
    assert_rel(run_engine(cell, mod, x, dropout=p, training=False), mod.eval()(x)[0], 1e-10)


# ------------------------------------------------------------------ per-timestep norms


@pytest.mark.parametrize("cell", ENGINE_CELLS)
@pytest.mark.parametrize("with_lengths", [False, True])
def test_norms_match_unrolled_cells(path, cell, with_lengths):
    B, T, n_in, H, L = 4, 8, 3, 5, 2
    mod = make(cell, n_in, H, L)
    lens = torch.tensor([8, 3, 5, 1]) if with_lengths else None
    x = torch.randn(B, T, n_in, dtype=torch.float64)
    w = torch.randn(B, T, H, dtype=torch.float64)
    rec = GradNormRecorder(track_log10=True)
    out = run_engine(cell, mod, x, lengths=lens, recorder=rec)
    (out * w).sum().backward()
    ref, hs, _ = ref_unrolled(cell, mod, x, lengths=lens)
    (ref * w).sum().backward()
    expected = ref_norms(hs, lens)
    assert rec.norms.dtype == torch.float64 and rec.norms.shape == (L, T)
    torch.testing.assert_close(rec.norms, expected, rtol=1e-4, atol=0)
    torch.testing.assert_close(rec.log10_norms, expected.log10(), rtol=0, atol=1e-6)
    assert rec.num_records == 1


@pytest.mark.parametrize("cell", ENGINE_CELLS)
def test_norms_with_dropout_are_before_dropout(path, cell):
    B, T, n_in, H, L, p = 3, 5, 2, 4, 2, 0.5
    mod = make(cell, n_in, H, L)
    x = torch.randn(B, T, n_in, dtype=torch.float64)
    rec = GradNormRecorder()
    torch.manual_seed(7)
    run_engine(cell, mod, x, dropout=p, training=True, recorder=rec)[:, -2:].sum().backward()
    torch.manual_seed(7)
    masks = dropout_masks(L, T, B, H, p, dtype=torch.float64)
    ref, hs, _ = ref_unrolled(cell, mod, x, masks=masks)
    ref[:, -2:].sum().backward()
    torch.testing.assert_close(rec.norms, ref_norms(hs), rtol=1e-4, atol=0)


def test_norms_float32_small_values(path):
    """float32, loss on the last step only: the norms fall by orders of magnitude."""
    cell, B, T, n_in, H = "lstm", 8, 60, 2, 16
    mod = make(cell, n_in, H, 1, dtype=torch.float32)
    x = torch.randn(B, T, n_in)
    rec = GradNormRecorder()
    run_engine(cell, mod, x, recorder=rec)[:, -1].sum().backward()
    mod64 = copy.deepcopy(mod).double()
    ref, hs, _ = ref_unrolled(cell, mod64, x.double())
    ref[:, -1].sum().backward()
    expected = ref_norms(hs)
    assert expected[0, 0] < 1e-8 * expected[0, -1]
    torch.testing.assert_close(rec.norms, expected, rtol=1e-3, atol=0)


@pytest.mark.parametrize("cell", ENGINE_CELLS)
def test_log10_tracking_below_float32_range(path, cell):
    """tanh RNN/LSTM/GRU with small recurrent weights: ||dL/dh_t|| falls below 1e-45 (float32
    underflows to 0) but stays above 1e-300 (float64 does not). The float32 engine must report
    the float64 autograd reference's log10 norms, and its training gradient must not change."""
    B, n_in, H = 4, 2, 8
    T = {"rnn": 80}.get(cell, 250)
    mod = make(cell, n_in, H, 1, dtype=torch.float32, seed=3, scale=0.3)
    x = torch.randn(B, T, n_in)
    rec = GradNormRecorder(track_log10=True)
    out = run_engine(cell, mod, x, recorder=rec)
    out[:, -1].sum().backward()
    grads_with = [w.grad.clone() for w in mod.parameters()]
    # reference in float64 through nn cells
    mod64 = copy.deepcopy(mod).double()
    ref, hs, _ = ref_unrolled(cell, mod64, x.double())
    ref[:, -1].sum().backward()
    expected = ref_norms(hs).log10()
    assert expected.min() < -50, "test case must underflow float32"
    assert torch.isfinite(expected).all()
    torch.testing.assert_close(rec.log10_norms, expected, rtol=0, atol=1e-3)
    # float32 autograd indeed underflows to exactly zero at early steps
    ref32, hs32, _ = ref_unrolled(cell, mod, x)
    ref32[:, -1].sum().backward()
    assert ref_norms(hs32)[0, 0] == 0
    # same gradients without the recorder
    mod.zero_grad()
    run_engine(cell, mod, x)[:, -1].sum().backward()
    for a, b in zip(grads_with, [w.grad for w in mod.parameters()], strict=True):
        assert torch.equal(a, b)


@pytest.mark.parametrize("cell", ENGINE_CELLS)
def test_non_finite_padding_is_ignored(path, cell):
    mod = make(cell, 2, 4, 2)
    lens = torch.tensor([5, 2, 4])
    x = torch.randn(3, 5, 2, dtype=torch.float64)
    x_bad = x.clone()
    x_bad[1, 2:] = float("nan")
    x_bad[2, 4] = float("inf")
    x_bad.requires_grad_()
    rec = GradNormRecorder()
    out = run_engine(cell, mod, x_bad, lengths=lens, recorder=rec)
    grads = torch.autograd.grad(out.sum(), [x_bad, *mod._flat_weights])
    ref = run_module(mod, x.requires_grad_(), lens)
    g_ref = torch.autograd.grad(ref.sum(), [x, *mod._flat_weights])
    assert_rel(out, ref, 1e-10, "output")
    for a, b in zip(grads, g_ref, strict=True):
        assert_rel(a, b, 1e-10)
    assert torch.isfinite(rec.norms).all()


def test_log10_exactly_zero_where_no_gradient(path):
    mod = make("gru", 2, 4, 2)
    rec = GradNormRecorder(track_log10=True)
    lens = torch.tensor([3, 2])
    out = run_engine(
        "gru", mod, torch.randn(2, 6, 2, dtype=torch.float64), lengths=lens, recorder=rec
    )
    out.sum().backward()
    assert torch.isneginf(rec.log10_norms[:, 3:]).all()
    assert (rec.norms[:, 3:] == 0).all()
    assert (rec.norms[:, :3] > 0).all()


# ------------------------------------------------------------------ gradient range and scaling


@pytest.mark.parametrize("cell", ENGINE_CELLS)
def test_upstream_of_very_different_magnitudes(path, cell):
    """Loss terms at different steps differing by 1e40: exercises the exponent bookkeeping
    (reference-exponent changes during the weight-gradient accumulation)."""
    B, T, n_in, H = 3, 7, 2, 4
    mod = make(cell, n_in, H, 2)
    x = torch.randn(B, T, n_in, dtype=torch.float64, requires_grad=True)
    go = torch.randn(B, T, H, dtype=torch.float64)
    go[:, -1] *= 1e-30
    go[:, 0] *= 1e10
    params = [x, *mod._flat_weights]
    g_ref = torch.autograd.grad(mod(x)[0], params, go)
    g_eng = torch.autograd.grad(run_engine(cell, mod, x), params, go)
    for a, b, name in zip(g_eng, g_ref, ["x", *mod._flat_weights_names], strict=True):
        assert_rel(a, b, 1e-10, name)


def test_vanishing_float32_gradients_match_float64(path):
    """Long tanh RNN in float32: the engine's gradients equal the float64 truth to float32
    precision (the tiny, would-be-denormal contributions are negligible)."""
    mod = make("rnn", 2, 16, 1, dtype=torch.float32, seed=1, scale=0.5)
    x = torch.randn(4, 150, 2, requires_grad=True)
    g_eng = torch.autograd.grad(run_engine("rnn", mod, x)[:, -1].sum(), [x, *mod._flat_weights])
    mod64 = copy.deepcopy(mod).double()
    x64 = x.detach().double().requires_grad_()
    g64 = torch.autograd.grad(mod64(x64)[0][:, -1].sum(), [x64, *mod64._flat_weights])
    for a, b in zip(g_eng, g64, strict=True):
        assert_rel(a.double(), b, 1e-5)
    assert g_eng[0][:, 0].abs().max() < 1e-30  # dx vanished; flushed values are exact zeros


# ------------------------------------------------------------------ training equivalence


@pytest.mark.parametrize("cell", ENGINE_CELLS)
def test_training_matches_autograd(path, cell):
    torch.manual_seed(0)
    ref = make(cell, 3, 6, 2)
    head_ref = nn.Linear(6, 1).double()
    eng, head_eng = copy.deepcopy(ref), copy.deepcopy(head_ref)
    opt_ref = torch.optim.Adam([*ref.parameters(), *head_ref.parameters()], lr=1e-2)
    opt_eng = torch.optim.Adam([*eng.parameters(), *head_eng.parameters()], lr=1e-2)
    rec = GradNormRecorder()
    for step in range(4):
        g = torch.Generator().manual_seed(step)
        x = torch.randn(5, 7, 3, generator=g, dtype=torch.float64)
        y = torch.randn(5, 1, generator=g, dtype=torch.float64)
        lens = torch.tensor([7, 2, 5, 7, 3])
        for m, h, opt, use_engine in (
            (ref, head_ref, opt_ref, False),
            (eng, head_eng, opt_eng, True),
        ):
            opt.zero_grad()
            out = (
                run_engine(cell, m, x, lengths=lens, recorder=rec)
                if use_engine
                else (run_module(m, x, lens))
            )
            last = out[torch.arange(5), lens - 1]
            nn.functional.mse_loss(h(last), y).backward()
            opt.step()
    for a, b in zip(eng.parameters(), ref.parameters(), strict=True):
        torch.testing.assert_close(a, b, rtol=1e-9, atol=1e-12)
    assert rec.num_records == 4


# ------------------------------------------------------------------ behaviour and API


def test_output_layout_and_inplace_protection(path):
    mod = make("lstm", 2, 4, 1)
    x = torch.randn(3, 5, 2, dtype=torch.float64)
    out = run_engine("lstm", mod, x)
    assert out.shape == (3, 5, 4)
    out2 = run_engine("lstm", mod, x)
    with pytest.raises(RuntimeError):
        out2.mul_(2).sum().backward()
    # the first output's buffers are untouched by the second call
    assert_rel(out, mod(x)[0], 1e-12)


def test_retain_graph_and_repeated_calls(path):
    """Buffers are recycled across calls; a retained graph must keep its own."""
    mod = make("gru", 2, 4, 2)
    x = torch.randn(3, 5, 2, dtype=torch.float64)
    out = run_engine("gru", mod, x)
    g1 = torch.autograd.grad(out.sum(), mod._flat_weights, retain_graph=True)
    for _ in range(2):  # other calls in between may reuse free buffers
        run_engine("gru", mod, x * 2).sum().backward()
    g2 = torch.autograd.grad(out.sum(), mod._flat_weights)
    for a, b in zip(g1, g2, strict=True):
        assert torch.equal(a, b)


def test_no_grad_and_partial_requires_grad(path):
    mod = make("rnn", 2, 4, 1)
    x = torch.randn(3, 5, 2, dtype=torch.float64)
    with torch.no_grad():
        assert_rel(run_engine("rnn", mod, x), mod(x)[0], 1e-12)
    mod.weight_hh_l0.requires_grad_(False)
    run_engine("rnn", mod, x).sum().backward()
    assert mod.weight_hh_l0.grad is None and mod.weight_ih_l0.grad is not None


def test_does_not_change_flush_denormal_state(path):
    def flushing() -> bool:
        return (torch.tensor([1e-39], dtype=torch.float32) * 1.0).item() == 0.0

    before = flushing()
    mod = make("lstm", 2, 4, 1, dtype=torch.float32)
    run_engine("lstm", mod, torch.randn(2, 30, 2)).sum().backward()
    assert flushing() == before


def test_input_validation():
    mod = make("lstm", 2, 4, 1)
    x = torch.randn(3, 5, 2, dtype=torch.float64)
    with pytest.raises(ValueError):
        recurrent("lstm2", x, list(mod._flat_weights), num_layers=1, hidden_size=4)
    with pytest.raises(ValueError):
        recurrent("gru", x, list(mod._flat_weights), num_layers=1, hidden_size=4)
    with pytest.raises(ValueError):
        recurrent("lstm", x, list(mod._flat_weights), num_layers=2, hidden_size=4)
    with pytest.raises(ValueError):
        recurrent("lstm", x.float(), list(mod._flat_weights), num_layers=1, hidden_size=4)
    with pytest.raises(ValueError):
        recurrent("lstm", x[0], list(mod._flat_weights), num_layers=1, hidden_size=4)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_matches_cpu():
    mod = make("lstm", 2, 4, 2)
    x = torch.randn(3, 5, 2, dtype=torch.float64)
    rec_cpu, rec_gpu = GradNormRecorder(), GradNormRecorder()
    run_engine("lstm", mod, x, recorder=rec_cpu).sum().backward()
    g_cpu = [w.grad.clone() for w in mod.parameters()]
    mod_gpu = copy.deepcopy(mod).cuda()
    mod_gpu.zero_grad()
    run_engine("lstm", mod_gpu, x.cuda(), recorder=rec_gpu).sum().backward()
    for a, b in zip(g_cpu, [w.grad.cpu() for w in mod_gpu.parameters()], strict=True):
        assert_rel(b, a, 1e-10)
    torch.testing.assert_close(rec_gpu.norms, rec_cpu.norms, rtol=1e-8, atol=0)


# ------------------------------------------------------------------ native build and threads


def test_header_constants_are_the_ones_python_uses():
    """Python reads the constants and the backward parameter block from the C++ header."""
    assert NEG == -(2**29)
    assert {torch.float32: 60, torch.float64: 200} == CUT
    assert BWD_SLOTS[:2] == ("B_", "H_") and len(set(BWD_SLOTS)) == len(BWD_SLOTS) == 19
    assert "SEQBENCH_THREADING_MIN_WORK" in HEADER.read_text()
    with pytest.raises(ValueError, match="slots"):
        bwd_params(B_=1, H_=2)
    if engine.native_available():
        nat = native.native()
        assert nat.lib.seqbench_abi_version() == native.ABI
        assert nat.threads_for(THREADING_MIN_WORK - 1) == 1  # below the threshold: serial


def test_native_kernels_build(tmp_path, monkeypatch):
    """A real build into an empty cache directory; the new library computes what the cached one
    computes (bit for bit) and what PyTorch's layers compute."""
    if not engine.native_available():
        pytest.skip("no C++ compiler available; the pure-torch path is used")
    lib = native.build(str(tmp_path))
    assert lib is not None and len(list(tmp_path.glob("bptt_*.so"))) == 1
    fresh = native.Native(lib)
    assert fresh.cells == {name for name, c in CELLS.items() if c.engine and c.engine.native_source}
    monkeypatch.setenv("SEQBENCH_NATIVE", "1")
    for cell in ENGINE_CELLS:
        mod = make(cell, 3, 5, 2, dtype=torch.float32)
        x = torch.randn(4, 6, 3, requires_grad=True)
        params = [x, *mod._flat_weights]
        results = []
        for nat in (native.native(), fresh):
            monkeypatch.setitem(native._state, "lib", nat)
            rec = GradNormRecorder()
            out = run_engine(cell, mod, x, recorder=rec)
            results.append([out.detach(), *torch.autograd.grad(out.sum(), params), rec.norms])
        for a, b in zip(*results, strict=True):
            assert torch.equal(a, b)
        g_ref = torch.autograd.grad(mod(x)[0].sum(), params)
        for a, b in zip(results[1][1:-1], g_ref, strict=True):
            assert_rel(a, b, 1e-5)


def test_failed_build_says_why_once_and_falls_back(tmp_path, monkeypatch):
    compiler = tmp_path / "broken-c++"
    compiler.write_text("#!/bin/sh\necho 'kernel.cpp:3:1: error: planted failure' >&2\nexit 1\n")
    compiler.chmod(0o755)
    monkeypatch.setenv("CXX", str(compiler))
    monkeypatch.setenv("SEQBENCH_NATIVE", "1")
    monkeypatch.setenv("SEQBENCH_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.setattr(native.tempfile, "gettempdir", lambda: str(tmp_path / "tmp"))
    monkeypatch.delitem(native._state, "lib", raising=False)  # as in a fresh process
    mod = make("rnn", 2, 4, 1)
    x = torch.randn(3, 5, 2, dtype=torch.float64)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        outs = [run_engine("rnn", mod, x) for _ in range(2)]
    messages = [str(w.message) for w in caught if issubclass(w.category, RuntimeWarning)]
    assert len(messages) == 1, messages  # once, not per call
    assert str(compiler) in messages[0] and "-std=c++17" in messages[0]
    assert "error: planted failure" in messages[0] and "SEQBENCH_NATIVE=0" in messages[0]
    assert not engine.native_available()
    for out in outs:
        assert_rel(out, mod(x)[0], 1e-12)


@pytest.mark.parametrize("cell", ENGINE_CELLS)
def test_threaded_kernels(cell):
    """With 2 torch threads and every step's work above THREADING_MIN_WORK, the native kernels
    split each step's rows over 2 threads (and sum the per-thread bias-gradient and norm
    partials): gradients and per-timestep norms still match PyTorch."""
    if not engine.native_available():
        pytest.skip("native kernels unavailable")
    nat = native.native()
    if not nat.openmp:
        pytest.skip("kernels built without OpenMP (torch does not run on libgomp)")
    H, T = 64, 4
    spec = get_cell(cell)
    B = math.ceil(THREADING_MIN_WORK / (spec.gates * H))  # the smallest step (forward) is over
    mod = make(cell, 2, H, 2)
    lens = torch.full((B,), T)
    lens[::3] = 2
    x = torch.randn(B, T, 2, dtype=torch.float64, requires_grad=True)
    go = torch.randn(B, T, H, dtype=torch.float64)
    params = [x, *mod._flat_weights]
    threads = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        assert nat.threads_for(B * spec.gates * H) == 2  # the threaded path is taken
        rec = GradNormRecorder()
        out = run_engine(cell, mod, x, lengths=lens, recorder=rec)
        g_eng = torch.autograd.grad(out, params, go)
    finally:
        torch.set_num_threads(threads)
    ref = run_module(mod, x, lens)
    g_ref = torch.autograd.grad(ref, params, go)
    assert_rel(out, ref, 1e-10, "output")
    for a, b, name in zip(g_eng, g_ref, ["x", *mod._flat_weights_names], strict=True):
        assert_rel(a, b, 1e-10, name)
    ref_out, hs, _ = ref_unrolled(cell, mod, x.detach(), lengths=lens)
    (ref_out * go).sum().backward()
    torch.testing.assert_close(rec.norms, ref_norms(hs, lens), rtol=1e-9, atol=0)
