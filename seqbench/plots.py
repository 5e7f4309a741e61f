"""Sweep pictures: gradient norm vs timestep and learning curves, mean over seeds with a band."""

from __future__ import annotations

import json
import warnings
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd
from matplotlib.figure import Figure
from matplotlib.ticker import FuncFormatter

LINESTYLES = ("-", "--", ":", "-.")


def _styles(groups: Sequence[tuple]) -> dict[tuple, dict]:
    """One colour per model (the first key), one line style per value of the other keys."""
    models = sorted({g[0] for g in groups})
    rests = sorted({g[1:] for g in groups}, key=str)
    return {
        g: {"color": f"C{models.index(g[0])}", "linestyle": LINESTYLES[rests.index(g[1:]) % 4]}
        for g in groups
    }


def _label(keys: Sequence[str], values: Sequence) -> str:
    return ", ".join(
        f"{v}" if k in ("model", "task") else f"{k}={v}" for k, v in zip(keys, values, strict=True)
    )


def _profile_figure(
    runs: pd.DataFrame, by: Sequence[str], csv: str, across: str, xlabel: str, ylabel: str,
    title: str,
) -> Figure:  # fmt: skip
    """Layer 0's log10 norms from each run's `csv` (columns step, layer, `across`, norm and,
    where present, log10_norm), at init and at the end: the mean over seeds of the log10 norms (a
    geometric mean), with a band from the lowest to the highest seed. A value that underflowed
    to 0 in some seed is left out of that seed's curve, so where only some seeds underflow the
    mean is over the others (the band's floor shows the underflow)."""
    fig = Figure(figsize=(11, 4))
    axes = fig.subplots(1, 2, sharey=True)
    groups = list(runs[runs["status"] == "completed"].groupby(list(by), sort=True))
    styles = _styles([v if isinstance(v, tuple) else (v,) for v, _ in groups])
    for values, group in groups:
        values = values if isinstance(values, tuple) else (values,)
        curves: dict[str, list] = {"init": [], "end": []}
        for run_dir in group["run_dir"]:
            if not (Path(run_dir) / csv).is_file():  # a run older than that file
                continue
            norms = pd.read_csv(Path(run_dir) / csv)
            norms = norms[norms["layer"] == 0]
            for when, step in (("init", norms["step"].min()), ("end", norms["step"].max())):
                snap = norms[norms["step"] == step].sort_values(across)
                with np.errstate(divide="ignore"):
                    logs = snap["log10_norm"] if "log10_norm" in snap else np.log10(snap["norm"])
                logs = logs.to_numpy(dtype=float)
                curves[when].append(pd.Series(np.where(np.isfinite(logs), logs, np.nan),
                                              index=snap[across].to_numpy()))  # fmt: skip
        for ax, when in zip(axes, ("init", "end"), strict=True):
            if not curves[when]:
                continue
            stack = pd.concat(curves[when], axis=1).sort_index()  # (x, seeds): lengths differ
            with warnings.catch_warnings():  # an x where every seed underflowed stays NaN
                warnings.simplefilter("ignore", RuntimeWarning)
                mean = np.nanmean(stack.to_numpy(), axis=1)
                low, high = np.nanmin(stack.to_numpy(), 1), np.nanmax(stack.to_numpy(), 1)
            x = stack.index.to_numpy()
            ax.plot(x, mean, label=_label(by, values), **styles[values])
            ax.fill_between(x, low, high, color=styles[values]["color"], alpha=0.15)
    for ax, when in zip(axes, ("at initialisation", "at the end of training"), strict=True):
        ax.set(xlabel=xlabel, title=f"{title} {when}")
    axes[0].set_ylabel(ylabel)
    if groups:
        axes[1].legend(fontsize="small")
    fig.tight_layout()
    return fig


def grad_norm_figure(runs: pd.DataFrame, by: Sequence[str]) -> Figure:
    """log10 ||dL/dh_t|| of layer 0 vs t, at init and at the end (where the training signal
    lands), mean over seeds with a min-max band (see `_profile_figure`)."""
    return _profile_figure(runs, by, "grad_norms.csv", "t", "timestep t",
                           "log10 ||dL/dh_t|| (layer 0)", "gradient norm")  # fmt: skip


def lag_figure(runs: pd.DataFrame, by: Sequence[str]) -> Figure:
    """The lag profile of layer 0 (`seqbench.lags`: log10 of the RMS gradient norm of a loss
    term k steps back from where it reads) at init and at the end, mean over seeds with a
    min-max band; lags beyond a seed's batch are left out of its curve."""
    return _profile_figure(
        runs,
        by,
        "lag_norms.csv",
        "lag",
        "lag k (steps back from the loss)",
        "log10 RMS ||d l_s/dh_(s-k)|| (layer 0)",
        "gradient by lag",
    )


