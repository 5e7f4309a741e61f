"""Promises of docs/running.md, docs/engine.md, docs/performance.md, docs/diagnostics.md and
docs/getting-started.md about the model, the engine and the process settings, each checked where
no other test held it (docs/promises.md names them): what a bidirectional head reads and the
order of its backward trace, the float32 sigmoid's clamp, the engine's buffer cache and kernel
cache settings, hardware.flush_denormal, the seed, TensorBoard skipping a point it cannot plot,
and matplotlib left out of the start. Milliseconds to a few seconds each."""

from __future__ import annotations

import math
import os
import random
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from seqbench.engine import native
from seqbench.model import SequenceModel
from tests.conftest import ROOT, run_small


@pytest.mark.parametrize("record", [False, True], ids=["fused", "unrolled"])
def test_a_bidirectional_head_reads_the_forward_state_and_the_whole_backward_pass(record):
    """running.md, bidirectional layers: each padded review is reversed within its own length
    (packing); the head reads the forward state at the last real token and the backward state
    after the whole review. Checked against nn.LSTM(bidirectional=True) on packed sequences."""
    torch.manual_seed(0)
    model = SequenceModel("lstm", 3, 2, hidden_size=4, bidirectional=True).double()
    reference = nn.LSTM(3, 4, bidirectional=True, batch_first=True).double()
    reference.load_state_dict(model.rnn.state_dict())
    x = torch.randn(3, 6, 3, dtype=torch.float64)
    lengths = torch.tensor([6, 2, 4])
    packed = nn.utils.rnn.pack_padded_sequence(x, lengths, batch_first=True, enforce_sorted=False)
    seq, _ = nn.utils.rnn.pad_packed_sequence(reference(packed)[0], batch_first=True,
                                              total_length=6)  # fmt: skip
    out, trace = model(x, record_states=record, lengths=lengths)
    rows = torch.arange(3)
    forward = seq[rows, lengths - 1, :4]  # after reading the review up to its last token
    backward = seq[rows, 0, 4:]  # the backward direction after reading the whole review
    expected = model.head(torch.cat([forward, backward], dim=-1))
    torch.testing.assert_close(out[rows, lengths - 1], expected, rtol=1e-10, atol=1e-12)
    if record:  # the backward entry in its processing order: first, the last real token read
        assert len(trace) == 2
        first = trace[1][0]
        torch.testing.assert_close(first, seq[rows, lengths - 1, 4:], rtol=1e-10, atol=1e-12)
        torch.testing.assert_close(trace[1][-1][0], seq[0, 0, 4:], rtol=1e-10, atol=1e-12)


@pytest.mark.skipif(not native.native_available(), reason="no C++ compiler: no native kernels")
def test_the_float32_sigmoid_stays_a_normal_number(monkeypatch) -> None:
    """engine.md, numerical contract: the float32 forward sigmoid clamps its argument at -80
    (result >= 1.8e-35): a gate driven far below -80 reads sigmoid(-80), not 0 or a denormal."""
    from seqbench.diagnostics import gate_means

    monkeypatch.setenv("SEQBENCH_NATIVE", "1")
    torch.manual_seed(0)
    model = SequenceModel("lstm", 2, 1, hidden_size=4, engine=True)
    with torch.no_grad():
        model.rnn.bias_ih_l0[:4] = -500.0  # the input gate: sigmoid(-500) = 7e-218
    _, trace = model(torch.zeros(2, 3, 2), record_states=True)
    floor = float(torch.sigmoid(torch.tensor(-80.0, dtype=torch.float64)))
    assert floor == pytest.approx(1.8e-35, rel=0.01)
    got = gate_means(trace, ("input", "forget", "output"))["input"]
    np.testing.assert_allclose(got, floor, rtol=1e-5)


def python(code: str, **env: str) -> str:
    environ = {k: v for k, v in os.environ.items() if not k.startswith(("SEQBENCH_", "XDG_"))}
    done = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True,
                          env={**environ, "OMP_NUM_THREADS": "1", **env}, timeout=300)  # fmt: skip
    assert done.returncode == 0, done.stderr[-2000:]
    return done.stdout.strip()


