"""The training loop. Everything it reports goes to callbacks; it writes no files itself."""

from __future__ import annotations

import math
from collections.abc import Callable, Collection, Iterable, Sequence
from dataclasses import dataclass
from typing import NamedTuple

import numpy as np
import torch
from torch import Tensor, nn

from seqbench.callbacks import Callback, Diverged, Interrupted
from seqbench.diagnostics import gate_means, grad_log10_norms, grad_norms, real_positions
from seqbench.lags import DEFAULT_PAIRS, LagProbe, LagProfile
from seqbench.model import SequenceModel, Trace
from seqbench.tasks import Batch, Task


class EarlyStopping(Callback):
    """Done once `patience` validations in a row have not improved the best value by more than
    `min_delta` (patience 0: never). `stopped_at` is the validation step that ended it."""

    def __init__(self, metric: str, mode: str, patience: int, min_delta: float = 0.0) -> None:
        self.metric, self.mode, self.patience, self.min_delta = metric, mode, patience, min_delta
        self.best: float | None = None
        self.without_improvement = 0
        self.stopped_at: int | None = None

    def on_eval(self, step: int, metrics: dict[str, float]) -> None:
        value = metrics[self.metric]
        if self.best is None or (
            value < self.best - self.min_delta if self.mode == "min"
            else value > self.best + self.min_delta
        ):  # fmt: skip
            self.best, self.without_improvement = value, 0
        else:
            self.without_improvement += 1
            if self.patience > 0 and self.without_improvement >= self.patience:
                self.stopped_at = step

    def __call__(self) -> bool:
        return self.stopped_at is not None


@dataclass
class Clip:
    mode: str = "norm"  # norm | value
    threshold: float | None = 1.0


def train(
    model: SequenceModel,
    task: Task,
    optimizer: torch.optim.Optimizer,
    *,
    steps: int,
    batch_size: int,
    eval_every: int,
    clip: Clip,
    diagnostics_every: int,
    lag_sources: int = DEFAULT_PAIRS,
    callbacks: Sequence[Callback] = (),
    start_step: int = 0,
    stop: Callable[[], str | None] = lambda: None,
    done: Callable[[], bool] = lambda: False,
    snapshots_held: Collection[int] = (),
) -> None:
    """Train from `start_step` to `steps` optimizer updates.

    Step s computes the gradient at the parameters after s updates. Gradient norms per timestep
    and by lag (`seqbench.lags`, at most `lag_sources` pairs per probe) are taken at s = 0 and
    every `diagnostics_every` steps from the same backward pass that trains, except at the
    steps in `snapshots_held` (a completed run's final snapshot, when it is trained longer).
    Raises `Diverged` on a NaN/Inf loss or gradient, and `Interrupted` between two steps once
    `stop()` returns a reason. Returns early when `done()` (early stopping) after a validation.
    """
    for step in range(start_step, steps):
        if (reason := stop()) is not None:
            raise Interrupted(step, reason)
        diagnose = step == 0 or (diagnostics_every > 0 and step % diagnostics_every == 0)
        diagnose = diagnose and step not in snapshots_held
        batch = task.sample(batch_size)
        model.train()
        output, states = forward(model, batch, diagnose, reads(task, batch))
        loss = task.loss(output, batch)
        if diagnose:  # before the backward: it asks the engine for what the profile needs
            lags = LagProbe(states, task.sources(batch), lag_sources, output, loss, batch.lengths)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        grad_norm, clipped = clip_gradients(model.parameters(), clip)
        loss_value = loss.item()
        if not math.isfinite(loss_value):
            raise Diverged(step, "the training loss")
        if not math.isfinite(grad_norm):
            raise Diverged(step, "the gradient norm")
        if diagnose:
            norms = grad_norms(states)  # (L, T)
            positions = real_positions(batch.lengths, len(batch.x), norms.shape[1])
            _emit(callbacks, "on_grad_norms", step, norms, positions, grad_log10_norms(states))
            _emit(callbacks, "on_lag_norms", step, lags.profile())
            if gates := gate_means(states, model.spec.gate_names):  # {name: (L, T, H)}
                _emit(callbacks, "on_gates", step, gates, model.spec.memory_gate)
        optimizer.step()
        model.constrain()  # a diagonal cell's model.recurrent_max, if set
        _emit(callbacks, "on_step", step + 1, loss_value, grad_norm, clipped)
        if (step + 1) % eval_every == 0 or step + 1 == steps:
            _emit(callbacks, "on_eval", step + 1, evaluate(model, task))
            _emit(callbacks, "on_text", step + 1, task.report(model))  # {} for most tasks
        _emit(callbacks, "on_step_end", step + 1)
        if done():
            return


