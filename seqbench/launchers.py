"""What seqbench's launchers (hydra_plugins/seqbench_plugins: Hydra loads plugins only from
that package) change in Hydra's Ray and Slurm (submitit) launchers.

- Ray joins an existing cluster: hydra-ray-launcher 1.2.2 always passes
  `object_store_memory` to `ray.init`, which Ray refuses when it connects to a running cluster
  (hydra issue #2893, fixed only on Hydra's main branch). We call `ray.init` ourselves first,
  without that argument when joining; the plugin then finds Ray initialised and skips its call.
- Slurm: a job that receives SIGUSR2 (what Slurm sends
  `signal_delay_s` before the time limit) first lets the training loop stop between two steps
  and write its checkpoint, then hands over to submitit, which saves the job and requeues it;
  the requeued job resumes its run directory (seqbench.resume.prepare_sweep_job).
"""

from __future__ import annotations

import os
import signal
from collections.abc import Callable, Mapping
from typing import Any

from omegaconf import OmegaConf


def ray_init_kwargs(init: Mapping[str, Any], environ: Mapping[str, str] = os.environ) -> dict:
    """`ray.init`'s arguments from `hydra.launcher.ray.init`.

    Ray refuses `object_store_memory` when it joins a running cluster (an `address`, or the
    RAY_ADDRESS variable that KubeRay and `ray job submit` set): the store's size is the
    cluster's. It is kept when Ray starts a local instance.
    """
    kwargs = OmegaConf.to_container(init, resolve=True) if OmegaConf.is_config(init) else init
    kwargs = {k: v for k, v in dict(kwargs).items() if v is not None}
    if kwargs.get("address") or environ.get("RAY_ADDRESS"):
        kwargs.pop("object_store_memory", None)
    return kwargs


def checkpoint_first(run_job: Callable[[], Any]) -> Any:
    """Run a submitit job (`run_job`) so that SIGUSR2 stops training like SIGTERM does (the loop
    writes its checkpoint and metrics.json) and submitit's own handler (save the job, requeue,
    exit) runs only once the job has returned."""
    submitit_handler = signal.getsignal(signal.SIGUSR2)
    received = []

    def stop_then_requeue(signum: int, frame: Any) -> None:
        received.append(signum)
        # seqbench.interrupt's SIGTERM handler while training runs: stop between two steps
        handler = signal.getsignal(signal.SIGTERM)
        if callable(handler):
            handler(signal.SIGTERM, frame)

    signal.signal(signal.SIGUSR2, stop_then_requeue)
    try:
        return run_job()
    except SystemExit:  # seqbench exits 143 after an interrupted run wrote its files
        if not received or not callable(submitit_handler):
            raise
        return None
    finally:
        signal.signal(signal.SIGUSR2, submitit_handler)
        if received and callable(submitit_handler):
            submitit_handler(signal.SIGUSR2, None)  # checkpoint() + requeue + exit
