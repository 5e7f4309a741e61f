"""What the training loop reports through, and the exceptions it raises. A leaf module: loggers,
checkpoints and results implement `Callback` without importing the loop (or torch)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import numpy as np


class Callback:
    """Hooks the loop calls; subclasses override what they need."""

    def on_step(self, step: int, loss: float, grad_norm: float, clipped: bool) -> None: ...
    def on_grad_norms(
        self, step: int, norms: np.ndarray, positions: np.ndarray, log10: np.ndarray | None
    ) -> None: ...
    def on_lag_norms(self, step: int, profile: Any) -> None: ...  # a seqbench.lags.LagProfile
    def on_gates(
        self, step: int, gates: dict[str, np.ndarray], memory_gate: str | None
    ) -> None: ...
    def on_eval(self, step: int, metrics: dict[str, float]) -> None: ...
    def on_text(self, step: int, texts: dict[str, str]) -> None: ...
    def on_step_end(self, step: int) -> None: ...


class Interrupted(Exception):
    """A stop was requested (Ctrl-C, SIGTERM); `step` updates are complete."""

    def __init__(self, step: int, reason: str) -> None:
        super().__init__(f"{reason} after step {step}")
        self.step = step
        self.reason = reason


class Diverged(RuntimeError):
    """The loss or a gradient became NaN/Inf at `step`."""

    def __init__(self, step: int, what: str) -> None:
        super().__init__(f"{what} became non-finite at step {step}")
        self.step = step