def forward(
    model: SequenceModel, batch: Batch, record_states: bool, read: Tensor | None = None
) -> tuple[Tensor, Trace]:
    """The model on a batch (the head only at `read`, `Task.reads`, when given). A stateful
    batch (a window of streams, `task.stateful`) starts from the state its streams carried and
    hands its final state on (`batch.carry` detaches it: the gradient stays in the window,
    truncated BPTT)."""
    if batch.carry is None:
        return model(batch.x, record_states=record_states, lengths=batch.lengths, read=read)
    output, states, final = model(batch.x, record_states=record_states, lengths=batch.lengths,
                                  state=batch.state, return_state=True, read=read)  # fmt: skip
    batch.carry(final)
    return output, states


def reads(task: Task, batch: Batch) -> Tensor | None:
    """Where the head runs: `Task.reads` (every position for a task without that method)."""
    method = getattr(task, "reads", None)
    return None if method is None else method(batch)


def clip_gradients(params: Iterable[nn.Parameter], clip: Clip) -> tuple[float, bool]:
    """Clip in place; return the total gradient norm before clipping and whether it clipped."""
    params = [p for p in params if p.grad is not None]
    limit = math.inf if clip.threshold is None or clip.mode != "norm" else clip.threshold
    total = torch.nn.utils.clip_grad_norm_(params, limit).item()
    if clip.threshold is None:
        return total, False
    if clip.mode == "value":
        clipped = any(p.grad.abs().max().item() > clip.threshold for p in params)
        torch.nn.utils.clip_grad_value_(params, clip.threshold)
        return total, clipped
    return total, total > clip.threshold


@torch.no_grad()
def evaluate(model: SequenceModel, task: Task, split: str = "val") -> dict[str, float]:
    """Metrics on one of the task's fixed splits, in eval mode."""
    model.eval()
    return task.evaluate(model, split)


class Snapshot(NamedTuple):
    """One diagnostic snapshot: per-timestep norms (L, T), real positions per step (T,), log10
    norms when the engine tracks them, the gate means ({gate: (L, T, H)}; {} for a cell without
    gates) and the lag profile."""

    norms: np.ndarray
    positions: np.ndarray
    log10: np.ndarray | None
    gates: dict[str, np.ndarray]
    lags: LagProfile


def measure_grad_norms(
    model: SequenceModel, task: Task, batch_size: int, lag_sources: int = DEFAULT_PAIRS
) -> Snapshot:
    """A diagnostic snapshot at the current parameters, without updating them."""
    batch = task.sample(batch_size)
    model.train()
    output, states = forward(model, batch, True, reads(task, batch))
    loss = task.loss(output, batch)
    lags = LagProbe(states, task.sources(batch), lag_sources, output, loss, batch.lengths)
    model.zero_grad(set_to_none=True)
    loss.backward()
    model.zero_grad(set_to_none=True)
    norms = grad_norms(states)
    positions = real_positions(batch.lengths, len(batch.x), norms.shape[1])
    return Snapshot(norms, positions, grad_log10_norms(states),
                    gate_means(states, model.spec.gate_names), lags.profile())  # fmt: skip


def _emit(callbacks: Sequence[Callback], hook: str, *args) -> None:
    for callback in callbacks:
        getattr(callback, hook)(*args)
