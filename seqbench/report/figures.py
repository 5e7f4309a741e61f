"""The report's own pictures (the sweep-wide ones come from seqbench.plots): the gradient heat
map of one configuration, the memory horizon per configuration, and a figure as PNG bytes."""

from __future__ import annotations

import io
import warnings
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd
from matplotlib import colormaps
from matplotlib.figure import Figure


def png_bytes(fig: Figure, dpi: int = 100) -> bytes:
    """The figure as a PNG file's bytes."""
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=dpi)
    return buffer.getvalue()


def log_grad_map(run_dirs: Sequence[Path], layer: int = 0) -> pd.DataFrame:
    """log10 ||dL/dh_t|| of `layer` as a (training step x t) table: the mean over the runs of
    their log10 norms (a geometric mean), over the snapshot steps all runs share; NaN where every
    run's norm underflowed to 0."""
    maps = []
    for run_dir in run_dirs:
        grads = pd.read_csv(Path(run_dir) / "grad_norms.csv")
        grads = grads[grads["layer"] == layer]
        norms = grads.pivot(index="step", columns="t", values="norm")
        with np.errstate(divide="ignore"):
            maps.append(np.log10(norms.where(norms > 0)))
    steps = sorted(set.intersection(*(set(m.index) for m in maps)))
    stack = np.stack([m.loc[steps].to_numpy(dtype=float) for m in maps])  # (runs, steps, T)
    with np.errstate(all="ignore"), warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # all-NaN cells: underflow or padding
        mean = np.nanmean(stack, axis=0) if np.isfinite(stack).any() else stack[0]
    return pd.DataFrame(mean, index=steps, columns=maps[0].columns)


def heatmap_figure(logs: pd.DataFrame, title: str, limits: tuple[float, float]) -> Figure:
    """One configuration's log10 ||dL/dh_t|| over (training step x timestep), on a colour scale
    shared by the sweep's configurations; grey where the norm underflowed to 0."""
    fig = Figure(figsize=(5.2, 3.4))
    ax = fig.subplots()
    steps = logs.index.to_numpy()
    data = np.ma.masked_invalid(logs.to_numpy(dtype=float))
    cmap = colormaps["viridis"].with_extremes(bad="lightgrey")
    image = ax.imshow(
        data,
        aspect="auto",
        origin="lower",
        cmap=cmap,
        interpolation="nearest",
        extent=(0.5, logs.shape[1] + 0.5, -0.5, len(steps) - 0.5),
        vmin=limits[0],
        vmax=limits[1],
    )
    ticks = np.linspace(0, len(steps) - 1, min(len(steps), 6)).round().astype(int)
    ax.set_yticks(ticks, [str(steps[i]) for i in ticks])
    ax.set(xlabel="timestep t", ylabel="training step", title=title)
    fig.colorbar(image, ax=ax, label="log10 ||dL/dh_t||")
    fig.tight_layout()
    return fig


def horizon_figure(points: pd.DataFrame) -> Figure:
    """Memory horizon per configuration at init and at the end of training: a bar for the mean
    over seeds, a dot per seed, and a black tick at T (the longest horizon possible).

    Args:
        points: one row per completed run: label, timesteps (T), init, end.
    """
    labels = list(dict.fromkeys(points["label"]))
    fig = Figure(figsize=(max(5.0, 1.3 * len(labels) + 2), 3.6))
    ax = fig.subplots()
    x = np.arange(len(labels))
    for offset, when, colour in ((-0.2, "init", "C7"), (0.2, "end", "C0")):
        groups = [points[points["label"] == label][when].to_numpy(dtype=float) for label in labels]
        means = [np.nanmean(g) if np.isfinite(g).any() else 0.0 for g in groups]
        ax.bar(
            x + offset,
            means,
            width=0.38,
            color=colour,
            alpha=0.6,
            label="at initialisation" if when == "init" else "at the end",
        )
        for i, values in enumerate(groups):
            ax.plot(np.full(len(values), x[i] + offset), values, "o", color=colour, ms=4)
    for i, label in enumerate(labels):
        length = points[points["label"] == label]["timesteps"].max()
        ax.plot([x[i] - 0.42, x[i] + 0.42], [length, length], color="black", linewidth=1.5)
    ax.set_xticks(
        x,
        labels,
        rotation=20 if len(labels) > 4 else 0,
        ha="right" if len(labels) > 4 else "center",
    )
    ax.set(ylabel="timesteps back from T", title="memory horizon (black: T)", ylim=(0, None))
    ax.legend(fontsize="small")
    fig.tight_layout()
    return fig
