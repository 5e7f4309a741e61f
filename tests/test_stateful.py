"""Stateful truncated BPTT: the engine from an initial state to a final state (against PyTorch's
layers given the same h0/c0, and against every cell's own step equations), two windows carried
one into the other against one long window, the same through the model on each of its paths;
then the stateful training walk (`task.stateful=true`): its layout, its training and scoring,
its refusals, and an interrupted run resumed mid-stream to the same bits."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch

from seqbench import model as model_module
from seqbench.cells import CELLS, get_cell
from seqbench.checks import check_config
from seqbench.engine import GradNormRecorder, recurrent, slices
from seqbench.errors import ConfigError
from seqbench.model import ReferenceStack, SequenceModel
from seqbench.tasks import build_task
from seqbench.tasks.chargen import EVAL_STREAMS
from seqbench.tasks.streams import StreamWalk
from seqbench.train import Clip, train
from tests.conftest import ENGINE_CELLS, SMALL, compose_config
from tests.conftest import fused_layer as make

ENGINE = sorted(name for name, c in CELLS.items() if c.engine is not None)
PATHS = {"native": {"SEQBENCH_NATIVE": "1"}, "python loop": {"SEQBENCH_NATIVE_LOOP": "0"},
         "torch": {"SEQBENCH_NATIVE": "0"}}  # fmt: skip
TOLERANCE = {torch.float64: 1e-10, torch.float32: 1e-5}  # relative to each tensor's scale


def on_path(monkeypatch, path: str) -> None:
    for key, value in PATHS[path].items():
        monkeypatch.setenv(key, value)


def assert_rel(a: torch.Tensor, b: torch.Tensor, rtol: float, what: str) -> None:
    """max|a - b| <= rtol * max|b|."""
    assert a.shape == b.shape, what
    err, scale = (a - b).abs().max().item(), b.abs().max().item()
    assert err <= rtol * max(scale, 1e-300), f"{what}: max err {err:.3g}, scale {scale:.3g}"


def initial_state(cell: str, layers: int, batch: int, hidden: int, dtype, seed: int = 4):
    """A random (h0, c0) (c0 None for a cell without a cell state), requiring gradients."""
    g = torch.Generator().manual_seed(seed)
    h0 = torch.randn(layers, batch, hidden, generator=g, dtype=dtype).requires_grad_()
    c0 = None
    if get_cell(cell).cell_state:
        c0 = torch.randn(layers, batch, hidden, generator=g, dtype=dtype).requires_grad_()
    return h0, c0


def detached(final):
    """A final state (h, or (h, c)) cut from its graph: what a stateful loop carries."""
    return tuple(s.detach() for s in final) if isinstance(final, tuple) else final.detach()


def as_h0_c0(final) -> dict:
    """A final state as the next window's h0 (and c0) keywords."""
    return {"h0": final[0], "c0": final[1]} if isinstance(final, tuple) else {"h0": final}


def loss_of(out, final, probe, outputs: bool = True):
    """A loss that reads every part of the final state and (`outputs`) the outputs, with random
    weights."""
    h_n, c_n = final if isinstance(final, tuple) else (final, None)
    loss = (h_n * probe[1]).sum() + ((out * probe[0]).sum() if outputs else 0.0)
    return loss if c_n is None else loss + (c_n * probe[2]).sum()


