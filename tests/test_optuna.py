"""hydra/sweeper=optuna, seqbench's sweeper on current Optuna: the search space syntax, the
storage, pruning through the jobs with any launcher, a study continued by a re-run, and a job
whose trial is gone. Real processes where the behaviour lives in them."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import optuna
import pandas as pd
import pytest
from optuna.distributions import CategoricalDistribution, FloatDistribution, IntDistribution
from optuna.trial import TrialState

from seqbench import studies
from seqbench.trials import TRIAL_FILE, write_trial_file
from tests.conftest import SMALL, seqbench_cli

# trial 1 is stopped after its first checkpoint (step 100 of 400)
ARGS = [*SMALL, "log.tensorboard=false", "train.steps=400", "checkpoint.every=100",
        "train.eval_every=50", "hydra/sweeper=optuna", "hydra.sweeper.n_trials=4",
        "hydra.sweeper.n_jobs=1", "hydra.sweeper.sampler.seed=0",
        "optimizer.lr=interval(0.001,0.1)"]  # fmt: skip


def study_of(sweep_dir: Path) -> optuna.study.Study:
    return optuna.load_study(study_name="seqbench", storage=f"sqlite:///{sweep_dir}/optuna.db")


def test_the_search_space_syntax() -> None:
    space, fixed = studies.search_space([
        "optimizer.lr=tag(log, interval(1e-4, 1e-1))", "train.clip.threshold=interval(0.5, 2)",
        "model.hidden_size=choice(32, 64, 128)", "model.num_layers=range(1, 4)",
        "train.batch_size=int(interval(16, 64))", "model=lstm",
    ])  # fmt: skip
    assert space == {
        "optimizer.lr": FloatDistribution(1e-4, 1e-1, log=True),
        "train.clip.threshold": FloatDistribution(0.5, 2.0),
        "model.hidden_size": CategoricalDistribution([32, 64, 128]),
        "model.num_layers": IntDistribution(1, 3),  # range's end excluded, as Python's
        "train.batch_size": IntDistribution(16, 64),  # Hydra's interval is float unless int()
    }
    assert fixed == {"model": "lstm"}


def test_the_storage_where_the_jobs_run(tmp_path: Path) -> None:
    """SQLite for jobs on this machine, Optuna's journal file (safe on a shared file system)
    for Ray and Slurm; an explicit choice or URL as given."""
    local = "hydra._internal.core_plugins.basic_launcher.BasicLauncher"
    sqlite = f"sqlite:///{tmp_path.resolve()}/optuna.db"
    assert studies.storage_url("auto", tmp_path, local) == sqlite
    assert studies.storage_url("auto", tmp_path, "hydra_plugins.x.JoblibLauncher") == sqlite
    assert studies.storage_url("auto", tmp_path, "hydra_plugins.x.LocalLauncher") == sqlite
    for remote in ("hydra_plugins.seqbench_plugins.SlurmLauncher", "x.RayLauncher"):
        assert studies.storage_url("auto", tmp_path, remote) == (
            f"journal:{tmp_path.resolve()}/optuna.journal")  # fmt: skip
    assert studies.storage_url("postgresql://h/db", tmp_path) == "postgresql://h/db"
    assert studies.storage_url(None, tmp_path) is None
    journal = studies.open_storage(f"journal:{tmp_path}/j.log")
    study = optuna.create_study(study_name="s", storage=journal)
    study.tell(study.ask(), 1.0)
    again = optuna.load_study(
        study_name="s", storage=studies.open_storage(f"journal:{tmp_path}/j.log")
    )
    assert [t.value for t in again.trials] == [1.0]


def test_the_pruner_is_a_config_choice() -> None:
    assert isinstance(studies.make_pruner(None), optuna.pruners.NopPruner)
    median = studies.make_pruner({"name": "median", "n_startup_trials": 2, "n_warmup_steps": 50})
    assert isinstance(median, optuna.pruners.MedianPruner)
    assert (median._n_startup_trials, median._n_warmup_steps) == (2, 50)
    assert isinstance(studies.make_pruner({"name": "hyperband"}), optuna.pruners.HyperbandPruner)
    with pytest.raises(ValueError, match="choose one of"):
        studies.make_pruner({"name": "nope"})


class _Launcher:
    """Records what it launched; writes each job's metrics.json as a finished run would."""

    def __init__(self, sweep_dir: Path, status: str, value: float) -> None:
        self.sweep_dir, self.status, self.value, self.calls = sweep_dir, status, value, []

    def launch(self, overrides, initial_job_idx):
        self.calls.append((overrides, initial_job_idx))
        for i, _ in enumerate(overrides):
            run = self.sweep_dir / str(initial_job_idx + i)
            run.mkdir(parents=True, exist_ok=True)
            metrics = {"status": self.status, "best_metric": self.value}
            (run / "metrics.json").write_text(json.dumps(metrics))
        return [type("Ret", (), {"return_value": self.value})() for _ in overrides]


def test_interrupted_trials_are_finished_into_their_own_directories(tmp_path: Path) -> None:
    study = optuna.create_study(study_name="seqbench", storage=f"sqlite:///{tmp_path}/optuna.db")
    study.tell(study.ask({"x": FloatDistribution(0, 1)}), 0.5)
    for _ in range(2):  # trial 1 was training when stopped; trial 2 never started
        study.ask({"x": FloatDistribution(0, 1)})
    (tmp_path / "1" / ".hydra").mkdir(parents=True)
    (tmp_path / "1" / ".hydra" / "overrides.yaml").write_text("- x=0.25\n- seed=3\n")
    launcher = _Launcher(tmp_path, "completed", 0.125)
    assert studies.finish_interrupted_trials(study, launcher, tmp_path) == [1]
    assert launcher.calls == [([["x=0.25", "seed=3"]], 1)]  # into its own directory: resumes
    states = [(t.number, t.state, t.value) for t in study_of(tmp_path).trials]
    assert states == [(0, TrialState.COMPLETE, 0.5), (1, TrialState.COMPLETE, 0.125),
                      (2, TrialState.FAIL, None)]  # fmt: skip