def test_the_engines_environment_variables() -> None:
    """engine.md: SEQBENCH_CACHE_DIR (where the compiled kernels are cached; default
    ~/.cache/seqbench), SEQBENCH_BUFFER_CACHE_MB (MiB of work buffers kept, default 1024;
    `seqbench.engine.clear_buffer_cache()` drops them), SEQBENCH_NATIVE_OPENMP=0 (serial
    kernels)."""
    code = ("from seqbench.engine import native, buffers, clear_buffer_cache; import torch; "
            "print(native.cache_dir(), buffers.cache.max_bytes, native.threading_wanted() "
            "if torch.get_num_threads() else 0); buffers.cache.empty((1 << 19,), torch.float32, "
            "torch.device('cpu')); n = buffers.cache.nbytes(); clear_buffer_cache(); "
            "print(n, buffers.cache.nbytes())")  # fmt: skip
    home = os.path.expanduser("~")
    default = python(code).split("\n")
    assert default[0].split()[:2] == [f"{home}/.cache/seqbench", str(1024 * 2**20)]
    assert default[1].split() == [str(2**21), "0"]  # kept (>= 1 MiB), then dropped
    chosen = python(code, SEQBENCH_CACHE_DIR="/tmp/kernels", SEQBENCH_BUFFER_CACHE_MB="3",
                    SEQBENCH_NATIVE_OPENMP="0").split("\n")  # fmt: skip
    assert chosen[0].split() == ["/tmp/kernels", str(3 * 2**20), "False"]


def test_seqbench_native_0_runs_the_pure_torch_path(monkeypatch) -> None:
    """engine.md: with `SEQBENCH_NATIVE=0` (or without a compiler) a pure-torch version of the
    same algorithm runs: no native kernels are loaded, and the result is the same function."""
    from tests.conftest import fused_layer, run_engine

    monkeypatch.setenv("SEQBENCH_NATIVE", "0")
    assert native.native() is None
    mod = fused_layer("gru", 2, 4)
    x = torch.randn(3, 5, 2, dtype=torch.float64)
    torch.testing.assert_close(run_engine("gru", mod, x), mod(x)[0], rtol=1e-10, atol=1e-12)
    if native.native_available():
        monkeypatch.setenv("SEQBENCH_NATIVE", "1")
        assert native.native() is not None


def test_the_bench_times_every_engine_cell_and_the_relu_rnn() -> None:
    """performance.md: `make bench` (scripts/bench.py) times one training step (forward, MSE
    loss on a linear head of the last output, backward; input size 2, one layer) of every cell
    with engine kernels and a fused layer, and the ReLU RNN as row `rnn:relu`;
    contributing.md: scripts/bench.py picks a new cell up from `seqbench.cells.CELLS`."""
    from scripts.bench import bench_cells, build
    from seqbench.cells import CELLS

    cells = bench_cells()
    engine = [n for n, c in CELLS.items() if c.engine is not None and c.fused is not None]
    assert [c for c in cells if ":" not in c] == engine and "rnn:relu" in cells
    mod, head, x, y = build("lstm", 4, 7, 5)
    assert (mod.input_size, mod.num_layers, mod.hidden_size, x.shape) == (2, 1, 5, (4, 7, 2))
    assert isinstance(head, nn.Linear) and head.in_features == 5 and y.shape[0] == 4


@pytest.mark.parametrize("cell", ["lstm", "gru", "rnn"])
def test_the_benchs_run_row_starts_from_a_runs_weights(cell: str) -> None:
    """performance.md: the bench's engine_norms_run times the engine on the model as a run
    initialises it (ModelConfig's defaults: the LSTM's forget-gate bias), where that differs
    from PyTorch's own initialisation; the other cells are PyTorch's as they are."""
    from scripts.bench import build, run_init

    mod, *_ = build(cell, 4, 7, 5)
    changed = run_init(cell, mod)
    torch.manual_seed(0)  # build's seed: the run's model draws the same weights first
    model = SequenceModel(cell, input_size=2, output_size=1, hidden_size=5)
    assert changed == (cell == "lstm")
    for (name, ours), theirs in zip(mod.named_parameters(), model.rnn.parameters(), strict=True):
        assert torch.equal(ours, theirs), name


