"""Gradient norms through time and their verdicts: per timestep, ||dL/dh_t|| (where the
training signal lands), and by lag from where each loss term reads (:mod:`seqbench.lags`: the
memory of the cell, and the source of the vanishing/exploding verdicts).

A snapshot is an array ``norms[layer, t]`` (float64): the Frobenius norm over (batch, hidden) of
the total derivative of the batch training loss with respect to layer ``layer``'s hidden state at
step ``t + 1``, through the recurrence. It comes from the BPTT engine's recorder (which carries
the backward signal with a power-of-two scale, so norms down to about 1e-308 are exact) or, on
the fused path, from the unrolled forward of `SequenceModel(record_states=True)`, where a value
that already underflowed to 0 in float32 stays 0. Norms are summed in float64.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import numpy as np
import torch
from torch import Tensor

from seqbench.engine import GradNormRecorder
from seqbench.lags import LagProfile, lag_norms

__all__ = [
    "HORIZON_FRACTION",
    "LAG_PAIRS_FRACTION",
    "GradSummary",
    "LagProfile",
    "LagSummary",
    "gate_means",
    "grad_log10_norms",
    "grad_norms",
    "lag_norms",
    "real_positions",
    "summarize",
    "summarize_lags",
]

#: The memory horizon counts the timesteps back from T while ||dL/dh_t|| >= this x ||dL/dh_T||.
HORIZON_FRACTION = 1e-3
#: The lag verdicts use the lags that more than this fraction of the pairs reach.
LAG_PAIRS_FRACTION = 0.5


def grad_norms(trace: GradNormRecorder | list[list[Tensor]]) -> np.ndarray:
    """(num_layers, T) float64 norms ||dL/dh_t|| after backward, from the engine's recorder or
    from the unrolled states' h_t.grad (0 where h_t got no gradient)."""
    if isinstance(trace, GradNormRecorder):
        return trace.norms.numpy().copy()
    states = trace
    rows = []
    for hs in states:
        grads = torch.stack([h.grad if h.grad is not None else torch.zeros_like(h) for h in hs])
        rows.append(grads.double().square().sum(dim=(1, 2)).sqrt())  # (T,)
    return torch.stack(rows).cpu().numpy()


def grad_log10_norms(trace: GradNormRecorder | list[list[Tensor]]) -> np.ndarray | None:
    """(num_layers, T) log10 ||dL/dh_t|| from an engine recorder that tracks them, else None."""
    if isinstance(trace, GradNormRecorder) and trace.log10_norms is not None:
        return trace.log10_norms.numpy().copy()
    return None


def gate_means(trace: GradNormRecorder | list[list[Tensor]], names: tuple[str, ...]) -> dict:
    """{gate name: (L, T, H) float64}: each gate's mean activation over the batch's real
    positions, per layer (and direction), timestep and unit, from the engine's recorder or the
    unrolled trace; {} for a cell without gates (or a trace without them)."""
    per_layer = getattr(trace, "gate_means", None)
    if not names or not per_layer:
        return {}
    stacked = torch.stack(list(per_layer)).numpy()  # (L, n, T, H)
    return {name: stacked[:, k].copy() for k, name in enumerate(names)}


def real_positions(lengths: Tensor | None, batch_size: int, steps: int) -> np.ndarray:
    """(T,) how many sequences of the batch have a real (not padded) position at each step."""
    if lengths is None:
        return np.full(steps, batch_size)
    t = torch.arange(steps, device=lengths.device)
    return (lengths[None, :] > t[:, None]).sum(dim=1).cpu().numpy()


@dataclass
class GradSummary:
    """Summary of one layer's norms over t = 1..T.

    vanishing_ratio: log10(||dL/dh_1|| / ||dL/dh_T||); -inf when ||dL/dh_1|| underflowed to 0.
    decay_rate: least-squares slope of log10 ||dL/dh_t|| per timestep over the non-zero values
        (positive: the gradient shrinks going back in time); None with fewer than 2 of them.
    growth_rate: the factor by which ||dL/dh_t|| grows per timestep going back in time, from
        the same fit (10**-decay_rate): above 1 it explodes (1.2: +20 % per step back), below 1
        it vanishes; None with fewer than 2 non-zero values.
    max_norm: the largest ||dL/dh_t||.
    exploding: max_norm > explode_factor * ||dL/dh_T||, or a non-finite norm.
    memory_horizon: how many timesteps, counted back from T (T included), ||dL/dh_t|| stays at
        or above HORIZON_FRACTION (1e-3) x ||dL/dh_T||: T if it never falls below, 0 if
        ||dL/dh_T|| is 0. The reach of the gradient in one number.
    nonzero: how many timesteps have a non-zero norm.
    timesteps: T, the last step at which some sequence of the batch is real (padded batches).
    positions: how many real (sequence, timestep) positions the norms were taken over.
    """

    vanishing_ratio: float
    decay_rate: float | None
    max_norm: float
    exploding: bool
    nonzero: int
    timesteps: int
    positions: int
    growth_rate: float | None = None
    memory_horizon: int = 0

    def as_dict(self) -> dict:
        return asdict(self)


