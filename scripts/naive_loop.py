"""A plain default-PyTorch training loop: what someone would write without seqbench.

nn.LSTM / nn.GRU with default settings (no denormal flushing, torch's default threads), a
linear head on the last output, MSE loss, Adam; batches of the adding problem (two marked
values to sum). No seqbench import: this is the reference `scripts/e2e.py` times the
`seqbench` command against, as whole processes.

Usage: ``python scripts/naive_loop.py --cell lstm --seq-len 200 --batch-size 128
--hidden-size 128 --steps 150``
"""

from __future__ import annotations

import argparse
import time

import torch
from torch import nn


def adding_batch(batch: int, seq_len: int, gen: torch.Generator) -> tuple:
    """(B, T, 2) inputs (value, marker) and (B, 1) targets: the sum of the two marked values."""
    values = torch.rand(batch, seq_len, generator=gen)
    marks = torch.zeros(batch, seq_len)
    first = torch.randint(0, seq_len // 2, (batch,), generator=gen)
    second = torch.randint(seq_len // 2, seq_len, (batch,), generator=gen)
    rows = torch.arange(batch)
    marks[rows, first] = 1.0
    marks[rows, second] = 1.0
    target = (values * marks).sum(dim=1, keepdim=True)
    return torch.stack([values, marks], dim=2), target


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--cell", choices=["lstm", "gru"], default="lstm")
    ap.add_argument("--seq-len", type=int, default=200)
    ap.add_argument("--batch-size", type=int, default=128)
    ap.add_argument("--hidden-size", type=int, default=128)
    ap.add_argument("--steps", type=int, default=150)
    args = ap.parse_args(argv)
    torch.manual_seed(0)
    gen = torch.Generator().manual_seed(0)
    layer = {"lstm": nn.LSTM, "gru": nn.GRU}[args.cell]
    rnn = layer(2, args.hidden_size, batch_first=True)
    head = nn.Linear(args.hidden_size, 1)
    params = [*rnn.parameters(), *head.parameters()]
    optimizer = torch.optim.Adam(params, lr=1e-3)
    start = time.perf_counter()
    for step in range(1, args.steps + 1):
        x, y = adding_batch(args.batch_size, args.seq_len, gen)
        out, _ = rnn(x)
        loss = nn.functional.mse_loss(head(out[:, -1]), y)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        if step % 50 == 0 or step == args.steps:
            rate = step / (time.perf_counter() - start)
            print(f"step {step}/{args.steps} | loss {loss.item():.4f} | {rate:.1f} steps/s")


if __name__ == "__main__":
    main()
