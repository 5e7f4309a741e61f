"""The `seqbench` command: Hydra composes the config, `seqbench.job.run` trains it, and this
module maps what can go wrong to one message and an exit code.

torch, pandas and matplotlib are imported only once a job runs (inside `main`): `--help`,
`--cfg`, `--info` and every TAB of the shell completion compose the config and exit without
them (well under a second, against 3.7 s with torch). Tested in tests/test_startup.py.
"""

from __future__ import annotations

import os
import shutil
import sys
from pathlib import Path

import hydra
from hydra.core.config_store import ConfigStore
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from omegaconf import DictConfig

from seqbench.config import register_configs
from seqbench.errors import (
    EXIT_IO,
    EXIT_USAGE,
    ConfigError,
    closed_stdout_ends_the_command,
    closed_stdout_raises,
    exit_on_closed_stdout,
    silent_if_stdout_closes,
)
from seqbench.hardware import release_collector
from seqbench.resume import (
    completed_before,
    go_on_with_sweep,
    prepare_sweep_job,
    run_status,
    write_failed,
)

register_configs()


def _share_config_store(store: ConfigStore, memo: dict) -> ConfigStore:
    """Hydra 1.3 deep-copies its config repository, and with it the whole ConfigStore (every
    schema and plugin config), each time it lists a group's options: `seqbench --help` made
    108 copies (3.5 s), each TAB of the completion as many. The store is only read while a
    config is composed (`ConfigStore.load` copies the node it returns), so the copies can
    share it, which is what later Hydra does (facebookresearch/hydra#2928 reads the live
    singleton instead of keeping a copy)."""
    return store


ConfigStore.__deepcopy__ = _share_config_store  # type: ignore[method-assign]

# conf/ sits at the repository top level (the package is installed editable), so the command
# finds it from any working directory.
CONF_DIR = str(Path(__file__).resolve().parent.parent / "conf")


@closed_stdout_ends_the_command()  # `seqbench --help | head`; a job switches back
@hydra.main(version_base="1.3", config_path=CONF_DIR, config_name="config")
def main(cfg: DictConfig) -> float | None:
    closed_stdout_raises()  # a run stops cleanly on it (ConsoleLogger), resumable
    try:
        # inside Hydra's handler, which would print a traceback; a sweep goes on to its end
        single = HydraConfig.get().mode != RunMode.MULTIRUN
        with exit_on_closed_stdout() if single else silent_if_stdout_closes():
            return _job(cfg)
    finally:  # a run that ends before its training (a refusal exits past Hydra's on_run_end)
        release_collector()


def _job(cfg: DictConfig) -> float | None:
    from seqbench.job import run  # torch and the rest: only when a job runs

    hydra_cfg = HydraConfig.get()
    run_dir = Path(hydra_cfg.runtime.output_dir)
    if hydra_cfg.mode != RunMode.MULTIRUN:
        try:
            return run(cfg, run_dir)
        except ConfigError as err:
            print(f"seqbench: error: {err}", file=sys.stderr)
            _remove_if_only_hydra_files(run_dir)
            sys.exit(EXIT_USAGE)
        except BrokenPipeError:  # stdout, not the run's files: exit_on_closed_stdout
            raise
        except OSError as err:  # disk full, read-only file system, ...
            print(
                f"seqbench: error: writing the run's files in {run_dir} failed "
                f"({err.strerror or err}: {err.filename or ''}). Free disk space or choose a "
                "writable hydra.run.dir; the last complete checkpoint (checkpoint.pt or "
                "checkpoint.prev.pt) and result files are left as they were.",
                file=sys.stderr,
            )
            sys.exit(EXIT_IO)
    # In a sweep, one job's failure is recorded in its metrics.json and the sweep goes on.
    overrides = list(hydra_cfg.overrides.task)
    earlier = completed_before(run_dir, overrides=overrides)
    if earlier is not None:
        print(f"seqbench: {run_dir} already completed; skipping (delete it to run again)")
        return earlier["best_metric"]
    resume = prepare_sweep_job(run_dir)
    _set_job_threads(cfg, hydra_cfg)
    try:
        return run(cfg, run_dir, resume=resume, sweep_job=f"#{hydra_cfg.job.num}",
                   side_by_side=side_by_side(hydra_cfg),
                   go_on="to go on, run the sweep's command again "
                   + go_on_with_sweep(hydra_cfg.sweep.dir))  # fmt: skip
    except Exception as err:  # recorded, reported, and the sweep goes on
        print(f"seqbench: job {hydra_cfg.job.num} failed: {err}", file=sys.stderr)
        if run_status(run_dir) is None:
            write_failed(run_dir, cfg, overrides, err)
        return None


def _remove_if_only_hydra_files(run_dir: Path) -> None:
    """A run refused before it wrote anything leaves no directory behind: Hydra has created it
    (with .hydra/ and the job's log) before the run could look at the data or the device."""
    hydra_files = {".hydra", f"{HydraConfig.get().job.name}.log"}
    if run_dir.is_dir() and {p.name for p in run_dir.iterdir()} <= hydra_files:
        shutil.rmtree(run_dir, ignore_errors=True)


def side_by_side(hydra_cfg: DictConfig) -> bool:
    """Does the sweep's launcher run jobs at the same time? Every launcher but Hydra's basic
    one can (joblib's processes share the terminal; Ray's and submitit's write elsewhere)."""
    return not str(hydra_cfg.launcher.get("_target_", "")).endswith(".BasicLauncher")


def _set_job_threads(cfg: DictConfig, hydra_cfg: DictConfig) -> None:
    """Parallel jobs (joblib launcher) share the cores: give each its share of torch threads
    unless hardware.num_threads says otherwise."""
    if cfg.hardware.num_threads > 0:
        return
    launcher = hydra_cfg.launcher
    n_jobs = launcher.get("n_jobs") if "joblib" in str(launcher.get("_target_", "")) else None
    if n_jobs:
        import torch

        cores = os.cpu_count() or 1
        jobs = cores if n_jobs < 0 else min(n_jobs, cores)
        torch.set_num_threads(max(1, cores // jobs))
