"""Every YAML in every group composes against its schema; bad values fail clearly."""

from __future__ import annotations

import itertools
from pathlib import Path

import pytest
import torch
from hydra.errors import ConfigCompositionException
from hydra.utils import instantiate
from omegaconf.errors import ConfigKeyError, ValidationError

from seqbench.checks import check_config
from seqbench.cli import CONF_DIR
from seqbench.errors import ConfigError
from tests.conftest import compose_config

GROUPS = {
    group: sorted(p.stem for p in (Path(CONF_DIR) / group).glob("*.yaml"))
    for group in ("model", "task", "optimizer", "hardware")
}


def test_groups_have_the_documented_options() -> None:
    from seqbench.cells import CELLS
    from seqbench.tasks import TASKS

    # the cell and task lists come from one place: the registries fill them from the modules
    assert GROUPS["model"] == sorted(CELLS) and {"gru", "lstm", "rnn"} <= set(CELLS)
    assert GROUPS["task"] == sorted(TASKS)
    assert set(TASKS) == {"adding", "copy", "sentiment", "stocks", "chargen"}
    assert GROUPS["optimizer"] == ["adam", "adamw", "rmsprop", "sgd"]
    assert GROUPS["hardware"] == ["auto", "cpu", "cuda"]


@pytest.mark.parametrize("group,option", [(g, o) for g, options in GROUPS.items() for o in options])
def test_every_yaml_composes_and_validates(group: str, option: str) -> None:
    cfg = compose_config([f"{group}={option}"])
    check_config(cfg)
    if group == "model":
        assert cfg.model.cell == option
    if group == "task":
        assert cfg.task.name == option
    if group == "hardware":
        assert cfg.hardware.device == option


@pytest.mark.parametrize("option", GROUPS["optimizer"])
def test_every_optimizer_instantiates(option: str) -> None:
    cfg = compose_config([f"optimizer={option}"])
    optimizer = instantiate(cfg.optimizer)([torch.nn.Parameter(torch.zeros(2))])
    assert type(optimizer).__name__.lower() == option
    assert optimizer.defaults["lr"] == cfg.optimizer.lr


def test_default_job_is_lstm_on_adding() -> None:
    cfg = compose_config()
    assert (cfg.model.cell, cfg.task.name, cfg.optimizer._target_) == (
        "lstm",
        "adding",
        "torch.optim.Adam",
    )


def test_stable_user_facing_names() -> None:
    names = ["seed=3", "train.steps=5", "train.batch_size=4", "train.eval_every=2",
             "task.seq_len=9", "model.hidden_size=7", "model.num_layers=2",
             "optimizer.lr=0.1", "diagnostics.every=3", "hardware=cpu"]  # fmt: skip
    cfg = compose_config(names)
    assert cfg.seed == 3 and cfg.task.seq_len == 9 and cfg.diagnostics.every == 3


@pytest.mark.parametrize(
    "override",
    ["model.hiden_size=3", "train.stepz=4", "task.memory_len=3"],  # adding has no memory_len
)
def test_unknown_key_fails_at_compose_time(override: str) -> None:
    with pytest.raises((ConfigCompositionException, ConfigKeyError)):
        compose_config([override])


@pytest.mark.parametrize("override", ["model.hidden_size=abc", "train.steps=1.5", "seed=x"])
def test_wrong_type_fails_at_compose_time(override: str) -> None:
    with pytest.raises((ConfigCompositionException, ValidationError)):
        compose_config([override])


@pytest.mark.parametrize(
    "override,key",
    [
        ("model.hidden_size=0", "model.hidden_size"),
        ("model.num_layers=-1", "model.num_layers"),
        ("model.dropout=1.5", "model.dropout"),
        ("model.dropout=0.2", "model.dropout"),  # one layer: nothing to drop between
        ("model.init=zeros", "model.init"),
        ("model.cell=transformer", "model.cell"),
        ("task.seq_len=1", "task.seq_len"),
        ("optimizer.lr=0", "optimizer.lr"),
        ("train.steps=0", "train.steps"),
        ("train.batch_size=-4", "train.batch_size"),
        ("train.clip.threshold=-1", "train.clip.threshold"),
        ("train.clip.mode=max", "train.clip.mode"),
        ("diagnostics.every=-1", "diagnostics.every"),
        ("log.progress=fancy", "log.progress"),
    ],
)
def test_impossible_values_name_the_key(override: str, key: str) -> None:
    cfg = compose_config([override])
    with pytest.raises(ConfigError, match=rf"{key}="):
        check_config(cfg)


@pytest.mark.parametrize("model", GROUPS["model"])
def test_all_combinations_compose(model: str) -> None:
    for task, opt, hardware in itertools.product(
        GROUPS["task"], GROUPS["optimizer"], GROUPS["hardware"]
    ):
        cfg = compose_config([f"model={model}", f"task={task}", f"optimizer={opt}",
                              f"hardware={hardware}"])  # fmt: skip
        assert (cfg.model.cell, cfg.task.name, cfg.hardware.device) == (model, task, hardware)
        assert cfg.optimizer._target_.rsplit(".", 1)[-1].lower() == opt
        check_config(cfg)
