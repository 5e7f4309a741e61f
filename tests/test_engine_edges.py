"""Engine edge cases found by an external check (issue #19), each against PyTorch's own layers
(nn.RNN/LSTM/GRU and nn.*Cell with the same weights): a double backward is refused, not
silently wrong; a sequence's gradient is not dropped because another sequence dominates the
batch; norms below float64's normal range are 0, not imprecise subnormals; a zero initial state
is no initial state, and a malformed one is refused (initial states themselves:
tests/test_stateful.py)."""

from __future__ import annotations

import copy
import math

import pytest
import torch
from torch import nn

from seqbench.cells import get_cell
from seqbench.engine import GradNormRecorder
from tests.conftest import ENGINE_CELLS, run_engine
from tests.conftest import fused_layer as fused


def step_grads(cell, mod, x, upstream):
    """dL/dh_t (B, H) per step t, for a one-layer ``mod``: autograd through PyTorch's
    single-step module (nn.*Cell) with mod's weights; ``upstream`` = dL/d(output)."""
    spec = get_cell(cell)
    step = spec.fused_cell(mod.input_size, mod.hidden_size).to(x.dtype)
    with torch.no_grad():
        for name in ("weight_ih", "weight_hh", "bias_ih", "bias_hh"):
            getattr(step, name).copy_(getattr(mod, f"{name}_l0"))
    h = c = x.new_zeros(x.shape[0], mod.hidden_size)
    hs = []
    for t in range(x.shape[1]):
        h, c = step(x[:, t], (h, c)) if spec.cell_state else (step(x[:, t], h), None)
        h.retain_grad()
        hs.append(h)
    torch.autograd.backward(torch.stack(hs, 1), upstream)
    return [h.grad for h in hs]


# ------------------------------------------------------------------ double backward


@pytest.mark.parametrize("cell", ENGINE_CELLS)
@pytest.mark.parametrize("frozen", [True, False], ids=["frozen-weights", "trainable-weights"])
def test_double_backward_is_refused(path, cell, frozen):
    """A gradient penalty on the input of the recurrent layer, whose input comes from a
    trainable layer: PyTorch's layer differentiates the penalty; the engine, whose gradients
    carry no graph, must refuse with one message (it used to drop the penalty silently with
    frozen weights, and fail inside the kernels with trainable ones)."""
    rnn = fused(cell, 3, 4).requires_grad_(not frozen)
    torch.manual_seed(1)
    proj = nn.Linear(2, 3).double()
    x = torch.randn(3, 6, 2, dtype=torch.float64)

    def proj_grad(run, penalty: bool) -> torch.Tensor:
        proj.zero_grad()
        inp = proj(x)
        loss = run(inp)[:, -1].square().sum()
        if penalty:
            (gx,) = torch.autograd.grad(loss, inp, create_graph=True)
            loss = loss + gx.square().sum()
        loss.backward()
        return proj.weight.grad.clone()

    reference = proj_grad(lambda inp: rnn(inp)[0], penalty=True)
    plain = proj_grad(lambda inp: rnn(inp)[0], penalty=False)
    assert not torch.allclose(reference, plain, rtol=1e-3)  # the penalty term matters
    # without create_graph the engine is PyTorch's layer
    torch.testing.assert_close(proj_grad(lambda inp: run_engine(cell, rnn, inp), False), plain)
    with pytest.raises(RuntimeError, match="double backward") as refused:
        proj_grad(lambda inp: run_engine(cell, rnn, inp), penalty=True)
    assert "create_graph=True" in str(refused.value)
    assert "model.engine=fused" in str(refused.value)


# ------------------------------------------------------------------ the drop rule, per sequence


