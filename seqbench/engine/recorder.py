"""Where the engine delivers the per-timestep gradient norms of each backward."""

from __future__ import annotations

import torch


class GradNormRecorder:
    """Receives per-timestep gradient norms from the engine's backward pass.

    After each backward through :func:`recurrent` (the most recent one wins):

    ``norms``
        float64 CPU tensor of shape ``(num_layers, T)``; ``norms[l, t] = ||dL/dh_t^{(l)}||_F``,
        the Frobenius norm over (batch, hidden) of the total derivative of the loss with respect
        to layer ``l``'s output at step ``t`` (before inter-layer dropout; padded positions count
        as zero). It is computed as ``2**e_t * sqrt(sum(g_t**2))`` with the sum of squares in
        float64 from the engine's power-of-two-rescaled backward signal ``g_t``, so it does not
        underflow where the float32 gradient itself would (it is exact down to float64's range,
        about 1e-308, and 0 below that).
    ``log10_norms``
        only if ``track_log10=True``: float64 ``(num_layers, T)`` with ``log10`` of the same
        quantity, computed as ``e_t*log10(2) + log10(||g_t||)``. It stays finite for arbitrarily
        small norms (e.g. a tanh RNN at T=10000) and is ``-inf`` only where the derivative is
        exactly zero (padding, or no path from the loss). This is not a separate, approximate
        side computation: the whole backward pass, including the parameter gradients, runs on
        the rescaled signal, so the tracked magnitude covers all paths (recurrence, loss terms at
        every step, layers above, dropout, padding). Its only approximation is that at a step,
        terms more than ``2**60`` smaller than the dominant term are dropped (float32 could not
        represent their effect anyway). Tracking costs nothing extra; the flag only controls
        whether the array is stored.
    """

    def __init__(self, track_log10: bool = False) -> None:
        self.track_log10 = track_log10
        self.norms: torch.Tensor | None = None
        self.log10_norms: torch.Tensor | None = None
        self.num_records = 0

    def reset(self) -> None:
        self.norms = None
        self.log10_norms = None
        self.num_records = 0

    def _record(self, norms: torch.Tensor, log10_norms: torch.Tensor) -> None:
        self.norms = norms
        self.log10_norms = log10_norms if self.track_log10 else None
        self.num_records += 1

    def __repr__(self) -> str:
        shape = None if self.norms is None else tuple(self.norms.shape)
        return f"GradNormRecorder(track_log10={self.track_log10}, norms_shape={shape})"
