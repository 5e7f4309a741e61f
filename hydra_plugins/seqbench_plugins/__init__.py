"""seqbench's Hydra plugins (Hydra instantiates launchers and sweepers only from the
hydra_plugins package): thin subclasses of Hydra's Ray and submitit launchers, and the Optuna
sweeper (Hydra's own requires optuna<3); what they do lives in seqbench.launchers and
seqbench.studies."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from hydra.core.config_search_path import ConfigSearchPath
from hydra.core.config_store import ConfigStore
from hydra.core.plugins import Plugins
from hydra.core.utils import JobReturn
from hydra.plugins.search_path_plugin import SearchPathPlugin
from hydra.plugins.sweeper import Sweeper
from hydra.types import HydraContext, TaskFunction
from hydra_plugins.hydra_submitit_launcher import submitit_launcher
from omegaconf import DictConfig, OmegaConf

from seqbench.config import rename_plugin_configs
from seqbench.launchers import checkpoint_first, ray_init_kwargs

try:  # installed by `make install` (--no-deps, see Makefile)
    from hydra_plugins.hydra_ray_launcher.ray_launcher import RayLauncher as _RayLauncher
except ImportError:  # without it, hydra/launcher=ray fails with Hydra's own message
    _RayLauncher = object  # type: ignore[assignment,misc]


class RayLauncher(_RayLauncher):
    """hydra/launcher=ray: one Ray task per job with `hydra.launcher.ray.remote`'s resources;
    `hydra.launcher.ray.init.address` joins a running cluster (Hydra issue #2893 worked
    around, see seqbench.launchers)."""

    def launch(
        self, job_overrides: Sequence[Sequence[str]], initial_job_idx: int
    ) -> Sequence[JobReturn]:
        import ray

        if not ray.is_initialized():
            ray.init(**ray_init_kwargs(self.ray_cfg.init))
        return super().launch(job_overrides, initial_job_idx)


# the base class's method, named: the job process unpickles these classes by value, so a
# super() call would compare two copies of the class
_submitit_call = submitit_launcher.BaseSubmititLauncher.__call__


class SlurmLauncher(submitit_launcher.SlurmLauncher):
    """hydra/launcher=slurm: submitit's Slurm launcher; SIGUSR2 checkpoints, then requeues."""

    def __call__(self, *args: Any, **kwargs: Any) -> JobReturn:
        return checkpoint_first(lambda: _submitit_call(self, *args, **kwargs))


class LocalLauncher(submitit_launcher.LocalLauncher):
    """hydra/launcher=slurm_local: the same on this machine (submitit's local executor)."""

    def __call__(self, *args: Any, **kwargs: Any) -> JobReturn:
        return checkpoint_first(lambda: _submitit_call(self, *args, **kwargs))


class OptunaSweeper(Sweeper):
    """hydra/sweeper=optuna: an Optuna study (current Optuna), `n_jobs` trials per batch with
    any launcher, pruning through the jobs themselves, the study kept in the sweep directory
    and continued by a re-run (seqbench.studies, seqbench.trials)."""

    def __init__(self, direction: str, storage: str | None, study_name: str, n_trials: int,
                 n_jobs: int, sampler: Any, pruner: Any, params: Any = None) -> None:  # fmt: skip
        self.direction, self.storage, self.study_name = direction, storage, study_name
        self.n_trials, self.n_jobs, self.sampler_cfg = n_trials, n_jobs, sampler
        self.pruner = OmegaConf.to_container(pruner) if OmegaConf.is_config(pruner) else pruner
        self.params = params or {}

    def setup(self, *, hydra_context: HydraContext, task_function: TaskFunction,
              config: DictConfig) -> None:  # fmt: skip
        self.config, self.hydra_context = config, hydra_context
        self.launcher = Plugins.instance().instantiate_launcher(
            config=config, hydra_context=hydra_context, task_function=task_function
        )

    def sweep(self, arguments: list[str]) -> None:
        import optuna

        from seqbench import studies
        from seqbench.trials import write_trial_file

        sweep_dir = Path(str(self.config.hydra.sweep.dir))
        sweep_dir.mkdir(parents=True, exist_ok=True)
        launcher = str(self.config.hydra.launcher.get("_target_", ""))
        url = studies.storage_url(self.storage, sweep_dir, launcher)
        if url is None:
            raise ValueError("hydra.sweeper.storage=null: the jobs need a storage to report to")
        storage = studies.open_storage(url)
        space, fixed = studies.search_space(
            [*(f"{k}={v}" for k, v in self.params.items()), *arguments]
        )
        pruner = {"name": "none", **(self.pruner or {})}
        optuna.logging.set_verbosity(optuna.logging.WARNING)
        study = optuna.create_study(
            study_name=self.study_name, storage=storage, load_if_exists=True,
            direction=studies.direction(self.direction), pruner=studies.make_pruner(pruner),
        )  # fmt: skip
        try:
            studies.finish_interrupted_trials(study, self.launcher, sweep_dir)
            done = len(study.trials)
            # Hydra hands __init__ the sampler built; its config reseeds it for a continued study
            sampler_cfg = self.config.hydra.sweeper.get("sampler")
            study.sampler = studies.sampler_for(sampler_cfg, done) or study.sampler
            left = max(0, self.n_trials - done)
            print(f"Optuna study {self.study_name} ({url}): {done} trials so far, "
                  f"{left} to go, pruner {pruner['name']}.", flush=True)  # fmt: skip
            while left > 0:
                trials = [study.ask(space) for _ in range(min(self.n_jobs, left))]
                overrides = []
                for trial in trials:
                    chosen = {**trial.params, **fixed}
                    overrides.append([f"{k}={v}" for k, v in chosen.items()])
                    write_trial_file(sweep_dir / str(trial.number), url, self.study_name,
                                     trial.number, pruner)  # fmt: skip
                results = self.launcher.launch(overrides, initial_job_idx=trials[0].number)
                for trial, result in zip(trials, results, strict=True):
                    studies.tell(study, trial.number, result, sweep_dir)
                left -= len(trials)
            studies.write_best(study, sweep_dir)
        finally:
            studies.write_trials(study, sweep_dir)


class PluginConfigNames(SearchPathPlugin):
    """Not a search path: Hydra runs this hook before every composition, after any plugin scan.
    A scan re-executes the plugins' config modules (when a job restores Hydra's singletons, e.g.
    joblib running a job in the launching process), which stores the Ray plugin's `ray` node
    again; this moves it back aside so conf/hydra/launcher/ray.yaml stays what
    hydra/launcher=ray selects."""

    def manipulate_search_path(self, search_path: ConfigSearchPath) -> None:
        rename_plugin_configs(ConfigStore.instance())
