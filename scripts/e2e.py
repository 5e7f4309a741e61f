"""End-to-end rows of `make bench`: the `seqbench` command timed as whole processes.

* ``vs_naive``    the command with TensorBoard on and a gradient-norm snapshot at every step
  (``diagnostics.every=1``), LSTM and GRU at (B, T, H) = (128, 200, 128) for 150 steps, against
  ``scripts/naive_loop.py`` (default-PyTorch nn.LSTM/nn.GRU, Adam, MSE on the last output, no
  seqbench) of the same shapes and steps. Goal: seqbench 2.0x faster for the LSTM, 2.5x for the
  GRU, start-up included. Then, per cell, a step in that run against the engine's step on the
  same model: the run's steps between its two validations (steps 100 to 150 in history.csv's
  wall times: each with its snapshot, the optimizer, one validation among them) against
  bench.py's engine step with norms and each sequence's own (the adding task's lag profile),
  timed in this process on the run's final weights (checkpoint.pt). The engine's cost depends
  on the weights: it skips the products of steps whose signal vanished 2**60 below the
  largest, and a trained model's signal vanishes less. Goal: at most 1.15x.
* ``default_job`` the default job (LSTM, adding T=100, B=64, H=64, 3,000 steps, exact norms on
  every diagnostic step) on one thread, against the same job on PyTorch's fused nn.LSTM
  (``model.engine=fused``, denormals flushed as by default, diagnostics only at the start and
  the end): whole processes, and the training steps per second each run's metrics.json
  reports. Target: the engine's steps/s >= 1.4x the fused layer's.
* ``logging``     the default job with TensorBoard on vs ``log.tensorboard=false``. Target:
  logging costs at most 10%.
* ``contention``  the default job (``train.steps=600 log.tensorboard=false
  inference.compare=false``) alone, then 2 and 4 copies started together. Fair sharing of the
  cores makes N copies take N times one alone; target: the slowest copy within 1.3x of that
  (2 copies: 2.6x one alone). Also the run alone on 2 threads (``hardware.num_threads=2``,
  what torch's default was before the one-thread rule for small steps).

Each row is the median of ``--repeats`` runs (variants in alternation). The machine's 1-minute
load average at the start of each row is printed with it: other processes distort every number.
The table is printed and written as CSV (default outputs/bench_e2e.csv).

Usage: ``python scripts/e2e.py [--rows vs_naive logging contention] [--repeats N] [--csv PATH]``
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SEQBENCH = [sys.executable, "-m", "seqbench"]
NAIVE = [sys.executable, str(ROOT / "scripts" / "naive_loop.py")]
SHAPES = ["task=adding", "task.seq_len=200", "train.batch_size=128", "model.hidden_size=128",
          "train.steps=150", "diagnostics.every=1", "hardware=cpu"]  # fmt: skip
CONTENDED = ["train.steps=600", "log.tensorboard=false", "inference.compare=false"]
ROWS = ("vs_naive", "default_job", "logging", "contention")
GOALS = {"lstm": 2.0, "gru": 2.5}  # vs_naive: how many times faster than the plain loop
SPEEDS: dict[str, list[float]] = {}  # steps/s of each timed seqbench run, by variant
STEADY: dict[str, list[float]] = {}  # s per step between a run's first and last validation
FINAL: dict[str, dict] = {}  # the last run's final model weights (checkpoint.pt), by variant


def _env() -> dict[str, str]:
    path = os.environ.get("PYTHONPATH")
    return {**os.environ, "PYTHONPATH": f"{ROOT}{os.pathsep}{path}" if path else str(ROOT)}


def run_together(
    commands: list[list[str]], workdir: Path, name: str = "", steps: bool = False
) -> list[float]:
    """Start the commands at once; each one's wall time in seconds (it must exit 0). The steps
    per second of each seqbench run (its metrics.json) go to SPEEDS[name]; with `steps`, also
    its seconds per step between its first and last validation (STEADY) and its final weights
    (FINAL)."""
    start = time.perf_counter()
    procs = []
    for i, cmd in enumerate(commands):
        if cmd[:2] == SEQBENCH[:2]:
            cmd = [*cmd, "log.progress=none", f"hydra.run.dir={workdir / f'run{i}'}"]
        procs.append(subprocess.Popen(cmd, cwd=workdir, env=_env(), stdout=subprocess.DEVNULL,
                                      stderr=subprocess.PIPE, text=True))  # fmt: skip
    times = []
    for cmd, proc in zip(commands, procs, strict=True):
        _, err = proc.communicate()
        times.append(time.perf_counter() - start)
        if proc.returncode != 0:
            raise RuntimeError(f"{' '.join(cmd)} exited {proc.returncode}:\n{err[-2000:]}")
    for metrics in sorted(workdir.glob("run*/metrics.json")):
        SPEEDS.setdefault(name, []).append(json.loads(metrics.read_text())["steps_per_s"])
        if steps:
            _steady_and_final(metrics.parent, name)
    for path in workdir.iterdir():
        shutil.rmtree(path, ignore_errors=True)
    return times


def _steady_and_final(run_dir: Path, name: str) -> None:
    """A run's seconds per step between its first and last validation (history.csv's wall
    times) to STEADY[name], its final model weights (checkpoint.pt) to FINAL[name]."""
    import torch

    history = list(csv.DictReader((run_dir / "history.csv").open()))
    (s0, w0), (s1, w1) = ((float(r["step"]), float(r["wall_time"]))
                          for r in (history[0], history[-1]))  # fmt: skip
    STEADY.setdefault(name, []).append((w1 - w0) / (s1 - s0))
    checkpoint = torch.load(run_dir / "checkpoint.pt", map_location="cpu", weights_only=False)
    FINAL[name] = checkpoint["model"]


def timed(
    variants: dict[str, list[list[str]]], repeats: int, workdir: Path, steps: tuple = ()
) -> dict:
    """Median (over repeats, variants alternating) of each variant's slowest process; the
    variants named in `steps` also leave their runs' steps and weights (run_together)."""
    times: dict[str, list[float]] = {name: [] for name in variants}
    for _ in range(repeats):
        for name, commands in variants.items():
            times[name].append(max(run_together(commands, workdir, name, name in steps)))
            print(f"    {name}: {times[name][-1]:.1f} s", flush=True)
    return {name: statistics.median(v) for name, v in times.items()}


