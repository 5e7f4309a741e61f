"""Promises of the documentation about the composed configuration, each checked where no other
test held it (docs/promises.md names them): the defaults that docs/getting-started.md,
docs/tasks.md, docs/running.md and docs/sweeps.md state, the default output directories, the
Optuna sweeper's and the Ray launcher's settings, every pruner and storage the sweeps page
names, and what each preset compares (docs/presets.md). Composition only: milliseconds each."""

from __future__ import annotations

import math

import pytest
from omegaconf import OmegaConf

from tests.conftest import compose_config

# getting-started.md, Configuration: key -> the default the table states
DEFAULTS = {
    "seed": 0,
    "train.steps": 3000,
    "train.batch_size": 64,
    "train.eval_every": 100,
    "train.clip.threshold": 1.0,
    "train.clip.mode": "norm",
    "model.hidden_size": 64,
    "model.num_layers": 1,
    "model.dropout": 0.0,
    "model.input_dropout": 0.0,
    "model.output_dropout": 0.0,
    "model.forget_bias": 1.0,
    "model.init": "default",
    "model.recurrent_gain": None,
    "model.engine": "auto",  # engine.md: auto is the default
    "model.bidirectional": False,
    "optimizer.lr": 3e-3,  # adam (lr 3e-3)
    "diagnostics.every": "auto",
    "diagnostics.log_magnitude": False,
    "diagnostics.explode_factor": 10.0,  # diagnostics.md: explode_factor (10)
    "diagnostics.lag_sources": 64,  # diagnostics.md: lag_sources (64)
    "hardware.device": "auto",
    "hardware.flush_denormal": True,
    "hardware.num_threads": 0,  # performance.md: 0 (the default)
    "log.progress": "auto",
    "log.tensorboard": True,  # tensorboard.md: log.tensorboard=false turns them off
    "checkpoint.every": 500,  # running.md: default 500
    "inference.compare": False,  # running.md: off by default
    "train.early_stopping.patience": 0,  # off unless asked for
}

# tasks.md: each task's T and the defaults its section states
TASK_DEFAULTS = {
    "adding": {"seq_len": 100},
    "copy": {"seq_len": 50, "num_symbols": 8, "memory_len": 10},
    "sentiment": {"seq_len": 64, "labels": ["rotten", "fresh"], "min_freq": 2,
                  "max_vocab": 20000, "split_seed": 0, "val_fraction": 0.1,
                  "test_fraction": 0.1, "readout": "last", "path": None},
    "stocks": {"seq_len": 30, "horizon": 1, "ticker": "AAPL", "value_column": "Adj Close",
               "val_fraction": 0.15, "test_fraction": 0.15, "path": None, "stateful": False},
    "chargen": {"seq_len": 100, "corpus": "shakespeare", "prompt": "The ", "temperature": 0.8,
                "sample_len": 200, "val_fraction": 0.05, "test_fraction": 0.05, "path": None,
                "stateful": False},
}  # fmt: skip


def test_the_documented_defaults_are_the_composed_config() -> None:
    """getting-started.md's Configuration table (and the defaults the other pages state): the
    default job (`seqbench` with no argument) is an LSTM on the adding problem with these
    values."""
    cfg = compose_config()
    assert (cfg.model.cell, cfg.task.name, cfg.optimizer._target_) == (
        "lstm", "adding", "torch.optim.Adam")  # fmt: skip
    wrong = {}
    for key, expected in DEFAULTS.items():
        value = OmegaConf.select(cfg, key)
        if value != expected or type(value) is not type(expected):
            wrong[key] = (value, expected)
    assert not wrong, f"default differs from the documented one (got, documented): {wrong}"


def test_the_default_nonlinearity_is_tanh(tmp_path) -> None:
    """getting-started.md, `model.nonlinearity`: `tanh` by default, `relu` for `model=rnn` (as
    `nn.RNN(nonlinearity=...)`): the RNN a default config builds is a tanh RNN."""
    import torch

    from seqbench.job import build_job

    for nonlinearity in ((), ("model.nonlinearity=relu",)):
        cfg = compose_config(["model=rnn", "hardware=cpu", "model.hidden_size=4", *nonlinearity])
        rnn = build_job(cfg, tmp_path, torch.device("cpu")).model.rnn
        assert rnn.nonlinearity == ("relu" if nonlinearity else "tanh")