def test_a_job_outcome_is_told_from_its_metrics(tmp_path: Path) -> None:
    study = optuna.create_study(study_name="s", storage=f"sqlite:///{tmp_path}/optuna.db")
    outcomes = [("completed", 0.25, "COMPLETE"), ("pruned", 0.5, "PRUNED"),
                ("diverged", None, "FAIL"), ("failed", None, "FAIL")]  # fmt: skip
    for status, value, state in outcomes:
        trial = study.ask()
        launcher = _Launcher(tmp_path, status, value)
        (result,) = launcher.launch([[]], trial.number)
        assert studies.tell(study, trial.number, result, tmp_path) == state
    table = pd.read_csv(studies.write_trials(study, tmp_path))
    assert table["state"].tolist() == ["COMPLETE", "PRUNED", "FAIL", "FAIL"]
    assert table["number"].tolist() == [0, 1, 2, 3] and "last_step" in table


def test_a_job_given_a_trial_that_no_longer_exists_gets_a_clear_error(tmp_path: Path) -> None:
    storage = f"sqlite:///{tmp_path}/optuna.db"
    optuna.create_study(study_name="seqbench", storage=storage)  # a study with no trial 7
    run_dir = tmp_path / "run"
    write_trial_file(run_dir, storage, "seqbench", 7, {"name": "median"})
    done = seqbench_cli(*SMALL, f"hydra.run.dir={run_dir}", cwd=tmp_path)
    assert done.returncode == 2 and "Traceback" not in done.stderr
    message = " ".join(done.stderr.split())
    assert "has no trial 7" in message and TRIAL_FILE in message
    assert "Run the sweep again" in message


@pytest.mark.slow
def test_a_search_with_a_pruner_stops_the_bad_trials_early(tmp_path: Path) -> None:
    """A median pruner over a search whose learning rates make half the trials stall at the
    baseline: those are stopped at an early validation, recorded 'pruned' in metrics.json with
    their checkpoint kept, PRUNED in the study and optuna_trials.csv, counted (not averaged) in
    the comparison table."""
    sweep_dir = tmp_path / "search"
    args = [*SMALL, "log.tensorboard=false", "train.steps=120", "train.eval_every=10",
            "task.seq_len=10", "model.hidden_size=16", "train.batch_size=32",
            "hydra/sweeper=optuna", "hydra.sweeper.n_trials=8", "hydra.sweeper.n_jobs=1",
            "hydra.sweeper.sampler.seed=1", "hydra.sweeper.pruner.name=median",
            "hydra.sweeper.pruner.n_startup_trials=2",
            "optimizer.lr=choice(0.01,0.02,0.005,0.00001)",
            f"hydra.sweep.dir={sweep_dir}"]  # fmt: skip
    done = seqbench_cli("-m", *args, cwd=tmp_path)
    assert done.returncode == 0, done.stderr[-3000:]
    trials = study_of(sweep_dir).trials
    pruned = [t for t in trials if t.state == TrialState.PRUNED]
    assert len(trials) == 8 and pruned
    for trial in pruned:
        assert trial.params["optimizer.lr"] == 0.00001  # the stalling rate
        metrics = json.loads((sweep_dir / str(trial.number) / "metrics.json").read_text())
        assert metrics["status"] == "pruned" and metrics["steps"] < 120
        assert metrics["pruned_at_step"] == max(trial.intermediate_values)
        assert (sweep_dir / str(trial.number) / "checkpoint.pt").exists()
    table = pd.read_csv(sweep_dir / "optuna_trials.csv")
    assert (table["state"] == "PRUNED").sum() == len(pruned)
    comparison = pd.read_csv(sweep_dir / "comparison.csv")
    assert comparison["pruned"].sum() == len(pruned)
    assert comparison["completed"].sum() == 8 - len(pruned)


@pytest.mark.slow
def test_joblib_workers_report_to_one_study(tmp_path: Path) -> None:
    """Two joblib workers at a time: every trial's validations reach the same study."""
    sweep_dir = tmp_path / "search"
    done = seqbench_cli("-m", *SMALL, "log.tensorboard=false", "train.steps=20",
                        "train.eval_every=5", "hydra/sweeper=optuna", "hydra/launcher=joblib",
                        "hydra.launcher.n_jobs=2", "hydra.sweeper.n_jobs=2",
                        "hydra.sweeper.n_trials=4", "hydra.sweeper.pruner.name=median",
                        "optimizer.lr=interval(0.001,0.01)", f"hydra.sweep.dir={sweep_dir}",
                        cwd=tmp_path)  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    trials = study_of(sweep_dir).trials
    assert [t.state for t in trials] == [TrialState.COMPLETE] * 4
    for trial in trials:
        assert sorted(trial.intermediate_values) == [5, 10, 15, 20]  # each validation
        metrics = json.loads((sweep_dir / str(trial.number) / "metrics.json").read_text())
        assert metrics["best_metric"] == pytest.approx(trial.value)


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
