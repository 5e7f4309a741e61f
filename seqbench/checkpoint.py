"""checkpoint.pt (model and optimizer state_dicts plus the resolved config) and best.pt (the
weights at the best validation metric). Plain tensors and containers only: no pickled code."""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from seqbench.results import atomic_write, better
from seqbench.train import Callback


def save_checkpoint(
    path: Path, model: nn.Module, optimizer: torch.optim.Optimizer, config: dict, step: int
) -> None:
    """Write atomically; the file loads with ``torch.load(path, weights_only=True)``."""
    state = {
        "model": model.state_dict(),
        "optimizer": optimizer.state_dict(),
        "config": config,
        "step": step,
    }
    atomic_write(Path(path), lambda f: torch.save(state, f), mode="wb")


def load_checkpoint(path: Path, map_location: str | torch.device = "cpu") -> dict:
    return torch.load(path, map_location=map_location, weights_only=True)


class BestCheckpoint(Callback):
    """Keeps best.pt: the model weights at the best validation metric so far, for the test split."""

    def __init__(self, path: Path, model: nn.Module, metric: str, mode: str) -> None:
        self.path, self.model, self.metric, self.mode = Path(path), model, metric, mode
        self.best: float | None = None

    def on_eval(self, step: int, metrics: dict[str, float]) -> None:
        value = metrics[self.metric]
        if self.best is None or better(value, self.best, self.mode):
            self.best = value
            state = {"model": self.model.state_dict(), "step": step, self.metric: value}
            atomic_write(self.path, lambda f: torch.save(state, f), mode="wb")