@pytest.mark.parametrize("task", sorted(TASK_DEFAULTS))
def test_each_task_has_its_documented_defaults(task: str) -> None:
    cfg = compose_config([f"task={task}"])
    got = {key: OmegaConf.to_container(cfg.task)[key] for key in TASK_DEFAULTS[task]}
    assert got == TASK_DEFAULTS[task]


def test_runs_and_sweeps_go_to_dated_directories() -> None:
    """getting-started.md: a run writes to `outputs/DATE/TIME/`, a sweep every job under
    `multirun/DATE/TIME/` (one directory per job number)."""
    hydra = OmegaConf.to_container(compose_config(hydra=True).hydra, resolve=False)
    assert hydra["run"]["dir"] == "outputs/${now:%Y-%m-%d}/${now:%H-%M-%S}"
    assert hydra["sweep"]["dir"] == "multirun/${now:%Y-%m-%d}/${now:%H-%M-%S}"
    assert hydra["sweep"]["subdir"] == "${hydra.job.num}"


def test_the_optuna_sweeper_defaults() -> None:
    """sweeps.md: `hydra.sweeper.n_jobs` (2) trials at a time, `n_trials` (20), the sampler TPE
    with seed 123, pruner `none` by default, storage `auto`, study `seqbench`."""
    sweeper = compose_config(["hydra/sweeper=optuna"], hydra=True).hydra.sweeper
    assert sweeper._target_ == "hydra_plugins.seqbench_plugins.OptunaSweeper"
    assert (sweeper.n_jobs, sweeper.n_trials) == (2, 20)
    assert sweeper.sampler._target_ == "optuna.samplers.TPESampler" and sweeper.sampler.seed == 123
    assert sweeper.pruner.name == "none"
    assert (sweeper.storage, sweeper.study_name) == ("auto", "seqbench")


def test_every_pruner_the_page_names_is_a_choice() -> None:
    """sweeps.md, Pruning: none, median, percentile, hyperband, successive_halving, with
    n_startup_trials and n_warmup_steps for median and percentile."""
    import optuna

    from seqbench.studies import make_pruner

    classes = {
        "none": "NopPruner",
        "median": "MedianPruner",
        "percentile": "PercentilePruner",
        "hyperband": "HyperbandPruner",
        "successive_halving": "SuccessiveHalvingPruner",
    }
    for name, cls in classes.items():
        spec = {"name": name, "n_startup_trials": 3, "n_warmup_steps": 40}
        assert type(make_pruner(spec)) is getattr(optuna.pruners, cls), name
    percentile = make_pruner({"name": "percentile", "n_startup_trials": 3, "n_warmup_steps": 40})
    assert (percentile._n_startup_trials, percentile._n_warmup_steps) == (3, 40)


def test_any_optuna_sampler_by_its_target_reseeded_when_continued() -> None:
    """sweeps.md: the sampler is `hydra.sweeper.sampler` (any `optuna.samplers` class by
    `_target_`); a continued study reseeds a seeded sampler with seed + trials so far, so no
    trial repeats."""
    import optuna

    from seqbench.studies import sampler_for

    def first_value(sampler) -> float:
        study = optuna.create_study(sampler=sampler)
        return study.ask().suggest_float("x", 0.0, 1.0)

    cfg = OmegaConf.create({"_target_": "optuna.samplers.RandomSampler", "seed": 5})
    fresh, continued = sampler_for(cfg, 0), sampler_for(cfg, 3)
    assert type(fresh) is type(continued) is optuna.samplers.RandomSampler
    assert first_value(fresh) == first_value(optuna.samplers.RandomSampler(seed=5))
    assert first_value(continued) == first_value(optuna.samplers.RandomSampler(seed=8))


def test_sqlite_or_journal_pick_one_storage(tmp_path) -> None:
    """sweeps.md, Where the study lives: `sqlite` or `journal` pick one whatever the launcher,
    `journal:PATH` any other file."""
    from seqbench.studies import storage_url

    ray = "hydra_plugins.seqbench_plugins.RayLauncher"
    local = "hydra._internal.core_plugins.basic_launcher.BasicLauncher"
    for launcher in (ray, local):
        assert storage_url("sqlite", tmp_path, launcher) == (
            f"sqlite:///{tmp_path.resolve()}/optuna.db")  # fmt: skip
        assert storage_url("journal", tmp_path, launcher) == (
            f"journal:{tmp_path.resolve()}/optuna.journal")  # fmt: skip
    assert storage_url("journal:/shared/x.log", tmp_path, ray) == "journal:/shared/x.log"


