"""The result writers, the comparison table and the gradient summaries on crafted inputs, each
checked against values written out here: exact, no training, milliseconds each."""

from __future__ import annotations

import json
import math
import re
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml
from omegaconf import OmegaConf, open_dict

from seqbench.compare import (
    NUMERIC,
    aggregate,
    find_runs,
    group_keys,
    load_runs,
    parse_overrides,
    terminal_table,
    to_display,
    write_tables,
)
from seqbench.compare import main as compare_main
from seqbench.diagnostics import summarize
from seqbench.results import RunRecorder
from tests.conftest import compose_config

# --- RunRecorder: metrics.json, history.csv, grad_norms.csv -------------------------------------


def recorded(tmp_path: Path) -> tuple[RunRecorder, dict]:
    rates = iter([0.5, 0.25, 0.125])
    recorder = RunRecorder(tmp_path, {"model": "gru", "overrides": ["seed=3"]}, "mse", "min",
                           explode_factor=10.0, solved=lambda m: m["mse"] < 0.2,
                           lr=lambda: next(rates))  # fmt: skip
    norms = np.array([[1e-3, 1e-2, 1e-1, 1.0]])  # (layers, T)
    recorder.on_grad_norms(0, norms, np.array([4, 4, 4, 4]), None)
    for step, loss, clipped in [(1, 4.0, True), (2, 2.0, False), (3, 3.0, True)]:
        recorder.on_step(step, loss, 10.0, clipped)
    recorder.on_eval(3, {"mse": 0.3, "acc": 0.5})
    recorder.on_step(4, 1.0, 1.0, False)
    recorder.on_eval(4, {"mse": 0.1, "acc": 0.7})
    recorder.on_step(5, 7.0, 1.0, True)
    recorder.on_eval(5, {"mse": 0.15, "acc": 0.6})
    recorder.on_grad_norms(5, 2 * norms[:, ::-1].copy(), np.array([4, 4, 3, 0]), None)
    return recorder, recorder.write("completed", extra_key=1)


def test_run_recorder_writes_what_it_was_told(tmp_path: Path) -> None:
    _, m = recorded(tmp_path)
    assert m == json.loads((tmp_path / "metrics.json").read_text())
    assert (m["status"], m["model"], m["overrides"], m["extra_key"]) == (
        "completed", "gru", ["seed=3"], 1)  # fmt: skip
    assert (m["steps"], m["metric"], m["mode"]) == (5, "mse", "min")
    assert (m["final_metric"], m["final"]) == (0.15, {"mse": 0.15, "acc": 0.6})
    assert (m["best_metric"], m["best_step"], m["solved_step"]) == (0.1, 4, 4)
    assert m["clip_fraction"] == pytest.approx(3 / 5)
    assert m["grad_norms"]["max_norm"] == 2.0
    init, end = m["grad_norms"]["init"], m["grad_norms"]["end"]
    assert (init["step"], init["timesteps"], end["step"], end["timesteps"]) == (0, 4, 5, 4)
    assert init["layers"][0]["vanishing_ratio"] == pytest.approx(-3.0)
    # the end snapshot: the last position holds no real sequence, so T = 3
    assert end["layers"][0]["timesteps"] == 3 and end["layers"][0]["positions"] == 11
    assert end["layers"][0]["vanishing_ratio"] == pytest.approx(2.0)  # log10(2 / 0.02)

    history = pd.read_csv(tmp_path / "history.csv")
    assert list(history.columns) == ["step", "wall_time", "train_loss", "lr", "val_mse", "val_acc"]
    assert history["step"].tolist() == [3, 4, 5]
    assert history["train_loss"].tolist() == [3.0, 1.0, 7.0]  # mean since the last validation
    assert history["lr"].tolist() == [0.5, 0.25, 0.125]
    assert history["val_mse"].tolist() == [0.3, 0.1, 0.15]

    grads = pd.read_csv(tmp_path / "grad_norms.csv")
    assert list(grads.columns) == ["step", "layer", "t", "norm", "positions"]
    assert grads["step"].tolist() == [0] * 4 + [5] * 4 and grads["t"].tolist() == [1, 2, 3, 4] * 2
    assert grads["norm"].tolist() == [1e-3, 1e-2, 1e-1, 1.0, 2.0, 0.2, 0.02, 0.002]
    assert grads["positions"].tolist() == [4, 4, 4, 4, 4, 4, 3, 0]
    assert not list(tmp_path.glob("*.tmp")) and not list(tmp_path.glob(".*.tmp"))


