"""The hardware group: which device runs, and the CPU settings that make RNNs fast."""

from __future__ import annotations

import gc
import random
from typing import TYPE_CHECKING

from seqbench.errors import ConfigError

if TYPE_CHECKING:  # torch is imported where it is used: `seqbench --help` never loads it
    import torch

DEVICES = ("cpu", "cuda", "auto")


class HardwareError(ConfigError):
    pass


def select_device(device: str) -> tuple[torch.device, str | None]:
    """Resolve cpu | cuda | auto; return the device and a notice for the user, if any."""
    import torch

    if device not in DEVICES:
        raise HardwareError(f"hardware.device={device!r} is not one of {list(DEVICES)}.")
    if device == "cuda" and not torch.cuda.is_available():
        raise HardwareError(
            "hardware=cuda was asked for, but PyTorch sees no CUDA device "
            f"(torch {torch.__version__}, built with CUDA {torch.version.cuda}). "
            "Use hardware=cpu, or hardware=auto to take CUDA only when it is present."
        )
    if device == "auto" and not torch.cuda.is_available():
        return torch.device("cpu"), "hardware=auto: no CUDA device found, running on the CPU."
    if device in ("cuda", "auto"):  # the exact device (a sweep job's own, seqbench.devices)
        return torch.device("cuda", torch.cuda.current_device()), None
    return torch.device(device), None


_held = False  # hold_collector turned the collector off; release_collector turns it back on


def hold_collector() -> None:
    """Turn Python's cyclic garbage collector off while a single run starts (seqbench.sweep's
    on_run_start), once per process, until `release_collector` (seqbench.job.run, before
    training).

    Start-up creates some 370,000 objects that live as long as the process (the modules of
    torch, torch._dynamo, Hydra and pandas, the config, the job), and the collector went
    through all of them five times on the way (about 0.45 s) and once more at exit. Nothing
    if the collector is already off or was released before. A sweep's jobs do not hold it:
    frozen, one job's objects would outlive it in a launcher that runs the jobs in one
    process."""
    global _held
    if gc.isenabled() and gc.get_freeze_count() == 0:
        gc.disable()
        _held = True


def release_collector() -> None:
    """Freeze what start-up made (`gc.freeze`: the collector never scans those objects again,
    and the few cycles among them that were garbage stay in memory) and turn the collector
    back on; nothing unless `hold_collector` turned it off."""
    global _held
    if _held:
        gc.freeze()
        gc.enable()
        _held = False


def configure(flush_denormal: bool, num_threads: int) -> None:
    """Process-wide CPU settings.

    Vanishing gradients are exactly what seqbench studies, and in float32 they become denormal
    numbers on which the CPU's math libraries run several times slower (measured here: an
    nn.LSTM training step at B=128, T=200, H=128 took 0.95 s, and 0.13 s with denormals
    flushed). Flushing replaces values below 1.2e-38 with 0, which changes no result that float32
    can represent in normal range. Gradient norms are reported as 0 once they underflow.
    """
    import torch

    torch.set_flush_denormal(flush_denormal)
    if num_threads > 0:
        torch.set_num_threads(num_threads)


def seed_everything(seed: int) -> None:
    """Seed python, numpy and torch (all devices)."""
    import numpy as np
    import torch

    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def auto_threads(num_threads: int, step_work: int, min_work: int) -> int | None:
    """The torch threads a run uses when hardware.num_threads is 0 (auto), None to keep torch's
    default (or the share of the cores a parallel sweep gave the job).

    A step whose work (batch rows x gate columns) is below the engine's threading threshold
    (`min_work`) runs on one thread: its many tiny parallel regions per timestep gain little
    from a second thread and make every barrier wait for a core when other processes want
    them (two such runs at once took 50x as long). Decided once, before training: the engine's
    sums depend on the thread count, so a run never changes it.
    """
    if num_threads > 0:
        return num_threads
    if step_work < min_work:
        return 1
    return None


def threads_for_step(num_threads: int, step_work: int) -> None:
    """Apply `auto_threads` with the engine's threshold (before any work, once per process)."""
    import torch

    from seqbench.engine.constants import THREADING_MIN_WORK

    threads = auto_threads(num_threads, step_work, THREADING_MIN_WORK)
    if threads is not None and threads != torch.get_num_threads():
        torch.set_num_threads(threads)
