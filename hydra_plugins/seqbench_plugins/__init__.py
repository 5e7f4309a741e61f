"""seqbench's Hydra plugins (Hydra instantiates launchers and sweepers only from the
hydra_plugins package): thin subclasses of Hydra's Ray, submitit and Optuna plugins; what they
change lives in seqbench.launchers and seqbench.studies."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from hydra.core.config_search_path import ConfigSearchPath
from hydra.core.config_store import ConfigStore
from hydra.core.utils import JobReturn
from hydra.plugins.search_path_plugin import SearchPathPlugin
from hydra_plugins.hydra_optuna_sweeper.optuna_sweeper import OptunaSweeper as _OptunaSweeper
from hydra_plugins.hydra_submitit_launcher import submitit_launcher

from seqbench.config import rename_plugin_configs
from seqbench.launchers import checkpoint_first, ray_init_kwargs
from seqbench.studies import continue_study, write_trials

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


class OptunaSweeper(_OptunaSweeper):
    """hydra/sweeper=optuna: a study kept in `storage` continues where an interrupted sweep
    stopped; every trial's state is written to optuna_trials.csv."""

    def sweep(self, arguments: list[str]) -> None:
        continue_study(self.sweeper)
        try:
            self.sweeper.sweep(arguments)
        finally:
            write_trials(self.sweeper)


class PluginConfigNames(SearchPathPlugin):
    """Not a search path: Hydra runs this hook before every composition, after any plugin scan.
    A scan re-executes the plugins' config modules (when a job restores Hydra's singletons, e.g.
    joblib running a job in the launching process), which stores their `optuna` and `ray` nodes
    again; this moves them back aside so conf/hydra/sweeper/optuna.yaml and
    conf/hydra/launcher/ray.yaml stay what hydra/sweeper=optuna and hydra/launcher=ray select."""

    def manipulate_search_path(self, search_path: ConfigSearchPath) -> None:
        rename_plugin_configs(ConfigStore.instance())
