"""checkpoint.pt: model and optimizer state_dicts plus the resolved config (no pickled code)."""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from seqbench.results import atomic_write


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
