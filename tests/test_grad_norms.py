"""The reported ||dL/dh_t|| against an independent reference: autograd through an unrolled
nn.RNNCell / nn.LSTMCell / nn.GRUCell stack holding the same weights."""

from __future__ import annotations

import math
import warnings

import numpy as np
import pytest
import torch

from seqbench.cells import CELLS
from seqbench.diagnostics import grad_norms, summarize
from seqbench.model import SequenceModel

# the registered cells with a PyTorch single-step module: the independent reference
REFERENCE_CELLS = [name for name, c in CELLS.items() if c.fused_cell is not None]


def reference_norms(model: SequenceModel, x: torch.Tensor, y: torch.Tensor) -> np.ndarray:
    """Per-layer, per-step ||dL/dh_t|| from torch's own cells, with retain_grad on each h_t."""
    rnn = model.rnn
    cells = []
    for layer in range(rnn.num_layers):
        in_size = rnn.input_size if layer == 0 else rnn.hidden_size
        cell = CELLS[model.cell].fused_cell(in_size, rnn.hidden_size).double()
        with torch.no_grad():
            for name in ("weight_ih", "weight_hh", "bias_ih", "bias_hh"):
                getattr(cell, name).copy_(getattr(rnn, f"{name}_l{layer}"))
        cells.append(cell)
    batch, steps, _ = x.shape
    seq = [x[:, t] for t in range(steps)]
    states = []
    for cell in cells:
        h = torch.zeros(batch, rnn.hidden_size, dtype=x.dtype)
        c = torch.zeros_like(h)
        hs = []
        for t in range(steps):
            if CELLS[model.cell].cell_state:
                h, c = cell(seq[t], (h, c))
            else:
                h = cell(seq[t], h)
            h.retain_grad()
            hs.append(h)
        states.append(hs)
        seq = hs
    out = model.head(torch.stack(seq, dim=1))
    loss = ((out[:, -1, 0] - y) ** 2).mean()
    loss.backward()
    return np.array([[h.grad.norm().item() for h in hs] for hs in states])


@pytest.mark.parametrize("engine", [False, True], ids=["unrolled", "engine"])
@pytest.mark.parametrize("cell", REFERENCE_CELLS)
def test_norms_match_unrolled_cells(cell: str, engine: bool) -> None:
    torch.manual_seed(0)
    model = SequenceModel(cell, input_size=3, output_size=1, hidden_size=16, num_layers=2,
                          engine=engine)  # fmt: skip
    model = model.double()
    x = torch.randn(5, 12, 3, dtype=torch.float64)
    y = torch.randn(5, dtype=torch.float64)

    out, states = model(x, record_states=True)
    fused, _ = model(x)
    torch.testing.assert_close(
        out, fused, rtol=1e-10, atol=1e-12
    )  # same function as nn.RNN/LSTM/GRU
    ((out[:, -1, 0] - y) ** 2).mean().backward()
    ours = grad_norms(states)

    ref = reference_norms(model, x, y)
    assert ours.shape == (2, 12)
    assert (ref[:, :-1] > 0).all()  # the recurrence carries gradient to every earlier step
    np.testing.assert_allclose(ours, ref, rtol=1e-4)


def test_norms_are_total_not_direct_derivatives() -> None:
    """retain_grad on the fused layer's output gives only the direct path: zero before T."""
    torch.manual_seed(1)
    model = SequenceModel("lstm", 2, 1, hidden_size=8)
    x = torch.randn(4, 10, 2)
    out, states = model(x, record_states=True)
    out[:, -1].sum().backward()
    norms = grad_norms(states)[0]
    assert (norms[:-1] > 0).all()

    seq, _ = model.rnn(x)
    seq.retain_grad()
    model.head(seq)[:, -1].sum().backward()
    direct = seq.grad.norm(dim=(0, 2))
    assert (direct[:-1] == 0).all() and direct[-1] > 0
    assert norms[-1] == pytest.approx(direct[-1].item(), rel=1e-5)


