"""How fast the `seqbench` command starts, measured as whole processes (median of --runs).

Rows: ``python -c "import torch"`` (the reference that the config-only paths must not pay),
``seqbench --help``, ``--cfg job``, ``--info``, one TAB of the bash completion (what the
completion script runs: ``COMP_LINE=... seqbench -sc query=bash``), and a small run
(``train.steps=1 train.eval_every=1 log.progress=plain``, TensorBoard on): the time to its
first progress line ("step 1/1", printed after the first training step and its validation)
and to its exit. Targets: config-only paths < 1 s, first step < 3 s. The machine's load
average is printed with the table: other processes inflate every number.

Usage: ``python scripts/startup.py [--runs N]``
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
EXE = Path(sys.executable).parent / "seqbench"
COMMAND = [str(EXE)] if EXE.exists() else [sys.executable, "-m", "seqbench"]
SMALL_RUN = ["train.steps=1", "train.eval_every=1", "log.progress=plain", "inference.compare=false"]


def _env(extra: dict[str, str] | None = None) -> dict[str, str]:
    path = os.environ.get("PYTHONPATH")
    env = {**os.environ, "PYTHONPATH": f"{ROOT}{os.pathsep}{path}" if path else str(ROOT)}
    return {**env, **(extra or {})}


def whole(cmd: list[str], cwd: Path, env: dict[str, str] | None = None) -> float:
    """Seconds from start to exit (it must exit 0)."""
    start = time.perf_counter()
    proc = subprocess.run(cmd, cwd=cwd, env=_env(env), capture_output=True, text=True)
    elapsed = time.perf_counter() - start
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} exited {proc.returncode}:\n{proc.stderr[-2000:]}")
    return elapsed


def first_step(cwd: Path, run_dir: Path) -> tuple[float, float]:
    """Seconds to the small run's first progress line, and to its exit."""
    start = time.perf_counter()
    cmd = [*COMMAND, *SMALL_RUN, f"hydra.run.dir={run_dir}"]
    proc = subprocess.Popen(cmd, cwd=cwd, env=_env(), stdout=subprocess.PIPE, text=True)
    first = float("nan")
    assert proc.stdout is not None
    for line in proc.stdout:
        if line.startswith("step 1/") and first != first:
            first = time.perf_counter() - start
    proc.wait()
    if proc.returncode != 0 or first != first:
        raise RuntimeError(f"{' '.join(cmd)} exited {proc.returncode} (first line: {first})")
    return first, time.perf_counter() - start


def measure(runs: int) -> dict[str, list[float]]:
    times: dict[str, list[float]] = {}
    completion = {"COMP_LINE": "seqbench model=", "COMP_POINT": "15"}
    cases = {
        "python -c 'import torch'": ([sys.executable, "-c", "import torch"], None),
        "seqbench --help": ([*COMMAND, "--help"], None),
        "seqbench --cfg job": ([*COMMAND, "--cfg", "job"], None),
        "seqbench --info": ([*COMMAND, "--info"], None),
        "completion (one TAB)": ([*COMMAND, "-sc", "query=bash"], completion),
    }
    with tempfile.TemporaryDirectory(prefix="seqbench-startup-") as tmp:
        cwd = Path(tmp)
        for i in range(runs):  # the cases alternate, so that a busy spell hits all of them
            for name, (cmd, env) in cases.items():
                times.setdefault(name, []).append(whole(cmd, cwd, env))
            first, total = first_step(cwd, cwd / f"run{i}")
            times.setdefault("1-step run: first step", []).append(first)
            times.setdefault("1-step run: exit", []).append(total)
    return times


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--runs", type=int, default=5)
    args = ap.parse_args(argv)
    load = os.getloadavg()
    times = measure(args.runs)
    print(f"\n{'':28s} {'median s':>9s} {'min s':>7s} {'max s':>7s}")
    for name, values in times.items():
        print(f"{name:28s} {statistics.median(values):9.2f} {min(values):7.2f} {max(values):7.2f}")
    after = os.getloadavg()
    print(f"\n{args.runs} runs each; load average {load[0]:.2f} before, {after[0]:.2f} after "
          f"({os.cpu_count()} cores)")  # fmt: skip


if __name__ == "__main__":
    main()