def learning_curve_figure(runs: pd.DataFrame, by: Sequence[str]) -> Figure:
    """Validation metric vs step per configuration: the mean over seeds, and a band from the
    lowest to the highest seed (a mean ± std band would dip below zero for a loss whose seeds
    disagree by orders of magnitude; the min-max band stays within values a run reached).

    A task minimising its metric (MSE, RMSE, cross-entropy, bits per character) gets a log
    y-axis: on the adding problem the story is 1e-2 against 1e-4, which a linear axis flattens
    onto the floor. A maximised one (accuracy) stays linear. The legend sits right of the axes.
    """
    fig = Figure(figsize=(9, 4), layout="constrained")
    ax = fig.subplots()
    done = runs[runs["status"] == "completed"]
    metric = done["metric"].iloc[0] if len(done) else None
    log_axis = bool(len(done)) and (done["mode"] == "min").all()
    groups = list(done.groupby(list(by), sort=True))
    styles = _styles([v if isinstance(v, tuple) else (v,) for v, _ in groups])
    for values, group in groups:
        values = values if isinstance(values, tuple) else (values,)
        column = f"val_{group['metric'].iloc[0]}"
        frames = [pd.read_csv(Path(d) / "history.csv")[["step", column]] for d in group["run_dir"]]
        curve = pd.concat(frames).groupby("step")[column].agg(["mean", "min", "max"])
        log_axis = log_axis and bool((curve["min"] > 0).all())  # a zero has no logarithm
        ax.plot(curve.index, curve["mean"], label=_label(by, values), **styles[values])
        ax.fill_between(curve.index, curve["min"], curve["max"],
                        color=styles[values]["color"], alpha=0.15, linewidth=0)  # fmt: skip
        baseline = group["baseline"].iloc[0]
        if np.isfinite(baseline):
            ax.axhline(baseline, color="gray", linestyle=":", linewidth=1)
    if log_axis:
        ax.set_yscale("log")
        low, high = ax.get_ylim()
        if high / low < 10:  # within a decade the 1.7x10^-2 labels say less than 0.017
            plain = FuncFormatter(lambda value, _: f"{value:.3g}")
            ax.yaxis.set_major_formatter(plain)
            ax.yaxis.set_minor_formatter(plain)
    ax.set(
        xlabel="training step",
        ylabel=f"validation {metric}" + (" (log scale)" if log_axis else ""),
        title="learning curves: mean over seeds, band min-max (dotted: baseline)",
    )
    if groups:
        ax.legend(fontsize="small", loc="upper left", bbox_to_anchor=(1.01, 1.0),
                  borderaxespad=0.0)  # fmt: skip
    return fig


def gate_and_gradient_figure(run_dir: Path, layer: int = 0) -> Figure:
    """One run of a gated cell over training, side by side: the log10 gradient norm by lag over
    (training step x lag; log10 ||dL/dh_t|| over timesteps for a run without lag_norms.csv), and
    each unit's memory gate (metrics.json's gates.memory_gate: LSTM
    forget, GRU update; gates.csv: its mean over the batch and the timesteps) over (training
    step x unit, units sorted by their last value), for the snapshots that have gates."""
    run_dir = Path(run_dir)
    gate = json.loads((run_dir / "metrics.json").read_text())["gates"]["memory_gate"]
    units = pd.read_csv(run_dir / "gates.csv")
    units = units[units["layer"] == layer].pivot(index="step", columns="unit", values=gate)
    units = units[units.iloc[-1].sort_values().index]  # the units that hold on the right
    by_lag = (run_dir / "lag_norms.csv").is_file()
    grads = pd.read_csv(run_dir / ("lag_norms.csv" if by_lag else "grad_norms.csv"))
    grads = grads[(grads["layer"] == layer) & grads["step"].isin(units.index)]
    across = "lag" if by_lag else "t"
    with np.errstate(divide="ignore"):
        values = grads["log10_norm"] if by_lag else np.log10(grads["norm"])
    logs = grads.assign(value=values).pivot(index="step", columns=across, values="value")
    fig = Figure(figsize=(11, 4))
    axes = fig.subplots(1, 2, sharey=True)
    title = "log10 gradient norm by lag" if by_lag else "log10 ||dL/dh_t||"
    maps = [  # (table, title, x label, first x value, colour map, limits)
        (logs.where(np.isfinite(logs)), f"{title}, layer {layer}",
         "lag k" if by_lag else "timestep t", 0 if by_lag else 1, "viridis", None),
        (units, f"{gate} gate per unit (mean over batch and t)", "unit (sorted by last value)",
         1, "magma", (0.0, 1.0)),
    ]  # fmt: skip
    for ax, (table, title, xlabel, first, cmap, limits) in zip(axes, maps, strict=True):
        steps = table.index.to_numpy()
        image = ax.imshow(
            table.to_numpy(), aspect="auto", origin="lower", cmap=cmap, interpolation="nearest",
            extent=(first - 0.5, table.shape[1] + first - 0.5, -0.5, len(steps) - 0.5),
            **({} if limits is None else {"vmin": limits[0], "vmax": limits[1]}),
        )  # fmt: skip
        ticks = np.linspace(0, len(steps) - 1, min(len(steps), 8)).round().astype(int)
        ax.set_yticks(ticks, [str(steps[i]) for i in ticks])
        ax.set(xlabel=xlabel, title=title)
        fig.colorbar(image, ax=ax)
    axes[0].set_ylabel("training step")
    fig.tight_layout()
    return fig
