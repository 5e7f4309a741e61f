"""End-to-end runs: every model x task x optimizer, the run directory contract, determinism."""

from __future__ import annotations

import itertools
import json
from pathlib import Path

import pandas as pd
import pytest
import torch
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from seqbench.checkpoint import load_checkpoint
from tests.conftest import without_timings

MODELS, TASKS, OPTIMIZERS = (
    ["rnn", "lstm", "gru"],
    ["adding", "copy"],
    ["adam", "adamw", "sgd", "rmsprop"],
)


@pytest.mark.parametrize("model,task,optimizer", list(itertools.product(MODELS, TASKS, OPTIMIZERS)))
def test_smoke_every_combination(small_run, model: str, task: str, optimizer: str) -> None:
    metrics = small_run(f"model={model}", f"task={task}", f"optimizer={optimizer}",
                        "log.tensorboard=false")  # fmt: skip
    assert metrics["status"] == "completed"
    assert (metrics["model"], metrics["task"], metrics["steps"]) == (model, task, 6)
    assert metrics["final_metric"] is not None


def test_run_directory_contract(small_run, tmp_path: Path) -> None:
    run_dir = tmp_path / "contract"
    m = small_run("model=lstm", "model.num_layers=2", "model.dropout=0.1", run_dir=run_dir)

    for key in ("status", "model", "task", "seed", "steps", "wall_time_s", "num_parameters",
                "final_metric", "best_metric", "metric", "baseline", "grad_norms"):  # fmt: skip
        assert key in m, key
    assert m["metric"] == "mse" and m["baseline"] == pytest.approx(1 / 6)
    assert m["grad_norms"]["init"]["step"] == 0 and m["grad_norms"]["end"]["step"] == 6
    assert len(m["grad_norms"]["init"]["layers"]) == 2

    history = pd.read_csv(run_dir / "history.csv")
    assert list(history.columns[:5]) == ["step", "wall_time", "train_loss", "lr", "val_mse"]
    assert history["step"].tolist() == [3, 6]
    assert m["best_metric"] == pytest.approx(history["val_mse"].min())

    grads = pd.read_csv(run_dir / "grad_norms.csv")
    gates = ["gate_input", "gate_forget", "gate_output"]  # the LSTM's gate means, beside them
    assert list(grads.columns) == ["step", "layer", "t", "norm", "positions", *gates]
    assert (grads["positions"] == 8).all()  # batch of 8, nothing padded
    assert sorted(grads["step"].unique()) == [0, 2, 4, 6]  # init, every 2, and the end
    assert grads.groupby(["step", "layer"]).size().eq(8).all()  # t = 1..T for each
    assert grads["t"].min() == 1 and grads["t"].max() == 8

    best = load_checkpoint(run_dir / "best.pt")
    assert best["step"] == m["best_step"] and best["mse"] == m["best_metric"]
    ckpt = load_checkpoint(run_dir / "checkpoint.pt")  # weights_only=True inside
    assert ckpt["step"] == 6 and ckpt["config"]["model"]["cell"] == "lstm"
    assert "rnn.weight_hh_l1" in ckpt["model"] and "state" in ckpt["optimizer"]

    (folder,) = {p.parent for p in (run_dir / "tb").rglob("events.out.tfevents.*")}  # tb/<name>
    events = EventAccumulator(str(folder), size_guidance={"images": 0}).Reload()
    tags = events.Tags()
    for tag in ("train/loss", "val/mse", "grad/total_norm", "grad/clip_fraction",
                "grad/vanishing_ratio/layer0", "grad/decay_rate/layer1"):  # fmt: skip
        assert tag in tags["scalars"], tag
    assert {"grad_heatmap/layer0", "grad_heatmap/layer1", "grad_norm_vs_t"} <= set(tags["images"])
    assert len(events.Scalars("train/loss")) == 6
    # HParams: in the run's own event file, no stray sub-run directory
    assert [p for p in folder.iterdir() if p.is_dir()] == []
    hparams = events.PluginTagToContent("hparams")
    assert {"_hparams_/experiment", "_hparams_/session_start_info"} <= set(hparams)
    assert events.Scalars("hparams/best_metric")[-1].value == pytest.approx(m["best_metric"])


def test_lstm_forget_bias_and_parameter_count(small_run, tmp_path: Path) -> None:
    run_dir = tmp_path / "fb"
    m = small_run("model=lstm", "model.forget_bias=2.5", "train.steps=1", run_dir=run_dir)
    h, inputs = 8, 2
    assert m["num_parameters"] == 4 * h * (inputs + h) + 8 * h + (h + 1)


def test_identical_runs_give_identical_metrics(small_run, tmp_path: Path) -> None:
    args = ("model=gru", "task=copy", "train.steps=12", "log.tensorboard=false",
            "inference.compare=true")  # fmt: skip
    a = small_run(*args, run_dir=tmp_path / "a")
    b = small_run(*args, run_dir=tmp_path / "b")
    c = small_run(*args, "seed=1", run_dir=tmp_path / "c")
    assert without_timings(a) == without_timings(b)
    assert (
        a["inference"]["int8_dynamic"]["cross_entropy"]
        == b["inference"]["int8_dynamic"]["cross_entropy"]
    )
    assert a["final_metric"] != c["final_metric"]
    ha = pd.read_csv(tmp_path / "a" / "history.csv").drop(columns="wall_time")
    hb = pd.read_csv(tmp_path / "b" / "history.csv").drop(columns="wall_time")
    pd.testing.assert_frame_equal(ha, hb)


def test_divergence_is_recorded_not_raised(small_run, tmp_path: Path) -> None:
    run_dir = tmp_path / "div"
    m = small_run("optimizer=sgd", "optimizer.lr=1e30", "train.clip.threshold=null",
                  "train.steps=50", run_dir=run_dir)  # fmt: skip
    assert m["status"] == "diverged"
    assert isinstance(m["diverged_step"], int) and m["diverged_step"] < 50
    assert "non-finite" in m["error"]
    for name in ("history.csv", "grad_norms.csv", "checkpoint.pt"):
        assert (run_dir / name).exists(), name
    assert json.loads((run_dir / "metrics.json").read_text())["status"] == "diverged"


def test_clip_fraction_counts_clipped_steps(small_run) -> None:
    always = small_run("train.clip.threshold=1e-9", "log.tensorboard=false")
    never = small_run("train.clip.threshold=1e9", "log.tensorboard=false")
    assert always["clip_fraction"] == 1.0 and never["clip_fraction"] == 0.0


def test_clip_by_value_bounds_every_element() -> None:
    from seqbench.train import Clip, clip_gradients

    p = torch.nn.Parameter(torch.zeros(10))
    p.grad = torch.linspace(-5, 5, 10)
    total, clipped = clip_gradients([p], Clip(mode="value", threshold=0.5))
    assert clipped and total == pytest.approx(torch.linspace(-5, 5, 10).norm().item())
    assert p.grad.abs().max().item() <= 0.5


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_run(small_run) -> None:
    m = small_run("hardware=cuda", "log.tensorboard=false")
    assert m["status"] == "completed" and m["device"].startswith("cuda")
