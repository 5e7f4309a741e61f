"""The engine over a large batch without gradients (validation, scoring), in slices of
sequences. The engine keeps every step's activations and its work buffers stay cached for
reuse, so the default job's 1,024-sequence validation set at once kept about 120 MiB more
resident than slices of 256 do (peak 581 against 483 MiB)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor

#: sequences per engine call in a forward without gradients
EVAL_SLICE = 256


def in_slices(run: Callable, x: Tensor, h0: Any, c0: Any, want_state: bool) -> Any:
    """``run(x=..., h0=..., c0=...)`` (the engine's ``recurrent``) over slices of EVAL_SLICE
    sequences, joined: the outputs along the batch, a final state along its batch dimension.
    With gradients on, one call (the backward and its recorder see the whole batch)."""
    if torch.is_grad_enabled() or x.shape[0] <= EVAL_SLICE:
        return run(x=x, h0=h0, c0=c0)
    parts = []
    for start in range(0, x.shape[0], EVAL_SLICE):
        b = slice(start, start + EVAL_SLICE)
        parts.append(
            run(x=x[b], h0=None if h0 is None else h0[:, b], c0=None if c0 is None else c0[:, b])
        )
    if not want_state:
        return torch.cat(parts)
    seq = torch.cat([p[0] for p in parts])
    finals = [p[1] for p in parts]
    if isinstance(finals[0], tuple):  # (h_n, c_n)
        return seq, tuple(torch.cat(f, dim=1) for f in zip(*finals, strict=True))
    return seq, torch.cat(finals, dim=1)
