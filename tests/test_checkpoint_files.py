"""checkpoint.py's rules on files, without training: when a periodic checkpoint is written, what
a loaded checkpoint may contain (tensors and plain values only: a pickled object is refused, not
run), and what the refusal says."""

from __future__ import annotations

import fractions
from pathlib import Path

import pytest
import torch

from seqbench.checkpoint import (
    CHECKPOINT,
    PREVIOUS,
    REQUIRED,
    CheckpointError,
    PeriodicCheckpoint,
    load_training_state,
    save_checkpoint,
)


@pytest.mark.parametrize("every,saved", [(0, []), (1, [1, 2, 3, 4, 5, 6]), (3, [3, 6])])
def test_periodic_checkpoints_every_n_steps(tmp_path: Path, every: int, saved: list) -> None:
    steps: list[int] = []
    current = 0

    def state() -> dict:
        steps.append(current)
        return {"step": current}

    callback = PeriodicCheckpoint(tmp_path, every, state)
    for current in range(1, 7):
        callback.on_step_end(current)
    assert steps == saved
    if saved:
        assert torch.load(tmp_path / CHECKPOINT, weights_only=True) == {"step": saved[-1]}


def test_a_checkpoint_holding_a_pickled_object_is_refused(tmp_path: Path) -> None:
    """weights_only: loading a checkpoint never runs code from it (torch.save of an arbitrary
    object), it is reported as unreadable, and the previous checkpoint is used instead."""
    complete = {key: torch.zeros(1) for key in REQUIRED}
    save_checkpoint(tmp_path, complete)  # becomes checkpoint.prev.pt
    save_checkpoint(tmp_path, {**complete, "recorder": fractions.Fraction(1, 3)})
    assert load_training_state(tmp_path)["source"] == PREVIOUS
    (tmp_path / PREVIOUS).unlink()
    with pytest.raises(CheckpointError) as err:
        load_training_state(tmp_path)
    assert f"{CHECKPOINT} is unreadable (UnpicklingError); {PREVIOUS} is missing" in str(err.value)