def _row(name: str, config: str, a: str, a_s: float, b: str, b_s: float, ratio: str,
         value: float, target: str, met: bool, load: float) -> dict:  # fmt: skip
    return {"row": name, "config": config, "a": a, "a_s": round(a_s, 2), "b": b,
            "b_s": round(b_s, 2), "ratio": ratio, "value": round(value, 3), "target": target,
            "met": met, "load1": round(load, 2)}  # fmt: skip


def vs_naive(repeats: int, workdir: Path) -> list[dict]:
    rows = []
    for cell in ("lstm", "gru"):
        load = os.getloadavg()[0]
        naive = [*NAIVE, "--cell", cell, "--seq-len", "200", "--batch-size", "128",
                 "--hidden-size", "128", "--steps", "150"]  # fmt: skip
        med = timed({"seqbench": [[*SEQBENCH, f"model={cell}", *SHAPES]], "naive": [naive]},
                    repeats, workdir, steps=("seqbench",))  # fmt: skip
        speedup, goal = med["naive"] / med["seqbench"], GOALS[cell]
        rows.append(_row("vs_naive", f"{cell} B128 T200 H128, 150 steps, tb on, every=1",
                         "seqbench", med["seqbench"], "naive_loop", med["naive"],
                         "naive/seqbench", speedup, f">= {goal}", speedup >= goal,
                         load))  # fmt: skip
        in_run = statistics.median(STEADY.pop("seqbench"))
        step = engine_step_s(cell, 128, 200, 128, FINAL.pop("seqbench"))
        rows.append(_row("vs_naive", f"{cell}: a step of steps 100-150 in that run (ms)",
                         "step in the run", 1e3 * in_run, "engine step, its final weights",
                         1e3 * step, "run/engine", in_run / step, "<= 1.15", in_run / step <= 1.15,
                         os.getloadavg()[0]))  # fmt: skip
    return rows


