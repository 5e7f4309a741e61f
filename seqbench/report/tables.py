"""The report's tables, from compare.aggregate's numbers (the same as seqbench-compare's
comparison.csv) and the runs' metrics.json: results, gradients, gates, runs."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pandas as pd

from seqbench.compare import varies
from seqbench.report.collect import Sweep, run_command
from seqbench.report.render import Cell, Table


def fmt(mean: float, std: float = math.nan, integer: bool = False) -> str:
    """'0.1234 ± 0.0056'; std left out where it is undefined (one seed) or 0."""
    if mean is None or math.isnan(mean):
        return "n/a"
    if math.isinf(mean):
        return "−inf (underflow)" if mean < 0 else "inf"
    text = f"{mean:,.0f}" if integer else f"{mean:.4g}"
    if std is None or math.isnan(std) or std == 0:
        return text
    return f"{text} ± {std:,.0f}" if integer else f"{text} ± {std:.2g}"


def label(sweep: Sweep, values: tuple) -> str:
    """A configuration's name: the values of the keys that vary in this sweep (the model
    always), e.g. 'lstm' or 'gru, task.seq_len=100'."""
    parts = []
    for key, value in zip(sweep.by, values, strict=True):
        if key != "model" and not varies(sweep.runs[key]):
            continue
        parts.append(str(value) if key in ("model", "task") else f"{key}={value}")
    return ", ".join(parts)


def _stat(row: pd.Series, col: str, integer: bool = False) -> Cell:
    mean, std = float(row[f"{col}_mean"]), float(row[f"{col}_std"])
    return Cell(fmt(mean, std, integer), {"col": col, "mean": mean, "std": std})


def _count(row: pd.Series, col: str, of: str) -> Cell:
    return Cell(
        f"{int(row[col])}/{int(row[of])}", {"col": col, "count": int(row[col]), "of": int(row[of])}
    )


def _keys(sweep: Sweep) -> list[str]:
    """The configuration keys shown as columns: the model, and those that vary."""
    return [k for k in sweep.by if k == "model" or varies(sweep.runs[k])]


def results_table(sweep: Sweep) -> Table:
    """One row per configuration: seeds, final and best metric, baseline, solved, cost."""
    metric = sweep.runs["metric"].dropna().iloc[0] if sweep.runs["metric"].notna().any() else "?"
    keys = _keys(sweep)
    test = bool(sweep.table["test_metric_mean"].notna().any())  # a task with a test split
    columns = [
        *keys,
        "seeds done",
        "diverged / failed",
        f"final {metric}",
        f"best {metric}",
        *([f"test {metric}"] if test else []),
        "baseline",
        "solved",
        "solved at step",
        "train time (s)",
        "parameters",
    ]
    rows, row_keys = [], []
    for _, row in sweep.table.iterrows():
        values = tuple(row[k] for k in sweep.by)
        rows.append(
            [
                *(Cell(str(row[k])) for k in keys),
                _count(row, "completed", "runs"),
                Cell(f"{int(row['diverged'])} / {int(row['failed'])}"),
                _stat(row, "final_metric"),
                _stat(row, "best_metric"),
                *([_stat(row, "test_metric")] if test else []),
                _stat(row, "baseline"),
                _count(row, "solved", "completed"),
                _stat(row, "solved_step", integer=True),
                _stat(row, "wall_time_s"),
                _stat(row, "num_parameters", integer=True),
            ]
        )
        row_keys.append(label(sweep, values))
    return Table(columns, rows, "comparison results", row_keys)


def gradient_table(sweep: Sweep) -> Table:
    """One row per configuration: how far back the gradient of a loss term reaches (by lag), at
    init and at the end."""
    keys = _keys(sweep)
    columns = [
        *keys,
        "vanishing ratio by lag, init",
        "… end",
        "growth per step back, init",
        "… end",
        "memory horizon (lags), init",
        "… end",
        "lags counted",
        "max ‖dL/dh_t‖",
        "exploding",
    ]
    rows, row_keys = [], []
    for (values, group), (_, row) in zip(sweep.groups(), sweep.table.iterrows(), strict=True):
        lag = max_lag(sweep, group)
        rows.append(
            [
                *(Cell(str(row[k])) for k in keys),
                _stat(row, "init_vanishing_ratio"),
                _stat(row, "end_vanishing_ratio"),
                _stat(row, "init_growth_rate"),
                _stat(row, "end_growth_rate"),
                _stat(row, "init_memory_horizon"),
                _stat(row, "end_memory_horizon"),
                Cell("n/a" if lag is None else f"0..{lag}"),
                _stat(row, "max_grad_norm"),
                _count(row, "exploding", "runs"),
            ]
        )
        row_keys.append(label(sweep, values))
    return Table(columns, rows, "comparison gradients", row_keys)


def max_lag(sweep: Sweep, group: pd.DataFrame) -> int | None:
    """The largest lag the end-of-training verdicts of a configuration count (None without a
    lag profile; the most over its seeds: padded batches reach different lags)."""
    lags = [
        snap["layers"][0]["max_lag"]
        for run_dir in group["run_dir"]
        if (snap := (sweep.metrics[run_dir].get("lag_norms") or {}).get("end"))
    ]
    return max(lags) if lags else None


def gate_rows(sweep: Sweep) -> list[tuple[tuple, str, dict[str, list[float]]]]:
    """Per gated configuration (completed runs with metrics.json "gates", layer 0): its
    values, the memory gate's name, and per seed its mean and fraction of units above 0.95 at
    init and at the end."""
    out = []
    for values, group in sweep.groups(completed_only=True):
        numbers: dict[str, list[float]] = {}
        gate = None
        for run_dir in group["run_dir"]:
            gates = sweep.metrics[run_dir].get("gates")
            if not gates:
                continue
            gate = gates["memory_gate"]
            for when in ("init", "end"):
                layer = gates[when]["layers"][0][gate]
                above = next(v for k, v in layer.items() if k.startswith("above_"))
                numbers.setdefault(f"{when}_mean", []).append(layer["mean"])
                numbers.setdefault(f"{when}_above", []).append(above)
        if gate:
            out.append((values, gate, numbers))
    return out


def gate_table(sweep: Sweep) -> Table | None:
    """The memory gate (LSTM forget, GRU update) of layer 0 per gated configuration."""
    found = gate_rows(sweep)
    if not found:
        return None
    columns = [
        "configuration",
        "memory gate",
        "mean at init",
        "mean at the end",
        "units above 0.95 at init",
        "… at the end",
    ]
    rows, row_keys = [], []
    for values, gate, numbers in found:
        cells = [Cell(label(sweep, values)), Cell(gate)]
        for col in ("init_mean", "end_mean", "init_above", "end_above"):
            data = np.asarray(numbers[col], dtype=float)
            mean = float(data.mean())
            std = float(data.std(ddof=1)) if len(data) > 1 else math.nan
            percent = col.endswith("above")
            text = (
                f"{100 * mean:.0f} %" + (f" ± {100 * std:.0f}" if std > 0 else "")
                if percent
                else fmt(mean, std)
            )
            cells.append(Cell(text, {"col": f"gate_{col}", "mean": mean, "std": std}))
        rows.append(cells)
        row_keys.append(label(sweep, values))
    return Table(columns, rows, "gates", row_keys)


def runs_table(sweep: Sweep, only_unfinished: bool = False) -> Table:
    """One row per run: its directory, configuration, seed, status (and error), final metric,
    and the command that reproduces it."""
    columns = ["run", "configuration", "seed", "status", "final", "command"]
    rows, row_keys = [], []
    for values, group in sweep.groups():
        for _, run in group.iterrows():
            if only_unfinished and run["status"] == "completed":
                continue
            metrics = sweep.metrics[run["run_dir"]]
            status = run["status"]
            if status == "diverged" and metrics.get("diverged_step") is not None:
                status += f" at step {metrics['diverged_step']}"
            if metrics.get("error"):
                status += f": {_first_line(metrics['error'])}"
            rows.append(
                [
                    Cell(f"`{_relative(run['run_dir'], sweep.path)}`"),
                    Cell(label(sweep, values)),
                    Cell(str(run["seed"])),
                    Cell(status),
                    Cell(fmt(float(run["final_metric"]))),
                    Cell(f"`{run_command(Path(run['run_dir']), metrics)}`"),
                ]
            )
            row_keys.append(label(sweep, values))
    return Table(columns, rows, "runs", row_keys)


def _first_line(text: str, limit: int = 300) -> str:
    line = str(text).strip().splitlines()[0] if str(text).strip() else ""
    return line if len(line) <= limit else line[: limit - 1] + "…"


def _relative(run_dir: str, root: Path) -> str:
    try:
        return str(Path(run_dir).relative_to(Path(root).resolve())) or "."
    except ValueError:
        return run_dir
