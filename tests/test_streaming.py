"""history.csv, grad_norms.csv and gates.csv grow as the run goes: rows are on disk (flushed)
as soon as they are recorded, a live run can be read from another process, the streamed file is
byte for byte the whole-file `to_csv` of what was recorded, and a resume first cuts the files
back to its checkpoint (rows written after it, a half-written last line included)."""

from __future__ import annotations

import io
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from itertools import pairwise
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import seqbench.files
from seqbench.checkpoint import CHECKPOINT, PREVIOUS
from seqbench.files import csv_rows
from seqbench.results import RunRecorder, gate_unit_frame, grad_norm_frame
from tests.conftest import run_small

CSVS = ("history.csv", "grad_norms.csv", "gates.csv")


def without_wall_time(text: str) -> str:
    """A CSV's text with the wall_time column blanked (the only column that depends on speed)."""
    lines = text.split("\n")
    header = lines[0].split(",")
    if "wall_time" not in header:
        return text
    at = header.index("wall_time")
    return "\n".join(",".join("" if i == at else cell for i, cell in enumerate(line.split(",")))
                     if line else line for line in lines)  # fmt: skip


# --- the recorder on crafted events: after every hook, the file equals the whole-file write ----


def whole_files(recorder: RunRecorder, pending: bool = False) -> dict[str, str]:
    """What the recorder's state gives written whole with pandas, as the files were before,
    for each file that has rows (`pending`: without the last snapshot, whose rows wait for its
    gates until the next hook)."""
    snapshots = recorder.snapshots[:-1] if pending else recorder.snapshots
    files = {}
    if recorder.history:
        files["history.csv"] = pd.DataFrame(recorder.history).to_csv(index=False)
    if snapshots:
        grads = grad_norm_frame(snapshots, recorder.gate_snapshots)
        files["grad_norms.csv"] = grads.to_csv(index=False)
    if recorder.gate_snapshots:
        files["gates.csv"] = gate_unit_frame(recorder.gate_snapshots).to_csv(index=False)
    return files


def on_disk(run_dir: Path) -> dict[str, str]:
    return {name: (run_dir / name).read_text() for name in CSVS if (run_dir / name).exists()}


def test_rows_are_on_disk_at_once_and_match_the_whole_file(tmp_path: Path) -> None:
    """Validations whose metric changes type (an int, then floats: pandas writes 1.0 once the
    column is float) or that gain a key, snapshots with and without gates, log10 norms: after
    every hook the files hold exactly what pandas would write whole. Plain appends keep the
    file (same inode); only a change of the file's columns or dtypes rewrites it."""
    for name in CSVS:
        (tmp_path / name).write_text("an earlier run's file\n")
    recorder = RunRecorder(tmp_path, {}, "mse", "min", 10.0, lr=lambda: 0.5)
    recorder.start_files()
    assert on_disk(tmp_path) == {}  # each file appears with its first row
    rng = np.random.default_rng(0)
    gates = {"forget": rng.random((2, 4, 3)), "input": rng.random((2, 4, 3))}  # (L, T, H)

    def snapshot(step: int, with_gates: bool) -> None:
        recorder.on_grad_norms(step, rng.random((2, 4)), np.array([3, 3, 2, 1]),
                               np.log10(rng.random((2, 4))))  # fmt: skip
        if with_gates:
            recorder.on_gates(step, gates, "forget")

    events = [  # (hook, does the last snapshot still wait for its gates)
        (lambda: snapshot(0, True), False),
        (lambda: recorder.on_step(1, 2.0, 1.0, False), False),
        (lambda: recorder.on_eval(1, {"mse": 1}), False),  # an int: the column is int
        (lambda: recorder.on_step(2, 1.5, 1.0, False), False),
        (lambda: recorder.on_eval(2, {"mse": 0.25}), False),  # now float: 1 is written 1.0
        (lambda: snapshot(2, True), False),
        (lambda: recorder.on_step(3, 1.0, 1.0, True), False),
        (lambda: recorder.on_eval(3, {"mse": 0.125}), False),
        (lambda: snapshot(3, False), True),  # no gates (a second Ctrl-C between the hooks)
        (lambda: recorder.on_step(4, 1.0, 1.0, True), False),
        (lambda: recorder.on_eval(4, {"mse": 0.5, "acc": 0.75}), False),  # a new column
        (lambda: snapshot(4, True), False),
        (lambda: recorder.on_step(5, 1.0, 1.0, True), False),
        (lambda: recorder.on_eval(5, {"mse": 0.0625, "acc": 0.5}), False),
        (lambda: snapshot(5, True), False),
    ]
    inodes: dict[str, list[tuple[int, int]]] = {name: [] for name in CSVS}  # (event, inode)
    for event, (hook, pending) in enumerate(events):
        hook()
        assert on_disk(tmp_path) == whole_files(recorder, pending)
        for name in on_disk(tmp_path):
            inodes[name].append((event, os.stat(tmp_path / name).st_ino))
    recorder.write("completed")
    assert on_disk(tmp_path) == whole_files(recorder)
    for name in CSVS:
        inodes[name].append((len(events), os.stat(tmp_path / name).st_ino))
    # rewritten where the columns or a dtype changed (validations 2 and 4), else appended
    rewrites = {name: [e for (_, a), (e, b) in pairwise(seen) if a != b]
                for name, seen in inodes.items()}  # fmt: skip
    assert rewrites == {"history.csv": [4, 10], "grad_norms.csv": [], "gates.csv": []}
    assert [inodes[name][0][0] for name in CSVS] == [2, 0, 0]  # created with the first row

    history = pd.read_csv(tmp_path / "history.csv")
    assert history["val_mse"].tolist() == [1.0, 0.25, 0.125, 0.5, 0.0625]
    assert history["val_acc"].isna().tolist() == [True, True, True, False, False]
    assert (tmp_path / "history.csv").read_text().split("\n")[1].endswith(",0.5,1.0,")
    grads = pd.read_csv(tmp_path / "grad_norms.csv")
    assert grads["step"].unique().tolist() == [0, 2, 3, 4, 5]
    assert grads[grads["step"] == 3]["gate_forget"].isna().all()
    assert grads[grads["step"] != 3]["gate_forget"].notna().all()


