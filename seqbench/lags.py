"""Gradient norms by lag from where each loss term reads: the memory of a cell, measured.

A task declares its **sources**, the output positions its loss reads (``Task.sources``: the
last step for adding and stocks, each review's last real token for sentiment, the recall
positions for copy, every position for chargen). For a (sequence b, source s) pair, let
``l_{b,s}`` be the part of the batch loss read at output ``s`` of sequence ``b`` (its gradient
is the loss's gradient at that output and zero at every other). The **lag profile** of a layer
is, for lag k = 0, 1, 2, ...::

    RMS over the pairs with s - k >= 0 of  ||d l_{b,s} / d h_{b, s-k}||

so lag 0 is where the loss reads and lag k is k steps back through the recurrence. Unlike the
per-timestep norm ||dL/dh_t|| (where the training signal lands), it does not depend on where
the sequences end or on how many loss terms add up at a step.

How it is taken (:class:`LagProbe`, on the training step's own backward):

* **One source per sequence** (adding, stocks, sentiment): rows of a batch are independent, so
  each sequence's own row of dL/dh_t is the gradient of its one loss term. The engine records
  those rows (``GradNormRecorder.per_row``) in the training backward: nothing extra runs.
* **Several sources per sequence** (copy, chargen): a probe takes ``pairs`` (sequence, source)
  pairs, chosen without randomness: the latest source of every row first, then each row's
  second latest, and so on (:func:`select_pairs`). Late sources are the ones that reach long
  lags; in chargen, whose windows are random cuts of one text, every loss term is alike and the
  latest ones simply see the most history. On the engine the pairs are the rows of one more
  backward through the saved forward, without weight gradients (``GradNormRecorder.probe``);
  on the fused/unrolled path, autograd (one vector-Jacobian product per distinct source
  position).

Norms are combined in log space (``log10``), exact on the engine at any size (its per-sequence
power-of-two scaling); on the unrolled path a float32 gradient that underflowed stays -inf.
A bidirectional model's backward direction (its own entries in the profile, as in the
per-timestep trace) is read by the head at its final state: its lags count back from there, in
its own processing order.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import numpy as np
import torch
from torch import Tensor

from seqbench.engine import GradNormRecorder

#: Pairs a multi-source probe takes per snapshot by default (``diagnostics.lag_sources``).
DEFAULT_PAIRS = 64


class LagProfile(NamedTuple):
    """A lag profile: per trace entry (layer; layer and direction for a bidirectional model)
    and lag k, the RMS gradient norm over the pairs that reach lag k.

    norms: (entries, lags) float64; 0 where the RMS is below float64's smallest normal number.
    log10: (entries, lags) float64 log10 of the same RMS, exact where ``norms`` underflows
        (engine); -inf where no pair has any gradient at that lag.
    pairs: (entries, lags) int64, how many (sequence, source) pairs reach lag k.
    """

    norms: np.ndarray
    log10: np.ndarray
    pairs: np.ndarray


def select_pairs(sources: Tensor, limit: int) -> tuple[Tensor, Tensor]:
    """(rows, positions), int64 CPU: up to ``limit`` (sequence, source) pairs of the (B, T)
    boolean ``sources``, the latest source of each row first (rows in order), then each row's
    second latest, and so on. Deterministic: no random number is drawn."""
    sources = sources.detach().to("cpu", torch.bool)
    batch = sources.shape[0]
    rank = sources.flip(1).long().cumsum(1).flip(1)  # 1 at a row's latest source, 2 before it...
    rows, positions = sources.nonzero(as_tuple=True)
    order = torch.argsort(rank[rows, positions] * batch + rows)[:limit]
    return rows[order], positions[order]


def one_source_per_row(sources: Tensor) -> bool:
    """Whether no sequence has more than one source (then no probe is needed)."""
    return bool((sources.detach().sum(1) <= 1).all())


def align(log10_rows: Tensor, source: Tensor) -> LagProfile:
    """The lag profile from per-row log10 norms.

    Args:
        log10_rows: (E, T, R) float64, log10 ||d l_r / d h_t|| of the pair in column r.
        source: (E, R) int64, the step each pair's lags count back from in that entry.
    """
    logs = log10_rows.to("cpu", torch.float64)
    entries, steps = logs.shape[:2]
    if not source.numel():  # no pairs (a batch whose loss reads nothing): one lag, not reached
        return LagProfile(np.zeros((entries, 1)), np.full((entries, 1), -math.inf),
                          np.zeros((entries, 1), dtype=np.int64))  # fmt: skip
    lags = int(source.max()) + 1
    k = torch.arange(lags)
    t = source[:, :, None] - k  # (E, R, K): the step at lag k
    reached = t >= 0
    values = logs.gather(1, t.clamp(0, steps - 1).transpose(1, 2))  # (E, K, R)
    values = values.masked_fill(~reached.transpose(1, 2), -math.inf)
    pairs = reached.sum(1)  # (E, K)
    twice = 2.0 * values  # log10 of squared norms
    top = twice.amax(2, keepdim=True)  # (E, K, 1)
    top_ok = torch.where(torch.isfinite(top), top, torch.zeros_like(top))
    total = torch.exp(math.log(10.0) * (twice - top_ok)).sum(2)  # finite terms, <= R
    mean = torch.log10(total / pairs.clamp(min=1).double())  # -inf where no gradient at all
    log10 = 0.5 * (top_ok[..., 0] + mean)
    log10 = torch.where(torch.isfinite(top[..., 0]), log10, -math.inf)
    norms = torch.pow(10.0, log10)
    norms = norms.masked_fill(norms < torch.finfo(torch.float64).tiny, 0.0)
    return LagProfile(norms.numpy(), log10.numpy(), pairs.numpy().astype(np.int64))


def _sources_of(
    rows: Tensor, positions: Tensor, entries: int, directions: int, lengths: Tensor | None,
    steps: int,
) -> Tensor:  # fmt: skip
    """(E, R) the step each pair's lags count back from: its source in a forward entry, the
    sequence's last real step in a backward-direction entry (its final state, read by the head)."""
    source = positions.repeat(entries, 1)
    if directions == 2:
        last = (
            (lengths.cpu()[rows] - 1) if lengths is not None else torch.full_like(rows, steps - 1)
        )
        source[1::2] = last
    return source