def engine_step_s(cell: str, B: int, T: int, H: int, weights: dict, rounds: int = 7) -> float:
    """Median seconds of bench.py's engine step with norms and per-sequence norms (the adding
    task's lag profile) with a run's model `weights` (its state dict: rnn.*, head.*), timed in
    this process between the whole-process runs."""
    from scripts.bench import build, engine_step
    from scripts.bench import timed as time_step

    mod, head, x, y = build(cell, B, T, H)
    for name, module in (("rnn", mod), ("head", head)):
        module.load_state_dict({k.split(".", 1)[1]: v for k, v in weights.items()
                                if k.startswith(f"{name}.")})  # fmt: skip
    step = engine_step(cell, mod, head, x, y, True, "rows")
    step()  # warm-up: buffers, native kernels
    return statistics.median(time_step(step) for _ in range(rounds))


def default_job(repeats: int, workdir: Path) -> list[dict]:
    load = os.getloadavg()[0]
    one = "hardware.num_threads=1"
    fused = [*SEQBENCH, one, "model.engine=fused", "diagnostics.every=0"]
    med = timed({"engine": [[*SEQBENCH, one]], "fused": [fused]}, repeats, workdir)
    speed = {k: statistics.median(SPEEDS[k]) for k in ("engine", "fused")}
    ratio = speed["engine"] / speed["fused"]
    return [
        _row("default_job", "whole process (s), default job, 1 thread", "engine", med["engine"],
             "fused nn.LSTM, every=0", med["fused"], "fused/engine", med["fused"] / med["engine"],
             "(wall time)", True, load),
        _row("default_job", "training steps/s (metrics.json)", "engine", speed["engine"],
             "fused nn.LSTM, every=0", speed["fused"], "engine/fused", ratio, ">= 1.4",
             ratio >= 1.4, load),
    ]  # fmt: skip


def logging(repeats: int, workdir: Path) -> list[dict]:
    load = os.getloadavg()[0]
    med = timed({"tb_on": [[*SEQBENCH]], "tb_off": [[*SEQBENCH, "log.tensorboard=false"]]},
                repeats, workdir)  # fmt: skip
    cost = med["tb_on"] / med["tb_off"] - 1
    return [_row("logging", "default job", "tensorboard on", med["tb_on"], "off",
                 med["tb_off"], "on/off - 1", cost, "<= 0.10", cost <= 0.10, load)]  # fmt: skip


def contention(repeats: int, workdir: Path) -> list[dict]:
    job = [*SEQBENCH, *CONTENDED]
    load = os.getloadavg()[0]
    med = timed({"alone": [job], "alone_2threads": [[*job, "hardware.num_threads=2"]],
                 "x2": [job] * 2, "x4": [job] * 4}, repeats, workdir)  # fmt: skip
    config = " ".join(CONTENDED)
    kept = med["alone"] / med["alone_2threads"]
    rows = [_row("contention", config, "alone", med["alone"], "alone, 2 threads",
                 med["alone_2threads"], "alone/alone_2threads", kept, "<= 1.15 (speed kept)",
                 kept <= 1.15, load)]  # fmt: skip
    for n in (2, 4):
        share = med[f"x{n}"] / (n * med["alone"])
        rows.append(_row("contention", config, "alone", med["alone"], f"{n} together (slowest)",
                         med[f"x{n}"], f"x{n}/({n}*alone)", share, "<= 1.3", share <= 1.3,
                         load))  # fmt: skip
    return rows


def main(argv: list[str] | None = None) -> list[dict]:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--rows", nargs="+", default=list(ROWS), choices=ROWS)
    ap.add_argument("--repeats", type=int, default=1)
    ap.add_argument("--csv", default="outputs/bench_e2e.csv")
    args = ap.parse_args(argv)
    import pandas as pd

    from scripts.bench import show

    rows: list[dict] = []
    with tempfile.TemporaryDirectory(prefix="seqbench-e2e-") as tmp:
        for name in args.rows:
            print(f"end-to-end: {name}", flush=True)
            rows += globals()[name](args.repeats, Path(tmp))
    df = pd.DataFrame(rows)
    show(df, f"end to end, whole processes, median of {args.repeats}; {os.cpu_count()} cores")
    out = Path(args.csv)
    out.parent.mkdir(parents=True, exist_ok=True)
    df.insert(0, "date", time.strftime("%Y-%m-%dT%H:%M:%S"))
    df.to_csv(out, mode="a", header=not out.exists(), index=False)
    print(f"appended to {out}")
    return rows


if __name__ == "__main__":
    if str(ROOT) not in sys.path:
        sys.path.insert(0, str(ROOT))
    main()
