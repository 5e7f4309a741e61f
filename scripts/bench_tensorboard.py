"""What TensorBoard logging costs per diagnostic snapshot and per picture (prints a table).

Feeds TensorBoardLogger synthetic snapshots of the issue-11 shapes (LSTM, 1 layer, T=200,
H=128): the per-snapshot scalars (gradient summaries, gate means) at every snapshot, and the
pictures (gradient and gate heat maps, norm vs t) as drawn after a validation. With `--old FILE`
(a previous seqbench/loggers/tensorboard.py, e.g. from `git show REV:...`), the same for it.

    python scripts/bench_tensorboard.py [--snapshots 50] [--old /tmp/old_tensorboard.py]
"""

from __future__ import annotations

import argparse
import importlib.util
import tempfile
import time
from pathlib import Path

import numpy as np


def snapshot(rng: np.random.Generator, layers: int, timesteps: int, hidden: int):
    norms = np.exp(np.linspace(-12, 0, timesteps) + 0.1 * rng.standard_normal(timesteps))
    norms = np.tile(norms, (layers, 1))  # (L, T)
    positions = np.full(timesteps, 128)
    gates = {
        g: rng.uniform(0, 1, (layers, timesteps, hidden)) for g in ("input", "forget", "output")
    }
    return norms, positions, gates


def measure(logger_class, snapshots: int, draw) -> tuple[float, float]:
    """(seconds per snapshot, seconds per drawing of all pictures)."""
    rng = np.random.default_rng(0)
    with tempfile.TemporaryDirectory() as tmp:
        logger = logger_class(Path(tmp))
        data = [snapshot(rng, 1, 200, 128) for _ in range(snapshots)]
        start = time.perf_counter()
        for step, (norms, positions, gates) in enumerate(data):
            logger.on_grad_norms(step, norms, positions, None)
            logger.on_gates(step, gates, "forget")
        per_snapshot = (time.perf_counter() - start) / snapshots
        start = time.perf_counter()
        draws = draw(logger, snapshots)
        per_draw = (time.perf_counter() - start) / max(draws, 1)
        logger.close()
    return per_snapshot, per_draw


def draw_new(logger, step: int) -> int:
    for _ in range(5):
        logger.drawn = 0  # force a drawing of every picture
        logger.draw(step)
    return 5


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--snapshots", type=int, default=50)
    parser.add_argument("--old", type=Path, help="an earlier tensorboard.py to compare with")
    args = parser.parse_args()
    from seqbench.loggers.tensorboard import TensorBoardLogger

    rows = [("now", *measure(TensorBoardLogger, args.snapshots, draw_new), "after validations")]
    if args.old:
        spec = importlib.util.spec_from_file_location("old_tensorboard", args.old)
        old = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(old)
        per_snapshot, _ = measure(old.TensorBoardLogger, args.snapshots, lambda *_: 0)
        rows.append(("--old", per_snapshot, float("nan"), "every snapshot (in the first column)"))
    print(f"{'logger':8} {'per snapshot':>14} {'per drawing':>12}  pictures drawn")
    for name, per_snapshot, per_draw, when in rows:
        print(f"{name:8} {per_snapshot * 1e3:11.2f} ms {per_draw * 1e3:9.2f} ms  {when}")


if __name__ == "__main__":
    main()