def test_run_recorder_state_round_trip(tmp_path: Path) -> None:
    """What a checkpoint keeps of the recorder brings back everything metrics.json reports."""
    recorder, before = recorded(tmp_path)
    state = recorder.state_dict()
    fresh = RunRecorder(tmp_path / "other", {"model": "gru"}, "mse", "min", 10.0)
    (tmp_path / "other").mkdir()
    fresh.load_state_dict(state)
    after = fresh.metrics("completed", extra_key=1)
    timings = ("wall_time_s", "steps_per_s")
    assert {k: v for k, v in after.items() if k not in timings} == {
        k: v for k, v in before.items() if k not in timings
    }
    assert after["wall_time_s"] >= before["wall_time_s"]  # wall time adds up across a resume
    assert fresh.losses_since_eval == [] and fresh.clipped_steps == 3


def test_losses_since_the_last_validation_survive_a_round_trip(tmp_path: Path) -> None:
    recorder = RunRecorder(tmp_path, {}, "mse", "min", 10.0)
    recorder.on_step(1, 2.0, 1.0, False)
    recorder.on_step(2, 4.0, 1.0, False)
    fresh = RunRecorder(tmp_path, {}, "mse", "min", 10.0)
    fresh.load_state_dict(recorder.state_dict())
    fresh.on_step(3, 6.0, 1.0, False)
    fresh.on_eval(3, {"mse": 1.0})
    assert fresh.history[0]["train_loss"] == 4.0 and fresh.steps_done == 3


def test_max_mode_best_and_nan(tmp_path: Path) -> None:
    recorder = RunRecorder(tmp_path, {}, "accuracy", "max", 10.0)
    for step, value in [(1, 0.5), (2, math.nan), (3, 0.7), (4, 0.6)]:
        recorder.on_eval(step, {"accuracy": value})
    m = recorder.metrics("interrupted")
    assert (m["best_metric"], m["best_step"], m["solved_step"], m["status"]) == (
        0.7, 3, None, "interrupted")  # fmt: skip
    with pytest.raises(AssertionError):
        recorder.metrics("finished")  # not a status


# --- diagnostics.summarize ----------------------------------------------------------------------


def test_summarize_on_crafted_norms() -> None:
    s = summarize(np.array([1e-4, 1e-3, 1e-2, 1e-1]))  # x10 per step towards the end
    assert s.vanishing_ratio == pytest.approx(-3.0) and s.decay_rate == pytest.approx(1.0)
    assert (s.max_norm, s.exploding, s.nonzero, s.timesteps, s.positions) == (0.1, False, 4, 4, 4)

    grows = summarize(np.array([5.0, 1.0, 0.5]), explode_factor=4.0)  # 5 > 4 x 0.5
    assert grows.exploding and grows.vanishing_ratio == pytest.approx(1.0)
    assert not summarize(np.array([1.9, 1.0, 0.5]), explode_factor=4.0).exploding

    underflow = summarize(np.array([0.0, 0.0, 1e-3, 1e-2]))
    assert underflow.vanishing_ratio == -math.inf and underflow.nonzero == 2
    assert underflow.decay_rate == pytest.approx(1.0)  # over the non-zero values only
    assert summarize(np.array([0.0, 0.0, 1.0])).decay_rate is None  # fewer than 2 non-zero

    blown = summarize(np.array([math.inf, 1.0, 1.0]))
    assert blown.exploding and blown.max_norm == math.inf
    assert summarize(np.array([1.0, 1.0, math.nan])).exploding

    padded = summarize(np.array([1e-2, 1e-1, 1.0, 7.0]), positions=np.array([3, 2, 1, 0]))
    assert (padded.timesteps, padded.positions) == (3, 6)  # the last real step is t = 3
    assert padded.vanishing_ratio == pytest.approx(-2.0) and padded.max_norm == 1.0

    logs = summarize(np.array([0.0, 0.0, 1.0]), log10=np.array([-400.0, -200.0, 0.0]))
    assert logs.vanishing_ratio == pytest.approx(-400.0) and logs.decay_rate == pytest.approx(200)


