"""Schedulers against their formulas, early stopping on crafted sequences and across a resume,
and the float32 vs int8 inference comparison."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pandas as pd
import pytest
import torch

from seqbench.scheduler import SchedulerStep, build_scheduler
from seqbench.train import EarlyStopping
from tests.conftest import compose_config

LR = 0.003  # conf/optimizer/adam.yaml


def run_history(small_run, tmp_path: Path, *overrides: str) -> tuple[dict, pd.DataFrame]:
    run_dir = tmp_path / "run"
    metrics = small_run("train.steps=20", "train.eval_every=1", "log.tensorboard=false",
                        *overrides, run_dir=run_dir)  # fmt: skip
    return metrics, pd.read_csv(run_dir / "history.csv")


def test_cosine_schedule_follows_the_formula(small_run, tmp_path: Path) -> None:
    _, history = run_history(small_run, tmp_path, "scheduler=cosine", "scheduler.warmup_steps=5",
                             "scheduler.min_lr_ratio=0.1")  # fmt: skip
    for step, lr in zip(history["step"], history["lr"], strict=True):
        if step < 5:
            expected = LR * step / 5
        else:
            expected = LR * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * (step - 5) / 15)))
        assert lr == pytest.approx(expected, rel=1e-6, abs=1e-12), step


def test_step_schedule_follows_the_formula(small_run, tmp_path: Path) -> None:
    _, history = run_history(small_run, tmp_path, "scheduler=step", "scheduler.step_size=6",
                             "scheduler.gamma=0.5")  # fmt: skip
    for step, lr in zip(history["step"], history["lr"], strict=True):
        assert lr == pytest.approx(LR * 0.5 ** (step // 6)), step


def test_no_scheduler_keeps_the_rate(small_run, tmp_path: Path) -> None:
    _, history = run_history(small_run, tmp_path)
    assert (history["lr"] == LR).all()


@pytest.mark.parametrize("mode", ["min", "max"])
def test_plateau_drops_after_patience_bad_validations(mode: str) -> None:
    cfg = compose_config(["scheduler=plateau", "scheduler.patience=2", "scheduler.factor=0.5"])
    param = torch.nn.Parameter(torch.zeros(1))
    optimizer = torch.optim.SGD([param], lr=1.0)
    step = SchedulerStep(build_scheduler(cfg.scheduler, optimizer, 100, mode), "m")
    sign = 1 if mode == "min" else -1
    sequence = [1.0, 0.8, 0.9, 0.9, 0.9, 0.7, 0.9, 0.9, 0.9, 0.9]  # lower is better (min)
    expected, best, bad, lr = [], math.inf, 0, 1.0
    for value in sequence:  # the rule, written out independently
        if value < best * (1 - 1e-4):
            best, bad = value, 0
        else:
            bad += 1
            if bad > 2:
                lr, bad = lr * 0.5, 0
        expected.append(lr)
    seen = []
    for i, value in enumerate(sequence):
        step.on_step(i, 0.0, 0.0, False)  # per-step hook: plateau ignores it
        step.on_eval(i, {"m": sign * value})
        seen.append(optimizer.param_groups[0]["lr"])
    assert seen == expected and seen[-1] < 1.0


def test_plateau_stops_at_min_lr_and_uses_its_threshold() -> None:
    """Every validation bad (patience 0): the rate halves each time, down to min_lr and no
    lower; an improvement smaller than the relative threshold counts as bad."""
    cfg = compose_config(["scheduler=plateau", "scheduler.patience=0", "scheduler.factor=0.5",
                          "scheduler.min_lr=0.3", "scheduler.threshold=0.1"])  # fmt: skip
    optimizer = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=1.0)
    step = SchedulerStep(build_scheduler(cfg.scheduler, optimizer, 100, "min"), "m")
    seen = []
    for value in [1.0, 0.95, 0.91, 0.5, 0.5]:  # 0.95 and 0.91 are within 10% of 1.0: bad
        step.on_eval(0, {"m": value})
        seen.append(optimizer.param_groups[0]["lr"])
    assert seen == [1.0, 0.5, 0.3, 0.3, 0.3]


def test_an_unknown_scheduler_names_the_choices() -> None:
    from omegaconf import OmegaConf

    optimizer = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=1.0)
    with pytest.raises(ValueError, match=r"unknown scheduler 'linear'; choose one of \['none', "):
        build_scheduler(OmegaConf.create({"name": "linear"}), optimizer, 10, "min")


@pytest.mark.parametrize("warmup", [0, 1, 9])
def test_cosine_factor_at_its_edges(warmup: int) -> None:
    """Warm-up ends at 1, the decay ends at min_lr_ratio exactly at the last step, even with a
    single decay step (warm-up = steps - 1)."""
    from seqbench.scheduler import cosine_factor

    steps, ratio = 10, 0.2
    assert cosine_factor(warmup, steps, warmup, ratio) == 1.0
    assert cosine_factor(steps, steps, warmup, ratio) == pytest.approx(ratio, abs=1e-12)
    middle = (warmup + steps) / 2
    assert cosine_factor(middle, steps, warmup, ratio) == pytest.approx(ratio + (1 - ratio) / 2)
    if warmup:
        assert cosine_factor(warmup / 2, steps, warmup, ratio) == pytest.approx(0.5)


def test_early_stopping_on_a_crafted_sequence() -> None:
    stop = EarlyStopping("mse", "min", patience=3, min_delta=0.1)
    values = [1.0, 0.95, 0.85, 0.8, 0.79, 0.78, 0.5]
    for step, value in enumerate(values, start=1):
        stop.on_eval(step * 10, {"mse": value})
        if stop():
            break
    # 0.95 is not 0.1 better than 1.0; 0.85 is; then 0.8, 0.79, 0.78 are three misses
    assert stop.stopped_at == 60 and stop.best == 0.85
    # the same in max mode: higher is better
    up = EarlyStopping("acc", "max", patience=2, min_delta=0.1)
    for step, value in enumerate([0.5, 0.55, 0.65, 0.7, 0.74, 0.9], start=1):
        up.on_eval(step, {"acc": value})
        if up():
            break
    # 0.55 misses; 0.65 is 0.15 better: best; 0.7 and 0.74 are two misses
    assert up.stopped_at == 5 and up.best == 0.65 and up.without_improvement == 2
    # patience 1 stops at the first miss; an improvement of exactly min_delta is not enough
    # (strict, as in Keras and Lightning; 0.75 = 1.0 - 0.25 exactly in binary)
    one = EarlyStopping("mse", "min", patience=1, min_delta=0.25)
    for step, value in enumerate([1.0, 0.75, 0.5], start=1):
        one.on_eval(step, {"mse": value})
        if one():
            break
    assert one.stopped_at == 2 and one.best == 1.0
    tie = EarlyStopping("acc", "max", patience=1, min_delta=0.25)
    tie.on_eval(1, {"acc": 0.5})
    tie.on_eval(2, {"acc": 0.75})
    assert tie.stopped_at == 2
    off = EarlyStopping("acc", "max", patience=0)
    for step in range(10):
        off.on_eval(step, {"acc": 0.5})
    assert not off()


def test_early_stopped_run_records_it_and_resumes(small_run, tmp_path: Path) -> None:
    args = ("train.steps=40", "train.eval_every=2", "train.early_stopping.patience=2",
            "train.early_stopping.min_delta=10", "log.tensorboard=false")  # fmt: skip
    metrics = small_run(*args, run_dir=tmp_path / "a")
    assert metrics["status"] == "completed" and metrics["stopped_early"]
    # the first validation sets the best; no later one improves by 10: stop at the third
    assert metrics["stopped_at_step"] == 6 and metrics["steps"] == 6 and metrics["best_step"] <= 6

    # stop after 4 steps, resume: the patience count continues from the recorded history
    small_run(*args, "train.steps=4", "checkpoint.every=2", run_dir=tmp_path / "b")
    state = torch.load(tmp_path / "b" / "checkpoint.prev.pt", weights_only=True)
    assert state["step"] == 4
    (tmp_path / "b" / "checkpoint.pt").unlink()  # continue from the step-4 checkpoint
    small_run(*args, f"resume={tmp_path / 'b'}", "resume_force=true", run_dir=tmp_path / "unused")
    resumed = json.loads((tmp_path / "b" / "metrics.json").read_text())
    assert resumed["stopped_at_step"] == 6 and resumed["steps"] == 6


@pytest.mark.parametrize("model", ["lstm", "gru", "rnn"])
def test_int8_inference_matches_float(small_run, model: str) -> None:
    metrics = small_run(f"model={model}", "train.steps=30", "log.tensorboard=false",
                        "inference.compare=true")  # fmt: skip
    inference = metrics["inference"]
    assert inference["float32"]["mse"] == pytest.approx(metrics["final_metric"], rel=1e-5)
    # int8 weights: within 5% (relative) of the float model's validation MSE
    assert inference["int8_dynamic"]["mse"] == pytest.approx(inference["float32"]["mse"], rel=0.05)
    assert "Linear" in inference["quantized_modules"]
    if model != "rnn":
        assert model.upper() in inference["quantized_modules"]
    assert inference["float32"]["latency_ms"] > 0 and inference["speedup_val_pass"] > 0


@pytest.mark.parametrize(
    "task,why", [("chargen", "predict"), ("copy", "memory"), ("adding", "memory")]
)
def test_bidirectional_is_refused_where_it_leaks_or_voids_the_task(task: str, why: str) -> None:
    from seqbench.checks import check_config
    from seqbench.errors import ConfigError

    cfg = compose_config([f"task={task}", "model.bidirectional=true"])
    with pytest.raises(ConfigError, match=r"model\.bidirectional=True") as err:
        check_config(cfg)
    assert why in str(err.value) and "sentiment and stocks" in str(err.value)
