"""The report's own pictures (the sweep-wide ones come from seqbench.plots): the gradient heat
map by lag of one configuration, the memory horizon per configuration, and a figure as PNG
bytes."""

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


def log_lag_map(run_dirs: Sequence[Path], layer: int = 0) -> pd.DataFrame:
    """log10 of the gradient norm by lag of `layer` (lag_norms.csv) as a (training step x lag)
    table: the mean over the runs of their log10 norms (a geometric mean), over the snapshot
    steps all runs share; NaN where no run reaches the lag or every run's norm is 0."""
    maps = []
    for run_dir in run_dirs:
        lags = pd.read_csv(Path(run_dir) / "lag_norms.csv")
        lags = lags[lags["layer"] == layer]
        maps.append(lags.pivot(index="step", columns="lag", values="log10_norm"))
    steps = sorted(set.intersection(*(set(m.index) for m in maps)))
    columns = sorted(set().union(*(m.columns for m in maps)))  # batches reach different lags
    stack = np.stack([m.reindex(index=steps, columns=columns).to_numpy(dtype=float)
                      for m in maps])  # (runs, steps, lags)  # fmt: skip
    stack[~np.isfinite(stack)] = np.nan
    with np.errstate(all="ignore"), warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # all-NaN cells: beyond every batch
        mean = np.nanmean(stack, axis=0)
    return pd.DataFrame(mean, index=steps, columns=columns)


def heatmap_figure(logs: pd.DataFrame, title: str, limits: tuple[float, float]) -> Figure:
    """One configuration's log10 gradient norm by lag over (training step x lag), on a colour
    scale shared by the sweep's configurations; grey where no pair reaches the lag."""
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
        extent=(-0.5, logs.shape[1] - 0.5, -0.5, len(steps) - 0.5),
        vmin=limits[0],
        vmax=limits[1],
    )
    ticks = np.linspace(0, len(steps) - 1, min(len(steps), 6)).round().astype(int)
    ax.set_yticks(ticks, [str(steps[i]) for i in ticks])
    ax.set(xlabel="lag k (steps back from the loss)", ylabel="training step", title=title)
    fig.colorbar(image, ax=ax, label="log10 RMS ||d l_s/dh_(s-k)||")
    fig.tight_layout()
    return fig


def horizon_figure(points: pd.DataFrame) -> Figure:
    """Memory horizon by lag per configuration at init and at the end of training: a bar for
    the mean over seeds, a dot per seed, and a black tick at the lags the verdicts count (the
    longest horizon possible).

    Args:
        points: one row per completed run: label, reach (counted lags), init, end.
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
        length = points[points["label"] == label]["reach"].max()
        ax.plot([x[i] - 0.42, x[i] + 0.42], [length, length], color="black", linewidth=1.5)
    ax.set_xticks(
        x,
        labels,
        rotation=20 if len(labels) > 4 else 0,
        ha="right" if len(labels) > 4 else "center",
    )
    ax.set(ylabel="lags back from the loss", title="memory horizon (black: lags counted)",
           ylim=(0, None))  # fmt: skip
    ax.legend(fontsize="small")
    fig.tight_layout()
    return fig