def test_a_run_with_nothing_recorded_writes_the_headers(tmp_path: Path) -> None:
    """As before the files grew: history.csv and grad_norms.csv with their header only."""
    recorder = RunRecorder(tmp_path, {}, "mse", "min", 10.0)
    recorder.start_files()
    recorder.write("diverged")
    assert on_disk(tmp_path) == {"history.csv": "step,wall_time,train_loss\n",
                                 "grad_norms.csv": "step,layer,t,norm,positions\n"}  # fmt: skip


def test_an_append_cut_short_is_rewritten_whole_at_the_next_write(tmp_path: Path, monkeypatch):
    """A second Ctrl-C (or a full disk) in the middle of appending a row leaves half a line;
    the write at the end of the run rewrites the file whole rather than append after it."""
    recorder = RunRecorder(tmp_path, {}, "mse", "min", 10.0)
    recorder.start_files()
    recorder.on_step(1, 1.0, 1.0, False)
    recorder.on_eval(1, {"mse": 0.5})
    recorder.on_step(2, 1.0, 1.0, False)

    def half_a_row_then_ctrl_c(f, rows):
        f.write("2,0.1")
        raise KeyboardInterrupt

    monkeypatch.setattr(seqbench.files, "write_rows", half_a_row_then_ctrl_c)
    with pytest.raises(KeyboardInterrupt):
        recorder.on_eval(2, {"mse": 0.25})
    monkeypatch.undo()
    assert (tmp_path / "history.csv").read_text().endswith("\n2,0.1")
    recorder.write("interrupted")
    assert on_disk(tmp_path)["history.csv"] == whole_files(recorder)["history.csv"]
    assert pd.read_csv(tmp_path / "history.csv")["val_mse"].tolist() == [0.5, 0.25]


FLOATS = st.floats(allow_nan=True, allow_infinity=True, width=64) | st.sampled_from(
    [0.0, -0.0, 1e-300, 5e-324, 1e16, 1e15, 123456789.125, 1e-5, 1e-4, 0.1, 2.0, -3.5e22]
)


@settings(max_examples=200, deadline=None)
@given(st.lists(st.tuples(FLOATS, FLOATS, st.integers(-(2**62), 2**62), st.booleans()),
                max_size=12), st.sampled_from(["float64", "float32"]))  # fmt: skip
