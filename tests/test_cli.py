"""The installed `seqbench` command, as a user runs it (real subprocesses, no terminal)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from seqbench.cells import CELLS
from tests.conftest import SMALL, seqbench_cli, seqbench_main


def test_help_lists_the_groups_a_user_chooses(tmp_path: Path) -> None:
    """Every folder of conf/ with its options, and not the internal schemas they extend."""
    from seqbench.cli import CONF_DIR

    result = seqbench_cli("--help", cwd=tmp_path)
    assert result.returncode == 0
    assert f"model: {', '.join(sorted(CELLS))}" in result.stdout
    assert "optimizer: adam, adamw, rmsprop, sgd" in result.stdout
    groups = sorted(p.name for p in Path(CONF_DIR).iterdir() if p.is_dir() and p.name != "hydra")
    section = result.stdout.split("== Config groups ==")[1].split("== Config ==")[0]
    listed = [line.split(":")[0] for line in section.splitlines() if ": " in line]
    assert listed == groups and "schema" not in section


def test_cfg_job_prints_the_composed_config(tmp_path: Path) -> None:
    result = seqbench_cli("--cfg", "job", "model=gru", cwd=tmp_path)
    assert result.returncode == 0
    assert "cell: gru" in result.stdout and "seq_len: 100" in result.stdout


def test_shell_completion_install_script(tmp_path: Path) -> None:
    result = seqbench_cli("--shell-completion", "install=bash", cwd=tmp_path)
    assert result.returncode == 0 and "complete" in result.stdout


def test_run_from_another_directory_writes_outputs_there(tmp_path: Path) -> None:
    result = seqbench_cli(*SMALL, "model=gru", "task=copy", "log.progress=auto", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    runs = list((tmp_path / "outputs").glob("*/*/metrics.json"))
    assert len(runs) == 1
    metrics = json.loads(runs[0].read_text())
    assert metrics["status"] == "completed" and metrics["task"] == "copy"
    assert (runs[0].parent / ".hydra" / "config.yaml").exists()
    assert "step 6/6" in result.stdout  # plain progress lines without a terminal


def test_a_write_that_fails_mid_run_exits_74_with_the_fix(tmp_path: Path, monkeypatch) -> None:
    """The disk fills after the first periodic checkpoint: one message naming the run directory,
    the error and the fix, exit status 74 (EX_IOERR), and the step-2 checkpoint left intact."""
    import errno

    from seqbench import checkpoint

    save, steps = checkpoint.torch.save, []  # the step of every file torch.save writes

    def full_after_the_first(obj, f, *args, **kwargs):
        steps.append(obj["step"])
        if len(steps) > 1:
            raise OSError(errno.ENOSPC, "No space left on device")
        return save(obj, f, *args, **kwargs)

    monkeypatch.setattr(checkpoint.torch, "save", full_after_the_first)
    run_dir = tmp_path / "run"
    result = seqbench_main(*SMALL, "checkpoint.every=2", "log.tensorboard=false",
                           f"hydra.run.dir={run_dir}", cwd=tmp_path)  # fmt: skip
    assert result.returncode == 74, result.stderr
    assert f"seqbench: error: writing the run's files in {run_dir} failed (No space left on " in (
        result.stderr
    )
    assert "Free disk space or choose a writable hydra.run.dir" in result.stderr
    assert "Traceback" not in result.stderr
    assert steps[:2] == [2, 3]  # checkpoint.pt at step 2, then best.pt at the validation
    monkeypatch.undo()
    assert checkpoint.load_training_state(run_dir)["step"] == 2


def test_divergence_exits_cleanly(tmp_path: Path) -> None:
    result = seqbench_cli(*SMALL, "optimizer=sgd", "optimizer.lr=1e30",
                          "train.clip.threshold=null", "train.steps=50", cwd=tmp_path)  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert "Traceback" not in result.stderr
    metrics = json.loads(next(tmp_path.glob("outputs/*/*/metrics.json")).read_text())
    assert metrics["status"] == "diverged"


def test_multirun_sweep_writes_one_run_per_job(tmp_path: Path) -> None:
    result = seqbench_cli("-m", "model=rnn,lstm", "seed=0,1", *SMALL,
                          f"hydra.sweep.dir={tmp_path / 'sweep'}", cwd=tmp_path)  # fmt: skip
    assert result.returncode == 0, result.stderr
    runs = sorted((tmp_path / "sweep").glob("*/metrics.json"))
    assert len(runs) == 4
    seen = {(m["model"], m["seed"]) for m in (json.loads(p.read_text()) for p in runs)}
    assert seen == {("rnn", 0), ("rnn", 1), ("lstm", 0), ("lstm", 1)}


def reader_goes_away(*args: str, cwd: Path, lines: int = 0, exe: str = "seqbench"):
    """Run an installed command whose stdout's reader takes `lines` lines and goes away, as
    `| head -N` does: the exit status (negative: the signal that ended it) and stderr."""
    if "MUTANT_UNDER_TEST" in os.environ:  # `make mutate`: that process would not see the mutant
        pytest.skip("a real process imports the unmutated package")
    env = {k: v for k, v in os.environ.items() if k != "HYDRA_FULL_ERROR"}
    env["OMP_NUM_THREADS"] = "1"
    command = [str(Path(sys.executable).parent / exe), *args]
    with subprocess.Popen(command, cwd=cwd, env=env, stdout=subprocess.PIPE,
                          stderr=subprocess.PIPE, text=True) as proc:  # fmt: skip
        for _ in range(lines):
            assert proc.stdout.readline(), "the command ended before its reader went away"
        proc.stdout.close()
        stderr = proc.stderr.read()
        proc.wait(timeout=300)
    return proc.returncode, stderr


def test_a_sweep_goes_on_when_its_reader_goes_and_the_tools_end_quietly(tmp_path: Path) -> None:
    """`... | head`: a sweep runs to its end (exit 0) and writes its tables; --help, --cfg and
    the comparison and report tools stop as `ls | head` does, without a traceback."""
    sweep = tmp_path / "sweep"
    code, stderr = reader_goes_away("-m", *SMALL, "seed=0,1", "log.tensorboard=false",
                                    f"hydra.sweep.dir={sweep}", cwd=tmp_path)  # fmt: skip
    assert code == 0 and stderr == ""
    assert [json.loads((sweep / j / "metrics.json").read_text())["status"] for j in "01"] == [
        "completed", "completed"]  # fmt: skip
    assert (sweep / "comparison.md").exists()
    for args in (["--help"], ["--cfg", "job"]):  # Hydra prints these: SIGPIPE ends it
        assert reader_goes_away(*args, cwd=tmp_path) == (-signal.SIGPIPE, ""), args
    assert reader_goes_away(str(sweep), "--out", str(tmp_path / "t"), exe="seqbench-compare",
                            cwd=tmp_path) == (141, "")  # fmt: skip
    assert reader_goes_away(str(sweep), "-o", str(tmp_path / "r.html"), exe="seqbench-report",
                            cwd=tmp_path) == (141, "")  # fmt: skip
    assert (tmp_path / "t" / "comparison.md").exists() and (tmp_path / "r.html").exists()