# --- the comparison table over crafted run directories ------------------------------------------


def fake_run(path: Path, overrides: list[str], **metrics) -> None:
    path.mkdir(parents=True)
    (path / ".hydra").mkdir()
    (path / ".hydra" / "overrides.yaml").write_text(yaml.safe_dump(overrides))
    layers = [{"vanishing_ratio": metrics.pop("init_ratio", -2.0), "decay_rate": 0.5}]
    end = [{"vanishing_ratio": metrics.pop("end_ratio", -1.0), "decay_rate": 0.25}]
    lags = {"init": {"layers": layers}, "end": {"layers": end}}
    per_t = [{"vanishing_ratio": 9.0, "decay_rate": 9.0}]  # not the verdicts: never read
    grads = {"init": {"layers": per_t}, "end": {"layers": per_t}, "max_norm": 3.0}
    base = {"status": "completed", "metric": "mse", "mode": "min", "baseline": 1 / 6,
            "solved_step": None, "wall_time_s": 10.0, "steps_per_s": 50.0,
            "num_parameters": 1000, "grad_norms": grads, "lag_norms": lags}  # fmt: skip
    (path / "metrics.json").write_text(json.dumps({**base, **metrics}))


@pytest.fixture
def sweep(tmp_path: Path) -> Path:
    root = tmp_path / "sweep"
    rnn, gru = ["model=rnn", "task.seq_len=50"], ["model=gru", "task.seq_len=100"]
    common = {"task": "adding"}
    fake_run(root / "0", [*rnn, "seed=0"], model="rnn", seed=0, final_metric=0.2,
             best_metric=0.1, init_ratio=-math.inf, **common)  # fmt: skip
    fake_run(root / "1", [*rnn, "seed=1"], model="rnn", seed=1, final_metric=0.4,
             best_metric=0.3, solved_step=300, **common)  # fmt: skip
    fake_run(root / "2", [*rnn, "seed=2"], model="rnn", seed=2, status="diverged",
             final_metric=9.0, best_metric=9.0, **common)  # fmt: skip
    fake_run(root / "3", [*gru, "seed=0"], model="gru", seed=0, final_metric=0.01,
             best_metric=0.005, solved_step=100, num_parameters=2500, **common)  # fmt: skip
    fake_run(root / "nested" / "4", [*gru, "seed=1"], model="gru", seed=1, status="failed",
             final_metric=None, best_metric=None, **common)  # fmt: skip
    return root


