"""Interruption and resume: a SIGTERM'd or kill -9'd run resumes to exactly the uninterrupted
result; corrupt checkpoints are detected; a resume that changes the config is refused; the test
split is scored with the best validation weights (best.pt)."""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest
import torch

from seqbench.checkpoint import CHECKPOINT, PREVIOUS, CheckpointError, load_training_state
from seqbench.errors import ConfigError
from tests.conftest import seqbench_cli, without_timings
from tests.test_streaming import without_wall_time

# small steps (a few ms), but 250 of them after the signal is sent at step 150: it lands mid-run
LONG = ["hardware=cpu", "task.seq_len=20", "train.steps=400", "train.eval_every=50",
        "train.batch_size=16", "model.hidden_size=32", "diagnostics.every=100",
        "checkpoint.every=100", "inference.compare=false", "log.progress=plain"]  # fmt: skip


def test_sigterm_then_kill_then_resume_is_bit_identical(tmp_path: Path) -> None:
    """SIGTERM at step 150: the run stops cleanly and writes every file. Resumed, then killed
    with kill -9 after step 250: it writes nothing more, the CSVs hold the rows streamed up to
    the kill (past its last checkpoint, maybe half a line), and the next resume cuts them back
    to the checkpoint. The end result is the uninterrupted run's, CSVs wall_time aside."""
    straight = seqbench_cli(*LONG, f"hydra.run.dir={tmp_path / 'a'}", cwd=tmp_path)
    assert straight.returncode == 0, straight.stderr
    run_dir = tmp_path / "b"

    returncode, stderr = stop_at(tmp_path, [*LONG, f"hydra.run.dir={run_dir}"], 150, "SIGTERM")
    assert returncode == 143
    assert "Traceback" not in stderr and f"resume={run_dir}" in stderr
    interrupted = json.loads((run_dir / "metrics.json").read_text())
    assert interrupted["status"] == "interrupted" and 150 <= interrupted["steps"] < 400

    (run_dir / "metrics.json").unlink()  # so that the kill -9 below is seen to write none
    kill_at = (interrupted["steps"] // 50 + 2) * 50  # 250 unless the SIGTERM landed late
    returncode, stderr = stop_at(tmp_path, [f"resume={run_dir}"], kill_at, "SIGKILL")
    assert returncode == -signal.SIGKILL and not (run_dir / "metrics.json").exists(), stderr
    # streamed before the console printed that step: its validation, the snapshots before it
    assert kill_at in pd.read_csv(run_dir / "history.csv")["step"].tolist()
    snapshots = set(range(0, kill_at, 100))  # diagnostics.every=100
    assert snapshots <= set(pd.read_csv(run_dir / "grad_norms.csv")["step"])
    checkpoint_step = load_training_state(run_dir)["step"]
    assert checkpoint_step % 100 == 0 and kill_at - 100 <= checkpoint_step <= kill_at + 50

    resumed = seqbench_cli(f"resume={run_dir}", cwd=tmp_path)
    assert resumed.returncode == 0, resumed.stderr
    assert f"Resuming {run_dir} at step {checkpoint_step}" in resumed.stdout
    a = json.loads((tmp_path / "a" / "metrics.json").read_text())
    b = json.loads((run_dir / "metrics.json").read_text())
    assert b["status"] == "completed"
    assert without_timings(a) == without_timings(b)
    for name in ("history.csv", "grad_norms.csv", "gates.csv"):  # no repeated or missing rows
        text_a, text_b = ((d / name).read_text() for d in (tmp_path / "a", run_dir))
        assert without_wall_time(text_a) == without_wall_time(text_b), name
    assert pd.read_csv(run_dir / "history.csv")["step"].tolist() == list(range(50, 401, 50))


def stop_at(tmp_path: Path, args: list[str], step: int, signal_name: str) -> tuple[int, str]:
    """Run `seqbench *args` as a process and send it the signal once it prints `step`; return
    its exit status and stderr."""
    exe = Path(sys.executable).parent / "seqbench"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    log_path = tmp_path / f"{signal_name}.log"
    with log_path.open("w") as log:
        proc = subprocess.Popen([str(exe), *args], cwd=tmp_path, env=env, stdout=log,
                                stderr=subprocess.PIPE, text=True)  # fmt: skip
        deadline = time.time() + 120
        while f"step {step}/" not in log_path.read_text() and time.time() < deadline:
            assert proc.poll() is None, f"seqbench ended before step {step}: {log_path.read_text()}"
            time.sleep(0.02)
        proc.send_signal(getattr(signal, signal_name))
        _, stderr = proc.communicate(timeout=60)
    return proc.returncode, stderr


def make_run(tmp_path: Path, small_run) -> Path:
    run_dir = tmp_path / "run"
    small_run("train.steps=8", "checkpoint.every=4", "log.tensorboard=false", run_dir=run_dir)
    assert (run_dir / CHECKPOINT).exists() and (run_dir / PREVIOUS).exists()
    return run_dir


def test_truncated_checkpoints_fall_back_or_fail_clearly(small_run, tmp_path: Path) -> None:
    run_dir = make_run(tmp_path, small_run)
    good, previous = (run_dir / CHECKPOINT).read_bytes(), (run_dir / PREVIOUS).read_bytes()
    assert load_training_state(run_dir)["step"] == 8
    previous_step = torch.load(run_dir / PREVIOUS, weights_only=True)["step"]
    rng = random.Random(0)
    for _ in range(5):
        (run_dir / CHECKPOINT).write_bytes(good[: rng.randrange(1, len(good))])
        state = load_training_state(run_dir)  # falls back to the previous good checkpoint
        assert state["source"] == PREVIOUS and state["step"] == previous_step
        (run_dir / PREVIOUS).write_bytes(previous[: rng.randrange(1, len(previous))])
        with pytest.raises(CheckpointError, match="no usable checkpoint"):
            load_training_state(run_dir)
        (run_dir / PREVIOUS).write_bytes(previous)


def test_resume_from_a_fallback_checkpoint_completes(small_run, tmp_path: Path) -> None:
    run_dir = make_run(tmp_path, small_run)
    (run_dir / "metrics.json").write_text('{"status": "compl')  # truncated too
    data = (run_dir / CHECKPOINT).read_bytes()
    (run_dir / CHECKPOINT).write_bytes(data[: len(data) // 2])
    result = seqbench_cli(f"resume={run_dir}", "log.progress=plain", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert "from checkpoint.prev.pt" in result.stdout
    assert json.loads((run_dir / "metrics.json").read_text())["status"] == "completed"
    assert torch.load(run_dir / CHECKPOINT, weights_only=True)["step"] == 8


def test_resume_without_any_checkpoint_is_a_clear_error(tmp_path: Path) -> None:
    result = seqbench_cli(f"resume={tmp_path / 'nowhere'}", cwd=tmp_path)
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert "resume=" in result.stderr and "no usable checkpoint" in result.stderr


def test_resume_at_a_sweeps_directory_says_how_to_go_on_with_the_sweep(tmp_path: Path) -> None:
    from seqbench.checkpoint import load_training_state

    (tmp_path / "sweep").mkdir()
    (tmp_path / "sweep" / "multirun.yaml").write_text("hydra: {}\n")
    with pytest.raises(
        CheckpointError,
        match=r"resume=\S+sweep is a sweep's directory .*run its "
        r"command again with hydra.sweep.dir=\S+sweep: .*e.g. \S+sweep/0\)",
    ):
        load_training_state(tmp_path / "sweep")


def test_resume_with_a_different_config_is_refused(small_run, tmp_path: Path) -> None:
    run_dir = make_run(tmp_path, small_run)
    with pytest.raises(ConfigError, match=r"optimizer\.lr: 0\.003 → 0\.5"):
        small_run(f"resume={run_dir}", "optimizer.lr=0.5", "model=gru", run_dir=tmp_path / "x")
    result = seqbench_cli(f"resume={run_dir}", "model=gru", "task=chargen", cwd=tmp_path)
    assert result.returncode == 2 and "resume_force=true" in result.stderr
    assert "Traceback" not in result.stderr
    # a changed group: only its keys that differ, old → new, not both whole configs
    message = " ".join(result.stderr.split())
    assert "model.cell: lstm → gru" in message and "task.name: adding → chargen" in message
    assert "task.corpus: absent → shakespeare" in message
    assert "'hidden_size'" not in message and "{" not in message
    assert "model.num_layers" not in message and "task.path" not in message  # the same


@pytest.mark.parametrize("multirun", [False, True])
def test_unwritable_output_directory_is_a_clear_error(tmp_path: Path, multirun: bool) -> None:
    (tmp_path / "a-file").write_text("")
    key = "hydra.sweep.dir" if multirun else "hydra.run.dir"
    result = seqbench_cli(*(["-m"] if multirun else []), f"{key}={tmp_path / 'a-file' / 'run'}",
                          "train.steps=2", cwd=tmp_path)  # fmt: skip
    assert result.returncode == 74
    assert "Traceback" not in result.stderr and f"{key}=" in result.stderr


def test_disk_full_while_checkpointing_keeps_the_previous_checkpoint(
    small_run, tmp_path: Path, monkeypatch
) -> None:
    import errno

    from seqbench import checkpoint

    run_dir = make_run(tmp_path, small_run)
    before = load_training_state(run_dir)

    def full(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(checkpoint.torch, "save", full)
    with pytest.raises(OSError):
        checkpoint.save_checkpoint(run_dir, {"step": 99})
    monkeypatch.undo()
    after = load_training_state(run_dir)  # the newest complete checkpoint is still there
    assert after["step"] == before["step"] and after["source"] == PREVIOUS
    assert not list(run_dir.glob("*.tmp"))  # no half-written file left behind


def test_truncated_metrics_json_is_never_taken_for_a_completed_run(small_run, tmp_path) -> None:
    from seqbench.resume import completed_before

    run_dir = make_run(tmp_path, small_run)
    text = (run_dir / "metrics.json").read_text()
    overrides = json.loads(text)["overrides"]
    assert completed_before(run_dir, overrides) is not None
    rng = random.Random(1)
    for cut in sorted(rng.sample(range(1, len(text) - 1), 20)):
        (run_dir / "metrics.json").write_text(text[:cut])
        assert completed_before(run_dir, overrides) is None  # a sweep re-runs or resumes it
        assert load_training_state(run_dir)["step"] == 8  # the checkpoint is independent of it


@pytest.mark.parametrize("missing", ["model", "optimizer", "config", "step", "rng", "recorder"])
def test_a_checkpoint_missing_a_part_is_not_used(small_run, tmp_path: Path, missing) -> None:
    run_dir = make_run(tmp_path, small_run)
    state = torch.load(run_dir / CHECKPOINT, weights_only=True)
    del state[missing]
    torch.save(state, run_dir / CHECKPOINT)
    assert load_training_state(run_dir)["source"] == PREVIOUS
    torch.save(state, run_dir / PREVIOUS)
    with pytest.raises(CheckpointError, match=r"checkpoint\.prev\.pt is not a complete seqbench"):
        load_training_state(run_dir)


def test_resumed_config_is_the_checkpoints_with_this_commands_log_settings(tmp_path) -> None:
    """As a library (no Hydra), every key of the config counts as given on the command line."""
    from omegaconf import OmegaConf

    from seqbench.resume import resumed_config
    from tests.conftest import SMALL, compose_config

    saved = OmegaConf.to_container(compose_config(SMALL), resolve=True)
    resume = f"resume={tmp_path}"
    merged = resumed_config(compose_config([*SMALL, "log.progress=plain",
                                            "log.tensorboard=false", resume]), saved)  # fmt: skip
    assert (merged.log.progress, merged.log.tensorboard, merged.resume) == (
        "plain", False, str(tmp_path))  # fmt: skip
    rest = OmegaConf.to_container(merged)
    for key in ("log", "resume"):
        rest.pop(key), saved.pop(key)
    assert rest == saved

    changed = [*SMALL, "model.hidden_size=16", "seed=3", resume]
    with pytest.raises(ConfigError) as err:
        resumed_config(compose_config(changed), saved)
    message = str(err.value)
    assert "model.hidden_size: 8 → 16" in message
    assert "seed: 0 → 3" in message and "resume_force=true" in message
    assert message.startswith(f"resume={tmp_path}: this command line changes the run's config")
    forced = resumed_config(compose_config([*changed, "resume_force=true"]), saved)
    assert (forced.model.hidden_size, forced.seed) == (16, 3)


def test_test_split_is_scored_with_the_best_validation_weights(tmp_path: Path) -> None:
    """A stocks run of 3 steps whose best validation is its first (the loop's later validations
    are made to look worse): metrics.json's test score is evaluate() of best.pt's weights on
    the test split, and differs from the final weights' score."""
    from unittest import mock

    from seqbench import train as loop
    from seqbench.job import build_job
    from tests.conftest import compose_config, run_small

    overrides = ["task=stocks", "task.seq_len=10", "hardware=cpu", "model.hidden_size=8",
                 "train.batch_size=8", "train.steps=3", "train.eval_every=1",
                 "diagnostics.every=0", "log.progress=none", "log.tensorboard=false",
                 "inference.compare=false", "optimizer.lr=0.05"]  # fmt: skip
    evaluate, seen = loop.evaluate, []

    def first_is_best(model, task, split="val"):
        metrics = evaluate(model, task, split)
        seen.append(split)
        return metrics if len(seen) == 1 else {**metrics, "rmse": metrics["rmse"] + 1.0}

    run_dir = tmp_path / "run"
    with mock.patch.object(loop, "evaluate", first_is_best):
        metrics = run_small(run_dir, *overrides, base=())
    assert seen == ["val"] * 3 and metrics["best_step"] == 1  # the test split: not in the loop
    best = torch.load(run_dir / "best.pt", weights_only=True)
    final = torch.load(run_dir / CHECKPOINT, weights_only=True)
    assert (best["step"], final["step"]) == (1, 3)

    job = build_job(compose_config(overrides), run_dir, torch.device("cpu"))
    job.model.load_state_dict(best["model"])
    assert metrics["test"] == evaluate(job.model, job.task, "test")
    job.model.load_state_dict(final["model"])
    assert evaluate(job.model, job.task, "test")["rmse"] != metrics["test"]["rmse"]


def test_a_sweep_job_resumes_only_an_interrupted_run_with_a_checkpoint(tmp_path: Path) -> None:
    """prepare_sweep_job: an interrupted run with its checkpoint is continued (nothing removed);
    any other earlier run in the job's directory loses its metrics.json and event files (its
    stale results), and the job starts afresh."""
    from seqbench.resume import prepare_sweep_job

    def earlier(name: str, status: str | None, checkpoint: bool) -> Path:
        run_dir = tmp_path / name
        (run_dir / "tb").mkdir(parents=True)
        (run_dir / "tb" / "events.out").write_text("x")
        if status is not None:
            (run_dir / "metrics.json").write_text(json.dumps({"status": status}))
        if checkpoint:
            (run_dir / CHECKPOINT).write_bytes(b"ckpt")
        return run_dir

    kept = earlier("interrupted", "interrupted", checkpoint=True)
    assert prepare_sweep_job(kept) == kept
    assert (kept / "metrics.json").exists() and (kept / "tb" / "events.out").exists()
    others = [
        ("no_checkpoint", "interrupted", False),
        ("completed", "completed", True),
        ("failed", "failed", True),
        ("diverged", "diverged", True),
        ("none", None, True),
    ]
    for name, status, checkpoint in others:
        run_dir = earlier(name, status, checkpoint)
        assert prepare_sweep_job(run_dir) is None, name
        assert not (run_dir / "metrics.json").exists() and not (run_dir / "tb").exists(), name
        assert (run_dir / CHECKPOINT).exists() == checkpoint  # only the results go
    assert prepare_sweep_job(tmp_path / "new") is None  # a directory not made yet


def test_a_failed_sweep_job_writes_a_metrics_json_the_tables_count(tmp_path: Path) -> None:
    """write_failed: the job's facts and its error in metrics.json (the directory made if need
    be), read back by the comparison as one failed run of that configuration."""
    from seqbench.compare import aggregate, load_runs
    from seqbench.resume import completed_before, write_failed
    from tests.conftest import compose_config

    cfg = compose_config(["model=gru", "task=copy", "seed=3"])
    run_dir = tmp_path / "job" / "0"
    overrides = ["model=gru", "task=copy", "seed=3"]
    write_failed(run_dir, cfg, overrides, ValueError("an earlier try"))
    write_failed(run_dir, cfg, overrides, ValueError("hidden size 0"))  # into the same directory
    text = (run_dir / "metrics.json").read_text()
    assert text.startswith('{\n  "status": "failed"')  # indented by 2, like a run's
    assert completed_before(run_dir, overrides) is None  # failed: a sweep runs the job again
    assert json.loads(text) == {
        "status": "failed", "model": "gru", "task": "copy", "seed": 3, "steps": 0,
        "overrides": overrides, "error": "ValueError: hidden size 0"}  # fmt: skip
    row = aggregate(load_runs([run_dir])).iloc[0]
    assert (row["model"], row["task"], row["runs"], row["failed"], row["completed"]) == (
        "gru", "copy", 1, 1, 0)  # fmt: skip


@pytest.fixture
def hydra_overrides():
    """Make HydraConfig hold a command line, as in a real `seqbench ... resume=DIR` process;
    returns (cfg, saved) for it: this command's config and a checkpoint's (train.steps=10,
    log.progress=rich). HydraConfig is emptied afterwards."""
    from hydra.core.hydra_config import HydraConfig
    from omegaconf import OmegaConf

    from tests.conftest import compose_config

    saved = OmegaConf.to_container(
        compose_config(["model=gru", "train.steps=10", "log.progress=rich"]), resolve=True
    )

    def command(*overrides: str):
        full = compose_config(["model=gru", *overrides], hydra=True)
        HydraConfig.instance().set_config(full)
        cfg = compose_config(["model=gru", *overrides])
        return cfg, json.loads(json.dumps(saved))  # a fresh copy each time

    yield command
    HydraConfig.instance().cfg = None


def test_resume_applies_log_keys_and_refuses_other_changes(hydra_overrides) -> None:
    """resumed_config from a real command line: the checkpoint's config, plus the command's
    log.* keys (even one the checkpoint lacks); any other explicit override that differs is
    refused, whatever its prefix (+, ++, ~), unless resume_force=true, which applies it;
    Hydra's own keys and resume/resume_force never count."""
    from seqbench.resume import resumed_config

    cfg, saved = hydra_overrides("resume=/r", "log.progress=plain", "hydra.run.dir=/x")
    merged = resumed_config(cfg, saved)
    assert merged.log.progress == "plain" and merged.train.steps == 10  # not the default
    del saved["log"]["progress"], saved["resume"]  # an older checkpoint's config lacks them
    merged = resumed_config(cfg, saved)
    assert merged.log.progress == "plain" and merged.resume == "/r"
    for override in ("train.steps=20", "++train.steps=20"):
        cfg, saved = hydra_overrides("resume=/r", override)
        with pytest.raises(ConfigError, match=r"train\.steps: 10 → 20"):
            resumed_config(cfg, saved)
    cfg, saved = hydra_overrides("resume=/r", "train.steps=20", "resume_force=true")
    assert resumed_config(cfg, saved).train.steps == 20
    cfg, saved = hydra_overrides("resume=/r", "model.hidden_size=16", "train.steps=10")
    with pytest.raises(ConfigError) as refused:
        resumed_config(cfg, saved)
    assert "model.hidden_size" in str(refused.value) and "train.steps" not in str(refused.value)
    cfg, saved = hydra_overrides("resume=/r", "task=chargen", "task.prompt='a=b'")  # an = inside
    with pytest.raises(ConfigError, match=r"task\.prompt: absent → a=b"):
        resumed_config(cfg, saved)


def test_a_run_whose_reader_goes_stops_as_on_a_signal_and_resumes_to_the_same_result(
    tmp_path: Path,
) -> None:
    """`seqbench | head -3`: at its next line the run stops between two steps, writes its
    checkpoint and files (status interrupted), says how to resume, and exits 141 (SIGPIPE).
    Resumed, it ends where the uninterrupted run ends."""
    from tests.test_cli import reader_goes_away

    straight = seqbench_cli(*LONG, f"hydra.run.dir={tmp_path / 'a'}", cwd=tmp_path)
    assert straight.returncode == 0, straight.stderr
    run_dir = tmp_path / "b"
    # two lines at the start, then "step 50/400 ..."; the reader goes after it
    code, stderr = reader_goes_away(*LONG, f"hydra.run.dir={run_dir}", cwd=tmp_path, lines=3)
    assert code == 141 and "Traceback" not in stderr, stderr
    assert "interrupted (SIGPIPE) after step" in stderr and f"resume={run_dir}" in stderr
    interrupted = json.loads((run_dir / "metrics.json").read_text())
    assert interrupted["status"] == "interrupted" and 50 <= interrupted["steps"] < 400

    resumed = seqbench_cli(f"resume={run_dir}", cwd=tmp_path)
    assert resumed.returncode == 0, resumed.stderr
    a = json.loads((tmp_path / "a" / "metrics.json").read_text())
    b = json.loads((run_dir / "metrics.json").read_text())
    assert b["status"] == "completed" and without_timings(a) == without_timings(b)


def test_resuming_a_completed_run_says_so_and_leaves_its_files(small_run, tmp_path) -> None:
    """Before, it wrote the last snapshot's rows of grad_norms.csv, lag_norms.csv and
    gates.csv (and their TensorBoard events) a second time. A longer train.steps with
    resume_force=true trains on, and keeps the old end's final snapshot rather than take a
    second one at that step (before, its rows were there twice)."""
    from tests.conftest import seqbench_main

    run_dir = tmp_path / "run"
    small_run("train.steps=8", "diagnostics.every=2", run_dir=run_dir)
    files = sorted(p for p in run_dir.rglob("*") if p.is_file())
    before = {p: p.read_bytes() for p in files}
    result = seqbench_main(f"resume={run_dir}", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert f"seqbench: {run_dir} already completed (8 of 8 steps); nothing to resume" in (
        result.stdout)  # fmt: skip
    assert sorted(p for p in run_dir.rglob("*") if p.is_file()) == files
    assert all(p.read_bytes() == content for p, content in before.items())

    longer = seqbench_main(f"resume={run_dir}", "train.steps=12", "resume_force=true",
                           "log.progress=none", cwd=tmp_path)  # fmt: skip
    assert longer.returncode == 0, longer.stderr
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert (metrics["status"], metrics["steps"]) == ("completed", 12)
    for name in ("grad_norms.csv", "lag_norms.csv", "gates.csv"):  # step 8's final one kept
        rows = pd.read_csv(run_dir / name)
        assert rows.groupby("step").size().nunique() == 1, name  # no snapshot written twice
        assert set(rows["step"]) == {0, 2, 4, 6, 8, 10, 12}, name


def test_an_interrupted_job_says_how_to_go_on(tmp_path: Path, monkeypatch, capsys) -> None:
    """A single run: `resume=RUN_DIR`. A sweep's job: what the sweep gives it (`go_on`, in
    cli.py: run the sweep again into its directory), since resuming that one job would leave
    the sweep's other jobs unrun and its table unwritten."""
    from contextlib import contextmanager

    import seqbench.job
    from seqbench.interrupt import StopRequest
    from tests.conftest import SMALL, compose_config

    @contextmanager
    def signalled():  # as if SIGTERM had come before the first step
        request = StopRequest()
        request.reason = "SIGTERM"
        yield request

    monkeypatch.setattr(seqbench.job, "stop_on_signals", signalled)
    for go_on, expected in (
        (None, f"resume with: seqbench resume={tmp_path / 'a'}"),
        ("to go on, run the sweep again", "to go on, run the sweep again"),
    ):
        run_dir = tmp_path / ("a" if go_on is None else "b")  # fmt: skip
        with pytest.raises(SystemExit) as stopped:
            seqbench.job.run(compose_config(SMALL), run_dir, go_on=go_on)
        assert stopped.value.code == 143
        assert capsys.readouterr().err.endswith(
            f"seqbench: interrupted (SIGTERM) after step 0; {expected}\n"
        )
