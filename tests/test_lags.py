"""The lag profile (seqbench.lags) against an independent reference: each loss term's own
gradient, by autograd through PyTorch's nn.RNNCell / nn.LSTMCell / nn.GRUCell holding the same
weights, in float64, aligned at the term's position and combined by lag here."""

from __future__ import annotations

import decimal
import math

import numpy as np
import pytest
import torch

from seqbench.cells import CELLS
from seqbench.diagnostics import LAG_PAIRS_FRACTION, lag_norms, summarize, summarize_lags
from seqbench.engine import GradNormRecorder
from seqbench.lags import LagProbe, align, one_source_per_row, select_pairs
from seqbench.model import SequenceModel
from seqbench.tasks import Batch

REFERENCE_CELLS = [name for name, c in CELLS.items() if c.fused_cell is not None]
PATHS = ["native", "torch", "fused"]


def reference_cell(
    model: SequenceModel, layer: int, width: int, suffix: str = ""
) -> torch.nn.Module:
    """torch's own cell (nn.RNNCell, nn.LSTMCell, nn.GRUCell) in float64 holding the weights of
    `layer` (`suffix` "_reverse": its backward direction)."""
    rnn = model.rnn
    cell = CELLS[model.cell].fused_cell(width, rnn.hidden_size).double()
    with torch.no_grad():
        for name in ("weight_ih", "weight_hh", "bias_ih", "bias_hh"):
            getattr(cell, name).copy_(getattr(rnn, f"{name}_l{layer}{suffix}"))
    return cell


def reference_states(model: SequenceModel, x: torch.Tensor) -> tuple[torch.Tensor, list]:
    """The model's output (B, T, O) and every layer's h_t, from torch's own cells in float64."""
    rnn, spec = model.rnn, CELLS[model.cell]
    batch, steps, _ = x.shape
    seq = [x[:, t].double() for t in range(steps)]
    states = []
    for layer in range(rnn.num_layers):
        cell = reference_cell(model, layer, seq[0].shape[1])
        h = torch.zeros(batch, rnn.hidden_size, dtype=torch.float64)
        c = torch.zeros_like(h)
        hs = []
        for t in range(steps):
            h, c = cell(seq[t], (h, c)) if spec.cell_state else (cell(seq[t], h), c)
            hs.append(h)
        states.append(hs)
        seq = hs
    head = torch.nn.Linear(rnn.hidden_size, model.head.out_features).double()
    head.load_state_dict({k: v.double() for k, v in model.head.state_dict().items()})
    return head(torch.stack(seq, dim=1)), states


def term(out: torch.Tensor, y: torch.Tensor, b: int, s: int, weight: float) -> torch.Tensor:
    """The loss term of sequence b at output s (the tests' loss is the sum of these)."""
    return weight * ((out[b, s] - y[b, s]) ** 2).sum()


def loss_at(sources: torch.Tensor, weight: float):
    """sum over the sources of `term`: a loss read exactly at `sources` (B, T)."""

    def loss(out: torch.Tensor, batch: Batch) -> torch.Tensor:
        mask = sources.to(out.dtype)[..., None]
        return weight * (((out - batch.y) ** 2) * mask).sum()

    return loss


def reference_profile(model, x, y, pairs, weight, lengths=None) -> np.ndarray:
    """(L, K) log10 RMS over `pairs` (b, s) of ||d term(b, s)/dh_{s-k}||, each term's gradient
    taken alone by autograd through the reference cells."""
    out, states = reference_states(model, x)
    layers = len(states)
    lags = max(s for _, s in pairs) + 1
    squares = [[[] for _ in range(lags)] for _ in range(layers)]
    for b, s in pairs:
        flat = [h for hs in states for h in hs[: s + 1]]
        grads = torch.autograd.grad(term(out, y, b, s, weight), flat, retain_graph=True)
        for layer in range(layers):
            for t in range(s + 1):
                g = grads[layer * (s + 1) + t][b]
                squares[layer][s - t].append(float(g.square().sum()))
    return np.array(
        [[0.5 * math.log10(np.mean(v)) if np.mean(v) > 0 else -math.inf for v in layer]
         for layer in squares]
    )  # fmt: skip


