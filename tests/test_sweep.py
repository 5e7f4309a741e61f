"""Real multiruns: the comparison table against values computed from the runs' own files,
failing and diverging jobs, parallel and Optuna sweeps, and re-running an interrupted sweep."""

from __future__ import annotations

import json
import math
import signal
import statistics
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest

from seqbench.compare import aggregate, group_keys, load_runs
from tests.conftest import SMALL, compose_config, seqbench_cli

KEEP = ["metric", "runs", "completed", "diverged", "failed", "solved", "final_metric_mean",
        "final_metric_std", "best_metric_mean", "best_metric_std"]  # fmt: skip


def sweep(tmp_path: Path, name: str, *args: str) -> Path:
    sweep_dir = tmp_path / name
    result = seqbench_cli("-m", *SMALL, "train.steps=9", "log.tensorboard=false", *args,
                          f"hydra.sweep.dir={sweep_dir}", cwd=tmp_path)  # fmt: skip
    assert result.returncode == 0, result.stderr
    return sweep_dir


def independent_table(sweep_dir: Path) -> pd.DataFrame:
    """mean/std of final and best validation MSE per model, straight from history.csv files."""
    values: dict[str, dict[str, list[float]]] = {}
    for job in sweep_dir.iterdir():
        if not (job / "history.csv").exists():
            continue
        model = json.loads((job / "metrics.json").read_text())["model"]
        history = pd.read_csv(job / "history.csv")
        entry = values.setdefault(model, {"final": [], "best": []})
        entry["final"].append(float(history["val_mse"].iloc[-1]))
        entry["best"].append(float(history["val_mse"].min()))
    rows = [{"model": m, "final_mean": statistics.mean(v["final"]),
             "final_std": statistics.stdev(v["final"]), "best_mean": statistics.mean(v["best"]),
             "best_std": statistics.stdev(v["best"]), "n": len(v["final"])}
            for m, v in values.items()]  # fmt: skip
    return pd.DataFrame(rows).set_index("model").sort_index()


def test_basic_sweep_table_matches_the_runs_files(tmp_path: Path) -> None:
    sweep_dir = sweep(tmp_path, "basic", "model=rnn,lstm,gru", "seed=0,1,2")
    table = pd.read_csv(sweep_dir / "comparison.csv").set_index("model").sort_index()
    expected = independent_table(sweep_dir)
    assert list(table.index) == ["gru", "lstm", "rnn"]
    assert (table["runs"] == 3).all() and (table["completed"] == 3).all()
    for ours, theirs in [("final_metric", "final"), ("best_metric", "best")]:
        pd.testing.assert_series_equal(table[f"{ours}_mean"], expected[f"{theirs}_mean"],
                                       check_names=False, rtol=1e-9)  # fmt: skip
        pd.testing.assert_series_equal(table[f"{ours}_std"], expected[f"{theirs}_std"],
                                       check_names=False, rtol=1e-9)  # fmt: skip
    markdown = (sweep_dir / "comparison.md").read_text()
    assert "| gru " in markdown and "±" in markdown
    for picture in ("grad_norm_vs_t.png", "learning_curves.png"):
        assert (sweep_dir / picture).stat().st_size > 10_000
    assert list((sweep_dir / "tb" / "sweep").glob("events.out.tfevents.*"))


def test_failed_and_diverged_jobs_are_reported(tmp_path: Path) -> None:
    sweep_dir = sweep(tmp_path, "bad", "optimizer=sgd", "optimizer.lr=0.01,1e30",
                      "train.clip.threshold=null", "model.hidden_size=8,0")  # fmt: skip
    statuses = sorted(json.loads(p.read_text())["status"] for p in sweep_dir.glob("*/metrics.json"))
    assert statuses == ["completed", "diverged", "failed", "failed"]
    failed = [json.loads(p.read_text()) for p in sweep_dir.glob("*/metrics.json")]
    assert any("model.hidden_size=0" in (m.get("error") or "") for m in failed)
    table = pd.read_csv(sweep_dir / "comparison.csv")
    assert table["runs"].sum() == 4
    assert table["diverged"].sum() == 1 and table["failed"].sum() == 2


def test_joblib_launcher_runs_jobs_in_parallel_processes(tmp_path: Path) -> None:
    sweep_dir = sweep(tmp_path, "joblib", "model=rnn,gru", "seed=0,1",
                      "hydra/launcher=joblib", "hydra.launcher.n_jobs=2")  # fmt: skip
    table = pd.read_csv(sweep_dir / "comparison.csv").set_index("model").sort_index()
    expected = independent_table(sweep_dir)
    pd.testing.assert_series_equal(table["best_metric_mean"], expected["best_mean"],
                                   check_names=False, rtol=1e-9)  # fmt: skip


def test_optuna_sweeper_minimises_the_task_metric(tmp_path: Path) -> None:
    sweep_dir = sweep(tmp_path, "optuna", "hydra/sweeper=optuna", "hydra.sweeper.n_trials=3",
                      "hydra.sweeper.sampler.seed=0",
                      "optimizer.lr=interval(0.001,0.1)")  # fmt: skip
    optimization = sweep_dir / "optimization_results.yaml"
    assert optimization.exists()
    import yaml

    results = yaml.safe_load(optimization.read_text())
    bests = [json.loads(p.read_text())["best_metric"] for p in sweep_dir.glob("*/metrics.json")]
    assert len(bests) == 3
    assert results["best_value"] == pytest.approx(min(bests))


