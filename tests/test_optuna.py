"""hydra/sweeper=optuna keeps its study in an SQLite file in the sweep directory: a search
interrupted mid-trial and run again continues the same study."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import optuna
import pandas as pd
import pytest
from omegaconf import OmegaConf
from optuna.trial import TrialState

from seqbench.studies import continue_study, write_trials
from tests.conftest import SMALL, seqbench_cli

# trial 1 is stopped after its first checkpoint (step 100 of 400)
ARGS = [*SMALL, "log.tensorboard=false", "train.steps=400", "checkpoint.every=100",
        "train.eval_every=50", "hydra/sweeper=optuna", "hydra.sweeper.n_trials=4",
        "hydra.sweeper.n_jobs=1", "hydra.sweeper.sampler.seed=0",
        "optimizer.lr=interval(0.001,0.1)"]  # fmt: skip


def study_of(sweep_dir: Path) -> optuna.study.Study:
    return optuna.load_study(study_name="seqbench", storage=f"sqlite:///{sweep_dir}/optuna.db")


@pytest.mark.slow
def test_interrupted_search_continues_the_same_study(tmp_path: Path) -> None:
    sweep_dir = tmp_path / "optuna"
    exe = Path(sys.executable).parent / "seqbench"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    command = [str(exe), "-m", *ARGS, f"hydra.sweep.dir={sweep_dir}"]
    proc = subprocess.Popen(command, cwd=tmp_path, env=env, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)  # fmt: skip
    deadline = time.time() + 180
    while not (sweep_dir / "1" / "checkpoint.pt").exists() and time.time() < deadline:
        time.sleep(0.02)
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=120) == 143
    first = study_of(sweep_dir).trials
    assert [t.state for t in first] == [TrialState.COMPLETE, TrialState.RUNNING]
    trial_0 = (sweep_dir / "0" / "metrics.json").read_text()
    assert json.loads((sweep_dir / "1" / "metrics.json").read_text())["status"] == "interrupted"

    again = seqbench_cli("-m", *ARGS, f"hydra.sweep.dir={sweep_dir}", cwd=tmp_path)
    assert again.returncode == 0, again.stderr
    trials = study_of(sweep_dir).trials
    assert [t.number for t in trials] == [0, 1, 2, 3]  # grown to n_trials, no new study
    assert all(t.state == TrialState.COMPLETE for t in trials)
    assert [t.params for t in trials[:2]] == [t.params for t in first]
    assert len({t.params["optimizer.lr"] for t in trials}) == 4  # no trial repeated
    assert (sweep_dir / "0" / "metrics.json").read_text() == trial_0  # not run again
    for trial in trials:  # job directory N is trial N, and holds its result
        metrics = json.loads((sweep_dir / str(trial.number) / "metrics.json").read_text())
        assert f"optimizer.lr={trial.params['optimizer.lr']}" in metrics["overrides"]
        assert metrics["status"] == "completed" and metrics["steps"] == 400
        assert metrics["best_metric"] == pytest.approx(trial.value)
    assert "Trial 1 was interrupted; resuming" in again.stdout + again.stderr
    table = pd.read_csv(sweep_dir / "optuna_trials.csv")
    assert table["number"].tolist() == [0, 1, 2, 3]
    assert set(table["state"]) == {"COMPLETE"}


class _Launcher:
    """Records what it launched; returns a JobReturn-like result with the given value."""

    def __init__(self, value):
        self.value, self.calls = value, []

    def launch(self, overrides, initial_job_idx):
        self.calls.append((overrides, initial_job_idx))
        return [type("Ret", (), {"return_value": self.value})()]


def _sweeper(sweep_dir: Path, launcher, n_trials: int = 5):
    config = OmegaConf.create({"hydra": {"sweep": {"dir": str(sweep_dir)},
                                         "sweeper": {"sampler": {"seed": None}}}})  # fmt: skip
    return SimpleNamespace(storage=f"sqlite:///{sweep_dir}/optuna.db", study_name="seqbench",
                           config=config, launcher=launcher, n_trials=n_trials, job_idx=0,
                           sampler=None)  # fmt: skip


def test_continuing_finishes_running_trials_and_numbers_new_jobs_after_them(tmp_path) -> None:
    study = optuna.create_study(study_name="seqbench", storage=f"sqlite:///{tmp_path}/optuna.db")
    study.tell(study.ask({"x": optuna.distributions.UniformDistribution(0, 1)}), 0.5)
    for _ in range(2):  # trial 1 was training when stopped; trial 2 never started
        study.ask({"x": optuna.distributions.UniformDistribution(0, 1)})
    (tmp_path / "1" / ".hydra").mkdir(parents=True)
    (tmp_path / "1" / ".hydra" / "overrides.yaml").write_text("- x=0.25\n- seed=3\n")
    launcher = _Launcher(value=0.125)
    sweeper = _sweeper(tmp_path, launcher)
    continue_study(sweeper)
    assert launcher.calls == [([["x=0.25", "seed=3"]], 1)]  # into its own directory: resumes
    states = [(t.number, t.state, t.value) for t in study_of(tmp_path).trials]
    assert states == [(0, TrialState.COMPLETE, 0.5), (1, TrialState.COMPLETE, 0.125),
                      (2, TrialState.FAIL, None)]  # fmt: skip
    assert (sweeper.n_trials, sweeper.job_idx) == (2, 3)  # 5 in all; job dirs 3 and 4 next


def test_failed_and_pruned_trials_are_written_to_the_trials_table(tmp_path: Path) -> None:
    study = optuna.create_study(study_name="seqbench", storage=f"sqlite:///{tmp_path}/optuna.db")
    for state in (TrialState.COMPLETE, TrialState.FAIL, TrialState.PRUNED):
        trial = study.ask({"x": optuna.distributions.UniformDistribution(0, 1)})
        study.tell(trial, 1.0 if state == TrialState.COMPLETE else None, state=state)
    table = pd.read_csv(write_trials(_sweeper(tmp_path, None)))
    assert table["state"].tolist() == ["COMPLETE", "FAIL", "PRUNED"]
    assert table["number"].tolist() == [0, 1, 2]
