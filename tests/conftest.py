"""Compose the real Hydra config with shrinking overrides (CPU, few steps, tmp dirs)."""

from __future__ import annotations

import contextlib
import io
import json
import logging
import os
import subprocess
import sys
import warnings
from collections.abc import Callable, Sequence
from pathlib import Path

import pytest
import torch
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig

from seqbench import engine
from seqbench.cells import CELLS, get_cell
from seqbench.cli import CONF_DIR
from seqbench.engine import recurrent
from seqbench.job import run

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

# every registered cell the engine runs, checked against its fused PyTorch layer
ENGINE_CELLS = [name for name, c in CELLS.items() if c.engine is not None and c.fused is not None]

# Tests share 2 cores with whatever else runs; one intra-op thread avoids OpenMP spin contention.
torch.set_num_threads(1)


@pytest.fixture(autouse=True)
def _denormals_back_on():
    """A run in this process flushes float32/float64 denormals to zero (hardware.flush_denormal)
    for the whole process; later tests (Hypothesis' floats, 5e-324 edges) need them back."""
    yield
    torch.set_flush_denormal(False)


def compose_config(overrides: list[str] = (), hydra: bool = False) -> DictConfig:
    with initialize_config_dir(config_dir=CONF_DIR, version_base="1.3"):
        return compose(config_name="config", overrides=list(overrides), return_hydra_config=hydra)


def run_small(run_dir: Path, *overrides: str, base: Sequence[str] = SMALL) -> dict:
    """Run seqbench in-process on a tiny config (`base`, then `overrides`) into `run_dir`;
    return metrics.json's content. `resume=DIR` among the overrides continues that run."""
    cfg = compose_config([*base, *overrides])
    run_dir.mkdir(parents=True, exist_ok=True)
    run(cfg, run_dir)
    resumed = next((o.split("=", 1)[1] for o in overrides if o.startswith("resume=")), None)
    return json.loads((Path(resumed or run_dir) / "metrics.json").read_text())


@pytest.fixture
def small_run(tmp_path: Path) -> Callable[..., dict]:
    """Run seqbench in-process on a tiny config; return metrics.json's content."""

    def _run(*overrides: str, run_dir: Path | None = None) -> dict:
        return run_small(run_dir or tmp_path / "run", *overrides)

    return _run


def seqbench_cli(*args: str, cwd: Path | None = None, timeout: int = 300):
    """The installed command in a real subprocess (no terminal)."""
    if "MUTANT_UNDER_TEST" in os.environ:  # `make mutate`: that process would not see the mutant
        pytest.skip("a real process imports the unmutated package")
    env = {k: v for k, v in os.environ.items() if k != "HYDRA_FULL_ERROR"}
    env["OMP_NUM_THREADS"] = "1"
    exe = Path(sys.executable).parent / "seqbench"
    return subprocess.run(
        [str(exe), *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout
    )


def _warning_to_stderr(message, category, filename, lineno, file=None, line=None) -> None:
    sys.stderr.write(warnings.formatwarning(message, category, filename, lineno, line))


def seqbench_main(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    """The `seqbench` command's Hydra main called in this process (sys.argv patched), as
    `seqbench_cli` would run it: the exit status, stdout and stderr. About 20x cheaper than a
    process; use it where the behaviour cannot differ (argument parsing, config errors)."""
    from seqbench.cli import main

    out, err = io.StringIO(), io.StringIO()
    argv, root = sys.argv, logging.getLogger()
    handlers, level, here = list(root.handlers), root.level, Path.cwd()
    code: int | str | None = 0
    env = os.environ.pop("HYDRA_FULL_ERROR", None)
    try:
        os.chdir(cwd)
        sys.argv = ["seqbench", *args]
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err), \
                warnings.catch_warnings():  # fmt: skip
            # every warning reaches stderr, as in a new process (not pytest's warning capture)
            warnings.simplefilter("always")
            warnings.showwarning = _warning_to_stderr
            main()
    except SystemExit as exit_:
        code = exit_.code
    finally:
        sys.argv = argv
        os.chdir(here)
        if env is not None:
            os.environ["HYDRA_FULL_ERROR"] = env
        # Hydra leaves its singletons and logging handlers set: later in-process runs would
        # read this command's overrides from HydraConfig
        HydraConfig.instance().cfg = None
        GlobalHydra.instance().clear()
        for handler in root.handlers:
            if handler not in handlers:
                handler.close()
        root.handlers[:], root.level = handlers, level
    returncode = code if isinstance(code, int) else (0 if code is None else 1)
    return subprocess.CompletedProcess(
        ["seqbench", *args], returncode, out.getvalue(), err.getvalue()
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


@pytest.fixture(params=["native", "torch"])
def path(request, monkeypatch):
    """Run a test on the compiled-kernel path and on the pure-torch fallback."""
    if request.param == "native":
        if not engine.native_available():
            pytest.skip("no C++ compiler: native kernels unavailable")
        monkeypatch.setenv("SEQBENCH_NATIVE", "1")
    else:
        monkeypatch.setenv("SEQBENCH_NATIVE", "0")
    return request.param


def fused_layer(cell, n_in, hidden, layers=1, dtype=torch.float64, seed=0, scale=1.0):
    """PyTorch's own layer for the cell (batch_first), seeded, its weights optionally scaled."""
    torch.manual_seed(seed)
    mod = get_cell(cell).fused(n_in, hidden, num_layers=layers, batch_first=True).to(dtype)
    if scale != 1.0:
        with torch.no_grad():
            for w in mod.parameters():
                w.mul_(scale)
    return mod


def run_engine(cell, mod, x, **kw):
    """The engine over x with the weights of PyTorch's layer `mod`."""
    return recurrent(cell, x, list(mod._flat_weights), num_layers=mod.num_layers,
                     hidden_size=mod.hidden_size, **kw)  # fmt: skip
