"""Tasks: each module generates or loads data and knows its loss, metrics and baseline."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

import torch
from torch import Tensor


@dataclass
class Batch:
    x: Tensor  # (B, T, input_size)
    y: Tensor  # task-specific target


class Task(Protocol):
    name: str
    input_size: int
    output_size: int
    metric: str  # the validation metric that decides "best" and is compared to the baseline
    mode: str  # "min" or "max": which direction of `metric` is better
    baseline: float  # the metric of the trivial baseline described in the task's docstring
    baseline_name: str

    def sample(self, batch_size: int) -> Batch:
        """A fresh training batch from the task's seeded generator."""
        ...

    def validation(self) -> Batch:
        """The fixed validation set (the same for every seed)."""
        ...

    def loss(self, output: Tensor, batch: Batch) -> Tensor:
        """Training loss from the model output (B, T, output_size)."""
        ...

    def metrics(self, output: Tensor, batch: Batch) -> dict[str, float]:
        """Validation metrics, including `metric`."""
        ...


def build_task(cfg, device: torch.device, seed: int) -> Task:
    """Create the task named by ``cfg.name`` from its config node (fields of its schema)."""
    from seqbench.tasks.adding import AddingTask
    from seqbench.tasks.copy import CopyTask

    kwargs = {k: v for k, v in dict(cfg).items() if k != "name"}
    tasks = {"adding": AddingTask, "copy": CopyTask}
    if cfg.name not in tasks:
        raise ValueError(f"unknown task {cfg.name!r}; choose one of {sorted(tasks)}")
    return tasks[cfg.name](device=device, seed=seed, **kwargs)


def make_generator(device: torch.device, seed: int) -> torch.Generator:
    return torch.Generator(device=device).manual_seed(seed)
