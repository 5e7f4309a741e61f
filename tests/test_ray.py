"""hydra/launcher=ray against a real Ray cluster that the test starts on 127.0.0.1 (as a user
joins a KubeRay or VM cluster): a 2x2 sweep, its table, and a re-run that skips every job."""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from seqbench.launchers import ray_init_kwargs
from tests.conftest import SMALL, seqbench_cli

RAY = Path(sys.executable).parent / "ray"


def test_joining_a_cluster_drops_the_object_store_size_the_plugin_forces() -> None:
    """Hydra #2893: hydra-ray-launcher 1.2.2 adds object_store_memory, and ray.init refuses it
    when it joins a cluster; a local start keeps it."""
    forced = {"address": "127.0.0.1:6379", "object_store_memory": 78643200}
    assert ray_init_kwargs(forced, environ={}) == {"address": "127.0.0.1:6379"}
    local = {"address": None, "object_store_memory": 78643200}
    assert ray_init_kwargs(local, environ={}) == {"object_store_memory": 78643200}
    assert ray_init_kwargs(local, environ={"RAY_ADDRESS": "10.0.0.1:6379"}) == {}
    import ray

    with pytest.raises(ValueError, match="object_store_memory must not be provided"):
        ray.init(**forced)  # the plugin's call, refused before it connects anywhere


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def ray_cluster() -> Iterator[str]:
    """`ray start --head` on 127.0.0.1 with 2 CPUs; its address; `ray stop` afterwards."""
    temp = tempfile.mkdtemp(prefix="ray", dir="/tmp")  # short: Ray's socket paths have a limit
    port = _free_port()
    env = {**os.environ, "OMP_NUM_THREADS": "1", "RAY_USAGE_STATS_ENABLED": "0"}
    start = [str(RAY), "start", "--head", f"--port={port}", "--node-ip-address=127.0.0.1",
             "--num-cpus=2", "--num-gpus=0", "--include-dashboard=false",
             "--disable-usage-stats", f"--temp-dir={temp}"]  # fmt: skip
    try:
        started = subprocess.run(start, env=env, capture_output=True, text=True, timeout=120)
        assert started.returncode == 0, started.stdout + started.stderr
        yield f"127.0.0.1:{port}"
    finally:
        subprocess.run([str(RAY), "stop", "--force"], env=env, capture_output=True, timeout=120)
        shutil.rmtree(temp, ignore_errors=True)


@pytest.mark.slow
def test_ray_sweep_on_a_running_cluster(tmp_path: Path, ray_cluster: str, monkeypatch) -> None:
    monkeypatch.setenv("RAY_DEDUP_LOGS", "0")  # every job's line reaches the driver
    sweep_dir = tmp_path / "ray"
    args = ["-m", *SMALL, "log.progress=plain", "train.steps=9", "log.tensorboard=false",
            "model=rnn,gru", "seed=0,1", "hydra/launcher=ray",
            f"hydra.launcher.ray.init.address={ray_cluster}",
            "hydra.launcher.ray.remote.num_cpus=1",
            f"hydra.sweep.dir={sweep_dir}"]  # fmt: skip
    result = seqbench_cli(*args, cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    output = result.stdout + result.stderr
    port = ray_cluster.rsplit(":", 1)[1]  # Ray names the node by its own address
    assert "Connecting to existing Ray cluster at address: " in output and f":{port}..." in output
    assert "Started a local Ray instance" not in output
    assert "(_run_job pid=" in output  # the jobs' lines, forwarded from Ray's workers
    metrics = {p.parent.name: json.loads(p.read_text()) for p in sweep_dir.glob("*/metrics.json")}
    assert sorted(metrics) == ["0", "1", "2", "3"]
    assert {(m["model"], m["seed"], m["status"]) for m in metrics.values()} == {
        (model, seed, "completed") for model in ("rnn", "gru") for seed in (0, 1)
    }
    table = (sweep_dir / "comparison.csv").read_text().splitlines()
    assert len(table) == 3 and (sweep_dir / "grad_norm_vs_t.png").exists()
    assert "seqbench: sweep 4/4 done, 0 failed/diverged, 0 to go" in result.stdout

    before = {job: (sweep_dir / job / "metrics.json").read_text() for job in metrics}
    again = seqbench_cli(*args, cwd=tmp_path)
    assert again.returncode == 0, again.stderr
    assert (again.stdout + again.stderr).count("already completed; skipping") == 4
    assert {job: (sweep_dir / job / "metrics.json").read_text() for job in metrics} == before