def test_the_ray_launcher_starts_ray_here_unless_given_an_address() -> None:
    """clusters.md: `address: null` (the default) starts Ray on this machine; each job's share is
    `ray.remote.num_cpus`/`num_gpus`."""
    launcher = compose_config(["hydra/launcher=ray"], hydra=True).hydra.launcher
    assert launcher._target_ == "hydra_plugins.seqbench_plugins.RayLauncher"
    assert launcher.ray.init.address is None
    assert {"num_cpus", "num_gpus"} <= set(launcher.ray.remote)


# presets.md and each preset's section: what it sweeps and with which settings
PRESETS = {
    "adding_lengths": ({"model": "rnn,lstm,gru", "task.seq_len": "25,50,100", "seed": "0,1,2"},
                       {"task.name": "adding", "train.steps": 3000}),
    "exploding": ({"model": "rnn,lstm,gru", "train.clip.threshold": "null,1.0"},
                  {"task.name": "adding", "task.seq_len": 50, "model.init": "orthogonal",
                   "model.recurrent_gain": 2.0, "optimizer._target_": "torch.optim.SGD",
                   "optimizer.lr": 0.05, "optimizer.momentum": 0.9, "train.steps": 1000}),
    "copy_lengths": ({"model": "rnn,lstm,gru", "task.seq_len": "50,100,200", "seed": "0,1,2"},
                     {"task.name": "copy", "train.steps": 4000}),
    "long_adding": ({"model": "rnn,lstm,gru", "task.seq_len": "200,500,1000", "seed": "0,1,2"},
                    {"task.name": "adding", "train.steps": 1500}),
    "sentiment_cells": ({"model": "rnn,lstm,gru", "seed": "0,1,2"},
                        {"task.name": "sentiment", "model.input_dropout": 0.5,
                         "model.output_dropout": 0.5, "optimizer._target_": "torch.optim.AdamW",
                         "optimizer.weight_decay": 0.1, "optimizer.lr": 3e-3,
                         "train.early_stopping.patience": 8, "train.steps": 3000}),
    "chargen_cells": ({"task.stateful": "false,true", "model": "rnn,lstm,gru", "seed": "0,1,2"},
                      {"task.name": "chargen", "model.num_layers": 2, "model.hidden_size": 256,
                       "train.steps": 800, "optimizer.lr": 3e-3,
                       "train.clip.threshold": 1.0}),
    "stocks_cells": ({"model": "rnn,lstm,gru", "seed": "0,1,2"},
                     {"task.name": "stocks", "task.ticker": "AAPL", "train.steps": 3000,
                      "train.early_stopping.patience": 10, "optimizer.lr": 3e-3}),
}  # fmt: skip
# presets.md, the table's "runs" column
RUNS = {"adding_lengths": 27, "exploding": 6, "copy_lengths": 27, "long_adding": 27,
        "sentiment_cells": 9, "chargen_cells": 18, "stocks_cells": 9}  # fmt: skip


@pytest.mark.parametrize("name", sorted(PRESETS))
def test_each_preset_sweeps_what_its_section_says(name: str) -> None:
    """A preset is a sweep (`conf/experiment/NAME.yaml`, `seqbench -m experiment=NAME`) of the
    keys and values its section names, with its settings; its runs are the table's count, and
    it leaves `hydra.launcher.n_jobs` to the user."""
    cfg = compose_config([f"experiment={name}"], hydra=True)
    params, settings = PRESETS[name]
    swept = {key: str(value).replace(" ", "") for key, value in cfg.hydra.sweeper.params.items()}
    assert swept == params
    for key, value in settings.items():
        assert OmegaConf.select(cfg, key) == value, key
    assert math.prod(len(v.split(",")) for v in params.values()) == RUNS[name]
    assert "n_jobs" not in OmegaConf.to_container(cfg.hydra.launcher) or (
        cfg.hydra.launcher.n_jobs == -1  # joblib's own default: one job per core
    )
