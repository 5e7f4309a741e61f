"""Three promises of the README, each checked as a user meets it: a run killed with kill -9 after
its events went past its last periodic checkpoint resumes into a TensorBoard run with every step
once, at the uninterrupted run's value (the purge of the events after the checkpoint); character
generation samples from softmax(logits / temperature); and a re-run sweep skips only the jobs
whose run completed with the same overrides, running again the one whose overrides changed."""

from __future__ import annotations

import json
import math
import os
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import pandas as pd
import pytest
import torch
from torch import Tensor, nn

from seqbench.checkpoint import load_training_state
from tests.conftest import SMALL, compose_config, run_small, seqbench_cli, seqbench_main
from tests.test_effects_training import scalars

# --- TensorBoard after a kill -9 --------------------------------------------------------------

# 60 steps, a validation (which flushes the events to disk) every 2 steps, a periodic checkpoint
# every 20: after checkpoint 20 (or 40) the validations of the next 19 steps put events past the
# checkpoint on disk. Snapshots every 3 steps never fall on a checkpoint (a snapshot at the
# checkpoint's own step is taken after it and may be on disk twice after a kill -9: documented).
KILLED = ["hardware=cpu", "hardware.num_threads=1", "train.steps=60", "train.batch_size=8",
          "train.eval_every=2", "checkpoint.every=20", "diagnostics.every=3", "task.seq_len=8",
          "task.val_size=16", "model.hidden_size=8", "inference.compare=false",
          "log.progress=none"]  # fmt: skip


def flushed_steps(run_dir: Path) -> int:
    """The last step of any scalar in the run's event files (0 before any is on disk)."""
    if not any((run_dir / "tb").rglob("events.out.tfevents.*")):
        return 0
    return max((step for points in scalars(run_dir).values() for step, _ in points), default=0)


def kill_past_checkpoint(run_dir: Path, cwd: Path) -> tuple[int, int]:
    """Start `seqbench *KILLED` as a process; once a checkpoint exists, pause the process
    (SIGSTOP), and if its events on disk go past the checkpoint's step, kill it there with
    SIGKILL (else let it go on and look again). Return (checkpoint step, last flushed step) as
    they are on disk after the kill."""
    if "MUTANT_UNDER_TEST" in os.environ:  # as seqbench_cli: the process would miss the mutant
        pytest.skip("a real process imports the unmutated package")
    exe = Path(sys.executable).parent / "seqbench"
    env = {k: v for k, v in os.environ.items() if k != "HYDRA_FULL_ERROR"}
    env["OMP_NUM_THREADS"] = "1"
    with (cwd / "killed.log").open("w") as log:
        proc = subprocess.Popen([str(exe), *KILLED, f"hydra.run.dir={run_dir}"], cwd=cwd,
                                env=env, stdout=log, stderr=subprocess.STDOUT)  # fmt: skip
        try:
            deadline = time.time() + 120
            while time.time() < deadline:
                assert proc.poll() is None, (cwd / "killed.log").read_text()[-3000:]
                if (run_dir / "checkpoint.pt").exists():
                    proc.send_signal(signal.SIGSTOP)  # what is on disk now is what kill leaves
                    checkpoint = load_training_state(run_dir)["step"]
                    flushed = flushed_steps(run_dir)
                    if flushed > checkpoint:
                        proc.kill()
                        proc.wait(timeout=60)
                        return checkpoint, flushed
                    proc.send_signal(signal.SIGCONT)
                time.sleep(0.02)
            raise AssertionError("no events past a checkpoint within 120 s")
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait(timeout=60)


