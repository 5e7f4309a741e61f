"""RunRecorder fed by hand, no training: each number in metrics.json and each cell of the CSVs
against what was recorded, computed here independently (in-process and fast, so that these are
the first tests a mutant of results.py meets)."""

from __future__ import annotations

import json
import math
import time
import warnings
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from seqbench.results import GATE_OPEN, RunRecorder, better

# one layer, T = 2 timesteps, H = 3 units (T != H, so a mean over the wrong axis shows)
FORGET = np.array([[[0.2, GATE_OPEN, 1.0], [0.4, GATE_OPEN, np.nan]]])  # (L, T, H)
INPUT = np.array([[[0.5, 0.5, 0.5], [0.1, 0.2, 0.3]]])


def recorder(path: Path) -> RunRecorder:
    path.mkdir(exist_ok=True)
    rec = RunRecorder(path, {"overrides": ["model=lstm"]}, "mse", "min", 10.0)
    rec.start_files()
    return rec


def test_a_recorded_run_reads_back_from_its_files(tmp_path: Path) -> None:
    start = time.perf_counter()
    rec = recorder(tmp_path)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # an all-NaN unit or an empty mean must not warn
        rec.on_grad_norms(0, np.array([[4.0, 2.0]]), np.array([2, 1]), None)
        rec.on_gates(0, {"forget": FORGET, "input": INPUT}, "forget")
        for step, loss, clipped in ((1, 3.0, True), (2, 1.0, False), (3, 2.0, False)):
            rec.on_step(step, loss, grad_norm=1.0, clipped=clipped)
        rec.on_eval(3, {"mse": 0.5})
        rec.on_eval(3, {"mse": 0.7})  # no step in between: no training loss to average
        elapsed = time.perf_counter() - start
        rec.start -= 7.0  # as if the run had taken 7 s more
        metrics = rec.write("completed")

    history = pd.read_csv(tmp_path / "history.csv")
    assert history["train_loss"].iloc[0] == 2.0 and math.isnan(history["train_loss"].iloc[1])
    assert (history["wall_time"] >= 0).all() and (history["wall_time"] <= elapsed).all()
    assert metrics["steps"] == 3 and metrics["clip_fraction"] == round(1 / 3, 6)
    wall, speed = metrics["wall_time_s"], metrics["steps_per_s"]
    assert 7.0 < wall < 7.5 and wall == round(wall, 3)  # in seconds, to the millisecond
    assert speed == pytest.approx(3 / wall, abs=1e-3) and speed == round(speed, 3)
    assert metrics["grad_norms"]["max_norm"] == 4.0
    assert (metrics["best_metric"], metrics["best_step"]) == (0.5, 3)

    units = pd.read_csv(tmp_path / "gates.csv")  # the mean over timesteps, per unit
    assert units[["layer", "unit"]].values.tolist() == [[0, 0], [0, 1], [0, 2]]
    np.testing.assert_allclose(units["forget"], [0.3, GATE_OPEN, 1.0])
    np.testing.assert_allclose(units["input"], [0.3, 0.35, 0.4])
    per_t = pd.read_csv(tmp_path / "grad_norms.csv")  # the mean over units, per timestep
    assert per_t[["t", "norm", "positions"]].values.tolist() == [[1, 4.0, 2], [2, 2.0, 1]]
    np.testing.assert_allclose(per_t["gate_forget"], [(0.2 + GATE_OPEN + 1.0) / 3, 0.675])
    gates = metrics["gates"]["init"]["layers"][0]
    assert gates["forget"][f"above_{GATE_OPEN}"] == pytest.approx(1 / 3)  # exactly 0.95 is not
    assert gates["input"]["mean"] == pytest.approx(INPUT.mean())
    [(step, forget)] = rec.memory_gate_history()
    assert step == 0
    np.testing.assert_allclose(forget, [[(0.2 + GATE_OPEN + 1.0) / 3, 0.675]])

    text = (tmp_path / "metrics.json").read_text()
    assert text.startswith('{\n  "status": "completed"')  # indented for people, by 2
    assert json.loads(text) == json.loads(json.dumps(metrics))


def test_a_run_without_steps_or_snapshots(tmp_path: Path) -> None:
    metrics = recorder(tmp_path).write("interrupted")
    assert metrics["steps"] == 0 and metrics["clip_fraction"] == 0.0
    assert metrics["grad_norms"] == {"init": None, "end": None, "max_norm": None}
    assert "gates" not in metrics and "texts" not in metrics


def test_a_checkpoint_from_before_gates_and_texts_were_kept(tmp_path: Path) -> None:
    rec = recorder(tmp_path / "a")
    rec.on_step(1, 1.0, grad_norm=1.0, clipped=False)
    state = rec.state_dict()
    del state["gate_snapshots"], state["texts"], state["memory_gate"]
    restored = recorder(tmp_path / "b")
    restored.load_state_dict(state)
    assert (restored.gate_snapshots, restored.texts, restored.memory_gate) == ([], {}, None)
    assert restored.write("completed")["steps"] == 1


def test_better_is_strict_and_nan_never_improves() -> None:
    assert better(1.0, 2.0, "min") and not better(2.0, 1.0, "min")
    assert better(2.0, 1.0, "max") and not better(1.0, 2.0, "max")
    assert not better(1.0, 1.0, "min") and not better(1.0, 1.0, "max")
    assert not better(math.nan, 1.0, "min") and not better(math.nan, math.nan, "max")
    assert better(1.0, math.nan, "min") and better(1.0, math.nan, "max")


def test_solved_follows_the_weights_the_run_keeps(tmp_path: Path) -> None:
    """copy's solved is on accuracy, its best on cross-entropy: a run whose best validation
    (kept in best.pt) misses the accuracy threshold is not solved, though an earlier validation
    passed it (solved_step still records that one)."""
    from seqbench.compare import load_runs

    rec = RunRecorder(tmp_path, {"model": "gru", "task": "copy", "seed": 0}, "cross_entropy",
                      "min", 10.0, solved=lambda m: m["accuracy"] >= 0.99)  # fmt: skip
    rec.on_eval(100, {"cross_entropy": 0.5, "accuracy": 0.995})
    rec.on_eval(200, {"cross_entropy": 0.4, "accuracy": 0.9})  # better loss, kept, not solved
    metrics = rec.write("completed")
    assert (metrics["solved_step"], metrics["best_step"], metrics["best_solved"]) == (
        100, 200, False)  # fmt: skip
    assert not load_runs([tmp_path]).iloc[0]["solved"]
    rec.on_eval(300, {"cross_entropy": 0.3, "accuracy": 0.999})
    assert rec.write("completed")["best_solved"] is True
    assert load_runs([tmp_path]).iloc[0]["solved"]