def test_interrupted_sweep_reruns_only_what_is_missing(tmp_path: Path) -> None:
    args = ["model=rnn,lstm,gru", "seed=0,1", "train.steps=60"]
    reference = sweep(tmp_path, "uninterrupted", *args)

    sweep_dir = tmp_path / "interrupted"
    exe = Path(sys.executable).parent / "seqbench"
    command = [str(exe), "-m", *SMALL, "train.steps=9", "log.tensorboard=false", *args,
               f"hydra.sweep.dir={sweep_dir}"]  # fmt: skip
    proc = subprocess.Popen(command, cwd=tmp_path, stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, text=True)  # fmt: skip
    deadline = time.time() + 120
    while len(list(sweep_dir.glob("*/metrics.json"))) < 2 and time.time() < deadline:
        time.sleep(0.05)
    proc.send_signal(signal.SIGTERM)
    stderr = proc.communicate(timeout=60)[1]
    if "interrupted (SIGTERM)" in stderr:  # a job was training (not between two jobs)
        assert f"run the sweep's command again with hydra.sweep.dir={sweep_dir}:" in stderr
        assert "resume=" not in stderr  # a job's own resume would leave the others unrun
    done_before = {p.parent.name: p.read_text() for p in sweep_dir.glob("*/metrics.json")
                   if json.loads(p.read_text())["status"] == "completed"}  # fmt: skip
    assert 2 <= len(done_before) < 6

    sweep(tmp_path, "interrupted", *args)
    for job, text in done_before.items():  # completed jobs were not run again
        assert (sweep_dir / job / "metrics.json").read_text() == text
    assert len(list(sweep_dir.glob("*/metrics.json"))) == 6

    columns = [c for c in KEEP if c != "metric"]
    ours = pd.read_csv(sweep_dir / "comparison.csv").set_index("model")[columns]
    theirs = pd.read_csv(reference / "comparison.csv").set_index("model")[columns]
    pd.testing.assert_frame_equal(ours.sort_index(), theirs.sort_index())


def test_aggregate_groups_by_varying_keys_and_handles_minus_inf() -> None:
    runs = pd.DataFrame({
        "model": ["rnn", "rnn", "lstm", "lstm"], "task": ["adding"] * 4, "seed": [0, 1, 0, 1],
        "task.seq_len": ["50", "50", "50", "50"], "optimizer.lr": ["0.1", "0.1", "0.1", "0.2"],
        "status": ["completed", "completed", "completed", "diverged"], "metric": ["mse"] * 4,
        "solved": [False, False, True, False], "final_metric": [0.2, 0.4, 0.001, math.nan],
        "best_metric": [0.1, 0.3, 0.001, 0.5],
        "init_vanishing_ratio": [-math.inf, -3.0, -7.0, -7.0],
    })  # fmt: skip
    assert group_keys(runs) == ["model", "task", "optimizer.lr"]
    table = aggregate(runs).set_index(["model", "optimizer.lr"])
    assert table.loc[("rnn", "0.1"), "final_metric_mean"] == pytest.approx(0.3)
    assert table.loc[("rnn", "0.1"), "final_metric_std"] == pytest.approx(
        statistics.stdev([0.2, 0.4])
    )
    assert table.loc[("rnn", "0.1"), "init_vanishing_ratio_mean"] == -math.inf
    assert table.loc[("lstm", "0.2"), "diverged"] == 1
    assert math.isnan(table.loc[("lstm", "0.2"), "best_metric_mean"])  # only completed runs count
    with pytest.raises(KeyError):
        aggregate(runs, by=["nope"])


def test_load_runs_reads_overrides(tmp_path: Path) -> None:
    sweep_dir = sweep(tmp_path, "keys", "model=rnn", "task.seq_len=6,8")
    runs = load_runs(sorted(p.parent for p in sweep_dir.glob("*/metrics.json")))
    assert sorted(runs["task.seq_len"]) == [6, 8]
    assert group_keys(runs) == ["model", "task", "task.seq_len"]


@pytest.mark.parametrize(
    "task,direction",
    [("adding", "minimize"), ("copy", "minimize"), ("sentiment", "maximize"),
     ("stocks", "minimize"), ("chargen", "minimize")],
)  # fmt: skip
def test_optuna_direction_comes_from_the_task(task: str, direction: str) -> None:
    cfg = compose_config(["hydra/sweeper=optuna", f"task={task}"], hydra=True)
    assert cfg.hydra.sweeper.direction == direction
    assert cfg.hydra.sweeper.sampler._target_ == "optuna.samplers.TPESampler"


def test_submitit_local_launcher(tmp_path: Path) -> None:
    """hydra/launcher=submitit_local: the Slurm launcher's local mode, as a user tries it."""
    sweep_dir = sweep(tmp_path, "submitit", "model=rnn,gru", "hydra/launcher=submitit_local")
    statuses = [json.loads(p.read_text())["status"] for p in sweep_dir.glob("*/metrics.json")]
    assert statuses == ["completed", "completed"]
    assert (sweep_dir / "comparison.csv").exists()
