"""Sweeps: the comparison table and pictures written when a multirun ends, and skipping jobs
that already completed when a sweep is re-run into the same directory."""

from __future__ import annotations

import logging
import os
import sys
from pathlib import Path
from typing import Any

from hydra.experimental.callback import Callback as HydraCallback
from omegaconf import DictConfig, OmegaConf

from seqbench.checks import check_config, check_keys
from seqbench.compare import (
    INTERVALS,
    aggregate,
    find_runs,
    group_keys,
    load_runs,
    print_table,
    short_markdown,
    write_tables,
)
from seqbench.errors import (
    EXIT_IO,
    EXIT_USAGE,
    ConfigError,
    closed_stdout_raises,
    silent_if_stdout_closes,
)
from seqbench.hardware import hold_collector, release_collector


def summarize_sweep(sweep_dir: Path, console: bool = True) -> None:
    """Write comparison.csv/.md, grad_norm_vs_t.png and learning_curves.png into `sweep_dir`, and
    the TensorBoard run `sweep` (sweep_dir/tb/sweep): the same pictures, the comparison table in
    its Text tab and the HParams experiment of all jobs; print the table."""
    from torch.utils.tensorboard import SummaryWriter

    from seqbench.loggers.hparams import experiment_summary
    from seqbench.loggers.runname import EVENTS, SUMMARY_RUN
    from seqbench.loggers.tensorboard import HPARAM_METRICS, run_hparams
    from seqbench.plots import grad_norm_figure, lag_figure, learning_curve_figure
    from seqbench.verdicts import pair_frame, verdict_lines

    run_dirs = find_runs([sweep_dir])
    if not run_dirs:
        return
    runs = load_runs(run_dirs)
    by = group_keys(runs)
    table = aggregate(runs, by)
    pairs = pair_frame(runs, by)
    write_tables(table, sweep_dir, pairs=pairs)
    figures = {}
    if (runs["status"] == "completed").any():
        figures = {
            "lag_profile": lag_figure(runs, by),
            "grad_norm_vs_t": grad_norm_figure(runs, by),
            "learning_curves": learning_curve_figure(runs, by),
        }
    summary_dir = sweep_dir / "tb" / SUMMARY_RUN
    for old in summary_dir.glob(EVENTS):  # a sweep run again: one summary, the latest
        old.unlink()
    with SummaryWriter(str(summary_dir)) as writer:
        # one HParams experiment for the whole sweep: the keys that vary between jobs "differ"
        jobs = [run_hparams(OmegaConf.load(d / ".hydra" / "config.yaml")) for d in run_dirs
                if (d / ".hydra" / "config.yaml").exists()]  # fmt: skip
        writer.file_writer.add_summary(experiment_summary(jobs, HPARAM_METRICS))
        comparison = sweep_dir / "comparison.md"
        if comparison.exists():  # the short table here, every column one tag further
            title = (
                f"{len(run_dirs)} runs in {sweep_dir.name}: the main columns; every "
                "column: the tag comparison_full, comparison.md and comparison.csv\n\n"
            )
            writer.add_text("comparison", title + short_markdown(table) + "\n\n" + INTERVALS, 0)
            writer.add_text("comparison_full", comparison.read_text(), 0)
        if len(pairs):  # who wins, one line per setting, as the terminal prints it
            writer.add_text("verdicts", "\n\n".join(verdict_lines(pairs, width=10**6)), 0)
        for name, fig in figures.items():
            fig.savefig(sweep_dir / f"{name}.png", dpi=110)
            writer.add_figure(f"sweep/{name}", fig, 0)
    if console:
        print_table(table, title=f"{sweep_dir}: {len(run_dirs)} runs", pairs=pairs)


# the sweep's progress watcher, by sweep directory: kept outside HydraHooks, which launchers
# pickle to send to their workers (a thread cannot be pickled)
_WATCHERS: dict[str, Any] = {}


class HydraHooks(HydraCallback):
    """Hydra callbacks (conf/config.yaml, hydra.callbacks): check that the output directory is
    writable before Hydra creates it; in a multirun, print progress lines while it runs, give
    each CUDA job its own GPU, and summarize when it ends."""

    def on_run_start(self, config: DictConfig, **kwargs: Any) -> None:
        hold_collector()  # a single run's start-up (torch is imported here) until training
        try:
            refuse_impossible_values(config)  # before Hydra creates the run directory
            ensure_writable(Path(config.hydra.run.dir), "hydra.run.dir")
        except BaseException:
            release_collector()
            raise

    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        closed_stdout_raises()  # the sweep goes on silently; its jobs keep their files
        logging.raiseExceptions = False  # and Hydra's log lines to it print no traceback each
        refuse_impossible_values(config, check_keys)  # each job checks its own values
        ensure_writable(Path(config.hydra.sweep.dir), "hydra.sweep.dir")
        if config.log.progress != "none":  # one line per finished job, whatever the launcher
            from seqbench.progress import SweepProgress, count_jobs, sweep_keys

            overrides = list(config.hydra.overrides.task)
            total = count_jobs(config.hydra, overrides)
            keys = sweep_keys(config.hydra, overrides)
            progress = SweepProgress(Path(config.hydra.sweep.dir), total, keys)
            _WATCHERS[str(config.hydra.sweep.dir)] = progress.start()
        if config.hardware.device == "auto":  # once here, instead of in every job
            from seqbench.hardware import select_device

            notice = select_device("auto")[1]
            if notice and config.log.progress != "none":
                print(notice)

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        progress = _WATCHERS.pop(str(config.hydra.sweep.dir), None)
        if progress is not None:
            progress.stop()
        with silent_if_stdout_closes():  # the table is printed after the files are written
            summarize_sweep(Path(config.hydra.sweep.dir))

    def on_job_start(self, config: DictConfig, **kwargs: Any) -> None:
        """A sweep job on CUDA takes a GPU of its own (seqbench.devices)."""
        from seqbench.devices import claim_sweep_gpu

        self.gpu = claim_sweep_gpu(config)

    def on_job_end(self, config: DictConfig, job_return: Any = None, **kwargs: Any) -> None:
        if getattr(self, "gpu", None) is not None:
            self.gpu.release()
            self.gpu = None


def refuse_impossible_values(config: DictConfig, check=check_config) -> None:
    """Exit with status 2 and one message (no traceback, nothing written) on a value that
    composes but cannot run (`check`: check_config, or check_keys before a sweep)."""
    try:
        check(config)
    except ConfigError as err:
        print(f"seqbench: error: {err}", file=sys.stderr)
        sys.exit(EXIT_USAGE)


def ensure_writable(directory: Path, key: str) -> None:
    """Exit with one clear message (no traceback) if `directory` cannot be created or written."""
    try:
        directory.mkdir(parents=True, exist_ok=True)
        probe = directory / f".seqbench-write-test-{os.getpid()}"
        probe.write_text("")
        probe.unlink()
    except OSError as err:
        reason = err.strerror or type(err).__name__
        print(
            f"seqbench: error: {key}={directory} cannot be written ({reason}: "
            f"{err.filename or directory}). Choose a writable directory, e.g. "
            f"{key}=outputs/my-run, or free disk space.",
            file=sys.stderr,
        )
        sys.exit(EXIT_IO)
