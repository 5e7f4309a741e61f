"""Where the engine delivers the per-timestep gradient norms of each backward."""

from __future__ import annotations

import torch
from torch import Tensor


class GradNormRecorder:
    """Receives per-timestep gradient norms from the engine's backward pass.

    After each backward through :func:`recurrent` (the most recent one wins):

    ``norms``
        float64 CPU tensor of shape ``(num_layers, T)``; ``norms[l, t] = ||dL/dh_t^{(l)}||_F``,
        the Frobenius norm over (batch, hidden) of the total derivative of the loss with respect
        to layer ``l``'s output at step ``t`` (before inter-layer dropout; padded positions count
        as zero). It is computed as ``2**e_t * sqrt(sum(g_t**2))`` with the sum of squares in
        float64 from the engine's power-of-two-rescaled backward signal ``g_t``, so it does not
        underflow where the float32 gradient itself would (it is exact down to float64's
        smallest normal number, about 2.2e-308, and 0 below that, never a subnormal).
    ``log10_norms``
        only if ``track_log10=True``: float64 ``(num_layers, T)`` with ``log10`` of the same
        quantity, computed as ``e_t*log10(2) + log10(||g_t||)``. It stays finite for arbitrarily
        small norms (e.g. a tanh RNN at T=10000) and is ``-inf`` only where the derivative is
        exactly zero (padding, or no path from the loss). This is not a separate, approximate
        side computation: the whole backward pass, including the parameter gradients, runs on
        the rescaled signal, so the tracked magnitude covers all paths (recurrence, loss terms at
        every step, layers above, dropout, padding). Its only approximation is that at a step,
        within one sequence, a term more than ``2**60`` (float64: ``2**200``) smaller than that
        sequence's dominant one is dropped (see :mod:`seqbench.engine`'s numerical contract).
        Tracking costs nothing extra; the flag only controls whether the array is stored.
    ``gate_means``
        only if ``track_gates=True``, after each forward: per layer, float64 CPU
        ``(len(cell.gate_names), T, H)``, the mean activation of each gate of the cell (LSTM
        input, forget, output; GRU reset, update) over the real (not padded) sequences of the
        batch, read from the activations the forward keeps for its backward (NaN at a step with
        no real sequence); empty for a cell without gates. Real positions: those of
        ``lengths`` when the engine gets it, else of ``valid`` ((T, B, 1) 0/1) when the caller
        sets it (a causal model run without lengths), else all.
    ``row_log10``
        only if the caller sets ``per_row = True`` before the backward: float64 CPU
        ``(num_layers, T, B)``, each sequence's own ``log10 ||dL/dh_t^{(l)}||`` (its row of the
        same derivative, exact at any size). With one loss term per sequence this is the
        gradient of that term alone (rows of a batch are independent): the lag profile of
        :mod:`seqbench.lags` aligns it at each sequence's readout.
    ``probe_log10``
        only if the caller sets ``probe = (rows, positions)`` (two int64 tensors of P entries)
        before the backward: float64 CPU ``(num_layers, T, P)``, ``log10 ||d l_p/dh_t^{(l)}||``
        of sequence ``rows[p]`` where ``l_p`` is the part of the loss read at its output
        ``positions[p]`` alone. The engine gets them from one more backward through its saved
        forward (after the training one, without weight gradients), with the P pairs as rows.
    """

    def __init__(self, track_log10: bool = False, track_gates: bool = False) -> None:
        self.track_log10 = track_log10
        self.track_gates = track_gates
        self.norms: torch.Tensor | None = None
        self.log10_norms: torch.Tensor | None = None
        self.gate_means: list[Tensor] = []
        self.valid: Tensor | None = None  # (T, B, 1) real positions, when the caller knows them
        self.per_row = False  # requests, set by the caller before the backward
        self.probe: tuple[Tensor, Tensor] | None = None
        self.row_log10: Tensor | None = None
        self.probe_log10: Tensor | None = None
        self.num_records = 0

    def reset(self) -> None:
        self.norms = None
        self.log10_norms = None
        self.gate_means = []
        self.row_log10 = None
        self.probe_log10 = None
        self.num_records = 0

    def _record_forward(
        self, layer: int, cell, saved: tuple[Tensor, ...], valid, hidden: int
    ) -> None:
        """Called by the engine's forward after each layer with the cell's saved tensors."""
        if not self.track_gates:
            return
        if layer == 0:
            self.gate_means = []
        blocks = cell.engine.gate_blocks
        if not blocks:
            return
        acts = saved[0]  # (T, B, k*H)
        steps, batch, columns = acts.shape
        acts = acts.view(steps, batch, columns // hidden, hidden)  # no copy
        means = batch_means(acts, self.valid if valid is None else valid)  # (k, T, H)
        self.gate_means.append(means[list(blocks)])  # the gates of cell.gate_names

    def _record(
        self, norms: torch.Tensor, log10_norms: torch.Tensor, row_log10: Tensor | None = None
    ) -> None:
        self.norms = norms
        self.log10_norms = log10_norms if self.track_log10 else None
        self.row_log10 = row_log10
        self.num_records += 1

    def _record_probe(self, probe_log10: Tensor) -> None:
        self.probe_log10 = probe_log10.to("cpu", torch.float64)

    def __repr__(self) -> str:
        shape = None if self.norms is None else tuple(self.norms.shape)
        return f"GradNormRecorder(track_log10={self.track_log10}, norms_shape={shape})"


def batch_means(acts: Tensor, valid: Tensor | None) -> Tensor:
    """(T, B, n, H) activations -> (n, T, H) float64 CPU means over the batch's real rows
    (``valid``: (T, B, 1) 0/1 or None); NaN at a step without one.

    One batched product with the rows' weights (1/count for a real row, 0 for padding) in the
    activations' dtype: at every diagnostic step of a training run this replaces copies of the
    whole (T, B, n, H) activations in float64, which cost as much as the forward pass itself
    (the relative error of a float32 mean over B rows is at most about B * 6e-8)."""
    steps, batch, gates, hidden = acts.shape
    acts = acts.detach().reshape(steps, batch, gates * hidden)  # a view where acts is contiguous
    if valid is None:
        weights = torch.full((steps, 1, batch), 1.0 / batch, dtype=acts.dtype, device=acts.device)
    else:
        real = valid.detach().reshape(steps, 1, batch).to(acts.dtype)
        weights = real / real.sum(dim=2, keepdim=True)  # 0/0 = NaN at a step without a real row
    means = torch.bmm(weights, acts).view(steps, gates, hidden)  # (T, n, H)
    return means.permute(1, 0, 2).to("cpu", torch.float64)
