"""A job that is an Optuna trial (`seqbench.studies`): it finds its trial in
`optuna_trial.json` in its run directory, reports each validation's metric to it, and stops
cleanly, as "pruned", when the study's pruner says so. Every launcher runs jobs this way: the
file travels with the run directory, the study with the storage."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from seqbench.callbacks import Callback
from seqbench.errors import ConfigError

#: In a job's run directory: its study's storage and name, its trial number and the pruner.
TRIAL_FILE = "optuna_trial.json"


def write_trial_file(run_dir: Path, storage: str, study: str, number: int, pruner: dict) -> None:
    """What the sweeper tells a job before launching it."""
    from seqbench.files import atomic_write

    run_dir.mkdir(parents=True, exist_ok=True)
    spec = {"storage": storage, "study_name": study, "number": number, "pruner": pruner}
    atomic_write(run_dir / TRIAL_FILE, lambda f: json.dump(spec, f, indent=2))


class TrialReporter(Callback):
    """Reports the task's validation metric to the trial at every validation (the training step
    is Optuna's step) and asks the pruner; `pruned_at` is the step it said stop."""

    def __init__(self, trial: Any, metric: str) -> None:
        self.trial, self.metric = trial, metric
        self.pruned_at: int | None = None

    def on_eval(self, step: int, metrics: dict[str, float]) -> None:
        self.trial.report(float(metrics[self.metric]), step)
        if self.pruned_at is None and self.trial.should_prune():
            self.pruned_at = step

    def __call__(self) -> bool:
        return self.pruned_at is not None


def trial_reporter(run_dir: Path, metric: str) -> TrialReporter | None:
    """The reporter of the trial this run is, or None for a run that is not one.

    Raises:
        ConfigError: the trial file names a study or trial the storage does not hold.
    """
    path = Path(run_dir) / TRIAL_FILE
    if not path.exists():
        return None
    import optuna

    from seqbench.studies import make_pruner, open_storage

    spec = json.loads(path.read_text())
    where = f"{path}: study {spec['study_name']!r} in {spec['storage']}"
    try:
        study = optuna.load_study(study_name=spec["study_name"],
                                  storage=open_storage(spec["storage"]),
                                  pruner=make_pruner(spec["pruner"]))  # fmt: skip
        trial_id = study._storage.get_trial_id_from_study_id_trial_number(
            study._study_id, spec["number"]
        )
    except KeyError:
        raise ConfigError(
            f"{where} has no trial {spec['number']}: the job was given a trial that no longer "
            "exists (the study was deleted or replaced). Run the sweep again, which asks the "
            f"study for new trials, or delete {path} to run this job outside the search."
        ) from None
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    if study._storage.get_trial(trial_id).state.is_finished():
        return None  # a finished trial (e.g. a pruned run resumed by hand) takes no reports
    return TrialReporter(optuna.trial.Trial(study, trial_id), metric)