def test_load_runs_and_aggregate(sweep: Path) -> None:
    runs = load_runs(find_runs([sweep]))
    assert len(runs) == 5 and sorted(runs["task.seq_len"]) == [50, 50, 50, 100, 100]
    table = aggregate(runs)
    assert list(table.columns[:3]) == ["model", "task", "task.seq_len"]
    rows = table.set_index("model")
    rnn, gru = rows.loc["rnn"], rows.loc["gru"]
    assert (rnn["runs"], rnn["completed"], rnn["diverged"], rnn["failed"]) == (3, 2, 1, 0)
    assert (gru["runs"], gru["completed"], gru["diverged"], gru["failed"]) == (2, 1, 0, 1)
    assert (rnn["solved"], gru["solved"], rnn["interrupted"]) == (1, 1, 0)
    assert rnn["final_metric_mean"] == pytest.approx(0.3)  # the diverged run does not count
    assert rnn["final_metric_std"] == pytest.approx(math.sqrt(0.02))
    assert rnn["best_metric_mean"] == pytest.approx(0.2)
    assert rnn["solved_step_mean"] == 300 and math.isnan(rnn["solved_step_std"])
    assert rnn["init_vanishing_ratio_mean"] == -math.inf and math.isnan(
        rnn["init_vanishing_ratio_std"]
    )
    assert gru["final_metric_mean"] == 0.01 and math.isnan(gru["final_metric_std"])
    assert gru["num_parameters_mean"] == 2500 and rnn["end_decay_rate_mean"] == 0.25
    assert rnn["max_grad_norm_mean"] == 3.0 and rnn["steps_per_s_std"] == 0.0
    assert rows.loc["rnn", "metric"] == "mse"
    by_seed_len = aggregate(runs, by=["task.seq_len"]).set_index("task.seq_len")
    assert by_seed_len.loc[100, "runs"] == 2 and by_seed_len.loc[50, "completed"] == 2


def test_display_strings(sweep: Path) -> None:
    display = to_display(aggregate(load_runs(find_runs([sweep])))).set_index("model")
    assert display.loc["rnn", "seeds"] == "2/3" and display.loc["gru", "seeds"] == "1/2"
    assert display.loc["rnn", "diverged/failed"] == "1/0"
    assert display.loc["gru", "diverged/failed"] == "0/1"
    assert display.loc["rnn", "solved"] == "1/2 [0.09, 0.91]"  # Wilson's interval
    # 0.2 and 0.4: mean 0.3, std 0.1414 to 2 digits, t(0.975, 1) = 12.706: 0.3 ± 1.2706
    assert display.loc["rnn", "final_metric"] == "0.30 ± 0.14 [-0.97, 1.57]"
    assert display.loc["gru", "final_metric"] == "0.01"  # one run: no std, no interval
    assert display.loc["gru", "num_parameters"] == "2,500"
    assert display.loc["rnn", "num_parameters"] == "1,000"  # std 0 is left out
    assert display.loc["rnn", "solved_step"] == "300"
    assert display.loc["rnn", "init_vanishing_ratio"] == "-inf"
    short = to_display(aggregate(load_runs(find_runs([sweep]))), short=True)
    assert {"final", "best", "vanish@init", "div/fail", "params"} <= set(short.columns)


def test_compare_command_over_two_sweeps(sweep: Path, tmp_path: Path, capsys) -> None:
    """seqbench-compare over two directories (the second holds one more gru run, seed 2)."""
    day2 = tmp_path / "day2"
    fake_run(day2 / "0", ["model=gru", "task.seq_len=100", "seed=2"], model="gru", seed=2,
             task="adding", final_metric=0.03, best_metric=0.02)  # fmt: skip
    out = tmp_path / "tables" / "day1-2"  # made, parents included
    paths = [str(sweep), str(day2)]
    assert compare_main([*paths, "--out", str(out), "--format", "csv", "md", "latex"]) == 0
    table = pd.read_csv(out / "comparison.csv")
    expected = aggregate(load_runs(find_runs([sweep, day2])))
    assert table.set_index("model").loc["gru", "runs"] == 3
    pd.testing.assert_frame_equal(table, expected, check_dtype=False)
    markdown = (out / "comparison.md").read_text()
    assert "| rnn " in markdown and "0.30 ± 0.14 [-0.97, 1.57]" in markdown
    assert (out / "comparison.tex").read_text().startswith("\\begin{tabular}")
    printed = capsys.readouterr().out
    assert f"wrote {out / 'comparison.csv'}" in printed and "6 runs" in printed

    metrics = ["--metrics", "best_metric", "test_metric"]  # no test split here: no test column
    assert compare_main([str(sweep), "--out", str(out), *metrics]) == 0
    kept = pd.read_csv(out / "comparison.csv")
    assert [c for c in kept.columns if c.endswith(("_mean", "_std"))] == [
        "best_metric_mean", "best_metric_std", "test_metric_mean", "test_metric_std"]  # fmt: skip
    assert re.search(r"│\s+best\s+│", capsys.readouterr().out)  # the terminal table too
    assert compare_main([str(day2 / "0"), "--out", str(out)]) == 0  # a run directory itself
    assert pd.read_csv(out / "comparison.csv")["runs"].tolist() == [1]
    assert compare_main([str(sweep), "--by", "nope"]) == 2
    assert compare_main([str(tmp_path / "nothing")]) == 2
    assert "nothing does not exist" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        compare_main(["--help"])
    usage = capsys.readouterr().out
    assert usage.startswith("usage: seqbench-compare [-h]")
    assert "\n\nAggregate finished seqbench runs (mean ± std over seeds) into a table.\n" in usage


