"""Optuna studies that survive an interrupted search (hydra/sweeper=optuna with a storage, an
SQLite file in the sweep directory by default): a re-run continues the same study.

`hydra.sweeper.n_trials` counts the study's trials in total, so a re-run runs only those still
missing, with the sampler's seed moved on so that no trial repeats an earlier one. A trial left
running by the interruption is finished first: its job runs again into its own run directory,
which resumes from the checkpoint (seqbench.resume.prepare_sweep_job), and its result is told
to the same trial; one that never started is recorded as failed. One sweep per study at a time:
a second sweep running on the same storage would see the first one's trials as interrupted.
"""

from __future__ import annotations

import functools
import logging
from pathlib import Path
from typing import Any

from hydra.utils import instantiate
from omegaconf import OmegaConf

log = logging.getLogger(__name__)


def load_existing_study(storage: Any, study_name: str | None) -> Any | None:
    """The study of that name in `storage`, or None when there is none yet (or no storage)."""
    import optuna

    if storage is None:
        return None
    try:
        return optuna.load_study(study_name=study_name, storage=storage)
    except KeyError:  # optuna's answer for a study that does not exist
        return None


def finish_interrupted_trials(study: Any, launcher: Any, sweep_dir: Path) -> list[int]:
    """Run again (resuming) each trial left RUNNING by an interrupted sweep and tell its result;
    return their numbers. Job directories are named by trial number (see `continue_study`)."""
    from optuna.trial import TrialState

    finished = []
    for trial in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        saved = sweep_dir / str(trial.number) / ".hydra" / "overrides.yaml"
        if not saved.exists():  # asked, but its job never started
            study.tell(trial.number, state=TrialState.FAIL)
            log.info(f"Trial {trial.number} never started; recorded as failed.")
            continue
        overrides = list(OmegaConf.load(saved))
        log.info(f"Trial {trial.number} was interrupted; resuming: {' '.join(overrides)}")
        (result,) = launcher.launch([overrides], initial_job_idx=trial.number)
        try:
            study.tell(trial.number, float(result.return_value))
        except Exception as err:  # a failed job: recorded, the study goes on
            log.warning(f"Trial {trial.number} failed: {err}")
            study.tell(trial.number, state=TrialState.FAIL)
        finished.append(trial.number)
    return finished


def reseed_sampler(sweeper: Any, done: int) -> None:
    """A seeded sampler starts again from its seed in every process: on a continued study its
    first random trials would repeat the first run's. Seed it with seed + trials so far, which
    stays reproducible (a GridSampler skips the grid points the study has already tried)."""
    sampler_cfg = sweeper.config.hydra.sweeper.sampler
    seed = sampler_cfg.get("seed")
    if done and seed is not None and not isinstance(sweeper.sampler, functools.partial):
        sweeper.sampler = instantiate(sampler_cfg, seed=int(seed) + done)


def continue_study(sweeper: Any) -> None:
    """Before Hydra's Optuna sweeper (`sweeper`: its OptunaSweeperImpl) runs: finish the
    trials an interruption left running, then run only the trials still missing, numbering
    the new jobs after the study's trials so that no run directory is reused."""
    study = load_existing_study(sweeper.storage, sweeper.study_name)
    if study is None:
        return
    sweep_dir = Path(str(sweeper.config.hydra.sweep.dir))
    finish_interrupted_trials(study, sweeper.launcher, sweep_dir)
    done = len(study.trials)
    reseed_sampler(sweeper, done)
    sweeper.n_trials = max(0, sweeper.n_trials - done)
    sweeper.job_idx = done
    log.info(f"Study {study.study_name}: {done} trials so far, {sweeper.n_trials} to go.")


def write_trials(sweeper: Any) -> Path | None:
    """optuna_trials.csv in the sweep directory: every trial's number, state (COMPLETE, FAIL,
    PRUNED), value and parameters."""
    study = load_existing_study(sweeper.storage, sweeper.study_name)
    if study is None:
        return None
    path = Path(str(sweeper.config.hydra.sweep.dir)) / "optuna_trials.csv"
    columns = ("number", "state", "value", "datetime_start", "datetime_complete", "params")
    study.trials_dataframe(attrs=columns).to_csv(path, index=False)
    return path
