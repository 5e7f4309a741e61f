"""Promises of docs/running.md, docs/diagnostics.md, docs/tensorboard.md and
docs/getting-started.md about what one run does, each checked as a user meets it where no other
test held it (docs/promises.md names them): Ctrl-C (once: a clean stop, exit 130; twice: at
once, keeping the last periodic checkpoint), a crash (exit 1, its traceback, metrics.json
`failed`), lag_norms.csv growing and cut back by a resume, options that change no training
(diagnostics.log_magnitude, the fused path's diagnostic steps), `log.tensorboard=false`, the
`.hydra/` files and the closing summary. In-process runs of a few steps: seconds each."""

from __future__ import annotations

import json
import os
import shutil
import signal
from pathlib import Path
from unittest import mock

import pandas as pd
import pytest
import torch

from seqbench.checkpoint import CHECKPOINT, PREVIOUS, load_training_state
from tests.conftest import SMALL, compose_config, run_small, seqbench_main

# 8 steps, validations at 3, 6 and 8, periodic checkpoints at 2, 4 and 6
EIGHT = ("train.steps=8", "train.eval_every=3", "checkpoint.every=2", "log.tensorboard=false",
         "inference.compare=false")  # fmt: skip


def signals_during_step(step: int, *signals: signal.Signals):
    """Patch the loop so that this process receives `signals` while it computes `step`
    (1-based), as a user's Ctrl-C would arrive mid-step."""
    from seqbench import train

    calls, clip = [], train.clip_gradients

    def clip_and_signal(*args, **kwargs):
        calls.append(1)
        if len(calls) == step:
            for sig in signals:
                os.kill(os.getpid(), sig)
        return clip(*args, **kwargs)

    return mock.patch.object(train, "clip_gradients", clip_and_signal)


def test_ctrl_c_stops_between_steps_writes_everything_and_exits_130(tmp_path: Path, capsys):
    """running.md: Ctrl-C (SIGINT) stops training between two steps; the run writes its
    checkpoint and metrics.json with status `interrupted`, prints `resume with: seqbench
    resume=RUN_DIR`, and exits 130."""
    run_dir = tmp_path / "run"
    with signals_during_step(5, signal.SIGINT), pytest.raises(SystemExit) as stopped:
        run_small(run_dir, *EIGHT)
    assert stopped.value.code == 130
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert (metrics["status"], metrics["steps"]) == ("interrupted", 5)  # step 5 finished
    assert load_training_state(run_dir)["step"] == 5  # the checkpoint of the stop
    err = capsys.readouterr().err
    assert f"interrupted (SIGINT) after step 5; resume with: seqbench resume={run_dir}" in err
    assert pd.read_csv(run_dir / "history.csv")["step"].tolist() == [3]


def test_a_second_ctrl_c_stops_at_once_keeping_the_last_periodic_checkpoint(tmp_path: Path):
    """running.md: a second Ctrl-C stops at once (mid-step), keeping the last periodic
    checkpoint; the run still says `interrupted` and exits 130."""
    run_dir = tmp_path / "run"
    with signals_during_step(5, signal.SIGINT, signal.SIGINT), pytest.raises(SystemExit) as stop:
        run_small(run_dir, *EIGHT)
    assert stop.value.code == 130
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert (metrics["status"], metrics["steps"]) == ("interrupted", 4)  # step 5 never finished
    assert torch.load(run_dir / CHECKPOINT, weights_only=True)["step"] == 4  # the periodic one
    assert torch.load(run_dir / PREVIOUS, weights_only=True)["step"] == 2


def test_a_crash_exits_1_with_its_traceback_and_metrics_json_says_failed(tmp_path, monkeypatch):
    """running.md, exit status 1: a crash (a bug) prints its traceback and metrics.json says
    `failed`, with the error."""
    from seqbench import train

    def bug(*args, **kwargs):
        raise RuntimeError("a planted bug")

    monkeypatch.setattr(train, "clip_gradients", bug)
    run_dir = tmp_path / "run"
    done = seqbench_main(*SMALL, "log.tensorboard=false", f"hydra.run.dir={run_dir}",
                         cwd=tmp_path)  # fmt: skip
    assert done.returncode == 1
    assert "Traceback (most recent call last)" in done.stderr
    assert "RuntimeError: a planted bug" in done.stderr
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert (metrics["status"], metrics["error"]) == ("failed", "RuntimeError: a planted bug")


