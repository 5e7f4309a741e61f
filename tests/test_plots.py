"""The sweep's learning-curve picture: log axis for losses, a band that stays within the values
the seeds reached, the legend outside the data."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.collections import PolyCollection

from seqbench.plots import learning_curve_figure

STEPS = np.arange(0, 1001, 100)


def fake_runs(tmp_path: Path, metric: str, mode: str, curves: dict[str, list[np.ndarray]],
              baseline: float) -> pd.DataFrame:  # fmt: skip
    """Run rows (as load_runs makes them) whose history.csv holds the given validation curves."""
    rows = []
    for model, seeds in curves.items():
        for seed, values in enumerate(seeds):
            run_dir = tmp_path / f"{model}-{seed}"
            run_dir.mkdir()
            pd.DataFrame({"step": STEPS, "train_loss": 1.0, f"val_{metric}": values}).to_csv(
                run_dir / "history.csv", index=False
            )
            rows.append({"model": model, "task": "t", "seed": seed, "status": "completed",
                         "metric": metric, "mode": mode, "baseline": baseline,
                         "run_dir": str(run_dir)})  # fmt: skip
    rows.append({**rows[0], "status": "failed", "run_dir": str(tmp_path / "nowhere")})
    return pd.DataFrame(rows)


def bands(fig) -> list[np.ndarray]:
    ax = fig.axes[0]
    return [c.get_paths()[0].vertices for c in ax.collections if isinstance(c, PolyCollection)]


def test_a_loss_with_seeds_far_apart_gets_a_log_axis_and_a_band_above_zero(tmp_path) -> None:
    decay = 0.17 * np.exp(-STEPS / 150)  # 0.17 down to 2e-4
    # one seed learns, two stay near the baseline: mean - std < 0 at every late step
    curves = {"lstm": [decay, np.full_like(decay, 0.17), decay * 0.01],
              "rnn": [np.full_like(decay, 0.17), np.full_like(decay, 0.168)]}  # fmt: skip
    runs = fake_runs(tmp_path, "mse", "min", curves, baseline=1 / 6)
    mean, std = np.mean(curves["lstm"], 0), np.std(curves["lstm"], 0, ddof=1)
    assert (mean - std < 0).any()  # the case a mean ± std band would get wrong
    fig = learning_curve_figure(runs, ["model"])
    ax = fig.axes[0]
    assert ax.get_yscale() == "log"
    found = bands(fig)
    assert len(found) == 2
    for vertices in found:
        assert (vertices[:, 1] > 0).all()
    lstm = found[0][:, 1]
    assert lstm.min() == pytest.approx(np.min(curves["lstm"]))
    assert lstm.max() == pytest.approx(np.max(curves["lstm"]))
    line = ax.get_lines()[0].get_ydata()
    np.testing.assert_allclose(line, mean)


def test_accuracy_stays_linear(tmp_path) -> None:
    rise = 0.5 + 0.3 * (1 - np.exp(-STEPS / 300))
    runs = fake_runs(tmp_path, "accuracy", "max", {"gru": [rise, rise - 0.05]}, baseline=0.58)
    fig = learning_curve_figure(runs, ["model"])
    assert fig.axes[0].get_yscale() == "linear"
    assert (bands(fig)[0][:, 1] >= 0).all()


def test_a_zero_loss_keeps_a_linear_axis(tmp_path) -> None:
    zeros = np.zeros(len(STEPS))
    runs = fake_runs(tmp_path, "mse", "min", {"gru": [zeros, zeros + 0.1]}, baseline=0.1)
    assert learning_curve_figure(runs, ["model"]).axes[0].get_yscale() == "linear"


def test_the_legend_sits_outside_the_data_area(tmp_path) -> None:
    decay = 0.17 * np.exp(-STEPS / 150)
    curves = {f"model_{i}": [decay * (i + 1), decay * (i + 2)] for i in range(6)}
    fig = learning_curve_figure(fake_runs(tmp_path, "mse", "min", curves, 1 / 6), ["model"])
    renderer = FigureCanvasAgg(fig).get_renderer()
    fig.draw(renderer)
    ax = fig.axes[0]
    legend = ax.get_legend().get_window_extent(renderer)
    data = ax.get_window_extent(renderer)
    assert legend.x0 >= data.x1  # right of the axes, not over the curves
    assert legend.x1 <= fig.bbox.x1 + 1  # and inside the picture


def test_a_loss_within_a_decade_keeps_plain_tick_labels(tmp_path) -> None:
    flat = 0.017 + 0.001 * np.sin(STEPS / 100)  # stocks: RMSE 0.016-0.018, near its baseline
    fig = learning_curve_figure(
        fake_runs(tmp_path, "rmse", "min", {"gru": [flat]}, 0.0168), ["model"]
    )
    ax = fig.axes[0]
    assert ax.get_yscale() == "log"
    assert ax.yaxis.get_minor_formatter()(0.0175, 0) == "0.0175"  # not 1.75x10^-2
