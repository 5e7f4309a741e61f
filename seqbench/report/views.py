"""The report's figures of one sweep, each with a caption that says what to look at: learning
curves, the gradient by lag and the gradient norm against t (seqbench.plots), heat maps of the
gradient by lag per configuration, the memory horizon, and the gate views of gated cells."""

from __future__ import annotations

import math
import re
from pathlib import Path

import numpy as np
import pandas as pd

from seqbench import plots
from seqbench.report import figures
from seqbench.report.collect import Sweep
from seqbench.report.render import Figure, Gallery, Heading, Text
from seqbench.report.tables import gate_rows, label, max_lag

# Below this log10 ratio of the gradient k lags back over lag 0, the inputs that far back get
# no usable gradient.
HOPELESS = -8.0


def figure_blocks(sweep: Sweep, prefix: str) -> list:
    """Learning curves, gradient by lag, gradient norm vs t, heat maps, memory horizon and gate
    views."""
    done = sweep.completed
    if done.empty:
        return []
    blocks: list = [Heading("Learning curves", 3)]
    blocks.append(
        Figure(
            f"{prefix}-learning_curves",
            figures.png_bytes(plots.learning_curve_figure(sweep.runs, sweep.by)),
            _curve_caption(sweep),
            "learning curves",
        )
    )
    if _have(sweep, "lag_norms.csv"):
        blocks.append(Heading("Gradient by lag", 3))
        blocks.append(
            Figure(
                f"{prefix}-lag_profile",
                figures.png_bytes(plots.lag_figure(sweep.runs, sweep.by)),
                _lag_caption(sweep),
                "gradient norm by lag",
            )
        )
    blocks.append(Heading("Gradient norm against timestep", 3))
    blocks.append(
        Figure(
            f"{prefix}-grad_norm_vs_t",
            figures.png_bytes(plots.grad_norm_figure(sweep.runs, sweep.by)),
            "log10 ‖dL/dh_t‖ of layer 0 against the timestep t, at initialisation (left) and "
            "at the end of training (right): the mean over seeds of the log norms, band from "
            "the lowest to the highest seed. This is where the training signal lands along "
            "the sequence: it sums every loss term's gradient and counts only the sequences "
            "that reach t, so on padded or many-loss tasks its shape is the loss's, not the "
            "cell's memory (the gradient by lag above is the verdict).",
            "gradient norm against timestep",
        )
    )
    blocks += _heatmap_blocks(sweep, prefix)
    blocks += _horizon_blocks(sweep, prefix)
    blocks += _gate_blocks(sweep, prefix)
    return blocks


def _curve_caption(sweep: Sweep) -> str:
    metrics = next(iter(sweep.metrics.values()))
    metric, mode = metrics.get("metric"), metrics.get("mode")
    baseline = metrics.get("baseline")
    text = (
        f"Validation {metric} against training step, mean over the completed seeds with a "
        f"band from the lowest to the highest seed ({'lower' if mode == 'min' else 'higher'} "
        "is better)."
    )
    if isinstance(baseline, float):
        text += (
            f" The dotted line is the baseline, {baseline:.4g}"
            f" ({metrics.get('baseline_name') or 'the task’s trivial predictor'}): a curve "
            "that stays on it has learned nothing the baseline does not know."
        )
    return text


def _have(sweep: Sweep, name: str) -> bool:
    """Whether some completed run of the sweep wrote `name` (runs older than it did not)."""
    return any((Path(d) / name).is_file() for d in sweep.completed["run_dir"])


def _lag_caption(sweep: Sweep) -> str:
    text = (
        "The gradient of a loss term k steps back from where it reads (lag k; RMS over the "
        "(sequence, source) pairs that reach lag k) of layer 0, at initialisation (left) and "
        "at the end of training (right): the mean over seeds of the log norms, band from the "
        "lowest to the highest seed. A curve that falls with k is a gradient that vanishes "
        "before it reaches the inputs the loss depends on; a flat one reaches them all."
    )
    notes = []
    for (values, group), (_, row) in zip(sweep.groups(), sweep.table.iterrows(), strict=True):
        ratio = row["end_vanishing_ratio_mean"]
        if row["completed"] == 0 or math.isnan(ratio):
            continue
        name, lag = label(sweep, values), max_lag(sweep, group)
        if math.isinf(ratio):
            notes.append(
                f"{name}'s gradient {lag} lags back is 0 even on a log scale: it cannot learn "
                f"a dependency {lag} steps long"
            )
        elif ratio <= HOPELESS:
            notes.append(
                f"{name}'s gradient {lag} lags back is {power(ratio)} of its value at lag 0: "
                "it cannot learn a dependency that long"
            )
        else:
            notes.append(f"{name} keeps {power(ratio)} of it {lag} lags back")
    if notes:
        text += " At the end of training: " + "; ".join(notes) + "."
    return text


