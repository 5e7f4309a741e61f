"""The run directory's CSV files as data frames, long format: what `seqbench.results` writes
(whole at a resume, a snapshot's or a validation's rows as the run goes)."""

from __future__ import annotations

import numpy as np
import pandas as pd


def grad_norm_frame(snapshots: list[tuple], gate_snapshots: list[tuple] = ()) -> pd.DataFrame:
    """Long format: one row per (step, layer, t) with t = 1..T, the norm ||dL/dh_t||, how many
    sequences of the batch are real (not padding) at t, log10_norm when tracked, and beside them
    gate_<name>: each gate's mean activation over the batch's real positions and the units
    (gated cells; empty where a snapshot has no gates, e.g. the final one)."""
    gates_at = {step: per_t for step, per_t, _ in gate_snapshots}
    frames = []
    for step, norms, positions, log10 in snapshots:
        layers, steps = norms.shape
        per_t = gates_at.get(step, {})
        frames.append(
            pd.DataFrame(
                {
                    "step": step,
                    "layer": np.repeat(np.arange(layers), steps),
                    "t": np.tile(np.arange(1, steps + 1), layers),
                    "norm": norms.ravel(),
                    "positions": np.tile(positions, layers),
                    **({} if log10 is None else {"log10_norm": log10.ravel()}),
                    **{f"gate_{name}": means.ravel() for name, means in per_t.items()},
                }
            )
        )
    if not frames:
        return pd.DataFrame(columns=["step", "layer", "t", "norm", "positions"])
    return pd.concat(frames, ignore_index=True)


def lag_norm_frame(lag_snapshots: list[tuple]) -> pd.DataFrame:
    """lag_norms.csv, long format: one row per (step, layer, lag) with the RMS over the pairs
    that reach the lag of ||d l_s/dh_(s-lag)|| (`seqbench.lags`): norm (0 below float64's
    smallest normal number), log10_norm (exact at any size on the engine) and pairs."""
    frames = []
    for step, log10, pairs in lag_snapshots:
        layers, lags = log10.shape
        with np.errstate(over="ignore"):
            norms = np.power(10.0, log10)
        norms[norms < np.finfo(np.float64).tiny] = 0.0
        frames.append(
            pd.DataFrame(
                {
                    "step": step,
                    "layer": np.repeat(np.arange(layers), lags),
                    "lag": np.tile(np.arange(lags), layers),
                    "norm": norms.ravel(),
                    "log10_norm": log10.ravel(),
                    "pairs": pairs.ravel(),
                }
            )
        )
    if not frames:
        return pd.DataFrame(columns=["step", "layer", "lag", "norm", "log10_norm", "pairs"])
    return pd.concat(frames, ignore_index=True)


def gate_unit_frame(gate_snapshots: list[tuple]) -> pd.DataFrame:
    """Long format for gates.csv: one row per (step, layer, unit) with each gate's mean
    activation over the batch's real positions and the timesteps (where a few units learn to
    hold their forget gate near 1 while the mean over units hardly moves)."""
    frames = []
    for step, _, per_unit in gate_snapshots:
        layers, units = next(iter(per_unit.values())).shape
        frames.append(
            pd.DataFrame(
                {
                    "step": step,
                    "layer": np.repeat(np.arange(layers), units),
                    "unit": np.tile(np.arange(units), layers),
                    **{name: means.ravel() for name, means in per_unit.items()},
                }
            )
        )
    return pd.concat(frames, ignore_index=True)


def history_frame(history: list[dict]) -> pd.DataFrame:
    """history.csv: one row per validation, the columns in order of first appearance."""
    columns = ["step", "wall_time", "train_loss"]
    for row in history:
        columns += [k for k in row if k not in columns]
    return pd.DataFrame(history, columns=columns)