def check_rows_float32(cell, layers, T, scale, last_weight):
    """Sequences 0, 2: loss at the last step (times ``last_weight``); sequences 1, 3: at the
    middle step. Every (sequence, step) row of dL/dx above 1e-30 of the largest, and every
    weight gradient, must match PyTorch's layer (in float64) to float32 precision; at least 10
    early rows of sequences 0, 2 must be among those checked."""
    B, n_in, H = 4, 3, 8
    rnn = fused(cell, n_in, H, layers, torch.float32, scale=scale)
    x = torch.randn(B, T, n_in)
    upstream = torch.zeros(B, T, H)
    upstream[0::2, -1] = last_weight
    upstream[1::2, T // 2] = 1.0
    rnn64 = copy.deepcopy(rnn).double()
    x64 = x.double().requires_grad_()
    ref = torch.autograd.grad(rnn64(x64)[0], [x64, *rnn64._flat_weights], upstream.double())
    x.requires_grad_()
    got = torch.autograd.grad(run_engine(cell, rnn, x), [x, *rnn._flat_weights], upstream)
    rows = ref[0].norm(dim=2)  # (B, T)
    checked = rows > 1e-30 * rows.max()
    assert checked[0::2, : T // 2].sum() >= 10, "early rows of sequences 0, 2 must be checked"
    err = (got[0].double() - ref[0]).norm(dim=2)
    assert (err[checked] <= 1e-4 * rows[checked]).all(), (err / rows)[checked].max()
    for a, b in zip(got[1:], ref[1:], strict=True):
        assert (a.double() - b).abs().max() <= 1e-4 * b.abs().max()


@pytest.mark.parametrize("cell", ENGINE_CELLS)
@pytest.mark.parametrize("layers", [1, 2])
def test_per_sequence_input_gradients_float32(path, cell, layers):
    """The loss of sequences 0, 2 (last step) is 1e-20 times that of sequences 1, 3 (middle
    step). Where sequences 1, 3 enter, sequences 0, 2 are more than 2**60 below them; a
    per-batch rule dropped their carry, so their earlier rows of dL/dx became exactly 0."""
    check_rows_float32(cell, layers, T=30, scale=1.0, last_weight=1e-20)


@pytest.mark.parametrize("layers", [1, 2])
def test_per_sequence_input_gradients_float32_decay(path, layers):
    """Equal losses, a tanh RNN with small weights: sequences 0, 2's gradient decays by more
    than 2**60 between the last and the middle step, which a per-batch rule turned into
    zeros (one layer) or wrong values (in the layer below) at the earlier steps."""
    check_rows_float32("rnn", layers, T=60, scale=0.3, last_weight=1.0)


def test_per_sequence_input_gradients_float64_lstm_t600(path):
    """float64 LSTM, T=600: sequence 0's loss at the last step, sequence 1's at step 300.
    Sequence 0's gradient decays by more than 2**200 before step 300, and a per-batch rule
    zeroed all its 300 earlier rows of dL/dx. Every row must match nn.LSTM's to 1e-10, and the
    per-step norms over the batch must match nn.LSTMCell's."""
    B, T, n_in, H = 2, 600, 3, 8
    rnn = fused("lstm", n_in, H)
    x = torch.randn(B, T, n_in, dtype=torch.float64, requires_grad=True)
    upstream = torch.zeros(B, T, H, dtype=torch.float64)
    upstream[0, -1] = 1.0
    upstream[1, T // 2] = 1.0
    (ref,) = torch.autograd.grad(rnn(x)[0], x, upstream)
    rec = GradNormRecorder(track_log10=True)
    (got,) = torch.autograd.grad(run_engine("lstm", rnn, x, recorder=rec), x, upstream)
    rows = ref.norm(dim=2)
    assert (rows[0, : T // 2] > 0).all() and rows[0, 0] < 2.0**-200 * rows[1, T // 2 - 1]
    assert ((got - ref).norm(dim=2) <= 1e-10 * rows).all()
    norms = torch.stack([g.norm() for g in step_grads("lstm", rnn, x.detach(), upstream)])
    torch.testing.assert_close(rec.norms[0], norms, rtol=1e-10, atol=0)
    torch.testing.assert_close(rec.log10_norms[0], norms.log10(), rtol=0, atol=1e-10)


# ------------------------------------------------------------------ norms below float64's range


def test_norms_below_float64_normal_range_are_zero(path):
    """A tanh RNN whose ||dL/dh_t|| falls from about 1 to below 1e-308 (float64's smallest
    normal number). The reference is nn.RNNCell with the upstream gradient scaled by 2**900
    (exact: backpropagation is linear in it). log10_norms must match it everywhere; norms
    must match it where they are normal and be exactly 0 below (never a subnormal)."""
    B, T, H = 2, 280, 4
    rnn = fused("rnn", 2, H, scale=0.1)
    x = torch.randn(B, T, 2, dtype=torch.float64)
    upstream = torch.zeros(B, T, H, dtype=torch.float64)
    upstream[:, -1] = torch.randn(B, H, dtype=torch.float64)
    scaled = step_grads("rnn", rnn, x, upstream * 2.0**900)
    tiny = torch.finfo(torch.float64).tiny
    assert all(g.abs().max() >= tiny for g in scaled), "the reference must stay normal"
    big = [g.abs().max() for g in scaled]  # norms as max * ||g / max||: no overflow
    true_log10 = torch.stack(
        [m.log10() + (g / m).norm().log10() for g, m in zip(scaled, big, strict=True)]
    )
    true_log10 -= 900 * math.log10(2.0)
    below = true_log10 < math.log10(tiny)
    assert below.any() and not below.all()
    rec = GradNormRecorder(track_log10=True)
    run_engine("rnn", rnn, x, recorder=rec).backward(upstream)
    torch.testing.assert_close(rec.log10_norms[0], true_log10, rtol=0, atol=1e-9)
    assert (rec.norms[0][below] == 0).all()
    torch.testing.assert_close(
        rec.norms[0][~below], torch.pow(10.0, true_log10[~below]), rtol=1e-9, atol=0
    )


# ------------------------------------------------------------------ initial state


@pytest.mark.parametrize("cell", ENGINE_CELLS)
def test_a_zero_initial_state_is_no_initial_state_and_a_bad_one_is_refused(cell):
    """The engine given a zero h0 (and c0) computes what it computes without one, which is
    PyTorch's layer given that state; an initial state of the wrong shape, dtype or device, a
    c0 without h0 (or h0 without c0) for a cell with a cell state, and a c0 for a cell without
    one are refused with a ValueError naming the argument."""
    rnn = fused(cell, 2, 4)
    x = torch.randn(3, 5, 2, dtype=torch.float64)
    h0 = torch.zeros(1, 3, 4, dtype=torch.float64)
    with_cell = get_cell(cell).cell_state
    state = {"h0": h0, "c0": h0} if with_cell else {"h0": h0}
    plain = run_engine(cell, rnn, x)
    assert torch.equal(run_engine(cell, rnn, x, **state), plain)
    torch.testing.assert_close(plain, rnn(x, (h0, h0) if with_cell else h0)[0], rtol=1e-12, atol=0)
    bad = [{**state, "h0": torch.zeros(2, 3, 4, dtype=torch.float64)},
           {**state, "h0": h0.float()}]  # fmt: skip
    bad += [{"h0": h0}, {"c0": h0}] if with_cell else [{"h0": h0, "c0": h0}]
    for kw in bad:
        with pytest.raises(ValueError, match=r"\b[hc]0\b"):
            run_engine(cell, rnn, x, **kw)
