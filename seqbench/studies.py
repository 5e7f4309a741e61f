"""Hyperparameter searches on Optuna (hydra/sweeper=optuna, seqbench's own sweeper: Hydra's
Optuna plugin requires optuna<3).

The sweeper (`Search`) asks the study for `n_jobs` trials at a time, launches them as jobs with
any launcher (basic, joblib, Ray, Slurm) and tells the study each job's result: its best
validation metric, or PRUNED when the job stopped on the pruner's word, or FAIL. Each job knows
its trial through `optuna_trial.json` in its run directory (`seqbench.trials`, which reports
every validation to the trial and stops the run cleanly when the pruner says so).

The study lives in the sweep directory, so a re-run of the same command continues it: trials an
interruption left RUNNING run again (their jobs resume from their checkpoints) and are told
their result; `n_trials` counts the study's trials in all, and a seeded sampler is reseeded
with seed + trials so far, so that no trial repeats an earlier one. One sweep per study at a
time. The storage (`hydra.sweeper.storage`):

* ``auto`` (default): SQLite (``optuna.db``) when the jobs run on this machine (basic, joblib,
  slurm_local); Optuna's journal file (``optuna.journal``), which is safe on a shared file
  system where SQLite's locks are not, when they run on other machines (Ray, Slurm);
* ``sqlite`` or ``journal``: that one, in the sweep directory;
* an RDB URL (``sqlite:///...``, ``postgresql://...``), or ``journal:PATH``.

`optuna-dashboard sqlite:///SWEEP/optuna.db` (or the journal file) shows a running study.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

#: hydra.sweeper.pruner: the name of each pruner and its Optuna class (none: no pruning).
PRUNERS = {
    "none": "NopPruner",
    "median": "MedianPruner",
    "percentile": "PercentilePruner",
    "hyperband": "HyperbandPruner",
    "successive_halving": "SuccessiveHalvingPruner",
}
#: launchers whose jobs may run on other machines: the study goes to a journal file
REMOTE_LAUNCHERS = ("ray", "slurm")
TRIALS_CSV = "optuna_trials.csv"


def storage_url(spec: str | None, sweep_dir: Path, launcher_target: str = "") -> str | None:
    """The storage a `hydra.sweeper.storage` value names (see the module docstring); None keeps
    the study in memory (lost when the sweep ends, and jobs cannot report to it)."""
    if spec in (None, "null", "memory"):
        return None
    if spec == "auto":
        remote = any(name in launcher_target.lower() for name in REMOTE_LAUNCHERS)
        remote = remote and "local" not in launcher_target.lower()
        spec = "journal" if remote else "sqlite"
    if spec == "sqlite":
        return f"sqlite:///{Path(sweep_dir).resolve() / 'optuna.db'}"
    if spec == "journal":
        return f"journal:{Path(sweep_dir).resolve() / 'optuna.journal'}"
    return str(spec)


def open_storage(url: str | None) -> Any:
    """An Optuna storage for `storage_url`'s answer (journal:PATH: a journal file)."""
    import optuna

    if url is None:
        return None
    if url.startswith("journal:"):
        from optuna.storages.journal import JournalFileBackend

        return optuna.storages.JournalStorage(JournalFileBackend(url.removeprefix("journal:")))
    return url


def make_pruner(spec: dict | None) -> Any:
    """The pruner `{name, n_startup_trials, n_warmup_steps}` names (see PRUNERS)."""
    import optuna

    spec = dict(spec or {})
    name = spec.pop("name", "none")
    if name not in PRUNERS:
        raise ValueError(f"hydra.sweeper.pruner={name!r}: choose one of {sorted(PRUNERS)}")
    cls = getattr(optuna.pruners, PRUNERS[name])
    if name in ("median", "percentile"):
        kwargs = {k: v for k, v in spec.items() if k in ("n_startup_trials", "n_warmup_steps")}
        if name == "percentile":
            kwargs["percentile"] = spec.get("percentile", 25.0)
        return cls(**kwargs)
    return cls()


def distribution(override: Any) -> Any:
    """The Optuna distribution of one parsed sweep override: choice(...) categorical, range(...)
    integers (or floats) with its step, interval(...) uniform floats (int(interval(...))
    integers, as Hydra casts them), tag(log, ...) on a log scale; a plain value is fixed
    (returned as its string)."""
    from hydra.core.override_parser.types import ChoiceSweep, IntervalSweep, RangeSweep
    from hydra.core.override_parser.types import Transformer as Tr
    from optuna.distributions import (
        CategoricalDistribution,
        FloatDistribution,
        IntDistribution,
    )

    if not override.is_sweep_override():
        return override.get_value_element_as_str()
    value = override.value()
    if isinstance(value, ChoiceSweep) or (isinstance(value, RangeSweep) and value.shuffle):
        return CategoricalDistribution(list(override.sweep_iterator(transformer=Tr.encode)))
    if isinstance(value, RangeSweep):
        start, stop, step = value.start, value.stop, value.step
        if any(isinstance(v, float) for v in (start, stop, step)):
            return FloatDistribution(start, stop, step=step)
        # range(a, b) excludes b, as Python's range does
        return IntDistribution(int(start), int(stop) - int(step), step=int(step))
    if isinstance(value, IntervalSweep):
        log_scale = "log" in value.tags
        if isinstance(value.start, int) and isinstance(value.end, int):
            return IntDistribution(value.start, value.end, log=log_scale)
        return FloatDistribution(float(value.start), float(value.end), log=log_scale)
    raise ValueError(f"{override.input_line}: not a search space Optuna can sample")