def summarize(
    norms: np.ndarray,
    explode_factor: float = 10.0,
    positions: np.ndarray | None = None,
    log10: np.ndarray | None = None,
) -> GradSummary:
    """Summarize one layer's norms (T,) as described in `GradSummary`.

    With `positions` (real sequences per step, for padded batches), only the steps that hold a
    real position count: T is the last of them. With `log10` (the engine's log-magnitudes,
    `diagnostics.log_magnitude=true`), the ratio and decay rate come from them, so they stay
    exact where the norm itself underflows float64.
    """
    if positions is None:
        positions = np.ones(len(norms), dtype=int)
    real_steps = int(np.nonzero(positions > 0)[0].max()) + 1 if (positions > 0).any() else 1
    norms = norms[:real_steps]
    if log10 is None:
        with np.errstate(divide="ignore"):  # log10(0) = -inf: a norm that underflowed
            logs = np.log10(norms)
        logs = np.where(np.isfinite(norms), logs, math.inf)  # overflowed or NaN
    else:
        logs = np.asarray(log10[:real_steps])
    first, last = float(logs[0]), float(logs[-1])
    if first == -math.inf:
        ratio = -math.inf
    elif last == -math.inf:
        ratio = math.inf
    else:
        ratio = first - last
    finite = np.isfinite(norms)
    positive = np.isfinite(logs)
    steps = np.nonzero(positive)[0]
    decay = None
    if len(steps) >= 2:
        decay = float(np.polyfit(steps, logs[steps], 1)[0])
    max_norm = float(norms.max()) if finite.all() else math.inf
    exploding = not finite.all() or max_norm > explode_factor * float(norms[-1])
    return GradSummary(
        ratio, decay, max_norm, bool(exploding), int(positive.sum()), real_steps,
        int(positions[:real_steps].sum()), growth_rate(decay), memory_horizon(logs),
    )  # fmt: skip


def growth_rate(decay_rate: float | None) -> float | None:
    """Per-timestep growth factor going back in time, 10**-decay_rate (inf beyond float64)."""
    if decay_rate is None:
        return None
    return math.inf if -decay_rate > 308 else 10.0**-decay_rate


def memory_horizon(logs: np.ndarray, fraction: float = HORIZON_FRACTION) -> int:
    """Timesteps back from the end (the last included) while log10 ||dL/dh_t|| stays at or
    above log10(fraction) + log10 ||dL/dh_T||; len(logs) if it never falls below."""
    last = float(logs[-1])
    if last == -math.inf:
        return 0
    if not math.isfinite(last):  # an overflowed or NaN last step: nothing to measure against
        return len(logs)
    below = np.nonzero(logs < last + math.log10(fraction))[0]
    return len(logs) - 1 - int(below.max()) if len(below) else len(logs)


@dataclass
class LagSummary:
    """The verdicts of one layer's lag profile (:mod:`seqbench.lags`), over lags 0..max_lag:
    the lags that more than half of the (sequence, source) pairs reach (``LAG_PAIRS_FRACTION``;
    on padded data, the lags within the median length), so that no verdict rests on a few long
    sequences.

    vanishing_ratio: log10 of the norm at max_lag over the norm at lag 0 (negative: the gradient
        of a loss term vanishes going back; -inf where it underflowed even log10's range).
    decay_rate: least-squares slope of log10 norm per lag, towards lag 0 (positive: it shrinks
        going back), over the lags with a non-zero norm; None with fewer than 2.
    growth_rate: 10**-decay_rate, the factor per step back (below 1 vanishes, above 1 explodes).
    max_norm: the largest norm over those lags.
    exploding: max_norm > explode_factor x the norm at lag 0, or a non-finite norm.
    memory_horizon: how many lags, lag 0 included, the norm stays at or above HORIZON_FRACTION
        (1e-3) of its value at lag 0: max_lag + 1 if it never falls below.
    nonzero: lags with a non-zero norm. max_lag: the largest lag counted. pairs: the pairs at
        lag 0 (all of them).
    """

    vanishing_ratio: float
    decay_rate: float | None
    growth_rate: float | None
    max_norm: float
    exploding: bool
    memory_horizon: int
    nonzero: int
    max_lag: int
    pairs: int

    def as_dict(self) -> dict:
        return asdict(self)


def counted_lags(pairs: np.ndarray, fraction: float = LAG_PAIRS_FRACTION) -> int:
    """How many lags (from 0) the verdicts use: those more than `fraction` of the pairs reach
    (at least lag 0)."""
    pairs = np.asarray(pairs)
    reached = np.nonzero(pairs > fraction * pairs[0])[0]
    return int(reached.max()) + 1 if len(reached) else 1


def summarize_lags(
    log10: np.ndarray, pairs: np.ndarray, explode_factor: float = 10.0
) -> LagSummary:
    """The verdicts of one layer's lag profile: `log10` (K,) exact log10 norms by lag, `pairs`
    (K,) pairs per lag (see `LagSummary`)."""
    lags = counted_lags(pairs)
    logs = np.asarray(log10[:lags], dtype=np.float64)[::-1]  # oldest first: summarize's order
    with np.errstate(over="ignore"):  # beyond float64: inf, an exploding norm
        norms = np.power(10.0, logs)
    s = summarize(norms, explode_factor, log10=logs)
    return LagSummary(
        s.vanishing_ratio, s.decay_rate, s.growth_rate, s.max_norm, s.exploding,
        s.memory_horizon, s.nonzero, lags - 1, int(pairs[0]),
    )  # fmt: skip
