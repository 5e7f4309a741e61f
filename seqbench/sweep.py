"""Sweeps: the comparison table and pictures written when a multirun ends, and skipping jobs
that already completed when a sweep is re-run into the same directory."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from hydra.experimental.callback import Callback as HydraCallback
from omegaconf import DictConfig

from seqbench.compare import aggregate, find_runs, group_keys, load_runs, print_table, write_tables


def summarize_sweep(sweep_dir: Path, console: bool = True) -> None:
    """Write comparison.csv/.md, grad_norm_vs_t.png and learning_curves.png into `sweep_dir`
    (and the same pictures to TensorBoard under sweep_dir/tb_summary); print the table."""
    from torch.utils.tensorboard import SummaryWriter

    from seqbench.plots import grad_norm_figure, learning_curve_figure

    run_dirs = find_runs([sweep_dir])
    if not run_dirs:
        return
    runs = load_runs(run_dirs)
    by = group_keys(runs)
    table = aggregate(runs, by)
    write_tables(table, sweep_dir)
    figures = {}
    if (runs["status"] == "completed").any():
        figures = {
            "grad_norm_vs_t": grad_norm_figure(runs, by),
            "learning_curves": learning_curve_figure(runs, by),
        }
    with SummaryWriter(str(sweep_dir / "tb_summary")) as writer:
        for name, fig in figures.items():
            fig.savefig(sweep_dir / f"{name}.png", dpi=110)
            writer.add_figure(f"sweep/{name}", fig, 0)
    if console:
        print_table(table, title=f"{sweep_dir}: {len(run_dirs)} runs")


class SweepSummary(HydraCallback):
    """Hydra callback (conf/config.yaml, hydra.callbacks): summarize when a multirun ends."""

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        summarize_sweep(Path(config.hydra.sweep.dir))


def completed_before(run_dir: Path, overrides: list[str]) -> dict | None:
    """metrics.json of an earlier completed run of the same job in `run_dir`, else None."""
    path = Path(run_dir) / "metrics.json"
    try:
        metrics = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    if metrics.get("status") == "completed" and metrics.get("overrides") == overrides:
        return metrics
    return None
