"""The report's figures of one sweep, each with a caption that says what to look at: learning
curves and gradient norm against t (seqbench.plots), gradient heat maps per configuration, the
memory horizon, and the gate views of gated cells."""

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
from seqbench.report.tables import gate_rows, label, timesteps

# Below this log10 ratio ||dL/dh_1|| / ||dL/dh_T||, the first inputs get no usable gradient.
HOPELESS = -8.0


def figure_blocks(sweep: Sweep, prefix: str) -> list:
    """Learning curves, gradient norm vs t, heat maps, memory horizon and gate views."""
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
    blocks.append(Heading("Gradient norm against timestep", 3))
    blocks.append(
        Figure(
            f"{prefix}-grad_norm_vs_t",
            figures.png_bytes(plots.grad_norm_figure(sweep.runs, sweep.by)),
            _grad_caption(sweep),
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
        f"±1 std band ({'lower' if mode == 'min' else 'higher'} is better)."
    )
    if isinstance(baseline, float):
        text += (
            f" The dotted line is the baseline, {baseline:.4g}"
            f" ({metrics.get('baseline_name') or 'the task’s trivial predictor'}): a curve "
            "that stays on it has learned nothing the baseline does not know."
        )
    return text


def _grad_caption(sweep: Sweep) -> str:
    text = (
        "log10 ‖dL/dh_t‖ of layer 0 against the timestep t, at initialisation (left) and at "
        "the end of training (right): the mean over seeds of the log norms, band from the "
        "lowest to the highest seed. The loss is read at the end, so t = T gets the gradient "
        "first; a curve that falls to the left is a gradient that vanishes before it "
        "reaches the early inputs, a flat one reaches them all."
    )
    notes = []
    for (values, group), (_, row) in zip(sweep.groups(), sweep.table.iterrows(), strict=True):
        ratio = row["end_vanishing_ratio_mean"]
        if row["completed"] == 0 or math.isnan(ratio):
            continue
        name, length = label(sweep, values), timesteps(sweep, group)
        if math.isinf(ratio):
            notes.append(
                f"{name}'s gradient at t=1 underflowed to 0: it cannot learn a "
                f"dependency that reaches back {length} steps"
            )
        elif ratio <= HOPELESS:
            notes.append(
                f"{name}'s gradient at t=1 is {power(ratio)} of its value at T={length}: "
                "it cannot learn the dependency"
            )
        else:
            notes.append(f"{name} keeps {power(ratio)} of it at t=1")
    if notes:
        text += " At the end of training: " + "; ".join(notes) + "."
    return text


def _heatmap_blocks(sweep: Sweep, prefix: str) -> list:
    maps = []
    for values, group in sweep.groups(completed_only=True):
        dirs = [Path(d) for d in group["run_dir"] if (Path(d) / "grad_norms.csv").is_file()]
        if dirs and len(pd.read_csv(dirs[0] / "grad_norms.csv", nrows=1)):
            maps.append((values, len(dirs), figures.log_grad_map(dirs)))
    if not maps:
        return []
    finite = np.concatenate([m.to_numpy(dtype=float).ravel() for _, _, m in maps])
    finite = finite[np.isfinite(finite)]
    limits = (float(finite.min()), float(finite.max())) if len(finite) else (-1.0, 0.0)
    gallery = []
    for values, seeds, logs in maps:
        name = label(sweep, values)
        first, last = logs.iloc[-1].iloc[0], logs.iloc[-1].iloc[-1]
        reach = (
            f"at the last step the gradient at t=1 is {power(first - last)} of that at T"
            if np.isfinite(first) and np.isfinite(last)
            else "at the last step the gradient at t=1 underflowed to 0 (grey)"
        )
        gallery.append(
            Figure(
                f"{prefix}-heatmap-{_slug(name)}",
                figures.png_bytes(figures.heatmap_figure(logs, name, limits)),
                f"{name}: log10 ‖dL/dh_t‖ over training step × timestep, geometric mean over "
                f"{seeds} seed{'s' * (seeds > 1)}; {reach}.",
                f"gradient heat map, {name}",
            )
        )
    return [
        Heading("Gradient heat maps", 3),
        Text(
            "One map per configuration, on one colour scale: each row is a snapshot of "
            "log10 ‖dL/dh_t‖ (layer 0) over the timesteps, training goes upwards. Dark on the "
            "left means the early timesteps get (almost) no gradient; watch whether that dark "
            "region shrinks as the model learns (grey: the norm underflowed to 0)."
        ),
        Gallery(gallery),
    ]


def _horizon_blocks(sweep: Sweep, prefix: str) -> list:
    rows = []
    for values, group in sweep.groups(completed_only=True):
        for run_dir in group["run_dir"]:
            grads = sweep.metrics[run_dir].get("grad_norms") or {}
            init, end = grads.get("init"), grads.get("end")
            if not (init and end) or "memory_horizon" not in end["layers"][0]:
                continue
            rows.append(
                {
                    "label": label(sweep, values),
                    "timesteps": end["timesteps"],
                    "init": init["layers"][0].get("memory_horizon", math.nan),
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
            "How many timesteps back from T the gradient of layer 0 stays above 1e-3 of its "
            "value at T, at initialisation (grey) and at the end (blue); bars: the mean over "
            "seeds, dots: each seed, black tick: T. A bar that reaches the tick is a cell "
            "whose gradient reaches the first input; a short one cannot learn a dependency "
            "longer than the bar.",
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
                f"{name}, seed {seed} (the best final metric): the gradient over training "
                f"(left) beside each unit's {gate} gate (right; mean over the batch and the "
                f"timesteps, units sorted by their last value). Units near 1 keep their state "
                f"and carry the gradient back in time: {100 * end:.0f} % of the units average "
                f"above 0.95 at the end (over seeds), {100 * start:.0f} % at initialisation.",
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
