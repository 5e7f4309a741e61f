"""Every option YAML of every group builds its real component (in the manner of torchtune's
test_configs.py): model, task with its data, optimizer and scheduler. Each component takes its
config keys as keyword arguments, so a stale or misspelled key fails here, not in a user's run."""

from __future__ import annotations

import inspect
from pathlib import Path

import pytest
import torch
from omegaconf import OmegaConf

from seqbench.hardware import configure, select_device
from seqbench.job import build_job
from tests.conftest import SMALL, compose_config

ROOT = Path(__file__).resolve().parent.parent
GROUPS = ("model", "task", "optimizer", "scheduler", "hardware")
OPTIONS = [(g, p.stem) for g in GROUPS for p in sorted((ROOT / "conf" / g).glob("*.yaml"))]
CPU = torch.device("cpu")


def small(group: str, option: str) -> list[str]:
    """The shrinking overrides that this option's schema has keys for."""
    overrides = [o for o in SMALL if not (group == "hardware" and o.startswith("hardware="))]
    if group == "task" and option not in ("adding", "copy"):  # real data: no val_size
        overrides.remove("task.val_size=16")
    return [f"{group}={option}", *overrides]


@pytest.mark.parametrize("group,option", OPTIONS)
def test_every_option_builds_its_component(group: str, option: str, tmp_path: Path) -> None:
    cfg = compose_config(small(group, option))
    if group == "hardware":
        if option == "cuda" and not torch.cuda.is_available():
            pytest.skip("needs a CUDA device")
        # every hardware key is an argument of the functions that apply it
        taken = set(inspect.signature(select_device).parameters)
        taken |= set(inspect.signature(configure).parameters)
        assert set(cfg.hardware) == taken
        device, _ = select_device(cfg.hardware.device)
        present = "cuda" if torch.cuda.is_available() else "cpu"
        assert device.type == (present if option == "auto" else option)
        return
    job = build_job(cfg, tmp_path, CPU)
    assert job.model.cell == cfg.model.cell and job.task.name == cfg.task.name
    assert type(job.optimizer).__name__ == cfg.optimizer._target_.rsplit(".", 1)[-1]
    for key, value in OmegaConf.to_container(cfg.optimizer).items():
        if not key.startswith("_"):
            assert value == _listify(job.optimizer.defaults[key]), key
    assert (job.scheduler is None) == (cfg.scheduler.name == "none")
    batch = job.task.sample(2)  # the task's data is real: a batch runs through the model
    output, _ = job.model(batch.x, lengths=batch.lengths)
    assert torch.isfinite(job.task.loss(output, batch))


def _listify(value):
    return list(value) if isinstance(value, tuple) else value


@pytest.mark.parametrize(
    "group,option",
    [("model", "lstm"), ("task", "copy"), ("optimizer", "sgd"), ("scheduler", "step")],
)
def test_a_stale_key_fails_when_the_component_is_built(
    group: str, option: str, tmp_path: Path
) -> None:
    # a plain copy: the schema itself refuses unknown keys at compose time
    cfg = OmegaConf.create(OmegaConf.to_container(compose_config(small(group, option))))
    cfg[group]["stale_key"] = 1  # as if schema and YAML kept a key the code no longer takes
    with pytest.raises(TypeError, match="stale_key"):
        build_job(cfg, tmp_path, CPU)
