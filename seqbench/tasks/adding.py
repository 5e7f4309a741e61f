"""The adding problem (Arjovsky, Shah & Bengio 2016, after Hochreiter & Schmidhuber 1997).

Each sequence has two input channels: a value drawn from U[0, 1] and a marker that is 1 at exactly
two steps, one in the first half and one in the second half. The target is the sum of the two
marked values, read from the model's output at the last step. Example with T=6:

    values  0.31  0.72  0.05  0.90  0.18  0.44
    marker  0     1     0     0     1     0      -> target 0.72 + 0.18 = 0.90

Metric: mean squared error. Baseline: always answering 1 (the mean of the sum) gives the variance
of a sum of two U[0, 1] values, 1/6 = 0.167; a model that beats it clearly has learned to carry
the first value across at least T/2 steps.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

from seqbench.tasks.base import (
    Batch,
    SyntheticTask,
    SyntheticTaskConfig,
    last_step_reads,
    last_step_sources,
)


@dataclass
class AddingConfig(SyntheticTaskConfig):
    name: str = "adding"
    seq_len: int = 100  # T: the first marked value must be carried at least T/2 steps


def adding_batch(n: int, seq_len: int, generator: torch.Generator) -> Batch:
    """`n` adding sequences of length `seq_len`: x (n, T, 2) = (value, marker), y (n,)."""
    device = generator.device
    values = torch.rand(n, seq_len, generator=generator, device=device)
    half = seq_len // 2
    first = torch.randint(0, half, (n,), generator=generator, device=device)
    second = torch.randint(half, seq_len, (n,), generator=generator, device=device)
    rows = torch.arange(n, device=device)
    marker = torch.zeros(n, seq_len, device=device)
    marker[rows, first] = 1.0
    marker[rows, second] = 1.0
    x = torch.stack([values, marker], dim=-1)  # (n, T, 2)
    y = values[rows, first] + values[rows, second]  # (n,)
    return Batch(x, y)


class AddingTask(SyntheticTask):
    name = "adding"
    schema = AddingConfig
    bidirectional_refusal = (
        "the backward direction would read the second marked value right away and "
        "reach the first without the T/2-step forward memory the task exists to measure"
    )
    input_size = 2
    output_size = 1
    metric = "mse"
    mode = "min"
    baseline = 1 / 6
    baseline_name = "predict 1 (variance of the sum)"

    def __init__(
        self, device: torch.device, seed: int, seq_len: int, val_size: int, val_seed: int
    ) -> None:
        self.seq_len = seq_len
        super().__init__(device, seed, val_size, val_seed)

    def batch(self, n: int, generator: torch.Generator) -> Batch:
        return adding_batch(n, self.seq_len, generator)

    def loss(self, output: Tensor, batch: Batch) -> Tensor:
        return F.mse_loss(output[:, -1, 0], batch.y)

    def sources(self, batch: Batch) -> Tensor:
        return last_step_sources(batch)  # the sum is read at the last step

    def reads(self, batch: Batch) -> Tensor:
        return last_step_reads(batch)

    def metrics(self, output: Tensor, batch: Batch) -> dict[str, float]:
        return {"mse": self.loss(output, batch).item()}

    def solved(self, metrics: dict[str, float]) -> bool:
        return metrics["mse"] < 0.01  # 6% of the baseline, the usual threshold


TASK = AddingTask
