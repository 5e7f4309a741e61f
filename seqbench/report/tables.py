"""The report's tables, from compare.aggregate's numbers (the same as seqbench-compare's
comparison.csv) and the runs' metrics.json: results, gradients, gates, runs."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pandas as pd

from seqbench.compare import varies
from seqbench.numbers import format_cells
from seqbench.report.collect import Sweep, run_command
from seqbench.report.render import Cell, Table


def fmt(mean: float, std: float = math.nan, integer: bool = False) -> str:
    """One number by the tables' rule (`compare.format_cells`): '0.1234 ± 0.0056'; the std
    left out where it is undefined (one seed) or 0; an underflowed -inf said as such."""
    if mean is not None and mean == -math.inf:
        return "−inf (underflow)"
    return format_cells([math.nan if mean is None else mean], [std], integer=integer)[0]


def _column(sweep: Sweep, col: str, integer: bool = False, interval: bool = True) -> list[Cell]:
    """A number column of the comparison, one Cell per configuration, formatted together (the
    rule's choice of fixed or scientific notation is per column): mean ± std and, where the
    table has it, the 95% interval."""
    table = sweep.table
    nan = [math.nan] * len(table)
    lows = table[f"{col}_low"] if interval and f"{col}_low" in table else nan
    highs = table[f"{col}_high"] if interval and f"{col}_high" in table else nan
    texts = format_cells(table[f"{col}_mean"], table[f"{col}_std"], lows, highs,
                         integer=integer)  # fmt: skip
    cells = []
    for text, (_, row), low, high in zip(texts, table.iterrows(), lows, highs, strict=True):
        mean, std = float(row[f"{col}_mean"]), float(row[f"{col}_std"])
        text = "−inf (underflow)" if mean == -math.inf else text
        data = {"col": col, "mean": mean, "std": std}
        if not math.isnan(low):
            data.update(low=float(low), high=float(high))
        cells.append(Cell(text, data))
    return cells


def label(sweep: Sweep, values: tuple) -> str:
    """A configuration's name: the values of the keys that vary in this sweep (the model
    always), e.g. 'lstm' or 'gru, task.seq_len=100'."""
    parts = []
    for key, value in zip(sweep.by, values, strict=True):
        if key != "model" and not varies(sweep.runs[key]):
            continue
        parts.append(str(value) if key in ("model", "task") else f"{key}={value}")
    return ", ".join(parts)


def _solved(row: pd.Series) -> Cell:
    """'k/n [low, high]': seeds solved, with Wilson's 95% interval of the fraction."""
    cell = _count(row, "solved", "completed")
    low, high = float(row.get("solved_low", math.nan)), float(row.get("solved_high", math.nan))
    if not math.isnan(low):
        cell.text += f" [{low:.2f}, {high:.2f}]"
        cell.data.update(low=low, high=high)
    return cell


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
        f"last val {metric}",
        f"best val {metric} (kept weights)",
        *([f"test {metric}"] if test else []),
        "baseline",
        "solved (kept weights)",
        "first solved at step",
        "train time (s)",
        "parameters",
    ]
    numbers = {
        "final_metric": _column(sweep, "final_metric"),
        "best_metric": _column(sweep, "best_metric"),
        "test_metric": _column(sweep, "test_metric"),
        "baseline": _column(sweep, "baseline", interval=False),
        "solved_step": _column(sweep, "solved_step", integer=True),
        "wall_time_s": _column(sweep, "wall_time_s", interval=False),
        "num_parameters": _column(sweep, "num_parameters", integer=True, interval=False),
    }
    rows, row_keys = [], []
    for i, (_, row) in enumerate(sweep.table.iterrows()):
        values = tuple(row[k] for k in sweep.by)
        rows.append(
            [
                *(Cell(str(row[k])) for k in keys),
                _count(row, "completed", "runs"),
                Cell(f"{int(row['diverged'])} / {int(row['failed'])}"),
                numbers["final_metric"][i],
                numbers["best_metric"][i],
                *([numbers["test_metric"][i]] if test else []),
                numbers["baseline"][i],
                _solved(row),
                numbers["solved_step"][i],
                numbers["wall_time_s"][i],
                numbers["num_parameters"][i],
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
    names = ("init_vanishing_ratio", "end_vanishing_ratio", "init_growth_rate",
             "end_growth_rate", "init_memory_horizon", "end_memory_horizon")  # fmt: skip
    numbers = {name: _column(sweep, name) for name in names}
    numbers["max_grad_norm"] = _column(sweep, "max_grad_norm", interval=False)
    rows, row_keys = [], []
    groups = zip(sweep.groups(), sweep.table.iterrows(), strict=True)
    for i, ((values, group), (_, row)) in enumerate(groups):
        lag = max_lag(sweep, group)
        rows.append(
            [
                *(Cell(str(row[k])) for k in keys),
                *(numbers[name][i] for name in names),
                Cell("n/a" if lag is None else f"0..{lag}"),
                numbers["max_grad_norm"][i],
                _count(row, "exploding", "runs"),
            ]
        )
        row_keys.append(label(sweep, values))
    return Table(columns, rows, "comparison gradients", row_keys)


def pairs_table(pairs: pd.DataFrame) -> Table:
    """Every pair of configurations in a setting (`seqbench.verdicts.pair_frame`): the
    difference of their means with its interval, P(a better than b) with its interval, and
    the verdict."""
    from seqbench.verdicts import _word

    diffs = format_cells(pairs["diff"], [math.nan] * len(pairs), pairs["diff_low"],
                         pairs["diff_high"])  # fmt: skip
    rows, keys = [], []
    for text, (_, r) in zip(diffs, pairs.iterrows(), strict=True):
        p = f"{r['p_better']:.2g}" + (
            "" if math.isnan(r["p_low"]) else f" [{r['p_low']:.2g}, {r['p_high']:.2g}]"
        )
        rows.append([
            Cell(r["setting"] or "all"), Cell(str(r["a"])), Cell(str(r["b"])),
            Cell(f"{r['n_a']} / {r['n_b']}"),
            Cell(text, {"diff": r["diff"], "low": r["diff_low"], "high": r["diff_high"]}),
            Cell(p, {"p": r["p_better"], "low": r["p_low"], "high": r["p_high"]}),
            Cell(_word(r)),
        ])  # fmt: skip
        keys.append(f"{r['setting']}: {r['a']} vs {r['b']}")
    metric = pairs["metric"].iloc[0].replace("_metric", "")
    columns = ["setting", "a", "b", "seeds", f"{metric}: mean a − b [interval]",
               "P(a better) [interval]", "verdict"]  # fmt: skip
    return Table(columns, rows, "comparison pairs", keys)


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
