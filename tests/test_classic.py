"""The classic result seqbench exists to show: gated cells solve the adding problem at T=50
within 3,000 steps, a tanh RNN stays at the trivial baseline."""

from __future__ import annotations

import pandas as pd
import pytest

from tests.conftest import compose_config

CLASSIC = [
    "hardware=cpu",
    "task=adding",
    "task.seq_len=50",
    "train.steps=3000",
    "train.eval_every=100",
    "diagnostics.every=500",
    "log.progress=none",
    "log.tensorboard=false",
]


def train_adding(tmp_path, model: str) -> pd.DataFrame:
    from seqbench.job import run

    run_dir = tmp_path / model
    run_dir.mkdir()
    run(compose_config([*CLASSIC, f"model={model}"]), run_dir)
    return pd.read_csv(run_dir / "history.csv")


@pytest.mark.slow
@pytest.mark.parametrize("model", ["lstm", "gru"])
def test_gated_cells_solve_adding_t50(tmp_path, model: str) -> None:
    history = train_adding(tmp_path, model)
    assert history["val_mse"].min() < 0.01


@pytest.mark.slow
def test_tanh_rnn_stays_at_baseline(tmp_path) -> None:
    history = train_adding(tmp_path, "rnn")
    assert history["step"].max() == 3000
    assert history["val_mse"].min() > 0.1
