"""The numbers docs/diagnostics.md states for initialisation, recomputed by the product's own
snapshot at step 0 (seed 0, the first training batch of 64, as a run takes it) where no other
test held them (docs/promises.md names them): the table "what the per-timestep norm got wrong"
(which the page says a test reproduces), the table of recurrent gains, the IRNN and clipping at
init, and the default job's first row of the gate table. Deterministic: the same digits on
every machine, each row well under a second (the real-data rows build their task: ~1 s)."""

from __future__ import annotations

import pytest
import torch

from seqbench.diagnostics import summarize, summarize_lags
from seqbench.hardware import seed_everything
from seqbench.job import build_job
from seqbench.train import measure_grad_norms
from tests.conftest import compose_config


def first_snapshot(tmp_path, *overrides: str):
    """The gradient snapshot a run takes at step 0: seed 0, the first training batch of 64."""
    cfg = compose_config(["hardware=cpu", *overrides])
    seed_everything(cfg.seed)
    job = build_job(cfg, tmp_path, torch.device("cpu"))
    return measure_grad_norms(job.model, job.task, 64)


# diagnostics.md, "What the per-timestep norm got wrong": (task, cell) -> per timestep:
# vanishing ratio, growth per step back, horizon, of T; by lag: vanishing ratio, over lags 0..K,
# growth, horizon
ISSUE_TABLE = {
    ("sentiment", "rnn"): ("-0.89", "1.043", 52, 52, "-6.22", 18, "0.450", 9),
    ("sentiment", "lstm"): ("-0.97", "1.048", 52, 52, "-2.67", 18, "0.766", 19),
    ("sentiment", "gru"): ("-0.72", "1.035", 52, 52, "-3.85", 18, "0.617", 14),
    ("chargen", "rnn"): ("+0.05", "1.000", 100, 100, "-31.69", 99, "0.479", 10),
    ("chargen", "lstm"): ("+0.01", "1.000", 100, 100, "-9.08", 99, "0.829", 24),
    ("chargen", "gru"): ("+0.08", "1.000", 100, 100, "-19.81", 99, "0.633", 14),
    ("copy", "rnn"): ("+0.15", "1.002", 70, 70, "-17.88", 69, "0.550", 12),
    ("copy", "lstm"): ("+0.16", "1.005", 70, 70, "-5.35", 69, "0.862", 30),
    ("copy", "gru"): ("+0.34", "1.007", 70, 70, "-13.12", 69, "0.651", 15),
}


@pytest.mark.parametrize(("task", "cell"), list(ISSUE_TABLE))
def test_the_per_timestep_and_by_lag_table_is_reproduced(task: str, cell: str, tmp_path) -> None:
    """diagnostics.md: at initialisation, with the defaults, seed 0 and batch 64, both column
    groups of the table, every row, to the digits printed (copy at its default T=50)."""
    snap = first_snapshot(tmp_path, f"task={task}", f"model={cell}")
    per_t = summarize(snap.norms[0], 10.0, snap.positions, None)
    by_lag = summarize_lags(snap.lags.log10[0], snap.lags.pairs[0])
    got = (f"{per_t.vanishing_ratio:+.2f}", f"{per_t.growth_rate:.3f}", per_t.memory_horizon,
           per_t.timesteps, f"{by_lag.vanishing_ratio:.2f}", by_lag.max_lag,
           f"{by_lag.growth_rate:.3f}", by_lag.memory_horizon)  # fmt: skip
    assert got == ISSUE_TABLE[(task, cell)]


# diagnostics.md, Exploding gradients: model, init -> growth per step back, log10 ratio,
# exploding, horizon (adding T=50, hidden 64, a batch of 64, loss on the last step, seed 0)
GAIN_TABLE = [
    (("model=rnn",), ("0.61", "-10.6", False, 13)),
    (("model=rnn", "model.init=orthogonal", "model.recurrent_gain=1.5"),
     ("1.01", "0.43", False, 50)),
    (("model=rnn", "model.init=orthogonal", "model.recurrent_gain=2"), ("1.17", "3.7", True, 50)),
    (("model=rnn", "model.nonlinearity=relu", "model.init=identity", "model.recurrent_gain=1.05"),
     ("1.05", "0.81", False, 50)),
    (("model=rnn", "model.nonlinearity=relu", "model.init=identity", "model.recurrent_gain=1.2"),
     ("1.20", "3.7", True, 50)),
    (("model=lstm", "model.init=orthogonal", "model.recurrent_gain=2"),
     ("1.07", "0.95", False, 50)),
    (("model=gru", "model.init=orthogonal", "model.recurrent_gain=2"),
     ("0.95", "-1.3", False, 50)),
]  # fmt: skip


@pytest.mark.parametrize(("overrides", "row"), GAIN_TABLE, ids=[str(i) for i in range(7)])
def test_the_gain_table_at_init(overrides: tuple, row: tuple, tmp_path) -> None:
    """diagnostics.md: what each option does to the gradient at init, to the digits printed."""
    snap = first_snapshot(tmp_path, "task=adding", "task.seq_len=50", *overrides)
    s = summarize(snap.norms[0], 10.0, snap.positions, None)
    decimals = len(row[1].split(".")[1])
    got = (f"{s.growth_rate:.2f}", f"{s.vanishing_ratio:.{decimals}f}", s.exploding,
           s.memory_horizon)  # fmt: skip
    assert got == row


def test_the_default_jobs_first_gate_row(tmp_path) -> None:
    """diagnostics.md, gate table, step 0 of the default job (LSTM, adding, T=100, seed 0):
    log10 ||dL/dh_1|| / ||dL/dh_T|| = -7.37, mean forget gate 0.732, the largest unit's 0.755,
    no unit above 0.95; gradient pictures: the LSTM's ratio at T=100 with PyTorch's default
    init is about -7."""
    import numpy as np

    snap = first_snapshot(tmp_path)
    ratio = summarize(snap.norms[0], 10.0, snap.positions, None).vanishing_ratio
    forget = snap.gates["forget"][0]  # (T, H): the mean over the batch, per timestep and unit
    units = np.nanmean(forget, axis=0)
    assert (f"{ratio:.2f}", f"{np.nanmean(forget):.3f}", f"{units.max():.3f}") == (
        "-7.37", "0.732", "0.755")  # fmt: skip
    assert (units > 0.95).sum() == 0
