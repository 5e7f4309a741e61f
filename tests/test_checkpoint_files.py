"""checkpoint.py's rules on files, without training: when a periodic checkpoint is written, what
a loaded checkpoint may contain (tensors and plain values only: a pickled object is refused, not
run), and what the refusal says."""

from __future__ import annotations

import fractions
import random
from pathlib import Path

import numpy as np
import pytest
import torch

from seqbench.checkpoint import (
    CHECKPOINT,
    PREVIOUS,
    REQUIRED,
    CheckpointError,
    PeriodicCheckpoint,
    load_training_state,
    restore_training_state,
    save_checkpoint,
    training_state,
)
from seqbench.results import RunRecorder


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


def draws(generator: torch.Generator) -> list[float]:
    """The next numbers of every RNG a run uses (the Gaussian caches included)."""
    return [random.random(), random.gauss(0, 1), float(np.random.rand()),
            float(np.random.randn()), float(torch.rand(1)),
            float(torch.rand(1, generator=generator))]  # fmt: skip


def parts(seed: int, run_dir: Path):
    torch.manual_seed(seed)
    model = torch.nn.Linear(2, 1)
    optimizer = torch.optim.Adam(model.parameters(), lr=0.1)
    scheduler = torch.optim.lr_scheduler.StepLR(optimizer, step_size=1, gamma=0.5)
    run_dir.mkdir()
    recorder = RunRecorder(run_dir, {"overrides": []}, "mse", "min", 10.0)
    return model, optimizer, scheduler, recorder, torch.Generator().manual_seed(seed)


def test_a_saved_training_state_continues_exactly(tmp_path: Path) -> None:
    """training_state -> checkpoint.pt -> restore_training_state into fresh objects: the same
    weights, optimizer and scheduler state, step, and the same next number from every RNG."""
    model, optimizer, scheduler, recorder, generator = parts(0, tmp_path / "a")
    model(torch.ones(1, 2)).sum().backward()
    optimizer.step(), scheduler.step(), recorder.on_step(1, 0.5, 1.0, False)
    random.seed(1), np.random.seed(1)
    random.gauss(0, 1), np.random.randn()  # leave a cached Gaussian in each
    state = training_state(model, optimizer, scheduler, recorder, generator, {"seed": 0})
    save_checkpoint(tmp_path, state)
    expected = draws(generator)

    random.seed(2), np.random.seed(2)
    fresh = parts(1, tmp_path / "b")
    assert restore_training_state(load_training_state(tmp_path), *fresh) == 1
    assert draws(fresh[4]) == expected
    assert all(map(torch.equal, model.parameters(), fresh[0].parameters()))
    assert fresh[1].state_dict()["state"][0]["step"] == 1
    assert fresh[2].get_last_lr() == pytest.approx([0.05]) and fresh[3].steps_done == 1