def test_slow_reference_rows_get_fewer_rounds(monkeypatch) -> None:
    """performance.md: a reference row (a cell without a PyTorch layer, under autograd) whose
    warm-up round took long gets fewer rounds, at least 3; its `rounds` column says how many."""
    import scripts.bench as bench

    cell = bench.reference_cells()[0]
    monkeypatch.setattr(bench, "ROW_BUDGET_S", 1e-9)  # every row is "slow"
    (slow,) = bench.run_reference_bench([(2, 3, 4)], 6, [cell])
    monkeypatch.setattr(bench, "ROW_BUDGET_S", 1e9)
    (fast,) = bench.run_reference_bench([(2, 3, 4)], 6, [cell])
    assert (slow["rounds"], fast["rounds"]) == (3, 6)
    assert slow["engine_norms_s"] > 0 and slow["reference/engine_norms"] > 0


def test_the_threading_threshold_and_the_config_store_copies() -> None:
    """performance.md: the engine's kernels run serially below THREADING_MIN_WORK (32,768,
    in csrc/seqbench.h); Hydra no longer deep-copies its whole config store for every group it
    lists (`--help`, the completion)."""
    import copy

    from hydra.core.config_store import ConfigStore

    import seqbench.cli  # noqa: F401  (installs the shared store)
    from seqbench.engine.constants import THREADING_MIN_WORK

    assert THREADING_MIN_WORK == 32768
    header = (ROOT / "seqbench" / "engine" / "csrc" / "seqbench.h").read_text()
    assert "THREADING_MIN_WORK" in header
    store = ConfigStore.instance()
    assert copy.deepcopy(store) is store


def flushes_denormals() -> bool:
    return (torch.tensor([1e-39], dtype=torch.float32) * 1.0).item() == 0.0


@pytest.mark.parametrize("flush", [True, False])
def test_hardware_flush_denormal_sets_the_process_before_training(tmp_path, flush: bool) -> None:
    """getting-started.md, performance.md: `hardware.flush_denormal` (default true) flushes
    float32 denormals to zero, set before any work."""
    torch.set_flush_denormal(not flush)
    run_small(tmp_path / "run", f"hardware.flush_denormal={str(flush).lower()}",
              "train.steps=1", "log.tensorboard=false", "inference.compare=false")  # fmt: skip
    assert flushes_denormals() is flush


def test_the_seed_seeds_python_numpy_and_torch() -> None:
    """getting-started.md, `seed`: seeds python, numpy, torch (and the task's data generator:
    tests/test_tasks.py::test_seeded_and_fixed_validation)."""
    from seqbench.hardware import seed_everything

    def draws(seed: int) -> list[float]:
        seed_everything(seed)
        return [random.random(), float(np.random.rand()), float(torch.rand(1))]

    assert draws(3) == draws(3)
    assert all(a != b for a, b in zip(draws(3), draws(4), strict=True))


