"""Fast start: the command's paths that only compose a config (--help, --cfg, --info, shell
completion) import neither torch nor pandas nor matplotlib, and the task schemas they use (read
from the task modules' source) are the task modules' own. Times: scripts/startup.py."""

from __future__ import annotations

import dataclasses
import os
import subprocess
import sys
import typing
from pathlib import Path

import pytest

from seqbench.schemas import task_schemas
from seqbench.tasks import TASKS

ROOT = Path(__file__).resolve().parents[1]
HEAVY = ("torch", "pandas", "matplotlib", "tensorboard")


def imported_modules(*args: str, cwd: Path, env: dict[str, str] | None = None) -> set[str]:
    """The modules `python -m seqbench ARGS` imports, from its -X importtime report."""
    if "MUTANT_UNDER_TEST" in os.environ:  # `make mutate`: mutmut's tree needs its own config
        pytest.skip("a real process imports the mutated tree outside mutmut's runner")
    full_env = {**os.environ, "PYTHONPATH": str(ROOT), **(env or {})}
    full_env.pop("HYDRA_FULL_ERROR", None)
    result = subprocess.run(
        [sys.executable, "-X", "importtime", "-m", "seqbench", *args],
        cwd=cwd, env=full_env, capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-2000:]
    lines = [line for line in result.stderr.splitlines() if line.startswith("import time:")]
    return {line.rsplit("|", 1)[1].strip() for line in lines}


@pytest.mark.parametrize(
    "args,env",
    [
        (["--help"], None),
        (["--cfg", "job", "model=gru", "task=copy"], None),
        (["--info"], None),
        (["-sc", "query=bash"], {"COMP_LINE": "seqbench model=", "COMP_POINT": "15"}),
    ],
    ids=["help", "cfg", "info", "completion"],
)
def test_config_only_paths_import_no_torch(args, env, tmp_path: Path) -> None:
    modules = imported_modules(*args, cwd=tmp_path, env=env)
    assert "seqbench.cli" in modules and "hydra" in modules  # the report is the real one
    heavy = sorted(m for m in modules if m.split(".")[0] in HEAVY)
    assert heavy == []


def test_a_training_run_does_import_torch(tmp_path: Path) -> None:
    """The check above can see torch: a 1-step run lists it."""
    args = ["train.steps=1", "train.batch_size=4", "task.seq_len=5", "model.hidden_size=4",
            "log.tensorboard=false", "inference.compare=false", "log.progress=none",
            f"hydra.run.dir={tmp_path / 'run'}"]  # fmt: skip
    assert "torch" in imported_modules(*args, cwd=tmp_path, env={"OMP_NUM_THREADS": "1"})


def _fields(schema: type) -> dict[str, tuple]:
    hints = typing.get_type_hints(schema)
    out = {}
    for f in dataclasses.fields(schema):
        factory = f.default_factory
        default = factory() if factory is not dataclasses.MISSING else f.default
        out[f.name] = (hints[f.name], default)
    return out


def test_source_schemas_are_the_task_modules_schemas() -> None:
    read = task_schemas()
    assert sorted(read) == sorted(TASKS)
    for name, task in TASKS.items():
        assert read[name] is not task.schema  # built from source, not imported
        assert _fields(read[name]) == _fields(task.schema), name