def test_display_columns_and_number_formats(sweep: Path) -> None:
    """to_display: the keys, then the counts as k/n, then one 'mean ± std [interval]' column per
    number (counts and raw _mean/_std/_low/_high columns never shown); integers with thousands
    separators, the test column only when a run has a test split."""
    table = aggregate(load_runs(find_runs([sweep])))
    display = to_display(table)
    numbers = [c for c in NUMERIC if c != "test_metric"]  # no run here has a test split
    keys = ["model", "task", "task.seq_len", "metric"]
    counts = ["seeds", "diverged/failed", "solved", "exploding"]
    assert list(display.columns) == [*keys, *counts, *numbers]
    table.loc[table["model"] == "gru", ["solved_step_mean", "solved_step_std"]] = [1234.4, 56.7]
    table["test_metric_mean"], table["test_metric_std"] = [0.5, math.nan], [0.01, math.nan]
    display = to_display(table).set_index("model")
    assert display.loc["gru", "solved_step"] == "1,234 ± 57"  # no interval in this table
    assert display["test_metric"].to_dict() == {"gru": "0.500 ± 0.010", "rnn": "n/a"}
    assert display.loc["gru", "exploding"] == "0/2"


def test_comparison_files_have_no_index_column(sweep: Path, tmp_path: Path) -> None:
    table = aggregate(load_runs(find_runs([sweep])))
    write_tables(table, tmp_path, ("csv", "md", "latex"))
    assert pd.read_csv(tmp_path / "comparison.csv").columns[0] == "model"
    lines = (tmp_path / "comparison.md").read_text().split("\n")
    assert lines[0].split("|")[1].strip() == "model" and lines[-1] == ""
    assert lines[2].split("|")[1].strip() in ("gru", "rnn")  # a row starts with its model
    assert "\nrnn &" in (tmp_path / "comparison.tex").read_text()


def test_terminal_table_shows_the_differing_keys_and_never_a_count(sweep: Path) -> None:
    """The configuration columns are the keys whose values differ between rows (two values
    are enough); the counts, even when they differ, are folded into seeds and solved."""
    table = aggregate(load_runs(find_runs([sweep])))
    table["interrupted"], table["exploding"] = [1, 0], [0, 2]  # differing counts too
    headers = [str(column.header) for column in terminal_table(table, width=200).columns]
    assert headers == ["model", "seq_len", "seeds", "solved", "final mse", "baseline",
                       "vanish@init", "vanish@end"]  # fmt: skip


@pytest.mark.parametrize("case", ["missing", "no runs", "metrics", "not an object",
                                  "overrides", "out"])  # fmt: skip
