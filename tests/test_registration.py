"""register_configs from the state a fresh process starts in: every `/schema/...` node that a
conf/ file names is stored, holding its dataclass; the Ray plugin's node is moved aside; the
sweeper's direction resolver is registered. (The other tests run after one
registration per process, so they cannot see what a registration leaves out.)"""

from __future__ import annotations

import re
from dataclasses import fields
from pathlib import Path

import pytest
from hydra.core.config_store import ConfigStore
from omegaconf import OmegaConf

from seqbench import config as C
from seqbench.cli import CONF_DIR
from seqbench.schemas import task_schemas


@pytest.fixture
def fresh_store(monkeypatch) -> ConfigStore:
    """The ConfigStore as a new process has it before register_configs: no seqbench schemas,
    the Ray plugin's own `ray` node in place (restored after the test)."""
    from hydra_plugins.hydra_ray_launcher._config import RayLauncherConf

    cs = ConfigStore.instance()
    repo = {k: v for k, v in cs.repo.items() if k not in ("schema", "seqbench_schema.yaml")}
    repo["hydra"] = dict(repo["hydra"])
    repo["hydra"]["launcher"] = {k: v for k, v in repo["hydra"]["launcher"].items()
                                 if k != "ray_plugin.yaml"}  # fmt: skip
    monkeypatch.setattr(cs, "repo", repo)
    cs.store(group="hydra/launcher", name="ray", node=RayLauncherConf)
    OmegaConf.clear_resolver("seqbench_direction")
    yield cs
    C.register_configs()  # the process's real store is back: its resolver too


def stored(cs: ConfigStore, path: str):
    """The node stored at `path` (e.g. schema/optimizer/adam) as a config, or None."""
    *groups, name = path.split("/")
    node = cs.repo
    for group in groups:
        node = node.get(group, {})
    entry = node.get(f"{name}.yaml")
    return None if entry is None else entry.node


def test_every_schema_a_conf_file_names_is_stored_with_its_dataclass(fresh_store) -> None:
    C.register_configs()
    named = set()
    for path in Path(CONF_DIR).rglob("*.yaml"):
        named.update(re.findall(r"- /(schema/[\w/]+)@_here_", path.read_text()))
    expected = {
        "schema/model": C.ModelConfig, "schema/hardware": C.HardwareConfig,
        "schema/optimizer/adam": C.AdamConfig, "schema/optimizer/adamw": C.AdamWConfig,
        "schema/optimizer/sgd": C.SGDConfig, "schema/optimizer/rmsprop": C.RMSpropConfig,
        "schema/scheduler/none": C.NoSchedulerConfig, "schema/scheduler/plateau": C.PlateauConfig,
        "schema/scheduler/cosine": C.CosineConfig, "schema/scheduler/step": C.StepScheduleConfig,
        **{f"schema/task/{name}": schema for name, schema in task_schemas().items()},
    }  # fmt: skip
    assert named == set(expected)  # every schema a file names, and no other
    for path, schema in {**expected, "seqbench_schema": C.Config}.items():
        node = stored(fresh_store, path)
        assert node is not None, f"{path} is not stored"
        assert OmegaConf.get_type(node) is schema, path
        assert set(node.keys()) == {f.name for f in fields(schema)}, path


def test_the_plugins_nodes_move_aside_and_the_resolver_is_registered(fresh_store) -> None:
    from hydra_plugins.hydra_ray_launcher._config import RayLauncherConf

    C.register_configs()
    assert stored(fresh_store, "hydra/launcher/ray") is None
    assert OmegaConf.get_type(stored(fresh_store, "hydra/launcher/ray_plugin")) is RayLauncherConf
    directions = OmegaConf.create({"a": "${seqbench_direction:sentiment}",
                                   "b": "${seqbench_direction:adding}"})  # fmt: skip
    assert (directions.a, directions.b) == ("maximize", "minimize")
