"""Sweeps beyond one machine, on this one: Slurm's checkpoint-and-requeue through submitit's
local executor, the GPU each parallel job takes, and the sweep's progress lines."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest
from omegaconf import OmegaConf

from seqbench.devices import GpuClaim, pick_gpu
from seqbench.hardware import select_device
from seqbench.progress import SweepProgress, count_jobs, sweep_keys
from tests.conftest import SMALL, compose_config, run_small, seqbench_cli

# a few ms a step; 800 of them, so a signal sent after the first checkpoint lands mid-run
LONG = ["hardware=cpu", "model=gru", "task.seq_len=20", "train.steps=800",
        "train.eval_every=50", "train.batch_size=16", "model.hidden_size=32",
        "diagnostics.every=100", "checkpoint.every=100", "inference.compare=false",
        "log.tensorboard=false", "log.progress=plain"]  # fmt: skip


def _task_process(sweep_dir: Path, deadline: float) -> int:
    """The pid of the job's task (what Slurm signals: the job step's process): the child of
    submitit's local controller, whose pid names the job's folder in .submitit/."""
    while time.time() < deadline:
        for folder in (sweep_dir / ".submitit").glob("[0-9]*"):
            children = Path(f"/proc/{folder.name}/task/{folder.name}/children")
            if children.exists() and children.read_text().split():
                return int(children.read_text().split()[0])
        time.sleep(0.05)
    raise AssertionError("submitit's job process never appeared")


@pytest.mark.slow
def test_slurm_sigusr2_checkpoints_requeues_and_resumes_bit_identically(tmp_path: Path) -> None:
    """Slurm sends SIGUSR2 before the time limit (--signal=USR2@120): the job stops between two
    steps, writes its checkpoint, is requeued by submitit, and the requeued job resumes its run
    directory to the result of a run that was never interrupted."""
    sweep_dir = tmp_path / "sweep"
    exe = Path(sys.executable).parent / "seqbench"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    command = [str(exe), "-m", *LONG, "hydra/launcher=slurm_local", f"hydra.sweep.dir={sweep_dir}"]
    proc = subprocess.Popen(command, cwd=tmp_path, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)  # fmt: skip
    deadline = time.time() + 180
    while not (sweep_dir / "0" / "checkpoint.pt").exists() and time.time() < deadline:
        time.sleep(0.02)
    os.kill(_task_process(sweep_dir, deadline), signal.SIGUSR2)
    output, _ = proc.communicate(timeout=300)
    assert proc.returncode == 0, output

    log = "".join(p.read_text() for p in (sweep_dir / ".submitit").glob("*/*_log.*"))
    assert "Caught signal SIGUSR2" in log and "Requeued job" in log
    interrupted_at = int(log.split("seqbench: interrupted (SIGTERM) after step ")[1].split(";")[0])
    assert 100 <= interrupted_at < 800  # stopped mid-run, after its first checkpoint
    assert f"Resuming {sweep_dir / '0'} at step {interrupted_at}" in log
    assert "sweep 0/1 done, 0 failed/diverged, 1 interrupted" in output
    assert "sweep 1/1 done" in output

    straight = run_small(tmp_path / "straight", *LONG, base=[])
    requeued = json.loads((sweep_dir / "0" / "metrics.json").read_text())
    assert requeued["status"] == "completed" and requeued["steps"] == 800
    for key in ("best_metric", "final_metric", "final", "grad_norms"):
        assert requeued[key] == straight[key], key
    for name in ("history.csv", "grad_norms.csv"):
        a = pd.read_csv(tmp_path / "straight" / name).drop(columns="wall_time", errors="ignore")
        b = pd.read_csv(sweep_dir / "0" / name).drop(columns="wall_time", errors="ignore")
        pd.testing.assert_frame_equal(a, b)  # appended without duplicates or gaps


def test_slurm_preset_documents_the_sbatch_settings() -> None:
    launcher = compose_config(["hydra/launcher=slurm"], hydra=True).hydra.launcher
    assert launcher._target_ == "hydra_plugins.seqbench_plugins.SlurmLauncher"
    assert launcher.signal_delay_s == 120 and launcher.max_num_timeout > 0
    assert launcher.additional_parameters.requeue is True
    for key in ("partition", "timeout_min", "cpus_per_task", "gpus_per_node", "mem_gb"):
        assert key in launcher


@pytest.mark.parametrize("visible", [1, 2, 3, 4, 8])
def test_running_jobs_never_share_a_gpu(visible: int) -> None:
    """Jobs start and finish in any order (joblib, n_jobs = GPUs): whichever finished, the next
    job takes a device no running job holds; with nothing busy, job k takes k mod n."""
    import random

    rng = random.Random(visible)
    running: dict[int, int] = {}
    for job in range(50):
        if len(running) == visible:  # a slot frees up: some running job ends
            running.pop(rng.choice(list(running)))
        device = pick_gpu(job, visible, busy=set(running.values()))
        assert device not in running.values() and 0 <= device < visible
        running[job] = device
    assert [pick_gpu(job, visible) for job in range(2 * visible)] == list(range(visible)) * 2


def test_all_gpus_busy_spreads_by_job_number_and_no_gpu_is_an_error() -> None:
    assert [pick_gpu(j, 2, busy={0, 1}) for j in range(4)] == [0, 1, 0, 1]
    with pytest.raises(ValueError, match="num_visible=0"):
        pick_gpu(0, 0)


def test_gpu_claims_lock_a_device_until_released(tmp_path: Path) -> None:
    """Each claim holds an OS lock, as separate job processes would (flock is per open file)."""
    first, second, third = (GpuClaim(tmp_path) for _ in range(3))
    assert first.claim(job_num=0, num_visible=2) == 0
    assert second.claim(job_num=2, num_visible=2) == 1  # job 2 would be 0 by number: busy
    first.release()
    assert third.claim(job_num=4, num_visible=2) == 0
    assert (tmp_path / "cuda1.lock").read_text().strip() == str(os.getpid())
    second.release()
    third.release()


def test_cpu_device_is_unchanged_and_cuda_is_indexed() -> None:
    assert select_device("cpu")[0].type == "cpu"
    import torch

    if not torch.cuda.is_available():
        pytest.skip("no CUDA device: the exact cuda:N is checked on a GPU machine")
    assert select_device("cuda")[0].index == torch.cuda.current_device()


def _metrics(run_dir: Path, status: str, **extra) -> None:
    run_dir.mkdir(parents=True, exist_ok=True)
    metrics = {"status": status, "overrides": extra.pop("overrides", []), **extra}
    (run_dir / "metrics.json").write_text(json.dumps(metrics))


def test_progress_prints_one_line_per_finished_job_with_the_count(tmp_path: Path) -> None:
    _metrics(tmp_path / "0", "completed", best_metric=0.1)  # a re-run skips it: done already
    _metrics(tmp_path / "1", "interrupted")  # will resume
    lines: list[str] = []
    progress = SweepProgress(tmp_path, total=4, sweep_keys=["model"], out=lines.append)
    assert progress.poll() == []
    _metrics(tmp_path / "1", "completed", overrides=["model=gru", "seed=1"], metric="mse",
             best_metric=0.01234, wall_time_s=41.23)  # fmt: skip
    _metrics(tmp_path / "2", "failed", overrides=["model=rnn"], error="RuntimeError: boom")
    expected = [
        "seqbench: sweep 2/4 done, 0 failed/diverged, 2 to go: #1 model=gru: completed, "
        "best mse 0.01234, 41.2s",
        "seqbench: sweep 3/4 done, 1 failed/diverged, 1 to go: #2 model=rnn: failed "
        "(RuntimeError: boom)",
    ]
    assert progress.poll() == expected
    assert lines == expected
    assert progress.poll() == []  # each finished job once


def test_job_count_and_sweep_keys_follow_the_sweeper() -> None:
    basic = OmegaConf.create({"sweeper": {"params": {"seed": "0,1,2"}}})
    overrides = ["model=rnn,gru", "task.seq_len=8"]
    assert count_jobs(basic, overrides) == 6
    assert sweep_keys(basic, overrides) == ["seed", "model"]
    optuna = compose_config(["hydra/sweeper=optuna", "hydra.sweeper.n_trials=7"], hydra=True)
    assert count_jobs(optuna.hydra, ["optimizer.lr=interval(0.001,0.1)"]) == 7


@pytest.mark.slow
def test_progress_of_a_parallel_sweep_is_printed_by_the_launching_process(tmp_path) -> None:
    """joblib runs the jobs in worker processes; the sweep's own process prints one line per
    finished job, each with the count so far."""
    sweep_dir = tmp_path / "joblib"
    small = [o for o in SMALL if not o.startswith("log.progress=")]
    result = seqbench_cli("-m", *small, "log.progress=plain", "log.tensorboard=false",
                          "model=rnn,gru", "seed=0,1", "hydra/launcher=joblib",
                          "hydra.launcher.n_jobs=2", f"hydra.sweep.dir={sweep_dir}",
                          cwd=tmp_path)  # fmt: skip
    assert result.returncode == 0, result.stderr
    lines = [line for line in result.stdout.splitlines() if line.startswith("seqbench: sweep ")]
    assert [line.split(" done")[0] for line in lines] == [
        f"seqbench: sweep {n}/4" for n in (1, 2, 3, 4)
    ]
    jobs = sorted(line.split(": #")[1].split(" ")[0] for line in lines)
    assert jobs == ["0", "1", "2", "3"]
    assert all("completed, best mse" in line for line in lines)
    assert lines[-1].startswith("seqbench: sweep 4/4 done, 0 failed/diverged, 0 to go: #")


def test_sweep_jobs_on_a_two_gpu_machine_take_different_devices(tmp_path, monkeypatch) -> None:
    """The hook's wiring, with CUDA faked: jobs 0 and 2 run at once (joblib, n_jobs=2) and get
    cuda:0 and cuda:1; the CPU, one GPU, or a single run claim nothing."""
    import torch
    from hydra.core.hydra_config import HydraConfig
    from omegaconf import open_dict

    from seqbench.devices import claim_sweep_gpu

    current: list[int] = []
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    monkeypatch.setattr(torch.cuda, "set_device", current.append)

    def job_config(num: int, *overrides: str):
        cfg = compose_config(["hydra.mode=MULTIRUN", f"hydra.sweep.dir={tmp_path}", *overrides],
                             hydra=True)  # fmt: skip
        with open_dict(cfg):
            cfg.hydra.job.num = num
        HydraConfig.instance().set_config(cfg)
        return cfg

    try:
        first = claim_sweep_gpu(job_config(0, "hardware=cuda"))
        second = claim_sweep_gpu(job_config(2, "hardware=auto"))
        assert (first.index, second.index) == (0, 1) and current == [0, 1]
        first.release()
        assert claim_sweep_gpu(job_config(4, "hardware=cpu")) is None
        third = claim_sweep_gpu(job_config(4, "hardware=cuda"))
        assert third.index == 0 and current == [0, 1, 0]
        monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
        assert claim_sweep_gpu(job_config(5, "hardware=cuda")) is None
        assert claim_sweep_gpu(job_config(0, "hardware=cuda", "hydra.mode=RUN")) is None
        second.release()
        third.release()
    finally:
        HydraConfig.instance().cfg = None