def test_killed_run_resumes_tensorboard_without_repeated_steps(tmp_path: Path) -> None:
    """README, Run names: a resumed run "continues its named run (events after its checkpoint
    are purged)". Killed with kill -9 while its event file holds steps past its last periodic
    checkpoint, then resumed with `seqbench resume=<run dir>`: every step of every scalar tag
    appears once, with the value of the same run never stopped (on the CPU, bit-identical)."""
    run_dir = tmp_path / "killed"
    checkpoint, flushed = kill_past_checkpoint(run_dir, tmp_path)
    assert checkpoint in (20, 40) and flushed > checkpoint  # events the resume must purge
    assert not (run_dir / "metrics.json").exists()  # a kill -9 writes nothing more

    result = seqbench_cli(f"resume={run_dir}", "log.progress=plain", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert f"Resuming {run_dir} at step {checkpoint}" in result.stdout
    assert json.loads((run_dir / "metrics.json").read_text())["status"] == "completed"
    resumed = scalars(run_dir)  # one folder: the resumed run went on in its named run

    run_small(tmp_path / "straight", *KILLED, base=())
    straight = scalars(tmp_path / "straight")
    assert resumed.keys() == straight.keys()
    repeated = {}
    for tag, points in resumed.items():
        if twice := sorted(s for s, n in Counter(s for s, _ in points).items() if n > 1):
            repeated[tag] = twice
    assert not repeated, f"steps logged twice after checkpoint {checkpoint}: {repeated}"
    for tag, points in resumed.items():
        assert points == straight[tag], tag  # in order, none missing, the same values


# --- character generation's temperature -------------------------------------------------------

SAMPLES = 20_000  # characters drawn per temperature
# the model's logits: these characters get finite ones, every other one -inf
LOGITS = {"e": 2.1, "t": 1.8, "a": 1.5, "o": 1.2, "n": 0.9, "s": 0.6, " ": 0.3, "h": 0.0}


class _Pass(nn.Module):
    """The stand-in's recurrent layer: its input out, the state as it came."""

    def forward(self, x: Tensor, state: object = None) -> tuple[Tensor, object]:
        return x, state


class FixedLogits(nn.Module):
    """A stand-in for a trained SequenceModel in `CharGenTask.report`: whatever it has read, the
    next character's logits are `logits`."""

    def __init__(self, logits: Tensor) -> None:
        super().__init__()
        self.register_buffer("logits", logits)
        self.embed = nn.Identity()
        self.rnn = _Pass()

    def run(self, x: Tensor, state: object = None) -> tuple[Tensor, object]:
        return self.rnn(x, state)

    def head(self, out: Tensor) -> Tensor:
        return self.logits.expand(len(out), -1).clone()


def test_chargen_samples_from_the_softmax_of_logits_over_temperature() -> None:
    """README, chargen: after each validation a sample is logged at `task.temperature`, seeded
    from `seed`; it is drawn from softmax(logits / temperature), never padding or <unk>. On a
    model whose logits are known, the characters of a long sample at 0.5, 1 and 2 have those
    probabilities (each within 5 standard errors; the chi-square short of its 1e-6 tail) under
    the run's fixed seed."""
    from scipy import stats

    from seqbench.checks import check_config
    from seqbench.tasks import build_task
    from seqbench.tasks.chargen import PAD, UNK

    chars = list(LOGITS)
    values = torch.tensor(list(LOGITS.values()), dtype=torch.float64)
    off: dict[float, str] = {}  # temperature: how its sample is off
    for temperature in (0.5, 1.0, 2.0):
        cfg = compose_config(["task=chargen", "task.corpus=hamlet", f"task.sample_len={SAMPLES}",
                              f"task.temperature={temperature}"])  # fmt: skip
        check_config(cfg)
        task = build_task(cfg.task, torch.device("cpu"), seed=0)
        logits = torch.full((task.vocab_size,), -math.inf)
        logits[torch.as_tensor(task.vocab.encode("".join(chars)))] = values.float()
        logits[[PAD, UNK]] = 3.0  # above every character's, and never to be emitted
        text = task.report(FixedLogits(logits))["sample"]

        assert text.startswith(task.prompt) and len(text) == len(task.prompt) + SAMPLES
        sample = text[len(task.prompt) :]
        assert set(sample) <= set(chars), set(sample) - set(chars)  # no U+FFFD: no pad, no unk
        counts = torch.tensor([sample.count(c) for c in chars], dtype=torch.float64)
        expected = torch.exp(values / temperature)
        expected /= expected.sum()  # softmax(logits / temperature), over the characters
        frequency = counts / SAMPLES
        z = (frequency - expected) / (expected * (1 - expected) / SAMPLES).sqrt()
        chi2 = float(((counts - SAMPLES * expected) ** 2 / (SAMPLES * expected)).sum())
        if z.abs().max() > 5 or chi2 > stats.chi2.ppf(1 - 1e-6, len(chars) - 1):
            sampled, softmax = _rounded(chars, frequency), _rounded(chars, expected)
            off[temperature] = f"sampled {sampled}, softmax(logits / T) {softmax}, chi2 {chi2:.0f}"
    assert not off, "\n".join(f"temperature {t}: {text}" for t, text in off.items())


def _rounded(chars: list[str], p: Tensor) -> dict[str, float]:
    return {c: round(float(v), 3) for c, v in zip(chars, p, strict=True)}


# --- a re-run sweep with a changed override ---------------------------------------------------

SWEPT = [o for o in SMALL if not o.startswith("train.steps=")]


def run_sweep(sweep_dir: Path, steps: str) -> str:
    """`seqbench -m train.steps=<steps>` (two jobs), small, into `sweep_dir`; its output."""
    result = seqbench_main("-m", *SWEPT, f"train.steps={steps}", "log.tensorboard=false",
                           "inference.compare=false", f"hydra.sweep.dir={sweep_dir}",
                           cwd=sweep_dir.parent)  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    return result.stdout


def test_rerun_sweep_runs_again_only_the_job_whose_overrides_changed(tmp_path: Path) -> None:
    """README, Re-running a sweep: a re-run into the same directory "skips the jobs whose run
    completed with the same overrides". `train.steps=4,6` then `train.steps=4,8`: job 0
    (train.steps=4) is skipped, its files untouched; job 1 ran with train.steps=6, its overrides
    now say 8: it runs again, and its files are rewritten for 8 steps."""
    sweep_dir = tmp_path / "sweep"
    run_sweep(sweep_dir, "4,6")
    kept, changed = sweep_dir / "0", sweep_dir / "1"
    assert json.loads((changed / "metrics.json").read_text())["steps"] == 6
    before = {name: ((kept / name).read_bytes(), (kept / name).stat().st_mtime_ns)
              for name in ("metrics.json", "history.csv", "checkpoint.pt")}  # fmt: skip
    old = (changed / "metrics.json").stat().st_mtime_ns
    time.sleep(0.01)  # a rewritten file gets a later mtime

    output = run_sweep(sweep_dir, "4,8")
    assert f"{kept} already completed; skipping" in output
    assert f"{changed} already completed" not in output, "skipped with changed overrides"
    for name, (data, mtime) in before.items():  # skipped: not a byte rewritten
        assert ((kept / name).read_bytes(), (kept / name).stat().st_mtime_ns) == (data, mtime)
    metrics = json.loads((changed / "metrics.json").read_text())
    assert (metrics["status"], metrics["steps"]) == ("completed", 8), "job 1 not run again"
    assert "train.steps=8" in metrics["overrides"] and "train.steps=6" not in metrics["overrides"]
    assert (changed / "metrics.json").stat().st_mtime_ns > old
    assert pd.read_csv(changed / "history.csv")["step"].tolist() == [3, 6, 8]
    assert torch.load(changed / "checkpoint.pt", weights_only=True)["step"] == 8
    table = pd.read_csv(sweep_dir / "comparison.csv")
    assert table["runs"].sum() == 2 and (table["completed"] == table["runs"]).all()
