"""The thread rule for several runs at once: a step smaller than the engine's threading
threshold runs on one torch thread unless hardware.num_threads says otherwise (measurements:
scripts/e2e.py --rows contention)."""

from __future__ import annotations

import subprocess
import sys

from seqbench.engine.constants import THREADING_MIN_WORK
from seqbench.hardware import auto_threads
from tests.conftest import ROOT, compose_config


def test_small_steps_take_one_thread_large_ones_keep_the_default() -> None:
    assert auto_threads(0, THREADING_MIN_WORK - 1, THREADING_MIN_WORK) == 1
    assert auto_threads(0, THREADING_MIN_WORK, THREADING_MIN_WORK) is None
    assert auto_threads(3, 1, THREADING_MIN_WORK) == 3  # the user's setting wins
    assert auto_threads(2, 10**9, THREADING_MIN_WORK) == 2


def test_the_default_job_is_a_small_step() -> None:
    cfg = compose_config([])
    work = cfg.train.batch_size * 4 * cfg.model.hidden_size  # the default cell is the LSTM
    assert cfg.model.cell == "lstm" and cfg.hardware.num_threads == 0
    assert auto_threads(0, work, THREADING_MIN_WORK) == 1


def test_a_run_applies_the_rule_in_its_process() -> None:
    """torch's default in a fresh process is more than one thread here only with 2+ cores; the
    run's own process ends up with one thread for the default shapes."""
    code = (
        "import torch; from seqbench.hardware import threads_for_step; "
        "threads_for_step(0, 64 * 4 * 64); a = torch.get_num_threads(); "
        "threads_for_step(2, 64 * 4 * 64); print(a, torch.get_num_threads())"
    )
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True,
                         text=True, check=True)  # fmt: skip
    assert out.stdout.split() == ["1", "2"]
