"""One GPU per parallel job: which CUDA device a sweep job trains on.

Ray and Slurm hand each job its own GPU(s) through CUDA_VISIBLE_DEVICES, so the job sees one
device, cuda:0. Local parallel jobs (the joblib launcher, n_jobs = number of GPUs) all see every
GPU: each takes the first free one, starting from its job number, and holds a lock file in the
sweep directory while it runs, so two running jobs never share a device (a job number alone
would put jobs 0 and 2 together on a two-GPU machine when job 1 finishes first).
"""

from __future__ import annotations

import fcntl
import os
from collections.abc import Collection
from pathlib import Path
from typing import IO, Any


def pick_gpu(job_num: int, num_visible: int, busy: Collection[int] = ()) -> int:
    """The device index for sweep job `job_num` among `num_visible` GPUs: the first one not
    `busy`, counting from job_num mod num_visible; job_num mod num_visible when all are busy
    (more parallel jobs than GPUs: they share, spread evenly).

    >>> pick_gpu(5, 4), pick_gpu(2, 2, busy={0}), pick_gpu(0, 1, busy={0})
    (1, 1, 0)
    """
    if num_visible < 1:
        raise ValueError(f"no GPU to pick from (num_visible={num_visible})")
    start = job_num % num_visible
    for offset in range(num_visible):
        index = (start + offset) % num_visible
        if index not in busy:
            return index
    return start


class GpuClaim:
    """A lock on one GPU for the life of a job: `claim` takes the first free device for the job
    (an exclusive lock on lock_dir/cuda<N>.lock), `release` frees it. The operating system drops
    the lock if the job dies, so a crashed job never keeps a device."""

    def __init__(self, lock_dir: Path) -> None:
        self.lock_dir = Path(lock_dir)
        self.index: int | None = None
        self._file: IO[str] | None = None

    def claim(self, job_num: int, num_visible: int) -> int:
        self.lock_dir.mkdir(parents=True, exist_ok=True)
        busy: set[int] = set()
        while len(busy) < num_visible:
            index = pick_gpu(job_num, num_visible, busy)
            handle = open(self.lock_dir / f"cuda{index}.lock", "w")  # noqa: SIM115 - held open
            try:
                fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:  # another running job holds it
                handle.close()
                busy.add(index)
                continue
            handle.write(f"{os.getpid()}\n")
            handle.flush()
            self._file, self.index = handle, index
            return index
        self.index = pick_gpu(job_num, num_visible, busy)  # all taken: share, unlocked
        return self.index

    def release(self) -> None:
        if self._file is not None:
            fcntl.flock(self._file, fcntl.LOCK_UN)
            self._file.close()
        self._file, self.index = None, None


def claim_sweep_gpu(config: Any) -> GpuClaim | None:
    """In a sweep whose jobs train on CUDA and see several GPUs (joblib: all of them), lock the
    first free one for this job and make it the current device; the GpuClaim, or None."""
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode

    if config.hardware.device not in ("cuda", "auto") or HydraConfig.get().mode != RunMode.MULTIRUN:
        return None
    import torch

    if not torch.cuda.is_available() or torch.cuda.device_count() < 2:
        return None  # one visible device (Ray, Slurm, or one GPU): it is cuda:0
    claim = GpuClaim(Path(config.hydra.sweep.dir) / ".gpu_locks")
    torch.cuda.set_device(claim.claim(int(HydraConfig.get().job.num), torch.cuda.device_count()))
    return claim
