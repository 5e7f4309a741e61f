"""The scheduler group: learning-rate schedules, stepped by the training loop's callbacks.

- none: the optimizer's learning rate throughout.
- plateau: ReduceLROnPlateau on the validation metric (its direction from the task), stepped at
  each validation.
- cosine: linear warm-up from 0 over `warmup_steps` (default: 5% of the run), then cosine decay
  to `min_lr_ratio` x lr at the last step: lr(s) = lr * (s / warmup) for s < warmup, else
  lr * (r + (1 - r) * (1 + cos(pi * (s - warmup) / (steps - warmup))) / 2).
- step: lr * gamma ** (s // step_size).
Per-step schedules are stepped after every optimizer update, so after s updates the learning rate
is lr(s).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import torch
from torch.optim.lr_scheduler import LambdaLR, LRScheduler, ReduceLROnPlateau

from seqbench.callbacks import Callback

WARMUP_FRACTION = 0.05  # cosine's default warm-up: this fraction of train.steps


def cosine_factor(step: int, steps: int, warmup_steps: int, min_lr_ratio: float) -> float:
    """The multiplier of the base learning rate after `step` updates (see the module doc)."""
    if step < warmup_steps:
        return step / warmup_steps
    progress = min(1.0, (step - warmup_steps) / max(1, steps - warmup_steps))
    return min_lr_ratio + (1 - min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * progress))


def plateau(
    optimizer: torch.optim.Optimizer, steps: int, mode: str, *, factor: float, patience: int,
    threshold: float, min_lr: float,
) -> ReduceLROnPlateau:  # fmt: skip
    return ReduceLROnPlateau(optimizer, mode=mode, factor=factor, patience=patience,
                             threshold=threshold, min_lr=min_lr)  # fmt: skip


def cosine(
    optimizer: torch.optim.Optimizer, steps: int, mode: str, *, warmup_steps: int | None,
    min_lr_ratio: float,
) -> LambdaLR:  # fmt: skip
    """warmup_steps None: WARMUP_FRACTION of the run, so a short run is not all warm-up."""
    warmup = int(steps * WARMUP_FRACTION) if warmup_steps is None else warmup_steps
    return LambdaLR(optimizer, lambda s: cosine_factor(s, steps, warmup, min_lr_ratio))


def step(
    optimizer: torch.optim.Optimizer, steps: int, mode: str, *, step_size: int, gamma: float
) -> LRScheduler:
    return torch.optim.lr_scheduler.StepLR(optimizer, step_size, gamma)


# scheduler.name -> builder; every other key of the scheduler's config is a keyword argument of
# its builder, so a stale or misspelled key fails (tests/test_bindings.py builds each YAML).
BUILDERS: dict[str, Callable[..., LRScheduler | ReduceLROnPlateau]] = {
    "plateau": plateau, "cosine": cosine, "step": step,
}  # fmt: skip
SCHEDULERS = ("none", *BUILDERS)  # conf/scheduler/*.yaml


def build_scheduler(
    cfg: Any, optimizer: torch.optim.Optimizer, steps: int, mode: str
) -> LRScheduler | ReduceLROnPlateau | None:
    """The torch scheduler for `cfg.name` (None for "none")."""
    params = {key: value for key, value in cfg.items() if key != "name"}
    if cfg.name == "none":
        return None
    if cfg.name not in BUILDERS:
        raise ValueError(f"unknown scheduler {cfg.name!r}; choose one of {list(SCHEDULERS)}")
    return BUILDERS[cfg.name](optimizer, steps, mode, **params)


class SchedulerStep(Callback):
    """Steps a per-step schedule after each update, or a plateau schedule at each validation."""

    def __init__(self, scheduler: LRScheduler | ReduceLROnPlateau, metric: str) -> None:
        self.scheduler, self.metric = scheduler, metric
        self.per_eval = isinstance(scheduler, ReduceLROnPlateau)

    def on_step(self, step: int, loss: float, grad_norm: float, clipped: bool) -> None:
        if not self.per_eval:
            self.scheduler.step()

    def on_eval(self, step: int, metrics: dict[str, float]) -> None:
        if self.per_eval:
            self.scheduler.step(metrics[self.metric])
