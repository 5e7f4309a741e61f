"""The copy problem (Arjovsky, Shah & Bengio 2016).

Categories: 0 is the blank, 1..8 are symbols, 9 is the delimiter (10 in all, one-hot encoded).
An input is 10 symbols drawn uniformly from 1..8, then T-1 blanks, the delimiter, and 10 blanks
(length T+20). The target is T+10 blanks followed by the 10 symbols: the model must hold them over
T steps and replay them after the delimiter. Example with T=3 and 3 symbols instead of 10:

    input   5 2 7 0 0 9 0 0 0
    target  0 0 0 0 0 0 5 2 7

Metrics: cross-entropy per step (averaged over all T+20 steps) and accuracy on the 10 recall
positions. Baseline: a memoryless model that outputs blanks and then guesses uniformly among the 8
symbols scores 10 * ln(8) / (T + 20) per step and 1/8 accuracy.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from seqbench.tasks.base import Batch, Need, SyntheticTask, SyntheticTaskConfig


@dataclass
class CopyConfig(SyntheticTaskConfig):
    name: str = "copy"
    seq_len: int = 50  # T: blanks between the symbols and the delimiter
    num_symbols: int = 8  # symbols are drawn from the first num_symbols categories
    memory_len: int = 10  # how many symbols to remember


def copy_batch(
    n: int, seq_len: int, generator: torch.Generator, num_symbols: int = 8, memory_len: int = 10
) -> Batch:
    """x (n, T+2M, num_symbols+2) one-hot inputs, y (n, T+2M) target categories."""
    device = generator.device
    length = seq_len + 2 * memory_len
    delimiter = num_symbols + 1
    symbols = torch.randint(1, num_symbols + 1, (n, memory_len), generator=generator, device=device)
    inputs = torch.zeros(n, length, dtype=torch.long, device=device)
    inputs[:, :memory_len] = symbols
    inputs[:, memory_len + seq_len - 1] = delimiter
    target = torch.zeros(n, length, dtype=torch.long, device=device)
    target[:, -memory_len:] = symbols
    x = F.one_hot(inputs, num_symbols + 2).float()
    return Batch(x, target)


class CopyTask(SyntheticTask):
    name = "copy"
    schema = CopyConfig
    bidirectional_refusal = (
        "the backward direction would meet the symbols to recall right after the "
        "delimiter without carrying them over T steps, so it would not measure memory"
    )
    metric = "cross_entropy"
    mode = "min"
    baseline_name = "memoryless: blanks, then uniform guesses"

    def __init__(
        self,
        device: torch.device,
        seed: int,
        seq_len: int,
        val_size: int,
        val_seed: int,
        num_symbols: int = 8,
        memory_len: int = 10,
    ) -> None:
        self.seq_len = seq_len
        self.num_symbols = num_symbols
        self.memory_len = memory_len
        self.input_size = self.output_size = num_symbols + 2
        self.baseline = memory_len * math.log(num_symbols) / (seq_len + 2 * memory_len)
        super().__init__(device, seed, val_size, val_seed)

    @classmethod
    def check(cls, cfg: Any, need: Need) -> None:
        super().check(cfg, need)
        need(cfg.num_symbols >= 1, "task.num_symbols", "a positive integer")
        need(cfg.memory_len >= 1, "task.memory_len", "a positive integer")

    def batch(self, n: int, generator: torch.Generator) -> Batch:
        return copy_batch(n, self.seq_len, generator, self.num_symbols, self.memory_len)

    def loss(self, output: Tensor, batch: Batch) -> Tensor:
        return F.cross_entropy(output.flatten(0, 1), batch.y.flatten())

    def sources(self, batch: Batch) -> Tensor:
        # The loss reads every step, but the blanks before the delimiter need no memory: the
        # lag profile follows the recall positions back to the symbols.
        mask = torch.zeros(batch.y.shape, dtype=torch.bool, device=batch.y.device)
        mask[:, -self.memory_len :] = True
        return mask

    def metrics(self, output: Tensor, batch: Batch) -> dict[str, float]:
        recall = output[:, -self.memory_len :].argmax(-1)  # (B, M)
        accuracy = (recall == batch.y[:, -self.memory_len :]).float().mean()
        return {"cross_entropy": self.loss(output, batch).item(), "accuracy": accuracy.item()}

    def solved(self, metrics: dict[str, float]) -> bool:
        return metrics["accuracy"] >= 0.99  # nearly every recalled symbol right


TASK = CopyTask