def _heatmap_blocks(sweep: Sweep, prefix: str) -> list:
    maps = []
    for values, group in sweep.groups(completed_only=True):
        dirs = [Path(d) for d in group["run_dir"] if (Path(d) / "lag_norms.csv").is_file()]
        if dirs and len(pd.read_csv(dirs[0] / "lag_norms.csv", nrows=1)):
            maps.append((values, len(dirs), figures.log_lag_map(dirs)))
    if not maps:
        return []
    finite = np.concatenate([m.to_numpy(dtype=float).ravel() for _, _, m in maps])
    finite = finite[np.isfinite(finite)]
    limits = (float(finite.min()), float(finite.max())) if len(finite) else (-1.0, 0.0)
    gallery = []
    for values, seeds, logs in maps:
        name = label(sweep, values)
        last = logs.iloc[-1]
        reached = last[np.isfinite(last)]
        reach = (
            f"at the last step the gradient {reached.index[-1]} lags back is "
            f"{power(reached.iloc[-1] - reached.iloc[0])} of that at lag 0"
            if len(reached) > 1
            else "at the last step no lag beyond 0 has a gradient"
        )
        gallery.append(
            Figure(
                f"{prefix}-heatmap-{_slug(name)}",
                figures.png_bytes(figures.heatmap_figure(logs, name, limits)),
                f"{name}: log10 of the gradient by lag over training step × lag, geometric "
                f"mean over {seeds} seed{'s' * (seeds > 1)}; {reach}.",
                f"gradient heat map by lag, {name}",
            )
        )
    return [
        Heading("Gradient heat maps by lag", 3),
        Text(
            "One map per configuration, on one colour scale: each row is a snapshot of the "
            "log10 gradient norm of a loss term (layer 0) against how many steps back it "
            "reaches (lag 0 on the left: where the loss reads), training goes upwards. Dark on "
            "the right means the gradient dies before it reaches that far back; watch whether "
            "the bright region widens as the model learns (grey: no pair of the batch reaches "
            "that lag)."
        ),
        Gallery(gallery),
    ]


def _horizon_blocks(sweep: Sweep, prefix: str) -> list:
    rows = []
    for values, group in sweep.groups(completed_only=True):
        for run_dir in group["run_dir"]:
            lags = sweep.metrics[run_dir].get("lag_norms") or {}
            init, end = lags.get("init"), lags.get("end")
            if not (init and end):
                continue
            rows.append(
                {
                    "label": label(sweep, values),
                    "reach": end["layers"][0]["max_lag"] + 1,
                    "init": init["layers"][0]["memory_horizon"],
                    "end": end["layers"][0]["memory_horizon"],
                }
            )
    if not rows:
        return []
    return [
        Heading("Memory horizon", 3),
        Figure(
            f"{prefix}-memory_horizon",
            figures.png_bytes(figures.horizon_figure(pd.DataFrame(rows))),
            "How many lags back from where the loss reads the gradient of a loss term (layer "
            "0) stays above 1e-3 of its value at lag 0, at initialisation (grey) and at the "
            "end (blue); bars: the mean over seeds, dots: each seed, black tick: the lags the "
            "verdicts count (those more than half of the pairs reach). A bar that reaches the "
            "tick is a cell whose gradient reaches as far back as the data goes; a short one "
            "cannot learn a dependency longer than the bar.",
            "memory horizon per configuration",
        ),
    ]


def _gate_blocks(sweep: Sweep, prefix: str) -> list:
    gallery = []
    for values, gate, numbers in gate_rows(sweep):
        group = dict((v, g) for v, g in sweep.groups(completed_only=True))[values]
        # the seed that learned best shows what the gates do when the cell learns
        mode = sweep.metrics[group["run_dir"].iloc[0]].get("mode")
        group = group.sort_values("final_metric", ascending=mode != "max", na_position="last")
        run_dir = next(
            (Path(d) for d in group["run_dir"] if (Path(d) / "gates.csv").is_file()), None
        )
        if run_dir is None:
            continue
        seed, name = group[group["run_dir"] == str(run_dir)]["seed"].iloc[0], label(sweep, values)
        start, end = np.mean(numbers["init_above"]), np.mean(numbers["end_above"])
        gallery.append(
            Figure(
                f"{prefix}-gates-{_slug(name)}",
                figures.png_bytes(plots.gate_and_gradient_figure(run_dir)),
                f"{name}, seed {seed} (the best final metric): the gradient by lag over "
                f"training (left) beside each unit's {gate} gate (right; mean over the batch "
                f"and the timesteps, units sorted by their last value). Units near 1 keep their "
                f"state and carry the gradient back in time: {100 * end:.0f} % of the units "
                f"average above 0.95 at the end (over seeds), {100 * start:.0f} % at "
                "initialisation.",
                f"gates and gradient, {name}",
            )
        )
    if not gallery:
        return []
    return [Heading("Gates", 3), *gallery]


def power(log10_ratio: float) -> str:
    """A ratio given by its log10, as a reader takes it in: '0.63' or '1e-11'."""
    if log10_ratio >= -2:
        return f"{10**log10_ratio:.2g}"
    return f"1e{log10_ratio:.0f}"


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9.]+", "-", text).strip("-").lower() or "config"
