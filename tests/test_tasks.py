"""Task generators: structure, seeding, and baselines checked by simulation."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from seqbench.tasks import make_generator
from seqbench.tasks.adding import AddingTask, adding_batch
from seqbench.tasks.copy import CopyTask, copy_batch

CPU = torch.device("cpu")


@pytest.mark.parametrize("seq_len", [2, 3, 50])
def test_adding_structure(seq_len: int) -> None:
    batch = adding_batch(256, seq_len, make_generator(CPU, 0))
    values, marker = batch.x[..., 0], batch.x[..., 1]
    assert batch.x.shape == (256, seq_len, 2)
    assert ((values >= 0) & (values <= 1)).all()
    half = seq_len // 2
    assert (marker[:, :half].sum(1) == 1).all() and (marker[:, half:].sum(1) == 1).all()
    torch.testing.assert_close(batch.y, (values * marker).sum(1))


def test_adding_baseline_is_variance_of_the_sum() -> None:
    task = AddingTask(CPU, seed=0, seq_len=20, val_size=8, val_seed=0)
    batch = task.sample(200_000)
    predict_one = torch.ones(200_000, 20, 1)
    assert task.loss(predict_one, batch).item() == pytest.approx(task.baseline, rel=0.02)
    assert task.baseline == pytest.approx(0.1667, abs=1e-4)


def test_copy_structure() -> None:
    t, m = 7, 10
    batch = copy_batch(64, t, make_generator(CPU, 0))
    ids = batch.x.argmax(-1)
    assert batch.x.shape == (64, t + 20, 10)
    assert ((ids[:, :m] >= 1) & (ids[:, :m] <= 8)).all()
    assert (ids[:, m : m + t - 1] == 0).all()
    assert (ids[:, m + t - 1] == 9).all()  # the delimiter
    assert (ids[:, m + t :] == 0).all()
    assert (batch.y[:, : t + m] == 0).all()
    assert torch.equal(batch.y[:, t + m :], ids[:, :m])


def test_copy_docstring_example() -> None:
    batch = copy_batch(1, 3, make_generator(CPU, 0), num_symbols=8, memory_len=3)
    assert batch.x.argmax(-1)[0, 3:].tolist() == [0, 0, 9, 0, 0, 0]
    assert batch.y[0, :6].tolist() == [0] * 6


def test_copy_memoryless_baseline() -> None:
    """Blanks with certainty, then a uniform guess over the 8 symbols, scores the baseline."""
    task = CopyTask(CPU, seed=0, seq_len=30, val_size=8, val_seed=0)
    batch = task.sample(512)
    logits = torch.full((512, 50, 10), -1e9)
    logits[:, :40, 0] = 0.0
    logits[:, 40:, 1:9] = 0.0
    assert task.loss(logits, batch).item() == pytest.approx(task.baseline, rel=1e-5)
    assert task.baseline == pytest.approx(10 * math.log(8) / 50)
    assert task.metrics(logits, batch)["accuracy"] == pytest.approx(0.125, abs=0.03)
    perfect = F.one_hot(batch.y, 10).float() * 100
    assert task.metrics(perfect, batch)["accuracy"] == 1.0


@pytest.mark.parametrize("task_cls", [AddingTask, CopyTask])
def test_seeded_and_fixed_validation(task_cls) -> None:
    a = task_cls(CPU, seed=1, seq_len=10, val_size=32, val_seed=5)
    b = task_cls(CPU, seed=1, seq_len=10, val_size=32, val_seed=5)
    c = task_cls(CPU, seed=2, seq_len=10, val_size=32, val_seed=5)
    assert torch.equal(a.sample(4).x, b.sample(4).x)
    assert not torch.equal(a.sample(4).x, c.sample(4).x)
    assert torch.equal(a.validation().x, c.validation().x)  # same validation set for every seed