class LagProbe:
    """The lag profile of one training step, from its own backward.

    Create it after the forward and before ``loss.backward()`` (it asks the engine for what it
    needs, or runs the unrolled path's probe on the still-intact graph); call :meth:`profile`
    after the backward.

    Args:
        trace: what the model's forward returned with ``record_states=True``.
        sources: (B, T) bool, the output positions the loss reads (``Task.sources``).
        pairs: the most (sequence, source) pairs a multi-source probe takes.
        output: the model's output (B, T, O); loss: the scalar training loss (both only read
            on the unrolled path with several sources per row).
        lengths: (B,) real lengths of a padded batch, or None.
    """

    def __init__(
        self,
        trace: GradNormRecorder | list,
        sources: Tensor,
        pairs: int,
        output: Tensor,
        loss: Tensor,
        lengths: Tensor | None = None,
    ) -> None:
        self.trace, self.lengths = trace, lengths
        self.steps = sources.shape[1]
        self.single = one_source_per_row(sources)
        if self.single:
            rows = sources.detach().cpu().any(1).nonzero()[:, 0]
            self.rows = rows
            self.positions = sources.detach().cpu().long().argmax(1)[rows]
        else:
            self.rows, self.positions = select_pairs(sources, pairs)
        self.probe_log10: Tensor | None = None
        if isinstance(trace, GradNormRecorder):
            if self.single:
                trace.per_row = True
            else:
                trace.probe = (self.rows, self.positions)
        elif not self.single:
            self.probe_log10 = unrolled_probe(trace, output, loss, self.rows, self.positions)

    def profile(self) -> LagProfile:
        """The profile, after the backward."""
        trace = self.trace
        if isinstance(trace, GradNormRecorder):
            logs = trace.row_log10[..., self.rows] if self.single else trace.probe_log10
        elif self.single:
            logs = unrolled_row_log10(trace)[..., self.rows]
        else:
            logs = self.probe_log10
        directions = getattr(trace, "directions", 1)
        source = _sources_of(self.rows, self.positions, logs.shape[0], directions, self.lengths,
                             self.steps)  # fmt: skip
        return align(logs, source)