# validations at 3, 6 and 8, snapshots at 0, 2, 4, 6 and the end (8), checkpoints at 3 and 6
HALTING = ("train.steps=8", "train.eval_every=3", "checkpoint.every=3", "diagnostics.every=2",
           "inference.compare=false", "log.tensorboard=false")  # fmt: skip


def test_lag_norms_csv_grows_as_the_run_goes_and_a_resume_cuts_it_back(tmp_path: Path) -> None:
    """running.md: lag_norms.csv grows like the other CSVs (each snapshot's rows appended, at
    the end exactly what a whole-file write gives), and a resume after a kill -9 first cuts it
    back to its checkpoint (rows after it, a half-written last line): the resumed run's file is
    the uninterrupted run's."""
    from seqbench.frames import lag_norm_frame
    from seqbench.results import RunRecorder

    straight, run_dir = tmp_path / "straight", tmp_path / "run"
    run_small(straight, *HALTING)
    text = (straight / "lag_norms.csv").read_text()
    assert sorted(pd.read_csv(straight / "lag_norms.csv")["step"].unique()) == [0, 2, 4, 6, 8]
    state = torch.load(straight / CHECKPOINT, weights_only=True)["recorder"]
    recorder = RunRecorder(tmp_path / "x", {}, "mse", "min", 10.0)
    recorder.load_state_dict(state)
    assert text == lag_norm_frame(recorder.lag_snapshots).to_csv(index=False)  # the whole file

    shutil.copytree(straight, run_dir)
    os.replace(run_dir / PREVIOUS, run_dir / CHECKPOINT)  # the periodic checkpoint of step 6
    (run_dir / "metrics.json").unlink()
    with (run_dir / "lag_norms.csv").open("a") as f:  # cut mid-row, as by a kill -9
        f.write("8,0,3,0.00")
    assert 8 in pd.read_csv(run_dir / "lag_norms.csv")["step"].tolist()  # rows past step 6

    resumed = RunRecorder(run_dir, {}, "mse", "min", 10.0)  # as the resume starts, before a step
    resumed.load_state_dict(load_training_state(run_dir)["recorder"])
    resumed.start_files()
    assert pd.read_csv(run_dir / "lag_norms.csv")["step"].unique().tolist() == [0, 2, 4]
    run_small(tmp_path / "unused", *HALTING, f"resume={run_dir}")
    assert (run_dir / "lag_norms.csv").read_text() == text


def trained(tmp_path: Path, name: str, *overrides: str) -> tuple[dict, dict]:
    """The weights a small run leaves in checkpoint.pt, and its metrics.json."""
    metrics = run_small(tmp_path / name, "log.tensorboard=false", "inference.compare=false",
                        *overrides)  # fmt: skip
    return torch.load(tmp_path / name / CHECKPOINT, weights_only=True)["model"], metrics


def test_log_magnitude_changes_the_records_not_the_training(tmp_path: Path) -> None:
    """diagnostics.md: with `diagnostics.log_magnitude=true` the gradient used for training is
    the same: bit for bit the same weights and validation results."""
    plain, a = trained(tmp_path, "plain", "model=rnn", "diagnostics.every=1")
    logged, b = trained(tmp_path, "logged", "model=rnn", "diagnostics.every=1",
                        "diagnostics.log_magnitude=true")  # fmt: skip
    assert all(torch.equal(plain[k], logged[k]) for k in plain)
    assert (a["final"], a["best_metric"]) == (b["final"], b["best_metric"])
    assert "log10_norm" in pd.read_csv(tmp_path / "logged" / "grad_norms.csv")


@pytest.mark.parametrize("cell", ["lstm", "gru"])
def test_the_fused_paths_diagnostic_steps_also_train(tmp_path: Path, cell: str) -> None:
    """diagnostics.md: on the fused path (`model.engine=fused`) a diagnostic step unrolls the
    stack through the same parameters, and that step's backward also trains: a run with a
    snapshot at every step trains the weights of one without snapshots (up to float32
    rounding of the two ways of computing the same function)."""
    none, _ = trained(tmp_path, "none", f"model={cell}", "model.engine=fused",
                      "diagnostics.every=0")  # fmt: skip
    every, _ = trained(tmp_path, "every", f"model={cell}", "model.engine=fused",
                             "diagnostics.every=1")  # fmt: skip
    assert sorted(pd.read_csv(tmp_path / "every" / "grad_norms.csv")["step"].unique()) == list(
        range(7)
    )
    for key in none:
        torch.testing.assert_close(every[key], none[key], rtol=1e-4, atol=1e-6, msg=key)


