"""Tasks: each module generates or loads data and knows its loss, metrics and baseline.

A task is any object with the attributes and methods of `Task`. The training loop only samples
batches, computes the loss and asks the task to evaluate the model; everything task-specific
(readout position, masks, metrics, baselines) lives in the task's module.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Protocol

import torch
from torch import Tensor, nn


@dataclass
class Batch:
    x: Tensor  # (B, T, input_size) float features, or (B, T) token ids when vocab_size is set
    y: Tensor  # task-specific target
    lengths: Tensor | None = None  # (B,) real lengths when sequences are padded at the end


class Task(Protocol):
    name: str
    input_size: int  # features per step (ignored when vocab_size is set)
    vocab_size: int | None  # token inputs: the model embeds ids in 0..vocab_size-1
    output_size: int
    metric: str  # the validation metric that decides "best" and is compared to the baseline
    mode: str  # "min" or "max": which direction of `metric` is better
    baseline: float  # `metric` of the trivial baseline described in the task's docstring
    baseline_name: str
    splits: tuple[str, ...]  # ("val",) or ("val", "test"); test is evaluated once, at the end
    info: dict[str, Any]  # extra facts for metrics.json (data sizes, more baselines, ...)
    generator: torch.Generator  # draws every training batch: its state is the data position

    def sample(self, batch_size: int) -> Batch:
        """A fresh training batch from the task's seeded generator."""
        ...

    def loss(self, output: Tensor, batch: Batch) -> Tensor:
        """Training loss from the model output (B, T, output_size)."""
        ...

    def evaluate(self, model: nn.Module, split: str = "val") -> dict[str, float]:
        """Metrics (including `metric`) on a fixed split; called under torch.no_grad()."""
        ...


def task_class(name: str) -> type:
    """The class that implements task `name` (imported on demand: data tasks are heavier)."""
    from seqbench.tasks.adding import AddingTask
    from seqbench.tasks.chargen import CharGenTask
    from seqbench.tasks.copy import CopyTask
    from seqbench.tasks.sentiment import SentimentTask
    from seqbench.tasks.stocks import StocksTask

    tasks = {
        "adding": AddingTask,
        "copy": CopyTask,
        "sentiment": SentimentTask,
        "stocks": StocksTask,
        "chargen": CharGenTask,
    }
    if name not in tasks:
        raise ValueError(f"unknown task {name!r}; choose one of {sorted(tasks)}")
    return tasks[name]


def build_task(cfg: Any, device: torch.device, seed: int) -> Task:
    """Create the task named by ``cfg.name`` from its config node (fields of its schema)."""
    kwargs = {k: v for k, v in dict(cfg).items() if k != "name"}
    return task_class(cfg.name)(device=device, seed=seed, **kwargs)


def make_generator(device: torch.device, seed: int) -> torch.Generator:
    return torch.Generator(device=device).manual_seed(seed)


class SyntheticTask:
    """Shared plumbing of the generated tasks: a seeded training stream and a fixed validation
    set drawn once from `val_seed`, so every seed is compared on the same validation data."""

    vocab_size = None
    splits = ("val",)

    def __init__(self, device: torch.device, seed: int, val_size: int, val_seed: int) -> None:
        self.generator = make_generator(device, seed)
        self.info: dict[str, Any] = {}
        self._validation = self.batch(val_size, make_generator(device, val_seed))

    def batch(self, n: int, generator: torch.Generator) -> Batch:
        raise NotImplementedError

    def metrics(self, output: Tensor, batch: Batch) -> dict[str, float]:
        raise NotImplementedError

    def sample(self, batch_size: int) -> Batch:
        return self.batch(batch_size, self.generator)

    def validation(self) -> Batch:
        return self._validation

    def evaluate(self, model: nn.Module, split: str = "val") -> dict[str, float]:
        if split != "val":
            raise ValueError(f"{type(self).__name__} has no {split!r} split")
        output, _ = model(self._validation.x)
        return self.metrics(output, self._validation)