def test_rows_are_formatted_as_pandas_writes_them(rows, float_dtype) -> None:
    """The appended rows (seqbench.files.csv_rows, which skips pandas' writer) equal what
    pandas' to_csv writes for them: floats of either width, NaN, infinities, tiny and huge
    values, signed zeros, integers and bools; None (pandas writes it) for text or one column."""
    with np.errstate(over="ignore"):  # a float64 beyond float32's range becomes inf, as meant
        frame = pd.DataFrame(rows, columns=["a", "b", "n", "flag"]).astype(
            {"a": float_dtype, "b": "float64", "n": "int64", "flag": "bool"}
        )
    assert csv_rows(frame) == frame.to_csv(header=False, index=False)
    assert csv_rows(frame[["a"]]) is None
    assert csv_rows(frame.assign(name="x")) is None


# --- resume after a kill -9: a half-written last line and rows after the checkpoint go --------

# validations at 3, 6 and 8, snapshots at 0, 2, 4, 6 and the end (8), checkpoints at 3 and 6
HALTING = ("train.steps=8", "train.eval_every=3", "checkpoint.every=3", "diagnostics.every=2",
           "inference.compare=false", "log.tensorboard=false")  # fmt: skip


def test_resume_repairs_a_half_written_last_line(tmp_path: Path) -> None:
    """As a kill -9 after step 7 would leave it: the checkpoint of step 6, files that go on
    past it (validation 8, snapshot 6) and end in half a line, no metrics.json. The resumed
    run's files equal those of the uninterrupted run."""
    straight, run_dir = tmp_path / "straight", tmp_path / "run"
    run_small(straight, *HALTING)
    shutil.copytree(straight, run_dir)
    os.replace(run_dir / PREVIOUS, run_dir / CHECKPOINT)  # the periodic checkpoint of step 6
    (run_dir / "metrics.json").unlink()
    for name, half in [("history.csv", "8,0.0"), ("grad_norms.csv", "8,0,3,0.00"),
                       ("gates.csv", "8,0,5")]:  # fmt: skip
        text = (run_dir / name).read_text()
        assert text.endswith("\n") and half.split(",")[0] == "8"
        (run_dir / name).write_text(text + half)  # cut mid-row, as by a kill -9
    assert pd.read_csv(run_dir / "history.csv")["step"].tolist() == [3, 6, 8, 8]

    run_small(tmp_path / "unused", *HALTING, f"resume={run_dir}")
    for name in CSVS:
        expected = without_wall_time((straight / name).read_text())
        assert without_wall_time((run_dir / name).read_text()) == expected, name
    assert pd.read_csv(run_dir / "history.csv")["step"].tolist() == [3, 6, 8]
    assert pd.read_csv(run_dir / "grad_norms.csv")["step"].unique().tolist() == [0, 2, 4, 6, 8]


def test_resume_cuts_the_files_back_to_the_checkpoint_before_training(tmp_path: Path) -> None:
    """Right after a resume starts (before any new step), the files hold the checkpoint's
    rows only: nothing that a reader of the live run could see twice."""
    from seqbench.checkpoint import load_training_state

    run_dir = tmp_path / "run"
    run_small(run_dir, *HALTING)
    os.replace(run_dir / PREVIOUS, run_dir / CHECKPOINT)
    state = load_training_state(run_dir)
    assert state["step"] == 6
    recorder = RunRecorder(run_dir, {}, "mse", "min", 10.0)
    recorder.load_state_dict(state["recorder"])
    recorder.start_files()
    assert pd.read_csv(run_dir / "history.csv")["step"].tolist() == [3, 6]
    assert pd.read_csv(run_dir / "grad_norms.csv")["step"].unique().tolist() == [0, 2, 4]
    assert pd.read_csv(run_dir / "gates.csv")["step"].unique().tolist() == [0, 2, 4]
    assert on_disk(run_dir) == whole_files(recorder)


# --- a live run, read from another process -----------------------------------------------------

LIVE = ["hardware=cpu", "task.seq_len=20", "train.steps=100000", "train.eval_every=10",
        "train.batch_size=16", "model.hidden_size=16", "diagnostics.every=10",
        "checkpoint.every=0", "inference.compare=false", "log.tensorboard=false",
        "log.progress=none"]  # fmt: skip