@pytest.mark.parametrize("reads", ["outputs and state", "state"])
@pytest.mark.parametrize("path", list(PATHS))
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("layers", [1, 2])
@pytest.mark.parametrize("cell", ENGINE_CELLS)
def test_engine_from_a_state_is_pytorchs_layer(cell, layers, dtype, path, reads, monkeypatch):
    """recurrent(h0=, c0=, return_state=True) against nn.RNN/LSTM/GRU given the same state:
    the outputs, the final state, and the gradients of x, h0, c0 and every weight of a loss
    that reads the outputs and the final state, or the final state alone."""
    on_path(monkeypatch, path)
    B, T, n_in, H = 3, 7, 2, 4
    mod = make(cell, n_in, H, layers, dtype=dtype)
    x = torch.randn(B, T, n_in, dtype=dtype, requires_grad=True)
    h0, c0 = initial_state(cell, layers, B, H, dtype)
    state = h0 if c0 is None else (h0, c0)
    probe = [torch.randn(B, T, H, dtype=dtype), *torch.randn(2, layers, B, H, dtype=dtype)]
    inputs = [x, *(s for s in (h0, c0) if s is not None), *mod._flat_weights]

    ref_out, ref_final = mod(x, state)
    outputs = reads != "state"
    ref = torch.autograd.grad(loss_of(ref_out, ref_final, probe, outputs), inputs)
    out, final = recurrent(cell, x, list(mod._flat_weights), num_layers=layers, hidden_size=H,
                           h0=h0, c0=c0, return_state=True)  # fmt: skip
    got = torch.autograd.grad(loss_of(out, final, probe, outputs), inputs)

    rtol = TOLERANCE[dtype]
    assert_rel(out, ref_out, rtol, "output")
    for name, a in as_h0_c0(final).items():
        assert_rel(a, as_h0_c0(ref_final)[name], rtol, f"final state ({name} of the next window)")
    names = ["x", "h0", *(["c0"] if c0 is not None else []), *mod._flat_weights_names]
    for name, a, b in zip(names, got, ref, strict=True):
        assert_rel(a, b, rtol, name)


def stack_of(cell: str, n_in: int, hidden: int, layers: int, dtype=torch.float64):
    """The cell's own parameters (seeded), and them flat in the engine's order."""
    torch.manual_seed(7)
    stack = ReferenceStack(get_cell(cell), n_in, hidden, layers).to(dtype)
    flat = [getattr(stack, f"{name}_l{layer}") for layer in range(layers)
            for name in stack.cell.parameter_names]  # fmt: skip
    return stack, flat


def layer_weights(stack: ReferenceStack, layer: int) -> tuple:
    return tuple(getattr(stack, f"{k}_l{layer}", None)
                 for k in ("weight_ih", "weight_hh", "bias_ih", "bias_hh"))  # fmt: skip


def reference(stack: ReferenceStack, x, lengths, h0, c0):
    """Each sequence on its own through the cell's step equations (``Cell.unroll``) over its
    real steps, from its initial state: the outputs (zero at padding), the final states
    (L, B, H) and every h_t (per sequence, per layer, per step)."""
    spec, layers = stack.cell, stack.num_layers
    B, T, _ = x.shape
    outs, h_n, c_n, states = [], [], [], []
    for b in range(B):
        seq, finals, hs_b = x[b : b + 1, : lengths[b]], [], []
        for layer in range(layers):
            start = (h0[layer, b : b + 1], None if c0 is None else c0[layer, b : b + 1])
            final = []
            hs = spec.unroll(seq, layer_weights(stack, layer), state=start, final=final)
            hs_b.append(hs)
            finals.append(final)
            seq = torch.stack(hs, 1) if hs else seq.new_zeros(1, 0, h0.shape[2])
        pad = x.new_zeros(1, T - int(lengths[b]), h0.shape[2])
        outs.append(torch.cat([seq, pad], 1))
        h_n.append(torch.cat([h for h, _ in finals]))
        c_n.append(torch.cat([c for _, c in finals]))
        states.append(hs_b)
    return torch.cat(outs), torch.stack(h_n, 1), torch.stack(c_n, 1), states


