"""Tasks: each module generates or loads data and knows its loss, metrics and baseline.

A task is one module of this package plus one conf/task/<name>.yaml. The module holds the task's
class (the `Task` protocol of `seqbench.tasks.base`: sampling, loss, evaluation, `solved`,
`report`), its config schema, its value checks, its baseline and, at module level,
`TASK = TheClass`. The registry here imports every module of the package on first use and keeps
those that define `TASK`, so nothing else in seqbench lists task names.

The training loop only samples batches, computes the loss and asks the task to evaluate the
model; everything task-specific (readout position, masks, metrics, baselines) lives in the task's
module.
"""

from __future__ import annotations

import importlib
import pkgutil
from collections.abc import Mapping
from functools import cache
from types import MappingProxyType
from typing import Any

import torch

from seqbench.tasks.base import Batch, SyntheticTask, Task, TaskConfig, make_generator

__all__ = [
    "TASKS",
    "Batch",
    "SyntheticTask",
    "Task",
    "TaskConfig",
    "build_task",
    "make_generator",
    "task_class",
    "task_schemas",
]


@cache
def _registry() -> Mapping[str, type[Task]]:
    # Imported on first use, not with the package: a task module imports seqbench.tasks.base,
    # which runs this file first, and the data tasks pull in pandas.
    tasks: dict[str, type[Task]] = {}
    for module_info in pkgutil.iter_modules(__path__):
        module = importlib.import_module(f"{__name__}.{module_info.name}")
        task = getattr(module, "TASK", None)  # helpers (base, data) define none
        if task is not None:
            tasks[task.name] = task
    return MappingProxyType(dict(sorted(tasks.items())))


def __getattr__(name: str) -> Any:
    if name == "TASKS":  # task name -> class, read-only; built on first access
        return _registry()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def task_class(name: str) -> type[Task]:
    """The class that implements task `name`.

    Raises:
        ValueError: listing the valid names when `name` is not one of them.
    """
    tasks = _registry()
    if name not in tasks:
        raise ValueError(f"unknown task {name!r}; choose one of {sorted(tasks)}")
    return tasks[name]


def task_schemas() -> dict[str, type[TaskConfig]]:
    """Task name -> its config dataclass, for Hydra's ConfigStore (group schema/task)."""
    return {name: task.schema for name, task in _registry().items()}


def build_task(cfg: Any, device: torch.device, seed: int) -> Task:
    """Create the task named by ``cfg.name`` from its config node (fields of its schema)."""
    kwargs = {k: v for k, v in dict(cfg).items() if k != "name"}
    return task_class(cfg.name)(device=device, seed=seed, **kwargs)
