"""Compose the real Hydra config with shrinking overrides (CPU, few steps, tmp dirs)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest
import torch
from hydra import compose, initialize_config_dir
from omegaconf import DictConfig

from seqbench.cli import CONF_DIR, run

ROOT = Path(__file__).resolve().parent.parent
SMALL = [
    "hardware=cpu",
    "train.steps=6",
    "train.batch_size=8",
    "train.eval_every=3",
    "task.seq_len=8",
    "task.val_size=16",
    "model.hidden_size=8",
    "diagnostics.every=2",
    "log.progress=none",
]

# Tests share 2 cores with whatever else runs; one intra-op thread avoids OpenMP spin contention.
torch.set_num_threads(1)


def compose_config(overrides: list[str] = (), hydra: bool = False) -> DictConfig:
    with initialize_config_dir(config_dir=CONF_DIR, version_base="1.3"):
        return compose(config_name="config", overrides=list(overrides), return_hydra_config=hydra)


@pytest.fixture
def small_run(tmp_path: Path) -> Callable[..., dict]:
    """Run seqbench in-process on a tiny config; return metrics.json's content."""

    def _run(*overrides: str, run_dir: Path | None = None) -> dict:
        cfg = compose_config([*SMALL, *overrides])
        out = run_dir or tmp_path / "run"
        out.mkdir(parents=True, exist_ok=True)
        run(cfg, out)
        return json.loads((out / "metrics.json").read_text())

    return _run


def seqbench_cli(*args: str, cwd: Path | None = None, timeout: int = 300):
    """The installed command in a real subprocess (no terminal)."""
    env = {k: v for k, v in os.environ.items() if k != "HYDRA_FULL_ERROR"}
    env["OMP_NUM_THREADS"] = "1"
    exe = Path(sys.executable).parent / "seqbench"
    return subprocess.run(
        [str(exe), *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout
    )


def without_timings(metrics: dict) -> dict:
    """metrics.json minus what depends on the machine's speed (wall times, rates, latencies)."""
    out = {k: v for k, v in metrics.items() if k not in ("wall_time_s", "steps_per_s")}
    if "inference" in out:
        timings = ("val_pass_s", "latency_ms", "speedup_val_pass")
        out["inference"] = {
            k: {kk: vv for kk, vv in v.items() if kk not in timings} if isinstance(v, dict) else v
            for k, v in out["inference"].items()
            if k not in timings
        }
    return out