@pytest.mark.parametrize("path", list(PATHS))
@pytest.mark.parametrize("layers", [1, 2])
@pytest.mark.parametrize("cell", ENGINE)
def test_engine_from_a_state_is_the_cells_own_equations(cell, layers, path, monkeypatch):
    """Every engine cell from a random initial state, sequences padded to different lengths
    (one of length 0: its final state is its initial one), a loss on the outputs and the final
    state: the outputs, the final state (each sequence's after its last real step), the
    gradients of x, h0, c0 and every weight, and the per-timestep norms, against autograd
    through the cell's own step equations run on each sequence alone."""
    on_path(monkeypatch, path)
    spec = get_cell(cell)
    B, T, n_in, H = 4, 6, 3, 5
    stack, flat = stack_of(cell, n_in, H, layers)
    g = torch.Generator().manual_seed(1)
    x = torch.randn(B, T, n_in, generator=g, dtype=torch.float64, requires_grad=True)
    lengths = torch.tensor([T, 3, 0, 5])
    h0, c0 = initial_state(cell, layers, B, H, torch.float64)
    probe = [torch.randn(B, T, H, generator=g, dtype=torch.float64),
             *torch.randn(2, layers, B, H, generator=g, dtype=torch.float64)]  # fmt: skip
    probe[0] *= (torch.arange(T)[None, :] < lengths[:, None])[..., None]
    inputs = [x, h0, *([c0] if c0 is not None else []), *flat]

    recorder = GradNormRecorder()
    out, final = recurrent(spec, x, flat, num_layers=layers, hidden_size=H, lengths=lengths,
                           recorder=recorder, h0=h0, c0=c0, return_state=True)  # fmt: skip
    got = torch.autograd.grad(loss_of(out, final, probe), inputs)

    ref_out, ref_h, ref_c, states = reference(stack, x, lengths, h0, c0)
    ref_final = (ref_h, ref_c) if c0 is not None else ref_h
    kept = [(layer, t, h) for per_layer in states for layer, hs in enumerate(per_layer)
            for t, h in enumerate(hs)]  # fmt: skip
    ref = torch.autograd.grad(loss_of(ref_out, ref_final, probe),
                              [*inputs, *(h for _, _, h in kept)])  # fmt: skip
    torch.testing.assert_close(out, ref_out, rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(final, ref_final, rtol=1e-10, atol=1e-12)
    names = ["x", "h0", *(["c0"] if c0 is not None else []), *(f"param {i}" for i in flat)]
    for name, a, b in zip(names, got, ref[: len(inputs)], strict=True):
        torch.testing.assert_close(a, b, rtol=1e-9, atol=1e-12, msg=name)
    # ||dL/dh_t|| over the sequences real at t, from each h_t's gradient in the reference
    norms = torch.zeros(layers, T, dtype=torch.float64)
    for (layer, t, _), grad in zip(kept, ref[len(inputs) :], strict=True):
        norms[layer, t] += grad.square().sum()
    torch.testing.assert_close(recorder.norms, norms.sqrt(), rtol=1e-9, atol=1e-14)


@pytest.mark.parametrize("path", list(PATHS))
@pytest.mark.parametrize("layers", [1, 2])
@pytest.mark.parametrize("cell", ENGINE)
def test_two_windows_carried_are_one_long_window(cell, layers, path, monkeypatch):
    """Forward, the second window started from the first one's final state is the long
    window's second part, bit for bit (outputs and final state). Backward, with the state
    detached between the windows (truncated BPTT), the second window's per-timestep norms are
    the long window's at those steps for the same loss on its second part: the norms are
    those of the window."""
    on_path(monkeypatch, path)
    B, T1, T2, n_in, H = 3, 5, 4, 2, 4
    _, flat = stack_of(cell, n_in, H, layers, dtype=torch.float32)
    g = torch.Generator().manual_seed(6)
    x = torch.randn(B, T1 + T2, n_in, generator=g)
    upstream = torch.randn(B, T2, H, generator=g)
    kw = dict(num_layers=layers, hidden_size=H, return_state=True)
    spec = get_cell(cell)

    long_recorder = GradNormRecorder()
    long_out, long_final = recurrent(spec, x, flat, recorder=long_recorder, **kw)
    (long_out[:, T1:] * upstream).sum().backward()
    first_out, first_final = recurrent(spec, x[:, :T1], flat, **kw)
    recorder = GradNormRecorder()
    second_out, second_final = recurrent(spec, x[:, T1:], flat, recorder=recorder,
                                         **as_h0_c0(detached(first_final)), **kw)  # fmt: skip
    (second_out * upstream).sum().backward()

    assert torch.equal(long_out[:, :T1], first_out) and torch.equal(long_out[:, T1:], second_out)
    for a, b in zip(as_h0_c0(long_final).values(), as_h0_c0(second_final).values(), strict=True):
        assert torch.equal(a, b)
    torch.testing.assert_close(recorder.norms, long_recorder.norms[:, T1:], rtol=1e-6, atol=0)
    assert (long_recorder.norms[:, :T1] > 0).any()  # the long window's gradient goes on back


# ------------------------------------------------------------------ the model, on each path


@pytest.mark.parametrize("cell", sorted(CELLS))
def test_the_model_carries_a_state_the_same_on_every_path(cell):
    """SequenceModel(state=..., return_state=True): the engine (when the cell has kernels), the
    fused layer (when there is one) and the unrolled reference equations give the same outputs
    and final state from the same initial state, and that state matters."""
    torch.manual_seed(0)
    model = SequenceModel(cell, 3, 2, hidden_size=5, num_layers=2).double()
    x = torch.randn(4, 6, 3, dtype=torch.float64)
    h0, c0 = initial_state(cell, 2, 4, 5, torch.float64)
    state = (h0.detach(), c0.detach()) if c0 is not None else h0.detach()

    def paths():
        yield "unrolled", model(x, record_states=True, state=state, return_state=True)
        if get_cell(cell).fused is not None:
            yield "fused", model(x, state=state, return_state=True)
        if get_cell(cell).engine is not None:
            model.engine = True
            yield "engine", model(x, state=state, return_state=True)
            model.engine = False

    results = dict(paths())
    (_, (ref_out, _, ref_final)), *others = results.items()
    for name, (out, _, final) in others:
        torch.testing.assert_close(out, ref_out, rtol=1e-10, atol=1e-12, msg=name)
        torch.testing.assert_close(final, ref_final, rtol=1e-10, atol=1e-12, msg=name)
    assert not torch.allclose(model(x)[0], ref_out)  # from zero, not the same
    with pytest.raises(ValueError, match="unidirectional"):
        model(x, lengths=torch.tensor([6, 6, 6, 6]), return_state=True)


@pytest.mark.parametrize("cell", ENGINE)
def test_without_gradients_the_engine_runs_in_slices(cell, monkeypatch):
    """A forward without gradients (validation) runs on the engine, in slices of EVAL_SLICE
    sequences: outputs and final state equal one call over the whole batch and the cell's
    reference equations within float64 rounding (BLAS may round a product of 4 rows and one
    of 11 differently)."""
    torch.manual_seed(0)
    model = SequenceModel(cell, 3, 2, hidden_size=5, num_layers=2, engine=True).double().eval()
    x = torch.randn(11, 6, 3, dtype=torch.float64)
    h0, c0 = initial_state(cell, 2, 11, 5, torch.float64)
    state = (h0.detach(), c0.detach()) if c0 is not None else h0.detach()
    calls = []
    real = model_module.recurrent

    def counted(*args, **kw):
        calls.append(kw["x"].shape[0])
        return real(*args, **kw)

    monkeypatch.setattr(model_module, "recurrent", counted)

    def run(slice_size):
        monkeypatch.setattr(slices, "EVAL_SLICE", slice_size)
        with torch.no_grad():
            out, _, final = model(x, state=state, return_state=True)
        return out, torch.cat(final) if isinstance(final, tuple) else final

    sliced, whole = run(4), run(100)
    assert calls == [4, 4, 3, 11]
    for a, b in zip(sliced, whole, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-14)
    out, _, final = model(x, record_states=True, state=state, return_state=True)  # unrolled
    final = torch.cat(final) if isinstance(final, tuple) else final
    torch.testing.assert_close(sliced[0], out.detach(), rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(sliced[1], final.detach(), rtol=1e-10, atol=1e-12)


# ------------------------------------------------------------------ the stateful walk

CPU = torch.device("cpu")
TEXT = "The quick brown fox jumps over the lazy dog. " * 10  # 450 characters
TINY = ["task.seq_len=8", "task.stateful=true", "task.sample_len=5"]  # chargen on TEXT


@pytest.fixture
def text(tmp_path) -> Path:
    path = tmp_path / "text.txt"
    path.write_text(TEXT)
    return path


def stream_task(*overrides: str, batch_size: int = 4):
    """A stream task built as a run builds it, its training split laid out for `batch_size`."""
    cfg = compose_config([*overrides, f"train.batch_size={batch_size}"])
    check_config(cfg)
    task = build_task(cfg.task, CPU, seed=0)
    task.stream.layout(batch_size)
    return task


def test_the_walk_is_contiguous_streams_that_start_over_from_zero():
    """StreamWalk, its docstring's example: 10 items as 2 streams of 5, windows of 2: rows
    [0 1] [5 6], then [2 3] [7 8], then (no whole window left) [0 1] [5 6] again, with the
    carried state reset to zero; a window's final state is carried detached. Streams shorter
    than two windows (no state would ever be carried) are refused, naming the keys to change."""
    walk = StreamWalk(10, 2, "items", info := {})
    states = []
    for _ in range(5):
        rows = walk.next(2, CPU)
        states.append(walk.state)
        walk.carry(torch.full((1,), float(rows[0, 0])).requires_grad_())
        assert not walk.state.requires_grad
        states[-1] = (rows.tolist(), None if states[-1] is None else states[-1].item())
    assert states == [([[0, 1], [5, 6]], None), ([[2, 3], [7, 8]], 0.0),
                      ([[0, 1], [5, 6]], None), ([[2, 3], [7, 8]], 0.0),
                      ([[0, 1], [5, 6]], None)]  # fmt: skip
    assert info["streams"] == {"streams": 2, "items_per_stream": 5, "windows_per_pass": 2}
    with pytest.raises(ConfigError, match=r"train\.batch_size=3 streams of 3, fewer than two "
                       r"windows of task\.seq_len=4, .*; use train\.batch_size=1 or fewer, or a "
                       r"smaller task\.seq_len\.$"):  # fmt: skip
        StreamWalk(10, 4, "items", {}).layout(3)
    with pytest.raises(ConfigError, match=r"streams of 10, .*; use a smaller task\.seq_len\.$"):
        StreamWalk(10, 6, "items", {}).layout(1)  # no number of streams holds two windows
    # one window per stream: nothing would ever be carried; 1 stream holds two
    with pytest.raises(
        ConfigError,
        match=r"streams of 5, fewer than two windows of task\."
        r"seq_len=5, so no state would be carried.*train\.batch_size=1 or fewer",
    ):
        StreamWalk(10, 5, "items", {}).layout(2)
    StreamWalk(10, 5, "items", {}).layout(1)


def test_chargen_batches_are_the_next_window_of_each_stream(text):
    """task=chargen task.stateful=true: row b of step k is characters [b*span + k*T, ... + T)
    of the training split, its targets the characters after them; after the last whole window
    the first again, from a zero state; the batch brings its streams' carried state."""
    task = stream_task("task=chargen", f"task.path={text}", *TINY)
    train, T, span = task.data["train"], 8, (len(task.data["train"]) - 1) // 4
    windows = span // T
    assert task.info["stateful"] and task.info["streams"]["characters_per_stream"] == span
    for step in range(windows + 2):
        batch = task.sample(4)
        k = step % windows
        for b in range(4):
            first = b * span + k * T
            assert torch.equal(batch.x[b], train[first : first + T])
            assert torch.equal(batch.y[b], train[first + 1 : first + T + 1])
        assert (batch.state is None) == (k == 0)
        batch.carry(torch.full((1, 4, 2), float(step)))
        assert batch.state is None or batch.state[0, 0, 0] == step - 1


def test_stocks_batches_are_consecutive_days_with_a_target_on_each(text):
    """task=stocks task.stateful=true: row b of a step is the standardized returns of
    consecutive training days, from day 1 on, each with its next-day target; the loss reads
    every step and the lag profile follows every step back."""
    task = stream_task("task=stocks", "task.seq_len=5", "task.stateful=true")
    days, span = task.stream_days, len(task.stream_days) // 4
    assert int(days[0]) == 1 and task.stream.windows == span // 5
    task.sample(4)
    batch = task.sample(4)  # the second window
    for b in range(4):
        window = days[b * span + 5 : b * span + 10]
        assert torch.equal(window, torch.arange(int(window[0]), int(window[0]) + 5))
        assert torch.equal(batch.x[b, :, 0], task.returns[window])
        assert torch.equal(batch.y[b], task.day_targets[window])
    assert task.sources(batch).all() and task.sources(batch).shape == (4, 5)
    output = torch.zeros(4, 5, 1)
    expected = ((batch.y - task.target_mean) / task.target_std).square().mean()
    torch.testing.assert_close(task.loss(output, batch), expected)


def test_training_carries_the_state_from_window_to_window(text, monkeypatch):
    """The training loop (seqbench.train.train) on stateful chargen: each step's forward starts
    from the previous step's final state, detached (the gradient stays in the window), and from
    zero at the start of every pass over the streams."""
    task = stream_task("task=chargen", f"task.path={text}", *TINY)
    torch.manual_seed(0)
    model = SequenceModel("lstm", 1, task.output_size, hidden_size=6, vocab_size=task.vocab_size,
                          embedding_dim=4, engine=True)  # fmt: skip
    calls, forward = [], model.forward

    def spy(x, **kw):
        result = forward(x, **kw)
        if model.training:  # not the validation's walk
            calls.append((kw.get("state"), result[2]))
        return result

    monkeypatch.setattr(model, "forward", spy)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
    steps = task.stream.windows + 2
    train(model, task, optimizer, steps=steps, batch_size=4, eval_every=steps, clip=Clip(),
          diagnostics_every=0)  # fmt: skip
    assert len(calls) == steps
    for step, (state, _) in enumerate(calls):
        if step % task.stream.windows == 0:
            assert state is None, step
            continue
        previous = calls[step - 1][1]
        for carried, final in zip(state, previous, strict=True):
            assert torch.equal(carried, final) and not carried.requires_grad, step
        assert previous[0].requires_grad  # the final state itself was in the graph


def test_stateful_scoring_reads_each_stream_from_its_start(text):
    """Stateful evaluation: chargen cuts the split into streams read window by window with the
    state carried, which is each stream read at once (every character but the first predicted
    once); stocks reads the series from its first return, and scores the split's days. Both
    differ from the windowed scores of the same weights."""
    chargen = stream_task("task=chargen", "task.corpus=hamlet", "task.seq_len=20",
                          "task.stateful=true")  # fmt: skip
    torch.manual_seed(0)
    model = SequenceModel("gru", 1, chargen.output_size, hidden_size=8,
                          vocab_size=chargen.vocab_size, embedding_dim=4).eval()  # fmt: skip
    with torch.no_grad():
        ids = chargen.data["val"]
        n = len(ids) - 1
        span = -(-n // EVAL_STREAMS)
        rows = -(-n // span)
        x = torch.nn.functional.pad(ids[:-1], (0, rows * span - n)).view(rows, span)
        y = torch.nn.functional.pad(ids[1:], (0, rows * span - n)).view(rows, span)
        output, _ = model(x)  # each stream at once, from zero
        nats = torch.nn.functional.cross_entropy(output.flatten(0, 1), y.flatten(),
                                                 ignore_index=0, reduction="sum")  # fmt: skip
        scored = chargen.evaluate(model, "val")
        assert (y != 0).sum() == n and x.shape[1] > 20 and rows <= 16  # tasks.md: at most 16
        assert scored["bpc"] == pytest.approx(nats.item() / n / math.log(2), rel=1e-6)
        chargen.stream = None
        assert chargen.evaluate(model, "val")["bpc"] != pytest.approx(scored["bpc"], rel=1e-4)

        stocks = stream_task("task=stocks", "task.seq_len=5", "task.stateful=true")
        model = SequenceModel("lstm", 1, 1, hidden_size=8).eval()
        days = stocks.days["test"]
        series = stocks.returns[1 : int(days[-1]) + 1].view(1, -1, 1)
        expected = model(series)[0][0, days - 1, 0] * stocks.target_std + stocks.target_mean
        torch.testing.assert_close(stocks.predict(model, "test"), expected, rtol=1e-5, atol=1e-7)
        windowed = stocks.evaluate(model, "test")["rmse"]
        stocks.stream = None
        assert stocks.evaluate(model, "test")["rmse"] != pytest.approx(windowed, rel=1e-6)


# ------------------------------------------------------------------ runs

BASE = [o for o in SMALL if not o.startswith(("task.", "train.steps", "train.eval_every"))]
RUN = ["task=chargen", *TINY, "train.batch_size=4", "train.steps=30", "train.eval_every=4",
       "diagnostics.every=5", "checkpoint.every=4", "model.hidden_size=8", "model=gru",
       "inference.compare=false", "log.tensorboard=false"]  # fmt: skip


def test_a_run_interrupted_mid_stream_resumes_to_the_same_bits(text, tmp_path, monkeypatch):
    """A stateful run stopped (as by SIGTERM) at step 14, inside its second pass over the
    streams (12 windows each), and resumed: the checkpoint holds the walk's place and the
    carried state, and the resumed run's metrics.json and CSVs are the uninterrupted run's
    (wall times aside)."""
    from seqbench import job
    from seqbench.checkpoint import load_training_state
    from tests.conftest import run_small, without_timings
    from tests.test_streaming import without_wall_time

    overrides = [*RUN, f"task.path={text}"]
    straight = run_small(tmp_path / "straight", *overrides, base=BASE)
    assert straight["status"] == "completed" and straight["task_info"]["stateful"]
    assert straight["task_info"]["streams"]["windows_per_pass"] == 12

    class StopAt:  # stop_on_signals, as if SIGTERM came before step 14
        def __enter__(self):
            calls = []
            return lambda: calls.append(1) or ("SIGTERM" if len(calls) > 14 else None)

        def __exit__(self, *exc):
            return False

    run_dir = tmp_path / "stopped"
    monkeypatch.setattr(job, "stop_on_signals", StopAt)
    with pytest.raises(SystemExit) as stopped:
        run_small(run_dir, *overrides, base=BASE)
    monkeypatch.undo()
    assert stopped.value.code == 143
    checkpoint = load_training_state(run_dir)
    assert checkpoint["step"] == 14 and checkpoint["stream"]["position"] == 2
    assert checkpoint["stream"]["state"].shape == (1, 4, 8)  # GRU: h (L, B, H)
    resumed = run_small(run_dir, *overrides, f"resume={run_dir}", base=BASE)
    assert without_timings(resumed) == without_timings(straight)
    for name in ("history.csv", "grad_norms.csv", "lag_norms.csv"):
        texts = [(d / name).read_text() for d in (tmp_path / "straight", run_dir)]
        assert without_wall_time(texts[0]) == without_wall_time(texts[1]), name


def test_streams_shorter_than_two_windows_are_refused_before_training(tmp_path):
    """task.stateful=true with more streams than the training split can fill with two windows
    each (with one, no state would ever be carried): exit status 2 before any training, naming
    the keys to change and the largest batch size that works."""
    from tests.conftest import seqbench_main

    done = seqbench_main("task=chargen", "task.corpus=hamlet", "task.stateful=true",
                         "train.batch_size=20000", "hardware=cpu", f"hydra.run.dir={tmp_path}",
                         cwd=tmp_path)  # fmt: skip
    assert done.returncode == 2 and "Traceback" not in done.stderr
    message = " ".join(done.stderr.split())
    assert "task.stateful=true" in message and "train.batch_size=20000 streams" in message
    assert "task.seq_len=100" in message and not (tmp_path / "metrics.json").exists()
    assert "use train.batch_size=788 or fewer" in message  # 157,657 characters // 200
    # stocks at its defaults (train.batch_size=64, task.seq_len=30): 2,288 training days
    with pytest.raises(ConfigError, match=r"2,288 trading days out as train\.batch_size=64 "
                       r"streams of 35, .*use train\.batch_size=38 or fewer"):  # fmt: skip
        stream_task("task=stocks", "task.stateful=true", batch_size=64)
    assert stream_task("task=stocks", "task.stateful=true", batch_size=32).stream.windows == 2


def test_the_tables_and_metrics_say_which_mode_a_run_used(text, tmp_path):
    """metrics.json's task_info says stateful or not (and the streams' layout); the comparison
    of a windowed run (the default, task.stateful not among its overrides) and a stateful one
    groups them by task.stateful; the run's closing summary (console and TensorBoard) names
    the stateful mode."""
    import io
    import json

    from rich.console import Console

    from seqbench.compare import aggregate, load_runs
    from seqbench.loggers.console import summary_table
    from seqbench.loggers.tensorboard import summary_markdown
    from tests.conftest import seqbench_main

    short = [*BASE, *RUN, f"task.path={text}", "train.steps=2", "train.eval_every=2"]
    for mode in ("false", "true"):
        run_dir = tmp_path / mode
        args = [o for o in short if not o.startswith("task.stateful")]
        if mode == "true":  # the windowed run keeps the default
            args.append("task.stateful=true")
        done = seqbench_main(*args, f"hydra.run.dir={run_dir}", cwd=tmp_path)
        assert done.returncode == 0, done.stderr
        metrics = json.loads((run_dir / "metrics.json").read_text())
        info = metrics["task_info"]
        assert info["stateful"] == (mode == "true") and ("streams" in info) == (mode == "true")
        console = Console(file=io.StringIO(), width=100)
        console.print(summary_table(metrics, str(run_dir)))
        said = "chargen (stateful)" in console.file.getvalue()
        assert said == (mode == "true"), console.file.getvalue()
        assert ("chargen (stateful)" in summary_markdown(metrics)) == (mode == "true")
    table = aggregate(load_runs([tmp_path / "false", tmp_path / "true"]))
    assert table["task.stateful"].map(str).tolist() == ["false", "true"]
    assert (table["runs"] == 1).all()


def test_the_int8_comparison_leaves_the_walk_where_training_left_it(text, tmp_path):
    """inference.compare=true draws one sequence for its latency: on a stateful run that must
    not lay the streams out again (metrics.json keeps the training layout), and both variants
    score by the stateful walk."""
    from tests.conftest import run_small

    metrics = run_small(tmp_path / "run", *RUN, f"task.path={text}", "train.steps=4",
                        "inference.compare=true", "inference.repeats=1", base=BASE)  # fmt: skip
    streams = metrics["task_info"]["streams"]
    assert streams["streams"] == 4 and streams["windows_per_pass"] == 12
    scores = [metrics["inference"][v]["bpc"] for v in ("float32", "int8_dynamic")]
    assert scores[0] == pytest.approx(metrics["final_metric"], rel=1e-6)
    assert scores[1] == pytest.approx(scores[0], rel=0.05)


def test_the_diagnostics_are_within_the_window_and_say_so(text, tmp_path):
    """A stateful run's per-timestep norms and gradient by lag cover the window's task.seq_len
    steps (no gradient reaches past its first step: the carried state is detached), and every
    TensorBoard description of a per-timestep or by-lag chart says it is the training window's."""
    import pandas as pd

    from seqbench.loggers.tags import describe
    from tests.conftest import run_small

    run_dir = tmp_path / "run"
    run_small(run_dir, *RUN, f"task.path={text}", "train.steps=3", "diagnostics.every=1",
              base=BASE)  # fmt: skip
    norms = pd.read_csv(run_dir / "grad_norms.csv")
    lags = pd.read_csv(run_dir / "lag_norms.csv")
    assert sorted(norms["t"].unique()) == list(range(1, 9))  # t = 1..task.seq_len (8)
    assert lags["lag"].max() == 7 and (norms["norm"] > 0).all()
    tags = ["grad_heatmap/layer0", "grad_norm_vs_t", "lag_heatmap/layer0", "lag_profile",
            *(f"grad/{k}/layer0" for k in ("vanishing_ratio", "decay_rate", "growth_rate",
                                           "memory_horizon", "max_norm", "nonzero_steps")),
            *(f"lag/{k}/layer0" for k in ("vanishing_ratio", "growth_rate", "memory_horizon",
                                          "exploding"))]  # fmt: skip
    for tag in tags:
        assert "training window" in describe(tag), tag
    for tag in ("grad_heatmap/layer0", "grad_norm_vs_t", "lag_heatmap/layer0", "lag_profile"):
        assert "task.stateful=true the state carried in" in describe(tag), tag


@pytest.mark.parametrize("cell", sorted(CELLS))
def test_every_cell_trains_statefully(cell, tmp_path):
    """A smoke run of every cell on stateful stocks (the engine, the lag probe from a carried
    state, the stateful scoring on the fused or reference path): it completes, and its
    checkpoint carries the cell's state, (h, c) for a cell with a cell state."""
    from seqbench.checkpoint import load_training_state
    from tests.conftest import run_small

    run_dir = tmp_path / "run"
    metrics = run_small(run_dir, "task=stocks", "task.seq_len=6", "task.stateful=true",
                        f"model={cell}", "train.steps=2", "train.eval_every=2",
                        "log.tensorboard=false", "inference.compare=false", base=BASE)  # fmt: skip
    assert metrics["status"] == "completed" and metrics["lag_norms"]["end"]["layers"]
    state = load_training_state(run_dir)["stream"]["state"]
    if get_cell(cell).cell_state:
        assert isinstance(state, tuple) and len(state) == 2
    else:
        assert isinstance(state, torch.Tensor)
        state = (state,)
    assert all(p.shape == (1, 8, 8) for p in state)  # (L, B, H): SMALL's batch and hidden size
