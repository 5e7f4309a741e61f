"""The installed `seqbench` command, as a user runs it (real subprocesses, no terminal)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from tests.conftest import SMALL, seqbench_cli


def test_help_lists_groups(tmp_path: Path) -> None:
    result = seqbench_cli("--help", cwd=tmp_path)
    assert result.returncode == 0
    assert "model: gru, lstm, rnn" in result.stdout
    assert "optimizer: adam, adamw, rmsprop, sgd" in result.stdout


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


@pytest.mark.parametrize(
    "args,needle",
    [
        (["model=transformer"], "model"),
        (["model.hiden_size=3"], "hiden_size"),
        (["model.hidden_size=abc"], "model.hidden_size"),
        (["model.hidden_size=0"], "model.hidden_size"),
        (["optimizer.lr=-1"], "optimizer.lr"),
        (["task.seq_len=1"], "task.seq_len"),
    ],
)
def test_user_mistakes_get_a_message_not_a_traceback(tmp_path: Path, args, needle) -> None:
    result = seqbench_cli(*args, "hardware=cpu", cwd=tmp_path)
    assert result.returncode != 0
    assert "Traceback" not in result.stderr
    assert needle in result.stderr
    assert not list(tmp_path.glob("outputs/*/*/metrics.json"))  # nothing half-written


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the no-CUDA message")
def test_cuda_without_a_gpu_is_a_clear_error(tmp_path: Path) -> None:
    result = seqbench_cli("hardware=cuda", cwd=tmp_path)
    assert result.returncode == 2
    assert "Traceback" not in result.stderr
    assert "hardware=cuda" in result.stderr and "hardware=cpu" in result.stderr


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