def complete_lines(path: Path) -> str:
    """The file's text up to its last newline (a row being written may be half there)."""
    text = path.read_text() if path.exists() else ""
    return text[: text.rfind("\n") + 1]


def test_rows_can_be_read_while_the_run_is_alive(tmp_path: Path) -> None:
    """A real `seqbench` process: its history.csv and grad_norms.csv gain rows while it runs,
    read here as a plotting script would; what was read is the start of the final files."""
    run_dir = tmp_path / "run"
    exe = Path(sys.executable).parent / "seqbench"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    command = [str(exe), *LIVE, f"hydra.run.dir={run_dir}"]
    proc = subprocess.Popen(command, cwd=tmp_path, env=env, stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, text=True)  # fmt: skip
    seen: dict[str, str] = {}
    try:
        deadline = time.time() + 180
        while time.time() < deadline and proc.poll() is None:
            history = complete_lines(run_dir / "history.csv")
            grads = complete_lines(run_dir / "grad_norms.csv")
            steps = {row.split(",")[0] for row in grads.split()[1:]}
            if history.count("\n") >= 3 and {"0", "10"} <= steps:
                if proc.poll() is None:  # still running after the read
                    seen = {"history.csv": history, "grad_norms.csv": grads}
                break
            time.sleep(0.05)
    finally:
        proc.send_signal(signal.SIGTERM)
        _, stderr = proc.communicate(timeout=60)
    assert seen, f"no rows appeared while the run was alive (exit {proc.returncode}): {stderr}"
    assert proc.returncode == 143, stderr
    live = pd.read_csv(io.StringIO(seen["history.csv"]))
    assert live["step"].tolist()[:2] == [10, 20] and live["val_mse"].notna().all()
    live_grads = pd.read_csv(io.StringIO(seen["grad_norms.csv"]))
    assert (live_grads["step"] == 10).sum() == 20 and live_grads["gate_forget"].notna().all()
    for name, text in seen.items():  # appended to, never rewritten, after the first rows
        assert (run_dir / name).read_text().startswith(text), name


def test_a_recorder_restored_from_its_state_writes_the_same_results(tmp_path: Path) -> None:
    """RunRecorder.state_dict -> load_state_dict (what a resume does): metrics.json (texts,
    memory gate and gate summaries included) and the three CSVs come out the same, and the
    restored recorder rewrites its files whole before appending (a killed run's tail goes)."""
    rng = np.random.default_rng(1)
    (tmp_path / "a").mkdir()
    first = RunRecorder(tmp_path / "a", {"overrides": ["model=lstm"]}, "mse", "min", 10.0)
    first.start_files()
    for step in (0, 2):
        first.on_grad_norms(step, rng.random((2, 4)), np.array([3, 3, 2, 1]),
                            np.log10(rng.random((2, 4))))  # fmt: skip
        first.on_gates(step, {"forget": rng.random((2, 4, 3)), "input": rng.random((2, 4, 3))},
                       "forget")  # fmt: skip
        first.on_step(step + 1, 1.0 / (step + 1), 2.0, step == 2)
        first.on_eval(step + 1, {"mse": 0.5 / (step + 1)})
        first.on_text(step + 1, {"sample": f"text at {step + 1}"})
    first.write("completed")
    (tmp_path / "b").mkdir()
    for name in CSVS:  # what a killed run left after its checkpoint
        (tmp_path / "b" / name).write_text("a half-written li")
    second = RunRecorder(tmp_path / "b", {"overrides": ["model=lstm"]}, "mse", "min", 10.0)
    second.load_state_dict(first.state_dict())
    second.start_files()
    assert second.memory_gate == "forget" and second.texts["sample"]["step"] == 3
    second.write("completed")
    a, b = (json.loads((tmp_path / d / "metrics.json").read_text()) for d in "ab")
    for m in (a, b):
        m.pop("wall_time_s"), m.pop("steps_per_s")
    assert a == b and a["texts"] == {"sample": {"step": 3, "text": "text at 3"}}
    assert a["gates"]["memory_gate"] == "forget"
    for name in CSVS:
        assert (tmp_path / "a" / name).read_text() == (tmp_path / "b" / name).read_text(), name