def test_summary_of_exponential_decay() -> None:
    t = np.arange(20)
    norms = 3.0 * 10.0 ** (0.25 * t)  # grows by 10^0.25 per step towards T
    s = summarize(norms, explode_factor=10.0)
    assert s.vanishing_ratio == pytest.approx(-0.25 * 19)
    assert s.decay_rate == pytest.approx(0.25)
    assert s.max_norm == pytest.approx(norms[-1])
    assert not s.exploding and s.nonzero == 20


def test_underflow_is_zero_and_minus_inf_never_nan() -> None:
    norms = np.array([0.0, 0.0, 1e-30, 1e-20, 1e-3])
    s = summarize(norms)
    assert s.vanishing_ratio == -math.inf
    assert s.nonzero == 3
    assert s.decay_rate is not None and math.isfinite(s.decay_rate)
    assert not any(isinstance(v, float) and math.isnan(v) for v in s.as_dict().values())


def test_engine_sees_below_float32_range() -> None:
    """Where the unrolled float32 path underflows to 0, the engine reports the true tiny norm
    (checked against a float64 run of the same model)."""
    torch.manual_seed(0)
    model = SequenceModel("rnn", 2, 1, hidden_size=32, engine=True)
    x = torch.rand(16, 400, 2)
    out, trace = model(x, record_states=True)
    out[:, -1].pow(2).mean().backward()
    ours = grad_norms(trace)[0]
    model64 = model.double()  # the same weights in float64, on the unrolled autograd path
    model64.engine = False
    out64, states = model64(x.double(), record_states=True)
    out64[:, -1].pow(2).mean().backward()
    ref = grad_norms(states)[0]
    assert 0 < ours[0] < 1e-38  # below float32's normal range
    np.testing.assert_allclose(ours, ref, rtol=1e-3)


def test_tanh_rnn_underflows_in_float32() -> None:
    """A long tanh RNN's gradient underflows float32 to exactly 0 on the unrolled path;
    reported as 0 and -inf."""
    torch.manual_seed(0)
    model = SequenceModel("rnn", 2, 1, hidden_size=32)
    x = torch.rand(16, 400, 2)
    out, states = model(x, record_states=True)
    out[:, -1].pow(2).mean().backward()
    norms = grad_norms(states)[0]
    assert norms[0] == 0.0 and norms[-1] > 0
    assert summarize(norms).vanishing_ratio == -math.inf


def test_exploding_flag() -> None:
    norms = np.array([50.0, 5.0, 1.0])
    assert summarize(norms, explode_factor=10.0).exploding
    assert summarize(np.array([1.0, np.inf, 1.0])).exploding


def test_padded_batches_summarize_over_real_positions() -> None:
    from seqbench.diagnostics import real_positions

    lengths = torch.tensor([3, 5, 2])
    positions = real_positions(lengths, batch_size=3, steps=7)
    assert positions.tolist() == [3, 3, 2, 1, 1, 0, 0]
    norms = np.array([1e-3, 1e-2, 1e-1, 0.5, 1.0, 0.0, 0.0])  # zero where nothing is real
    s = summarize(norms, positions=positions)
    assert s.timesteps == 5 and s.positions == 10
    assert s.vanishing_ratio == pytest.approx(-3.0)  # ||dL/dh_1|| / ||dL/dh_5||


@pytest.mark.parametrize("cell", REFERENCE_CELLS)
def test_bidirectional_unrolled_path_is_the_fused_packed_layer(cell: str) -> None:
    """The diagnostic unrolled path computes what nn.*(bidirectional=True) computes on packed
    sequences, at every readout position (each sequence's last real step)."""
    torch.manual_seed(0)
    model = SequenceModel(cell, 3, 2, hidden_size=6, num_layers=2, bidirectional=True).double()
    x = torch.randn(4, 9, 3, dtype=torch.float64)
    lengths = torch.tensor([9, 4, 6, 1])
    rows = torch.arange(4)
    unrolled, states = model(x, record_states=True, lengths=lengths)
    with torch.no_grad():
        fused, _ = model(x, lengths=lengths)
    torch.testing.assert_close(unrolled[rows, lengths - 1], fused[rows, lengths - 1])
    assert len(states) == 4  # (layer, direction)
    unrolled[rows, lengths - 1].sum().backward()
    norms = grad_norms(states)
    assert norms.shape == (4, 9) and (norms[:, 0] > 0).all()


