"""Stateful truncated BPTT over a long stream (`task.stateful=true` of the stream tasks).

The training split, a sequence of items (characters, trading days), is laid out as B parallel
contiguous streams, B = `train.batch_size`, as PyTorch's word language model does with its
``batchify``: stream b holds items ``[b * span, (b + 1) * span)``, ``span = items // B`` (the
last ``items % B`` are left out). Each training step takes the next window of ``seq_len`` items
of every stream, and starts from the state the previous window of the same stream ended in,
detached: the gradient stays inside the window (truncated BPTT), the state goes on. After the
last whole window of the streams they start over from their beginning, from a zero state.
Example: 10 items, 2 streams, windows of 2: span 5, two windows per pass (item 4 and 9 are
never an input), rows ``[0 1] [5 6]``, then ``[2 3] [7 8]``, then ``[0 1] [5 6]`` again, from
zero.

The walk's place and the carried state are part of the checkpoint (`state_dict`), so a resumed
run continues the same streams from the same state.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from seqbench.errors import ConfigError


def detach_state(state: Any) -> Any:
    """A model state (a tensor, a tuple of them, or None) cut from its graph."""
    if state is None:
        return None
    if isinstance(state, tuple):
        return tuple(s.detach() for s in state)
    return state.detach()


class StreamWalk:
    """The training split's items laid out as parallel streams, walked a window at a time.

    Args:
        items: how many items the training split has (positions 0..items-1).
        window: items per window (`task.seq_len`).
        what: what an item is, for messages ("characters", "trading days").
        info: the task's facts for metrics.json; `layout` adds the streams' shape to it.
    """

    def __init__(self, items: int, window: int, what: str, info: dict[str, Any]) -> None:
        self.items, self.window, self.what, self.info = items, window, what, info
        self.rows = 0  # streams (the batch size), once laid out
        self.span = 0  # items per stream
        self.windows = 0  # whole windows per stream: a pass
        self.position = 0  # the next window of every stream
        self.state: Any = None  # the state the next window starts from; None: zero

    def layout(self, rows: int) -> None:
        """Lay the items out as `rows` streams (the batch size); start at their beginning."""
        span = self.items // rows
        if span < 2 * self.window:  # one window per stream would never carry a state
            most = self.items // (2 * self.window)
            fix = "a smaller task.seq_len"
            if most:
                fix = f"train.batch_size={most} or fewer, or {fix}"
            raise ConfigError(
                f"task.stateful=true lays the training split's {self.items:,} {self.what} out "
                f"as train.batch_size={rows} streams of {span:,}, fewer than two windows of "
                f"task.seq_len={self.window}, so no state would be carried from one window to "
                f"the next; use {fix}."
            )
        self.rows, self.span, self.windows = rows, span, span // self.window
        self.position, self.state = 0, None
        self.info["streams"] = {
            "streams": rows,
            f"{self.what.replace(' ', '_')}_per_stream": span,
            "windows_per_pass": self.windows,
        }

    def next(self, rows: int, device: torch.device) -> Tensor:
        """(rows, window) int64 item positions of the next window of every stream; after the
        last whole window, the first again, and `state` is reset to zero."""
        if rows != self.rows:
            self.layout(rows)
        if self.position == self.windows:  # the end of every stream: start over, from zero
            self.position, self.state = 0, None
        start = self.position * self.window
        self.position += 1
        firsts = torch.arange(rows, device=device)[:, None] * self.span + start
        return firsts + torch.arange(self.window, device=device)  # (B, T)

    def carry(self, final: Any) -> None:
        """Keep a window's final state, detached, for the next window of the same streams."""
        self.state = detach_state(final)

    def state_dict(self) -> dict[str, Any]:
        """The layout, the next window and the carried state (tensors), for a checkpoint."""
        return {"rows": self.rows, "position": self.position, "state": self.state}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.layout(state["rows"])
        self.position, self.state = state["position"], state["state"]