def lag_norms(
    model: torch.nn.Module,
    batch,
    sources: Tensor,
    loss,
    *,
    pairs: int = DEFAULT_PAIRS,
) -> LagProfile:
    """The lag profile of ``model`` on ``batch`` at its current parameters.

    Works on the engine and on the fused/unrolled path alike (a `seqbench.model.SequenceModel`,
    in the mode it is in: call ``model.train()`` or ``model.eval()`` first as you need).

    Args:
        model: a ``SequenceModel``.
        batch: a `seqbench.tasks.Batch` (``x``, ``y``, optional ``lengths``).
        sources: (B, T) bool, the output positions the loss reads, e.g. ``task.sources(batch)``.
        loss: ``loss(output, batch) -> scalar``, e.g. ``task.loss``.
        pairs: the most (sequence, source) pairs taken when a row has several sources.

    Returns:
        A `LagProfile`: ``norms`` and ``log10`` (layers x lags) and ``pairs`` per lag.
        The parameters' ``.grad`` are left as they were.

    Example::

        batch = task.sample(64)
        profile = lag_norms(model, batch, task.sources(batch), task.loss)
        profile.log10[0, :10]  # layer 0, lags 0..9
    """
    kept = {p: p.grad for p in model.parameters()}
    output, trace = model(batch.x, record_states=True, lengths=batch.lengths)
    value = loss(output, batch)
    probe = LagProbe(trace, sources, pairs, output, value, batch.lengths)
    model.zero_grad(set_to_none=True)
    value.backward()
    for param, grad in kept.items():
        param.grad = grad
    return probe.profile()


def unrolled_row_log10(states: list[list[Tensor]]) -> Tensor:
    """(E, T, B) float64 log10 of each row of h_t.grad in the unrolled trace (after backward;
    -inf where a state got no gradient)."""
    entries = []
    for hs in states:
        grads = torch.stack([h.grad if h.grad is not None else torch.zeros_like(h) for h in hs])
        entries.append(grads.detach().double().norm(dim=2))  # (T, B)
    return torch.log10(torch.stack(entries)).cpu()  # log10(0) = -inf: no gradient


def unrolled_probe(
    states: list[list[Tensor]], output: Tensor, loss: Tensor, rows: Tensor, positions: Tensor
) -> Tensor:
    """(E, T, P) float64 log10 ||d l_p / d h_t|| for each pair by autograd through the unrolled
    graph (kept for the training backward that follows): one vector-Jacobian product per
    distinct source position, the pairs at that position as rows of it."""
    (at_output,) = torch.autograd.grad(loss, output, retain_graph=True)  # (B, T, O)
    flat = [h for hs in states for h in hs]
    steps = len(states[0])
    result = torch.full((len(states), steps, len(rows)), -math.inf, dtype=torch.float64)
    dev = output.device
    for position in positions.unique().tolist():
        group = (positions == position).nonzero()[:, 0]
        picked = rows[group].to(dev)
        vector = torch.zeros_like(at_output)
        vector[picked, position] = at_output[picked, position]
        grads = torch.autograd.grad(output, flat, vector, retain_graph=True, allow_unused=True)
        for entry in range(len(states)):
            for t in range(steps):
                g = grads[entry * steps + t]
                if g is not None:
                    norms = g.detach()[picked].double().norm(dim=1).cpu()
                    result[entry, t, group] = torch.log10(norms)
    for h in flat:  # retain_grad() also keeps what autograd.grad passed: not the training's
        h.grad = None
    return result