def test_log_magnitude_beyond_float64(small_run, tmp_path) -> None:
    """diagnostics.log_magnitude=true: a tanh RNN over 3,000 steps, whose gradient at t=1 is
    below 1e-308 (0 as a float64 norm), still gets a finite log10 norm and a finite ratio."""
    import pandas as pd

    run_dir = tmp_path / "long"
    m = small_run("model=rnn", "task.seq_len=3000", "train.steps=1", "train.batch_size=4",
                  "diagnostics.log_magnitude=true", "log.tensorboard=false",
                  "inference.compare=false", run_dir=run_dir)  # fmt: skip
    grads = pd.read_csv(run_dir / "grad_norms.csv")
    init = grads[grads["step"] == 0]
    assert init["log10_norm"].notna().all() and np.isfinite(init["log10_norm"]).all()
    assert init["norm"].iloc[0] == 0.0 and init["log10_norm"].iloc[0] < -308
    positive = init[init["norm"] > 0]
    np.testing.assert_allclose(positive["log10_norm"], np.log10(positive["norm"]), atol=1e-9)
    ratio = m["grad_norms"]["init"]["layers"][0]["vanishing_ratio"]
    assert math.isfinite(ratio) and ratio < -300
    expected = init["log10_norm"].iloc[0] - init["log10_norm"].iloc[-1]
    assert ratio == pytest.approx(expected)


def test_summary_edges() -> None:
    """Each branch of summarize at its edge, with warnings as errors (a zero norm is expected,
    not a numerical accident)."""
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert not summarize(np.array([10.0, 1.0])).exploding  # exactly 10x: not above it
        assert summarize(np.array([10.5, 1.0])).exploding  # the default factor is 10
        assert not summarize(np.array([10.5, 1.0]), explode_factor=11.0).exploding
        s = summarize(np.array([0.0, 0.0]))  # nothing reached: not an explosion either way
        assert (s.vanishing_ratio, s.nonzero, s.memory_horizon) == (-math.inf, 0, 0)
        assert summarize(np.array([1.0, 0.0])).vanishing_ratio == math.inf
        assert summarize(np.array([1.0, math.inf])).vanishing_ratio == -math.inf
        s = summarize(np.array([math.nan, 1.0]))
        assert s.max_norm == math.inf and s.exploding
        s = summarize(np.array([2.0, 1.0, 3.0]), positions=np.zeros(3))  # no real position
        assert (s.timesteps, s.positions, s.max_norm) == (1, 0, 2.0)


def test_growth_rate_at_the_float64_edge() -> None:
    from seqbench.diagnostics import growth_rate

    assert growth_rate(None) is None
    assert growth_rate(-308.0) == 10.0**308
    assert growth_rate(-308.5) == math.inf  # beyond float64: inf, not OverflowError
    assert growth_rate(1.0) == pytest.approx(0.1)


def test_norms_and_gates_of_an_unrolled_trace() -> None:
    """A state that got no gradient counts as 0; a list trace carries no gate means."""
    from seqbench.diagnostics import gate_means

    h = [torch.ones(2, 3, requires_grad=True) for _ in range(3)]
    (h[0].sum() * 2 + h[2].sum()).backward()  # h[1] takes no part in the loss
    np.testing.assert_allclose(grad_norms([h]), [[math.sqrt(24.0), 0.0, math.sqrt(6.0)]])
    assert gate_means([h], ("i", "f", "g", "o")) == {}