def test_tensorboard_skips_a_ratio_it_cannot_plot(tmp_path: Path) -> None:
    """diagnostics.md: an underflowed norm gives the ratio -inf, never NaN; TensorBoard skips the
    -inf point and `grad/nonzero_steps` shows how many timesteps still receive gradient."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    from seqbench.loggers.tensorboard import TensorBoardLogger

    logger = TensorBoardLogger(tmp_path / "tb")
    positions = np.array([4, 4, 4, 4])
    logger.on_grad_norms(0, np.array([[0.0, 0.0, 1e-3, 1.0]]), positions, None)  # underflow
    logger.on_grad_norms(1, np.array([[1e-3, 1e-2, 1e-1, 1.0]]), positions, None)
    logger.write()
    logger.writer.close()
    events = EventAccumulator(str(tmp_path / "tb"), size_guidance={"scalars": 0}).Reload()
    ratio = [(e.step, e.value) for e in events.Scalars("grad/vanishing_ratio/layer0")]
    assert ratio == [(1, pytest.approx(-3.0))]  # step 0's -inf is not plotted
    nonzero = [(e.step, e.value) for e in events.Scalars("grad/nonzero_steps/layer0")]
    assert nonzero == [(0, 2.0), (1, 4.0)]
    assert all(math.isfinite(e.value) for e in events.Scalars("grad/max_norm/layer0"))


def test_matplotlib_is_not_imported_at_start() -> None:
    """performance.md, Start-up: matplotlib is imported when the first picture is drawn, not at
    start (the command and the job module load without it)."""
    code = "import sys, seqbench.cli, seqbench.job; print('matplotlib' in sys.modules)"
    assert python(code) == "False"


def test_the_gate_and_gradient_picture_is_drawn_from_the_run_files(tmp_path: Path) -> None:
    """diagnostics.md: `seqbench.plots.gate_and_gradient_figure(run_dir)`: left, the log10
    gradient norm by lag over training (log10 ||dL/dh_t|| over the timesteps for a run without
    lag_norms.csv); right, each unit's forget gate, sorted by its last value."""
    import json

    import pandas as pd

    from seqbench.plots import gate_and_gradient_figure

    run_dir = tmp_path / "run"
    run_small(run_dir, "model=lstm", "log.tensorboard=false", "inference.compare=false")
    figure = gate_and_gradient_figure(run_dir)
    left, right = (ax.images[0].get_array() for ax in figure.axes[:2])
    lags = pd.read_csv(run_dir / "lag_norms.csv").query("layer == 0")
    np.testing.assert_allclose(left, lags.pivot(index="step", columns="lag",
                                                values="log10_norm").to_numpy())  # fmt: skip
    gate = json.loads((run_dir / "metrics.json").read_text())["gates"]["memory_gate"]
    assert gate == "forget"
    units = pd.read_csv(run_dir / "gates.csv").pivot(index="step", columns="unit", values=gate)
    np.testing.assert_allclose(right, units[units.iloc[-1].sort_values().index].to_numpy())
    assert (np.diff(right[-1]) >= 0).all()  # the last row ascends: units sorted by it
    (run_dir / "lag_norms.csv").unlink()  # a run from before the lag profile existed
    left = gate_and_gradient_figure(run_dir).axes[0].images[0].get_array()
    grads = pd.read_csv(run_dir / "grad_norms.csv").query("layer == 0")
    np.testing.assert_allclose(left, np.log10(grads.pivot(index="step", columns="t",
                                                          values="norm").to_numpy()))  # fmt: skip


def test_tensorboard_puts_lag_0_on_the_left_and_dashes_the_first_curve(tmp_path, monkeypatch):
    """tensorboard.md, Images: `lag_heatmap/layer<l>` is log10 of the gradient by lag, lag 0 on
    the left, one row per snapshot (no pair at a lag: blank); `grad_norm_vs_t` and
    `lag_profile` draw the curve at init dashed and the latest snapshot's solid."""
    from seqbench.lags import LagProfile
    from seqbench.loggers import pictures
    from seqbench.loggers.tensorboard import TensorBoardLogger

    maps, charts = {}, {}
    heatmap, line_chart = pictures.heatmap_image, pictures.line_chart

    def record_map(values, steps, title, cmap, **kw):
        maps[title] = (values.copy(), list(steps), kw)
        return heatmap(values, steps, title, cmap, **kw)

    def record_chart(lines, title, *args, **kw):
        charts[title] = [(label, dashed) for label, _, dashed in lines]
        return line_chart(lines, title, *args, **kw)

    monkeypatch.setattr(pictures, "heatmap_image", record_map)
    monkeypatch.setattr(pictures, "line_chart", record_chart)
    logger = TensorBoardLogger(tmp_path / "tb")
    positions = np.array([4, 4, 4])
    for step, logs in ((0, [0.0, -1.0, -2.0]), (5, [0.0, -0.5, -np.inf])):  # lag 2: no pair
        logger.on_grad_norms(step, np.array([[0.1, 0.5, 1.0]]), positions, None)
        log10 = np.array([logs])
        logger.on_lag_norms(step, LagProfile(10**log10, log10, np.array([[4, 4, 4 * (step == 0)]])))
    logger.draw(5)
    logger.writer.close()
    values, steps, kw = maps["log10 gradient norm by lag, layer 0"]
    assert steps == [0, 5] and kw["first"] == 0  # columns numbered from lag 0, left to right
    np.testing.assert_array_equal(values, [[0.0, -1.0, -2.0], [0.0, -0.5, np.nan]])
    for title in ("gradient norm by lag", "gradient norm vs timestep"):
        assert charts[title] == [("step 0, layer 0", True), ("step 5, layer 0", False)], title