def test_compare_refuses_what_it_cannot_read(sweep: Path, tmp_path: Path, case, capsys) -> None:
    """Beside a good sweep: a path that does not exist, a directory without runs, a corrupt
    metrics.json, one that is not an object, a corrupt overrides.yaml, an --out that cannot be
    made. Each: exit 2, one message naming the path and what is allowed, no traceback, and
    no table written (a typo is not silently left out of the comparison)."""
    other = tmp_path / "other"
    out = tmp_path / "tables"
    if case == "no runs":
        other.mkdir()
    elif case in ("metrics", "not an object", "overrides"):
        fake_run(other / "0", ["model=gru", "seed=0"], model="gru", seed=0, final_metric=0.1)
        if case == "overrides":
            (other / "0" / ".hydra" / "overrides.yaml").write_text("- model=gru\n- [seed=\n")
        else:
            text = '{"status": "compl' if case == "metrics" else "[1, 2]"
            (other / "0" / "metrics.json").write_text(text)
    elif case == "out":
        other = sweep
        out = tmp_path / "a-file"
        out.write_text("")
    assert compare_main([str(sweep), str(other), "--out", str(out / "x")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("seqbench-compare: error: ") and err.count("\n") == 1, err
    named = {"missing": f"{other} does not exist", "no runs": f"no metrics.json under {other}",
             "metrics": f"{other / '0' / 'metrics.json'} cannot be read",
             "not an object": f"{other / '0' / 'metrics.json'} cannot be read (not a JSON object)",
             "overrides": f"{other / '0' / '.hydra' / 'overrides.yaml'} cannot be read",
             "out": f"--out {out / 'x'}: cannot write the tables there"}[case]  # fmt: skip
    assert named in err
    assert not (out / "x").exists()


def test_overrides_parse_into_keys_and_values() -> None:
    assert parse_overrides(["model=gru", "+x=1", "~y=", "a.b=c=d", "task.seq_len=50"]) == {
        "model": "gru", "x": "1", "y": "", "a.b": "c=d", "task.seq_len": "50"}  # fmt: skip


def test_a_run_without_overrides_yaml_is_read_from_its_metrics_json(tmp_path: Path) -> None:
    """A run directory holding only metrics.json (copied out, or written by a failed job): its
    overrides come from metrics.json, Hydra's own keys are not columns, a missing status is
    'failed', and the seed is the run's."""
    run = tmp_path / "run"
    fake_run(run, [], model="lstm", task="copy", seed=7, final_metric=0.5, best_metric=0.4)
    metrics = json.loads((run / "metrics.json").read_text())
    metrics["overrides"] = ["model=lstm", "task.seq_len=30", "hydra.run.dir=x", "seed=7"]
    (run / "metrics.json").write_text(json.dumps(metrics))
    shutil.rmtree(run / ".hydra")
    bare = tmp_path / "bare"
    bare.mkdir()
    (bare / "metrics.json").write_text(json.dumps({"model": "gru", "seed": 2}))
    runs = load_runs(find_runs([tmp_path])).set_index("model")
    assert runs.loc["lstm", "task.seq_len"] == 30 and runs.loc["lstm", "seed"] == 7
    assert not any(c.startswith("hydra") for c in runs.columns)
    assert runs.loc["lstm", "status"] == "completed" and runs.loc["gru", "status"] == "failed"
    assert runs.loc["gru", "seed"] == 2


def test_every_column_of_a_run_row_is_its_metrics_json_value(tmp_path: Path) -> None:
    """load_runs: each number and flag of a run's row, checked against the metrics.json it
    comes from (distinct values everywhere, so a column read from the wrong key shows)."""
    snap = {
        "init": {"layers": [{"vanishing_ratio": -1.5, "decay_rate": 0.11, "growth_rate": 0.91,
                             "memory_horizon": 12, "exploding": False}]},
        "end": {"layers": [{"vanishing_ratio": -0.5, "decay_rate": 0.07, "growth_rate": 1.02,
                            "memory_horizon": 40, "exploding": True}]},
    }  # fmt: skip
    per_t = {
        "layers": [
            {
                "vanishing_ratio": 3.5,
                "decay_rate": 3.11,
                "growth_rate": 3.91,
                "memory_horizon": 33,
                "exploding": False,
            }
        ]
    }  # where the signal lands
    grads = {"init": per_t, "end": per_t, "max_norm": 7.5}
    metrics = {"model": "gru", "task": "sentiment", "seed": 4, "status": "completed",
               "metric": "accuracy", "mode": "max", "final_metric": 0.71, "best_metric": 0.74,
               "test": {"accuracy": 0.69, "macro_f1": 0.5}, "baseline": 0.58, "solved_step": 300,
               "wall_time_s": 12.5, "steps_per_s": 80.0, "num_parameters": 1234,
               "error": "none really", "grad_norms": grads, "lag_norms": snap,
               "overrides": ["model=gru", "task=sentiment", "seed=4"]}  # fmt: skip
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "metrics.json").write_text(json.dumps(metrics))
    row = load_runs([tmp_path / "run"]).iloc[0].to_dict()
    expected = {
        "model": "gru", "task": "sentiment", "seed": 4, "status": "completed",
        "metric": "accuracy", "mode": "max", "final_metric": 0.71, "best_metric": 0.74,
        "test_metric": 0.69, "baseline": 0.58, "solved": True, "solved_step": 300,
        "init_vanishing_ratio": -1.5, "init_decay_rate": 0.11, "init_growth_rate": 0.91,
        "init_memory_horizon": 12, "end_vanishing_ratio": -0.5, "end_decay_rate": 0.07,
        "end_growth_rate": 1.02, "end_memory_horizon": 40, "exploding": True,
        "max_grad_norm": 7.5, "wall_time_s": 12.5, "steps_per_s": 80.0, "num_parameters": 1234,
        "error": "none really", "run_dir": str(tmp_path / "run"),
    }  # fmt: skip
    assert row == expected
    snap["end"]["layers"][0]["exploding"] = False
    snap["init"]["layers"][0]["exploding"] = True  # flagged at init only: still exploding
    (tmp_path / "run" / "metrics.json").write_text(json.dumps(metrics))
    assert load_runs([tmp_path / "run"]).iloc[0]["exploding"]


def hydra_files(overrides: list[str]) -> dict[str, str]:
    """The .hydra files Hydra writes for a job with these overrides: config.yaml (the composed
    config) and hydra.yaml (Hydra's node: the groups' choices)."""
    cfg = compose_config(overrides, hydra=True)
    hydra = OmegaConf.to_yaml({"hydra": cfg.hydra})
    with open_dict(cfg):
        del cfg["hydra"]
    return {"config.yaml": OmegaConf.to_yaml(cfg), "hydra.yaml": hydra}


def test_a_key_other_runs_left_at_its_default(tmp_path: Path) -> None:
    """A key some runs override and others leave alone: those others get the value they ran
    with, read from their composed config (task.seq_len 100, the adding default) or their
    group's choice (optimizer adam), so that `task.seq_len=100` and the default are one
    setting; values keep the overrides' spelling (100, not the 100.0 of a column with a gap),
    and a run with no record of the key shows 'n/a', in the table and in the verdicts."""
    default = compose_config(["model=lstm"])
    settings = {"short": ["task.seq_len=50"], "long": ["task.seq_len=100"], "default": [],
                "sgd": ["optimizer=sgd", "model.bidirectional=true"]}  # fmt: skip
    for name, extra in settings.items():
        files = hydra_files(extra)  # the model is overridden in every run: not read from these
        for model, metric in (("lstm", 0.1), ("rnn", 0.5)):
            for seed in range(3):
                run = tmp_path / f"{name}-{model}-{seed}"
                fake_run(run, [f"model={model}", *extra], model=model, seed=seed,
                         task="adding", final_metric=metric + seed / 100)  # fmt: skip
                for file, text in files.items():
                    (run / ".hydra" / file).write_text(text)
    for model, metric in (("gru", 0.2), ("lstm", 0.9)):  # no .hydra: overrides from metrics.json
        bare = {"model": model, "seed": 0, "task": "adding", "final_metric": metric,
                "overrides": [f"model={model}"], "status": "completed"}  # fmt: skip
        (tmp_path / f"bare-{model}").mkdir()
        (tmp_path / f"bare-{model}" / "metrics.json").write_text(json.dumps(bare))
    runs = load_runs(find_runs([tmp_path])).set_index("run_dir")
    run = {name: runs.loc[str((tmp_path / f"{name}-lstm-0").resolve())] for name in settings}
    assert run["default"]["task.seq_len"] == default.task.seq_len == 100
    assert [run[n]["task.seq_len"] for n in ("short", "long", "sgd")] == [50, 100, 100]
    assert (run["default"]["optimizer"], run["sgd"]["optimizer"]) == ("adam", "sgd")
    assert (run["default"]["model.bidirectional"], run["sgd"]["model.bidirectional"]) == (
        "false", "true")  # fmt: skip
    bare = runs.loc[str((tmp_path / "bare-gru").resolve())]
    assert pd.isna(bare["task.seq_len"]) and pd.isna(bare["optimizer"])

    table = aggregate(runs.reset_index())
    seq_len = to_display(table)["task.seq_len"].tolist()
    assert sorted(seq_len) == ["100"] * 4 + ["50"] * 2 + ["n/a"] * 2
    together = table[(table["model"] == "lstm") & (table["task.seq_len"] == 100)
                     & (table["optimizer"] == "adam")]  # fmt: skip
    assert together["completed"].tolist() == [6]  # the default's 3 seeds and the long ones

    from seqbench.verdicts import pair_frame, verdict_lines

    pairs = pair_frame(runs.reset_index(), group_keys(runs.reset_index()))
    assert sorted(set(pairs["setting"])) == [
        "bidirectional=false, optimizer=adam, seq_len=100",
        "bidirectional=false, optimizer=adam, seq_len=50",
        "bidirectional=n/a, optimizer=n/a, seq_len=n/a",
        "bidirectional=true, optimizer=sgd, seq_len=100",
    ]
    assert not any(re.search(r"\d\.0\b", line) for line in verdict_lines(pairs))


def test_group_keys_are_the_model_the_task_and_what_else_varies() -> None:
    """Two tasks, seeds, statuses, metrics, errors: none of those is a configuration key."""
    runs = pd.DataFrame({
        "model": ["rnn", "gru", "rnn", "gru"], "task": ["adding", "adding", "copy", "copy"],
        "seed": [0, 1, 2, 3], "status": ["completed", "failed", "diverged", "completed"],
        "metric": ["mse", "mse", "cross_entropy", "cross_entropy"],
        "mode": ["min", "min", "max", "min"], "solved": [True, False, True, False],
        "exploding": [True, False, False, True], "error": [None, "x", None, "y"],
        "run_dir": ["a", "b", "c", "d"], "final_metric": [0.1, 0.2, 0.3, 0.4],
        "lr": [0.1, 0.1, 0.2, 0.2], "hardware": ["cpu", "cuda", "cpu", "cpu"],
    })  # fmt: skip
    assert group_keys(runs) == ["model", "task", "lr"]


def test_a_run_lacking_a_key_is_its_own_configuration(tmp_path: Path) -> None:
    """Two sweeps where only one set task.seq_len: the other's run is a row with an empty
    value, not dropped; rows come sorted by their keys."""
    fake_run(tmp_path / "a", ["model=rnn", "task.seq_len=50"], model="rnn", task="adding",
             seed=0, final_metric=0.2, best_metric=0.1)  # fmt: skip
    fake_run(tmp_path / "b", ["model=rnn"], model="rnn", task="adding", seed=0,
             final_metric=0.3, best_metric=0.2)  # fmt: skip
    fake_run(tmp_path / "c", ["model=gru"], model="gru", task="adding", seed=0,
             final_metric=0.4, best_metric=0.3)  # fmt: skip
    table = aggregate(load_runs(find_runs([tmp_path])))
    assert len(table) == 3 and table["runs"].sum() == 3
    assert list(table["model"]) == ["gru", "rnn", "rnn"]
    assert sorted(table["final_metric_mean"]) == [0.2, 0.3, 0.4]