def make_model(cell: str, path: str, layers: int, dtype=torch.float64, seed: int = 0, **kw):
    torch.manual_seed(seed)
    model = SequenceModel(cell, input_size=3, output_size=2, hidden_size=7, num_layers=layers,
                          engine=path != "fused", **kw)  # fmt: skip
    return model.to(dtype)


@pytest.fixture
def on_path(request, monkeypatch):
    """Select the engine's native or torch kernels (the fused path needs neither)."""

    def select(path: str) -> None:
        monkeypatch.setenv("SEQBENCH_NATIVE", "0" if path == "torch" else "1")

    return select


def padded_batch(batch: int, steps: int, dtype, seed: int = 1) -> tuple[Batch, torch.Tensor]:
    """Sequences that end at different positions, each read once at its last real step."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(batch, steps, 3, generator=g, dtype=dtype)
    y = torch.randn(batch, steps, 2, generator=g, dtype=dtype)
    lengths = torch.tensor([steps, 3, steps - 2, 1, 5, steps - 1][:batch])
    sources = torch.arange(steps)[None, :] == (lengths[:, None] - 1)
    return Batch(x, y, lengths), sources


@pytest.mark.parametrize("layers", [1, 2])
@pytest.mark.parametrize("path", PATHS)
@pytest.mark.parametrize("cell", REFERENCE_CELLS)
def test_padded_batch_one_source_per_sequence(cell, path, layers, on_path):
    """Sequences that end at different positions, each read at its own last real step: the
    profile needs no probe (the training backward's rows), and equals the reference."""
    on_path(path)
    model = make_model(cell, path, layers)
    batch, sources = padded_batch(6, 9, torch.float64)
    profile = lag_norms(model, batch, sources, loss_at(sources, 0.5))
    pairs = [(b, int(batch.lengths[b]) - 1) for b in range(6)]
    reference = reference_profile(model, batch.x, batch.y, pairs, 0.5)
    assert profile.log10.shape == (layers, 9)
    np.testing.assert_allclose(profile.log10, reference, atol=1e-9)
    np.testing.assert_allclose(profile.norms, 10**reference, rtol=1e-8)
    expected_pairs = [sum(int(n) > k for n in batch.lengths) for k in range(9)]
    assert (profile.pairs == expected_pairs).all()  # the same count in every layer


@pytest.mark.parametrize("layers", [1, 2])
@pytest.mark.parametrize("path", PATHS)
@pytest.mark.parametrize("cell", REFERENCE_CELLS)
@pytest.mark.parametrize("where", ["every", "few", "two"])
def test_many_sources_per_sequence(cell, path, layers, where, on_path):
    """Losses read at every position, at a few, or at two at most (a row with two sources is
    the least that needs the probe): the probe (engine: one more backward over the saved
    forward; fused: autograd) gives each pair's own gradient; with room for every pair, the
    profile is the definition over all of them."""
    on_path(path)
    model = make_model(cell, path, layers, seed=3)
    g = torch.Generator().manual_seed(2)
    x = torch.randn(4, 8, 3, generator=g, dtype=torch.float64)
    y = torch.randn(4, 8, 2, generator=g, dtype=torch.float64)
    sources = torch.ones(4, 8, dtype=torch.bool)
    if where == "few":
        sources[:] = False
        sources[:, [2, 5, 7]] = True
        sources[1, 7] = False  # a row whose latest source is not the last step
    elif where == "two":
        sources[:] = False
        sources[:, [3, 7]] = True
        sources[2, 7] = False  # a row with one source among rows with two
    batch = Batch(x, y)
    profile = lag_norms(model, batch, sources, loss_at(sources, 0.25), pairs=1000)
    pairs = [(b, s) for b, s in sources.nonzero().tolist()]
    reference = reference_profile(model, x, y, pairs, 0.25)
    np.testing.assert_allclose(profile.log10, reference, atol=1e-9)
    expected = [sum(s >= k for _, s in pairs) for k in range(reference.shape[1])]
    assert (profile.pairs == expected).all()


@pytest.mark.parametrize("path", PATHS)
def test_probe_takes_the_latest_sources_first(path, on_path):
    """With fewer pairs than sources, the profile is that of the latest source of each row (then
    each row's second latest): checked against the reference over exactly those pairs."""
    on_path(path)
    model = make_model("lstm", path, 2, seed=4)
    g = torch.Generator().manual_seed(5)
    x = torch.randn(3, 10, 3, generator=g, dtype=torch.float64)
    y = torch.randn(3, 10, 2, generator=g, dtype=torch.float64)
    sources = torch.zeros(3, 10, dtype=torch.bool)
    sources[0, [1, 4, 9]] = True
    sources[1, [3, 6]] = True
    sources[2, [2, 8]] = True
    profile = lag_norms(model, Batch(x, y), sources, loss_at(sources, 1.0), pairs=5)
    chosen = [(0, 9), (1, 6), (2, 8), (0, 4), (1, 3)]  # latest per row, then second latest
    reference = reference_profile(model, x, y, chosen, 1.0)
    np.testing.assert_allclose(profile.log10, reference, atol=1e-9)


def test_the_probe_only_where_a_row_has_several_sources():
    """One source per row at most (some rows none) takes the training backward's own rows of
    norms, no probe; two sources in any row take the probe (the rows would hold the sum of
    both terms' gradients, not each term's)."""
    sources = torch.zeros(4, 6, dtype=torch.bool)
    sources[0, 5] = sources[2, 3] = sources[3, 0] = True
    assert one_source_per_row(sources)
    rec = GradNormRecorder()
    probe = LagProbe(rec, sources, 8, None, None)
    assert probe.single and rec.per_row and rec.probe is None
    assert probe.rows.tolist() == [0, 2, 3] and probe.positions.tolist() == [5, 3, 0]
    sources[1, [1, 4]] = True
    assert not one_source_per_row(sources)
    rec = GradNormRecorder()
    probe = LagProbe(rec, sources, 8, None, None)
    assert not probe.single and not rec.per_row
    assert [t.tolist() for t in rec.probe] == [[0, 1, 2, 3, 1], [5, 4, 3, 0, 1]]  # latest first


def test_select_pairs_rule():
    sources = torch.zeros(3, 6, dtype=torch.bool)
    sources[0, [0, 2, 5]] = True
    sources[2, [1, 4]] = True  # row 1 has none
    rows, positions = select_pairs(sources, 10)
    assert list(zip(rows.tolist(), positions.tolist(), strict=True)) == [
        (0, 5), (2, 4), (0, 2), (2, 1), (0, 0)
    ]  # fmt: skip
    rows, positions = select_pairs(sources, 2)
    assert rows.tolist() == [0, 2] and positions.tolist() == [5, 4]


@pytest.mark.parametrize("shape", [(7, 3), (3, 7), (12, 12)])
def test_select_pairs_rule_on_random_sources(shape):
    """The rule, against a plain sort of every (row, position) source by (how many sources the
    row has from that position on, row): batches wider and narrower than they are long."""
    g = torch.Generator().manual_seed(sum(shape))
    for _ in range(20):
        sources = torch.rand(*shape, generator=g) < 0.4
        every = [(b, s) for b, s in sources.nonzero().tolist()]
        rank = {(b, s): int(sources[b, s:].sum()) for b, s in every}
        expected = sorted(every, key=lambda pair: (rank[pair], pair[0]))
        for limit in (len(every), 5, 1):
            rows, positions = select_pairs(sources, limit)
            got = list(zip(rows.tolist(), positions.tolist(), strict=True))
            assert got == expected[:limit]


def bidirectional_reference(
    model: SequenceModel,
    batch: Batch,
    lengths: torch.Tensor,
    pairs: list[tuple[int, int]],
    weight: float,
) -> tuple[np.ndarray, np.ndarray]:
    """(2L, K) log10 RMS over `pairs` (b, s) of ||d term(b, s) / d h||, and (2L, K) how many
    pairs reach each lag: each sequence run alone and unpadded through torch's own cells in
    float64. A bidirectional head reads, at step s, the forward state at s and the backward
    direction's final state. Entries per layer: forward (lag k: the state k steps before s),
    backward (lag k: the state k steps before its final one, in its own processing order,
    whatever s is)."""
    rnn, spec = model.rnn, CELLS[model.cell]
    hidden, layers, steps = rnn.hidden_size, rnn.num_layers, batch.x.shape[1]
    squares = [[[] for _ in range(steps)] for _ in range(2 * layers)]
    head = torch.nn.Linear(2 * hidden, model.head.out_features).double()
    head.load_state_dict({k: v.double() for k, v in model.head.state_dict().items()})
    for b, length in enumerate(lengths.tolist()):
        seq = [batch.x[b : b + 1, t].double() for t in range(length)]
        entries = []  # each direction's states in its processing order
        for layer in range(layers):
            at = []  # each direction's state after reading step t
            for suffix, order in (("", range(length)), ("_reverse", range(length - 1, -1, -1))):
                cell = reference_cell(model, layer, seq[0].shape[1], suffix)
                h = torch.zeros(1, hidden, dtype=torch.float64)
                c = torch.zeros_like(h)
                states = {}
                for t in order:
                    h, c = cell(seq[t], (h, c)) if spec.cell_state else (cell(seq[t], h), c)
                    states[t] = h
                entries.append([states[t] for t in order])
                at.append(states)
            seq = [torch.cat([at[0][t], at[1][t]], dim=1) for t in range(length)]
        flat = [h for states in entries for h in states]
        for s in [s for row, s in pairs if row == b]:
            out = head(torch.cat([at[0][s], at[1][0]], dim=1))
            value = weight * ((out - batch.y[b : b + 1, s]) ** 2).sum()
            grads = torch.autograd.grad(value, flat, retain_graph=True, allow_unused=True)
            for entry in range(2 * layers):
                start = s if entry % 2 == 0 else length - 1  # where this entry's lags begin
                for p in range(start + 1):  # processing step p is lag start - p
                    g = grads[entry * length + p]
                    squares[entry][start - p].append(float(g.square().sum()))
    logs = np.array(
        [[0.5 * math.log10(np.mean(v)) if v and np.mean(v) > 0 else -math.inf for v in entry]
         for entry in squares]
    )  # fmt: skip
    return logs, np.array([[len(v) for v in entry] for entry in squares])


@pytest.mark.parametrize("layers", [1, 2])
@pytest.mark.parametrize("cell", REFERENCE_CELLS)
@pytest.mark.parametrize("read", ["last", "every"])
@pytest.mark.parametrize("padded", [True, False])
def test_bidirectional_batch(cell, layers, read, padded):
    """A bidirectional model on a padded batch (sentiment) or a batch of full-length sequences
    (stocks), read at each sequence's last real step (sentiment's `readout: last`, stocks) or
    at every real step (`readout: mean`): both directions' entries, and how many pairs reach
    each lag, equal the reference that runs every sequence alone, unpadded. Fails if the
    lengths are lost on the way (the backward direction would start at the padding) or a
    direction's lags are counted from the wrong step."""
    model = make_model(cell, "fused", layers, bidirectional=True)
    batch, _ = padded_batch(6, 9, torch.float64)
    if not padded:
        batch = Batch(batch.x, batch.y)
    lengths = batch.lengths if padded else torch.full((6,), 9)
    steps = torch.arange(9)[None, :]
    sources = steps == lengths[:, None] - 1 if read == "last" else steps < lengths[:, None]
    profile = lag_norms(model, batch, sources, loss_at(sources, 0.5), pairs=1000)
    pairs = [(b, s) for b, s in sources.nonzero().tolist()]
    reference, reached = bidirectional_reference(model, batch, lengths, pairs, 0.5)
    assert profile.log10.shape == (2 * layers, 9)
    np.testing.assert_allclose(profile.log10, reference, atol=1e-9)
    assert (profile.pairs == reached).all()


def decimal_rms_log10(values: list[float]) -> float:
    """log10 of the RMS of 10**v over `values` (log10 norms; -inf: a zero gradient), in
    decimal arithmetic, whose exponent range float64's 10**(2 v) would leave."""
    if not values:
        return -math.inf
    with decimal.localcontext() as ctx:
        ctx.prec = 40
        total = sum(
            (decimal.Decimal(10) ** (2 * decimal.Decimal(v)) for v in values if v != -math.inf),
            decimal.Decimal(0),
        )
        if total == 0:
            return -math.inf
        return float((total / len(values)).log10() / 2)


def test_align_by_lag_over_hundreds_of_orders_of_magnitude():
    """The RMS by lag (align) of a gradient vanishing by about 60 orders of magnitude a step, down
    to 1e-700, against decimal arithmetic: each lag exact, including the lags whose squared
    norms are hundreds of orders below another lag's (each lag is combined on its own scale);
    a zero gradient, a lag whose every pair has none, lags that no pair reaches, and a probe
    with no pairs at all."""
    rng = np.random.default_rng(11)
    entries, steps, pairs = 2, 12, 5
    source = torch.as_tensor(rng.integers(0, steps, size=(entries, pairs)))
    source[0, 0] = steps - 1  # entry 0: every lag is reached
    source[1] = torch.tensor([5, 2, 2, 1, 0])  # entry 1: lags 6 and on are reached by no pair
    t = np.arange(steps)[None, :, None]
    logs = -60.0 * (source.numpy()[:, None, :] - t) + rng.uniform(-3, 3, (entries, steps, pairs))
    logs[0, 4, 2] = -math.inf  # a pair whose gradient is exactly zero at step 4
    for r, s in enumerate(source[0].tolist()):  # lag 1 of entry 0: no gradient at all
        if s >= 1:
            logs[0, s - 1, r] = -math.inf
    profile = align(torch.as_tensor(logs), source)
    assert profile.log10.shape == profile.norms.shape == profile.pairs.shape == (entries, steps)
    for e in range(entries):
        for k in range(steps):  # the longest lag: entry 0's source at the last step
            values = [logs[e, s - k, r] for r, s in enumerate(source[e].tolist()) if s >= k]
            assert profile.pairs[e, k] == len(values)
            expected = decimal_rms_log10(values)
            assert profile.log10[e, k] == pytest.approx(expected, abs=1e-9), (e, k)
            if expected < -308:  # below float64's smallest normal number: 0
                assert profile.norms[e, k] == 0.0
            elif expected > -307:
                assert profile.norms[e, k] == pytest.approx(10.0**expected, rel=1e-8)
    assert profile.log10[0, 1] == profile.log10[1, -1] == -math.inf  # none of the pairs is finite
    assert np.isfinite(profile.log10[0, 2:]).all()
    assert profile.log10[0].min() < -600  # far below float64's range, and still exact
    assert profile.pairs.dtype == np.int64
    empty = align(
        torch.empty(1, steps, 0, dtype=torch.float64), torch.empty(1, 0, dtype=torch.long)
    )
    assert empty.pairs.tolist() == [[0]] and empty.norms.tolist() == [[0.0]]
    assert empty.log10.tolist() == [[-math.inf]]


@pytest.mark.parametrize("path", ["native", "torch"])
def test_log10_exact_where_float32_underflows(path, on_path):
    """A tanh RNN whose gradient falls by ~30 orders of magnitude: in float32 the engine's
    log10 by lag matches the float64 reference at lags where the norm is far below float32's
    smallest normal number (1.2e-38), where a float32 gradient would be 0."""
    on_path(path)
    model = make_model("rnn", path, 1, dtype=torch.float32, seed=6, init="orthogonal",
                       recurrent_gain=0.05)  # fmt: skip
    steps = 40
    g = torch.Generator().manual_seed(7)
    x = torch.randn(3, steps, 3, generator=g)
    y = torch.randn(3, steps, 2, generator=g)
    sources = torch.zeros(3, steps, dtype=torch.bool)
    sources[:, -1] = True
    profile = lag_norms(model, Batch(x, y), sources, loss_at(sources, 1.0))
    pairs = [(b, steps - 1) for b in range(3)]
    reference = reference_profile(model, x.double(), y.double(), pairs, 1.0)
    tiny = math.log10(torch.finfo(torch.float32).tiny)
    assert reference[0, -1] < tiny - 10  # the far lags are far below float32's range
    np.testing.assert_allclose(profile.log10, reference, atol=2e-3)


def test_unrolled_probe_leaves_the_training_gradient_alone():
    """The fused path's probe runs before the training backward on the same graph: the
    per-timestep norms and the parameter gradients are those of a step without it."""
    results = []
    for with_probe in (False, True):
        model = make_model("gru", "fused", 2, seed=8)
        g = torch.Generator().manual_seed(9)
        x = torch.randn(4, 6, 3, generator=g, dtype=torch.float64)
        y = torch.randn(4, 6, 2, generator=g, dtype=torch.float64)
        sources = torch.ones(4, 6, dtype=torch.bool)
        out, states = model(x, record_states=True)
        loss = loss_at(sources, 1.0)(out, Batch(x, y))
        if with_probe:
            from seqbench.lags import LagProbe

            LagProbe(states, sources, 8, out, loss)
        loss.backward()
        norms = [[h.grad.norm().item() for h in hs] for hs in states]
        results.append((norms, [p.grad.clone() for p in model.parameters()]))
    assert results[0][0] == results[1][0]
    for a, b in zip(results[0][1], results[1][1], strict=True):
        assert torch.equal(a, b)


def test_lag_norms_keeps_the_callers_gradients():
    model = make_model("lstm", "native", 1)
    for p in model.parameters():
        p.grad = torch.full_like(p, 3.0)
    batch, sources = padded_batch(6, 9, torch.float64)
    lag_norms(model, batch, sources, loss_at(sources, 1.0))
    assert all(torch.equal(p.grad, torch.full_like(p, 3.0)) for p in model.parameters())


def test_summarize_lags_counts_the_lags_more_than_half_the_pairs_reach():
    """pairs 8, 8, 5, 4, 1: lags 0..2 (5 > 4) count, lag 3 (4 = half) does not."""
    logs = np.array([0.0, -1.0, -2.0, -3.0, -4.0])
    pairs = np.array([8, 8, 5, 4, 1])
    assert LAG_PAIRS_FRACTION == 0.5
    s = summarize_lags(logs, pairs)
    assert s.max_lag == 2 and s.pairs == 8
    assert s.vanishing_ratio == pytest.approx(-2.0)
    assert s.growth_rate == pytest.approx(0.1)  # a decade per step back
    assert s.memory_horizon == 3 and not s.exploding  # never below 1e-3 within lags 0..2
    growing = summarize_lags(np.array([0.0, 0.5, 1.2]), np.array([4, 4, 4]), explode_factor=10)
    assert growing.exploding and growing.vanishing_ratio == pytest.approx(1.2)
    underflow = summarize_lags(np.array([-300.0, -350.0, -400.0]), np.array([2, 2, 2]))
    assert underflow.vanishing_ratio == pytest.approx(-100.0)  # exact where 10**x is 0
    assert underflow.memory_horizon == 1


def test_padded_verdict_is_not_the_absolute_position_one():
    """On a padded batch the per-timestep norm at t = T comes from the few sequences that reach
    T, so it grows going back and looks exploding; the lag verdict follows each sequence from
    its own readout and sees the tanh RNN's gradient vanish."""
    model = make_model("rnn", "native", 1, seed=10)
    g = torch.Generator().manual_seed(11)
    steps = 30
    lengths = torch.tensor([30] + [6] * 255)
    x = torch.randn(256, steps, 3, generator=g, dtype=torch.float64)
    y = torch.randn(256, steps, 2, generator=g, dtype=torch.float64)
    sources = torch.arange(steps)[None, :] == (lengths[:, None] - 1)
    batch = Batch(x, y, lengths)
    out, recorder = model(x, record_states=True, lengths=lengths)
    loss_at(sources, 1.0)(out, batch).backward()
    absolute = summarize(recorder.norms[0].numpy(), 10.0, (lengths[None, :] > torch.arange(
        steps)[:, None]).sum(1).numpy())  # fmt: skip
    profile = lag_norms(model, batch, sources, loss_at(sources, 1.0))
    by_lag = summarize_lags(profile.log10[0], profile.pairs[0])
    assert absolute.exploding  # the shape of the loss: 255 sequences end at t=6, one at T
    assert not by_lag.exploding and by_lag.vanishing_ratio < 0
    assert by_lag.max_lag == 5  # lags 0..5 are reached by all 256 pairs, lag 6 by one


# The issue's table (#26): at initialisation with the defaults, seed 0, batch 64, each
# (task, cell)'s verdicts by lag, computed there from one loss term per sequence by autograd:
# (vanishing ratio, over lags 0..max_lag, growth per step back, memory horizon).
ISSUE_TABLE = {
    ("sentiment", "rnn"): (-6.2, 18, 0.45, 9),
    ("sentiment", "lstm"): (-2.7, 18, 0.77, 19),
    ("sentiment", "gru"): (-3.9, 18, 0.62, 14),
    ("chargen", "rnn"): (-31.7, 99, 0.48, 10),
    ("chargen", "lstm"): (-9.1, 99, 0.83, 24),
    ("chargen", "gru"): (-19.8, 99, 0.63, 14),
}


@pytest.mark.parametrize(("task", "cell"), list(ISSUE_TABLE))
def test_defaults_at_init_reproduce_the_issue_table(task, cell, tmp_path):
    """The product's snapshot at step 0 (the first training batch of seed 0) gives the
    issue's numbers, which came from its own autograd computation."""
    from seqbench.hardware import seed_everything
    from seqbench.job import build_job
    from seqbench.train import measure_grad_norms
    from tests.conftest import compose_config

    cfg = compose_config([f"task={task}", f"model={cell}", "hardware=cpu"])
    seed_everything(0)
    job = build_job(cfg, tmp_path, torch.device("cpu"))
    snap = measure_grad_norms(job.model, job.task, 64)
    s = summarize_lags(snap.lags.log10[0], snap.lags.pairs[0])
    ratio, lag, growth, horizon = ISSUE_TABLE[(task, cell)]
    assert s.vanishing_ratio == pytest.approx(ratio, abs=0.05)
    assert (s.max_lag, s.memory_horizon) == (lag, horizon)
    assert s.growth_rate == pytest.approx(growth, abs=0.005)
    assert s.pairs == 64 and not s.exploding


def test_a_padded_run_reports_its_verdicts_by_lag(tmp_path):
    """metrics.json, the comparison and the run's summary take the vanishing and exploding
    verdicts from the lag profile: on sentiment the per-timestep norm says the tanh RNN's
    gradient grows going back (the few long reviews) and reaches all 52 steps; by lag it
    vanishes within 9 (the issue's numbers). Fails if they go back to absolute positions."""
    from seqbench.compare import load_runs
    from seqbench.loggers.tensorboard import summary_markdown
    from tests.conftest import run_small

    metrics = run_small(
        tmp_path / "run", "task=sentiment", "model=rnn", "train.steps=1", "train.eval_every=1",
        "inference.compare=false", "log.tensorboard=false",
        base=["hardware=cpu", "log.progress=none"],
    )  # fmt: skip
    per_step = metrics["grad_norms"]["init"]["layers"][0]
    by_lag = metrics["lag_norms"]["init"]["layers"][0]
    assert per_step["growth_rate"] > 1 and per_step["memory_horizon"] == 52
    assert by_lag["growth_rate"] == pytest.approx(0.45, abs=0.005)
    assert (by_lag["memory_horizon"], by_lag["exploding"]) == (9, False)
    row = load_runs([tmp_path / "run"]).iloc[0]
    assert (row["init_memory_horizon"], row["exploding"]) == (9, False)
    assert row["init_vanishing_ratio"] == pytest.approx(by_lag["vanishing_ratio"])
    assert "horizon 9 lags" in summary_markdown(metrics)
    frame = np.genfromtxt(tmp_path / "run" / "lag_norms.csv", delimiter=",", names=True)
    first = frame[(frame["step"] == 0) & (frame["layer"] == 0)]
    assert list(first["lag"][:3]) == [0, 1, 2] and first["pairs"][0] == 64
    assert first["log10_norm"][18] - first["log10_norm"][0] == pytest.approx(
        by_lag["vanishing_ratio"]
    )
