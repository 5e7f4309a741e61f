"""Checkpoints: the full training state (checkpoint.pt, resumable to the same result) and the
weights at the best validation metric (best.pt). Plain tensors and containers only: everything
loads with ``torch.load(..., weights_only=True)``, nothing is unpickled as code.

checkpoint.pt is written to a temporary file and renamed; the file it replaces is kept as
checkpoint.prev.pt, so a checkpoint that turns out corrupt falls back to the one before.
"""

from __future__ import annotations

import os
import random
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from seqbench.callbacks import Callback
from seqbench.errors import ConfigError
from seqbench.files import atomic_write
from seqbench.results import better

CHECKPOINT = "checkpoint.pt"
PREVIOUS = "checkpoint.prev.pt"
# What `training_state` writes and `load_training_state` requires (the scheduler may be None).
REQUIRED = ("model", "optimizer", "config", "step", "rng", "recorder")


class CheckpointError(ConfigError):
    """No readable checkpoint where one was expected."""


def rng_state(generator: torch.Generator) -> dict:
    """python, numpy, torch (CPU and CUDA) and the task's data generator."""
    version, mt, gauss = random.getstate()
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    return {
        "python": [version, list(mt), gauss],
        "numpy": [kind, torch.from_numpy(keys.astype(np.int64)), pos, has_gauss, cached],
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
        "task": generator.get_state(),
    }


def set_rng_state(state: dict, generator: torch.Generator) -> None:
    version, mt, gauss = state["python"]
    random.setstate((version, tuple(mt), gauss))
    kind, keys, pos, has_gauss, cached = state["numpy"]
    np.random.set_state((kind, keys.numpy().astype(np.uint32), pos, has_gauss, cached))
    torch.set_rng_state(state["torch"])
    if state["cuda"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
    generator.set_state(state["task"])


def training_state(
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    scheduler: Any | None,
    recorder: Any,
    generator: torch.Generator,
    config: dict,
    stream: Any | None = None,
) -> dict[str, Any]:
    """Everything a run needs to continue to the same result: weights, optimizer and scheduler
    state, the resolved config, the step, every RNG, the recorder's history and, for a stateful
    task (`task.stateful`), its walk along the streams (`stream`: where it is and the state it
    carries)."""
    return {
        "model": model.state_dict(),
        "optimizer": optimizer.state_dict(),
        "config": config,
        "step": recorder.steps_done,
        "rng": rng_state(generator),
        "scheduler": scheduler.state_dict() if scheduler is not None else None,
        "recorder": recorder.state_dict(),
        "stream": stream.state_dict() if stream is not None else None,
    }


def restore_training_state(
    state: dict[str, Any],
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    scheduler: Any | None,
    recorder: Any,
    generator: torch.Generator,
    stream: Any | None = None,
) -> int:
    """Load what `training_state` wrote into the freshly built objects; return the step."""
    model.load_state_dict(state["model"])
    optimizer.load_state_dict(state["optimizer"])
    recorder.load_state_dict(state["recorder"])
    if scheduler is not None:
        scheduler.load_state_dict(state["scheduler"])
    set_rng_state(state["rng"], generator)
    if stream is not None:
        stream.load_state_dict(state["stream"])
    return state["step"]


def save_checkpoint(run_dir: Path, state: dict[str, Any]) -> None:
    """Write checkpoint.pt atomically, keeping the one it replaces as checkpoint.prev.pt."""
    path = Path(run_dir) / CHECKPOINT
    if path.exists():
        os.replace(path, Path(run_dir) / PREVIOUS)
    atomic_write(path, lambda f: torch.save(state, f), mode="wb")


def load_checkpoint(path: Path, map_location: str | torch.device = "cpu") -> dict:
    return torch.load(path, map_location=map_location, weights_only=True)


def load_training_state(run_dir: Path, map_location: str | torch.device = "cpu") -> dict:
    """The newest readable, complete checkpoint of `run_dir` (checkpoint.pt, else the previous
    one), with a "source" key naming the file.

    Raises:
        CheckpointError: neither file exists or loads (truncated, corrupt, not a checkpoint).
    """
    problems = []
    for name in (CHECKPOINT, PREVIOUS):
        path = Path(run_dir) / name
        if not path.exists():
            problems.append(f"{name} is missing")
            continue
        try:
            state = load_checkpoint(path, map_location)
        except Exception as err:  # a truncated zip, bad pickle opcodes, ...
            problems.append(f"{name} is unreadable ({type(err).__name__})")
            continue
        if not isinstance(state, dict) or any(key not in state for key in REQUIRED):
            problems.append(f"{name} is not a complete seqbench checkpoint")
            continue
        state["source"] = name
        return state
    if (Path(run_dir) / "multirun.yaml").exists():  # a sweep's directory, not a run's
        from seqbench.resume import go_on_with_sweep

        raise CheckpointError(
            f"resume={run_dir} is a sweep's directory (it holds multirun.yaml), not a run's. "
            f"To go on with the sweep, run its command again {go_on_with_sweep(run_dir)}; to "
            f"resume one job, point resume= at its directory (e.g. {run_dir}/0)."
        )
    raise CheckpointError(
        f"resume={run_dir}: no usable checkpoint ({'; '.join(problems)}). "
        "Point resume= at a run directory written by seqbench, or start a new run."
    )


class PeriodicCheckpoint(Callback):
    """Saves the full training state every `every` steps (0: never; the run saves at the end).

    Args:
        state: returns the training state dict at the current step (see `training_state`).
    """

    def __init__(self, run_dir: Path, every: int, state) -> None:
        self.run_dir, self.every, self.state = Path(run_dir), every, state

    def on_step_end(self, step: int) -> None:
        if self.every > 0 and step % self.every == 0:
            save_checkpoint(self.run_dir, self.state())


class BestCheckpoint(Callback):
    """Keeps best.pt: the model weights at the best validation metric so far, for the test split."""

    def __init__(self, path: Path, model: nn.Module, metric: str, mode: str) -> None:
        self.path, self.model, self.metric, self.mode = Path(path), model, metric, mode
        self.best: float | None = None

    def on_eval(self, step: int, metrics: dict[str, float]) -> None:
        value = metrics[self.metric]
        if self.best is None or better(value, self.best, self.mode):
            self.best = value
            state = {"model": self.model.state_dict(), "step": step, self.metric: value}
            atomic_write(self.path, lambda f: torch.save(state, f), mode="wb")