def search_space(arguments: Sequence[str]) -> tuple[dict[str, Any], dict[str, str]]:
    """({key: distribution}, {key: fixed value}) from the sweep's overrides."""
    from hydra.core.override_parser.overrides_parser import OverridesParser
    from optuna.distributions import BaseDistribution

    space, fixed = {}, {}
    for override in OverridesParser.create().parse_overrides(list(arguments)):
        key = override.get_key_element()
        value = distribution(override)
        (space if isinstance(value, BaseDistribution) else fixed)[key] = value
    return space, fixed


def sampler_for(sampler_cfg: Any, done: int) -> Any:
    """The sampler its config names, a seeded one reseeded with seed + trials so far: every
    process starts a sampler from its seed, so a continued study would repeat its first
    random trials (stays reproducible)."""
    from hydra.utils import instantiate

    seed = sampler_cfg.get("seed") if sampler_cfg is not None else None
    if sampler_cfg is None:
        return None
    if done and seed is not None:
        return instantiate(sampler_cfg, seed=int(seed) + done)
    return instantiate(sampler_cfg)


def finish_interrupted_trials(study: Any, launcher: Any, sweep_dir: Path) -> list[int]:
    """Run again (resuming) each trial left RUNNING by an interrupted sweep and tell its result;
    return their numbers. Job directories are named by trial number."""
    from optuna.trial import TrialState

    finished = []
    for trial in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        saved = sweep_dir / str(trial.number) / ".hydra" / "overrides.yaml"
        if not saved.exists():  # asked, but its job never started
            study.tell(trial.number, state=TrialState.FAIL)
            log.info(f"Trial {trial.number} never started; recorded as failed.")
            continue
        from omegaconf import OmegaConf

        overrides = list(OmegaConf.load(saved))
        log.info(f"Trial {trial.number} was interrupted; resuming: {' '.join(overrides)}")
        (result,) = launcher.launch([overrides], initial_job_idx=trial.number)
        tell(study, trial.number, result, sweep_dir)
        finished.append(trial.number)
    return finished


def tell(study: Any, number: int, result: Any, sweep_dir: Path) -> str:
    """Tell the study a finished job's outcome, from its metrics.json: COMPLETE with its best
    metric, PRUNED when the pruner stopped it, FAIL otherwise (diverged, failed, no file).
    Returns the state's name."""
    from optuna.trial import TrialState

    try:
        metrics = json.loads((sweep_dir / str(number) / "metrics.json").read_text())
    except (OSError, ValueError):
        metrics = {}
    status = metrics.get("status")
    if status == "pruned":
        study.tell(number, state=TrialState.PRUNED)
        return "PRUNED"
    value = metrics.get("best_metric")
    if status == "completed" and value is not None:
        study.tell(number, float(value))
        return "COMPLETE"
    try:  # a job that raised has no return value to read
        returned = result.return_value
    except Exception:  # the launcher's wrapper re-raises the job's error
        returned = None
    if status == "completed" and returned is not None:
        study.tell(number, float(returned))
        return "COMPLETE"
    log.warning(f"Trial {number}: {status or 'no result'}; recorded as failed.")
    study.tell(number, state=TrialState.FAIL)
    return "FAIL"


def write_trials(study: Any, sweep_dir: Path) -> Path:
    """optuna_trials.csv in the sweep directory: every trial's number, state (COMPLETE, FAIL,
    PRUNED), value, times, parameters and the last step it reported."""
    path = Path(sweep_dir) / TRIALS_CSV
    columns = ("number", "state", "value", "datetime_start", "datetime_complete", "params")
    frame = study.trials_dataframe(attrs=columns)
    frame["last_step"] = [t.last_step for t in study.get_trials(deepcopy=False)]
    frame.to_csv(path, index=False)
    return path


def write_best(study: Any, sweep_dir: Path) -> Path | None:
    """optimization_results.yaml in the sweep directory (as Hydra's Optuna plugin wrote it):
    the best trial's parameters and value; printed too. None before any trial completed."""
    import yaml

    from seqbench.files import atomic_write

    if not any(t.state.name == "COMPLETE" for t in study.get_trials(deepcopy=False)):
        return None
    best = study.best_trial
    print(f"Best trial {best.number}: {best.value:.6g} with {best.params}.", flush=True)
    path = Path(sweep_dir) / "optimization_results.yaml"
    results = {"name": "optuna", "best_trial": best.number, "best_params": best.params,
               "best_value": best.value}  # fmt: skip
    atomic_write(path, lambda f: yaml.safe_dump(results, f, sort_keys=False))
    return path


DIRECTIONS = {"minimize": "minimize", "maximize": "maximize", "min": "minimize", "max": "maximize"}


def direction(value: str) -> str:
    """'minimize' or 'maximize' (hydra.sweeper.direction, resolved from the task)."""
    try:
        return DIRECTIONS[str(value).lower()]
    except KeyError:
        raise ValueError(f"hydra.sweeper.direction={value!r}: minimize or maximize") from None