def test_log_tensorboard_false_writes_no_event_files(tmp_path: Path) -> None:
    """tensorboard.md: `log.tensorboard=false` turns the event files off (the other files are
    written as ever)."""
    run_dir = tmp_path / "run"
    metrics = run_small(run_dir, "log.tensorboard=false", "inference.compare=false")
    assert metrics["status"] == "completed"
    assert not (run_dir / "tb").exists() and not list(run_dir.rglob("events.out.tfevents.*"))
    for name in ("metrics.json", "history.csv", "grad_norms.csv", "lag_norms.csv", "gates.csv",
                 "checkpoint.pt", "best.pt"):  # fmt: skip
        assert (run_dir / name).is_file(), name


def test_a_run_keeps_its_hydra_files_and_ends_with_its_summary_table(tmp_path: Path) -> None:
    """running.md, What a run writes: `.hydra/` holds the composed config, Hydra's config and
    the command-line overrides; getting-started.md: a run ends with a summary table in the
    terminal."""
    import yaml

    run_dir = tmp_path / "run"
    overrides = [*SMALL[:-1], "log.progress=plain", "model=gru", "log.tensorboard=false",
                 "inference.compare=false"]  # fmt: skip
    done = seqbench_main(*overrides, f"hydra.run.dir={run_dir}", cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    hydra = run_dir / ".hydra"
    assert yaml.safe_load((hydra / "overrides.yaml").read_text()) == overrides
    config = yaml.safe_load((hydra / "config.yaml").read_text())
    assert config["model"]["cell"] == "gru" and config["train"]["steps"] == 6
    hydra_cfg = yaml.safe_load((hydra / "hydra.yaml").read_text())["hydra"]
    assert hydra_cfg["run"]["dir"] == str(run_dir)
    assert f"hydra.run.dir={run_dir}" in hydra_cfg["overrides"]["hydra"]
    table = done.stdout[done.stdout.index(f"seqbench run: {run_dir}") :]
    metrics = json.loads((run_dir / "metrics.json").read_text())
    for row in ("status", "completed", "model / task", "gru / adding", "final val mse",
                "best val mse", "baseline", "clipped steps"):  # fmt: skip
        assert row in table, row
    assert f"{metrics['best_step']}" in table


def test_log_progress_modes(capsys, monkeypatch) -> None:
    """getting-started.md, `log.progress`: `auto` is a rich bar on a terminal and plain lines
    otherwise, `rich`, `plain` (one line per validation), `none` (nothing, not even the closing
    table); tasks.md: a chargen sample after a validation is printed on the console."""
    from rich.console import Console

    from seqbench.loggers.console import ConsoleLogger

    plain = ConsoleLogger(10, "bpc", "auto")  # pytest's stdout is no terminal
    assert plain.mode == "plain" and plain.progress is None
    plain.on_step(5, 2.5, 1.0, False)
    plain.on_eval(5, {"bpc": 3.25})
    plain.on_text(5, {"sample": "The king"})
    out = capsys.readouterr().out
    assert out.startswith("step 5/10 | loss 2.5000 | val bpc 3.2500 |")
    assert "step 5 sample: 'The king'" in out
    silent = ConsoleLogger(10, "bpc", "none")
    silent.on_eval(5, {"bpc": 3.25})
    silent.on_text(5, {"sample": "The king"})
    silent.summary({"status": "completed"}, "run")
    assert capsys.readouterr().out == ""
    monkeypatch.setattr(Console, "is_terminal", property(lambda self: True))
    monkeypatch.setattr(Console, "is_dumb_terminal", property(lambda self: False))
    for mode in ("auto", "rich"):
        bar = ConsoleLogger(10, "bpc", mode)
        assert bar.mode == "rich" and bar.progress is not None
        bar.close()


LAUNCHERS = [("basic", True), ("joblib", False), ("submitit_local", False), ("ray", False)]


@pytest.mark.parametrize(("launcher", "bar"), LAUNCHERS)
def test_jobs_side_by_side_show_no_live_bar(launcher, bar, capsys, monkeypatch) -> None:
    """A sweep job on a terminal shows its live bar only under Hydra's basic launcher, which
    runs one job at a time: joblib's jobs share the terminal, and their bars overwrote each
    other ('...eta 0:00:01se' / 'qbench: #0: completed'). Either way the job's closing line."""
    from rich.console import Console

    from seqbench.cli import side_by_side
    from seqbench.loggers.console import ConsoleLogger

    hydra_cfg = compose_config([f"hydra/launcher={launcher}"], hydra=True).hydra
    assert side_by_side(hydra_cfg) is not bar
    monkeypatch.setattr(Console, "is_terminal", property(lambda self: True))
    monkeypatch.setattr(Console, "is_dumb_terminal", property(lambda self: False))
    logger = ConsoleLogger(10, "mse", "auto", sweep_job="#3", side_by_side=side_by_side(hydra_cfg))
    assert (logger.progress is not None) is bar and logger.mode == ("rich" if bar else "none")
    logger.close()
    capsys.readouterr()
    logger.summary({"status": "completed", "metric": "mse", "best_metric": 0.1, "baseline": 0.2,
                    "steps": 10, "wall_time_s": 1.0}, "runs/3")  # fmt: skip
    assert capsys.readouterr().out.startswith("seqbench: #3: completed, best val mse 0.1000")
    single = ConsoleLogger(10, "mse", "auto", side_by_side=True)  # a single run: not a sweep job
    assert single.progress is not None
    single.close()


def test_result_files_are_never_half_written(tmp_path: Path, monkeypatch) -> None:
    """running.md: metrics.json, the checkpoints and best.pt are written whole to a temporary
    name and renamed, so none is ever half-written: a write that fails midway leaves the
    previous file (for checkpoint.pt: moved to checkpoint.prev.pt first) and no temporary
    file behind."""
    from seqbench import files
    from seqbench.checkpoint import BestCheckpoint, save_checkpoint
    from seqbench.results import RunRecorder

    run_dir = tmp_path / "run"
    run_small(run_dir, "checkpoint.every=2", "log.tensorboard=false", "inference.compare=false")
    before = {name: (run_dir / name).read_bytes()
              for name in ("metrics.json", CHECKPOINT, PREVIOUS, "best.pt")}  # fmt: skip

    def disk_full(fd):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(files.os, "fsync", disk_full)  # after the bytes went to the temp file
    recorder = RunRecorder(run_dir, {}, "mse", "min", 10.0)
    best = BestCheckpoint(run_dir / "best.pt", torch.nn.Linear(2, 1), "mse", "min")
    for write in (lambda: recorder.write("completed"),
                  lambda: save_checkpoint(run_dir, {"step": 99}),
                  lambda: best.on_eval(99, {"mse": 0.0})):  # fmt: skip
        with pytest.raises(OSError, match="No space left"):
            write()
    for name in ("metrics.json", "best.pt"):
        assert (run_dir / name).read_bytes() == before[name], name
    # the checkpoint it replaces is kept as checkpoint.prev.pt first: the newest complete one
    assert not (run_dir / CHECKPOINT).exists()
    assert (run_dir / PREVIOUS).read_bytes() == before[CHECKPOINT]
    assert not [p.name for p in run_dir.iterdir() if p.name.endswith(".tmp")]


def test_best_solved_is_null_without_a_validation(tmp_path: Path) -> None:
    """running.md, Solved: `best_solved` is null for a run without a validation."""
    from seqbench.results import RunRecorder

    recorder = RunRecorder(tmp_path, {}, "mse", "min", 10.0, solved=lambda m: m["mse"] < 0.01)
    recorder.on_step(1, 0.5, 1.0, False)
    metrics = recorder.write("interrupted")
    assert (metrics["best_solved"], metrics["solved_step"]) == (None, None)
    recorder.on_eval(1, {"mse": 0.005})
    assert recorder.write("completed")["best_solved"] is True


@pytest.mark.parametrize(("task", "mode"), [("adding", "min"), ("sentiment", "max")])
def test_the_plateau_schedule_follows_the_tasks_direction(tmp_path: Path, task, mode) -> None:
    """running.md: `scheduler=plateau` is ReduceLROnPlateau on the validation metric, its
    direction from the task (lower MSE, higher accuracy is better)."""
    from seqbench.job import build_job

    overrides = [f"task={task}", "scheduler=plateau", "hardware=cpu", "model.hidden_size=4"]
    job = build_job(compose_config(overrides), tmp_path, torch.device("cpu"))
    scheduler = job.scheduler.scheduler if hasattr(job.scheduler, "scheduler") else job.scheduler
    assert type(scheduler).__name__ == "ReduceLROnPlateau" and scheduler.mode == mode
