"""Fast start: the command's paths that only compose a config (--help, --cfg, --info, shell
completion) import neither torch nor pandas nor matplotlib, and the task schemas they use (read
from the task modules' source) are the task modules' own. Times: scripts/startup.py."""

from __future__ import annotations

import dataclasses
import json
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


# Runs the command's Hydra main in a fresh process and prints, as JSON, whether Python's cyclic
# garbage collector was on when torch was imported and when training began, and after the run.
COLLECTOR_PROBE = """
import gc, importlib.machinery, json, sys

seen = {}
def watched(train):
    def run(*args, **kwargs):
        seen["training"] = [gc.isenabled(), gc.get_freeze_count() > 0]
        return train(*args, **kwargs)
    return run
class Probe:  # notes the collector at torch's import; wraps seqbench.train.train once loaded
    def find_spec(self, name, path=None, target=None):
        if name == "torch" and "torch_import" not in seen:
            seen["torch_import"] = gc.isenabled()
        if name != "seqbench.train":
            return None
        spec = importlib.machinery.PathFinder.find_spec(name, path)
        load = spec.loader.exec_module
        def exec_module(module):
            load(module)
            module.train = watched(module.train)
        spec.loader.exec_module = exec_module
        return spec
sys.meta_path.insert(0, Probe())
from seqbench.cli import main
sys.argv = ["seqbench", *sys.argv[1:]]
try:
    main()
except SystemExit as exit_:
    seen["exit"] = exit_.code
seen["after"] = gc.isenabled()
print(json.dumps(seen))
"""


def _collector(tmp_path: Path, *args: str) -> dict:
    if "MUTANT_UNDER_TEST" in os.environ:
        pytest.skip("a real process imports the unmutated package")
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    env.pop("HYDRA_FULL_ERROR", None)
    result = subprocess.run(
        [sys.executable, "-c", COLLECTOR_PROBE, *args, "log.progress=none",
         f"hydra.run.dir={tmp_path / 'run'}"],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-2000:]
    return json.loads(result.stdout.strip().splitlines()[-1])


def test_a_run_starts_without_the_garbage_collector_and_trains_with_it(tmp_path: Path) -> None:
    """performance.md (Start-up): a single run's start-up (torch's import, the job's building)
    runs with Python's cyclic garbage collector off; training with it on, start-up's objects
    frozen; a run refused at start turns it back on too."""
    args = ["train.steps=1", "train.batch_size=4", "task.seq_len=5", "model.hidden_size=4",
            "log.tensorboard=false", "inference.compare=false"]  # fmt: skip
    seen = _collector(tmp_path, *args)
    assert seen == {"torch_import": False, "training": [True, True], "after": True}
    refused = _collector(tmp_path, *args, "train.steps=-1")
    assert refused == {"torch_import": False, "exit": 2, "after": True}
    import torch

    if not torch.cuda.is_available():  # refused inside the job, past Hydra's callbacks
        refused = _collector(tmp_path, *args, "hardware=cuda")
        assert refused == {"torch_import": False, "exit": 2, "after": True}
