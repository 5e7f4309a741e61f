"""What a terminal of 100 columns shows: the sweep's comparison table and a run's summary, with
no cell cut (no ellipsis, every cell's text in the rendered output)."""

from __future__ import annotations

import io
import json
import math
import re
import warnings
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from rich.console import Console
from rich.table import Table
from rich.text import Text

from seqbench.compare import aggregate, group_keys, print_table, terminal_table, to_display
from seqbench.loggers.console import summary_table
from tests.conftest import SMALL, run_small

WIDTH = 100


def render(table: Table, width: int = WIDTH) -> str:
    console = Console(width=width, record=True, file=io.StringIO(), color_system=None)
    console.print(table)
    return console.export_text()


def plain(cell) -> str:
    return cell.plain if isinstance(cell, Text) else Text.from_markup(str(cell)).plain


def assert_uncut(table: Table, width: int = WIDTH) -> str:
    """Render `table` at `width` columns; fail if a header or cell lost characters.

    Each body line splits on the table's vertical rule into one fragment per column, and a
    column's fragments, concatenated line after line, hold every cell of that column in order;
    a value that wrapped is still all there (whitespace aside), a cut one is not."""
    text = render(table, width)
    assert "…" not in text, text
    assert max(len(line) for line in text.splitlines()) <= width
    n = len(table.columns)
    lines = text.splitlines()
    rule = next((i for i, line in enumerate(lines) if line.startswith(("├", "┡", "╞"))), -1)
    parts = [(lines[rule + 1 :], lambda c: list(c.cells))]
    if table.show_header:
        parts.append((lines[:rule], lambda c: [c.header]))
    for part, cells_of in parts:
        rows = [line for line in part if line.count("│") == n + 1]
        for i, column in enumerate(table.columns):
            shown = re.sub(r"\s", "", "".join(line.split("│")[i + 1] for line in rows))
            for cell in cells_of(column):
                value = re.sub(r"\s", "", plain(cell))
                assert value in shown, f"{value!r} cut in column {i}:\n{text}"
                shown = shown[shown.index(value) + len(value) :]  # cells in row order
    return text


def runs_frame(rows: list[dict]) -> pd.DataFrame:
    """Per-run rows as load_runs makes them (the numbers it reads from metrics.json)."""
    return pd.DataFrame(rows)


def run_row(rng: np.random.Generator, model: str, seed: int, status: str = "completed",
            metric: str = "mse", **keys) -> dict:  # fmt: skip
    """One run's numbers, with the digits real runs produce (no round values)."""
    return {"model": model, "task": "adding", "seed": seed, **keys, "status": status,
            "metric": metric, "mode": "min", "final_metric": rng.uniform(1e-4, 0.2),
            "best_metric": rng.uniform(1e-4, 0.2), "baseline": 0.16666667,
            "solved": bool(rng.integers(2)), "solved_step": float(rng.integers(100, 3000)),
            "init_vanishing_ratio": rng.uniform(-40, -0.1),
            "end_vanishing_ratio": -math.inf if model == "rnn" else rng.uniform(-40, 5),
            "init_decay_rate": rng.uniform(0.5, 1), "end_decay_rate": rng.uniform(0.5, 1),
            "max_grad_norm": rng.uniform(0, 1e4), "wall_time_s": rng.uniform(10, 1e4),
            "steps_per_s": rng.uniform(1, 500), "num_parameters": 50_497.0,
            "exploding": False, "error": None, "run_dir": f"/runs/{model}/{seed}"}  # fmt: skip


def table_of(rows: list[dict]) -> pd.DataFrame:
    runs = runs_frame(rows)
    return aggregate(runs, group_keys(runs))


def test_three_cells_three_lengths_three_seeds_fit_uncut() -> None:
    rng = np.random.default_rng(0)
    rows = [run_row(rng, m, s, **{"task.seq_len": t}) for m in ("rnn", "lstm", "gru")
            for t in (200, 500, 1000) for s in range(3)]  # fmt: skip
    table = table_of(rows)
    text = assert_uncut(terminal_table(table, "multirun/long_adding/2026-11-30_16-00-00: 27 runs"))
    header = text.splitlines()[2]  # title, top rule, header
    for expected in ("model", "seq_len", "seeds", "solved", "final mse", "baseline",
                     "vanish@init", "vanish@end"):  # fmt: skip
        assert expected in header
    assert "task" not in header.replace("task.", "")  # one task: not a varying key
    assert "-inf" in text and "±" in text
    assert text.count("3/3") >= 9  # seeds of every row


def test_a_failed_and_a_diverged_job_are_counted_and_fit() -> None:
    rng = np.random.default_rng(1)
    rows = [run_row(rng, m, s, **{"optimizer.lr": lr}) for m in ("rnn", "lstm", "gru")
            for lr in (0.003, 0.0003) for s in range(3)]  # fmt: skip
    rows[0].update(status="failed", final_metric=math.nan, error="model.hidden_size=0 ...")
    rows[4].update(status="diverged")
    text = assert_uncut(terminal_table(table_of(rows)))
    assert "1 diverged, 1 failed" in text
    assert "2/3" in text  # seeds completed of run, on those two rows


def test_long_names_and_values_wrap_instead_of_being_cut() -> None:
    rng = np.random.default_rng(2)
    long = ["a_rather_long_model_name_from_a_plugin_package", "lstm"]
    rows = [run_row(rng, m, s, metric="cross_entropy", **{
                "task.seq_len": t, "optimizer.weight_decay": 1e-5 * (s % 2 + 1),
                "scheduler": "cosine_with_a_long_name", "task.path": f"/data/corpora/{t}/x.csv"})
            for m in long for t in (50, 100) for s in range(2)]  # fmt: skip
    rows[-1]["scheduler"] = "none"
    text = assert_uncut(terminal_table(table_of(rows), "a title that is longer " * 8))
    assert "configuration" in text  # too many keys for a column each: one column of key=value


def test_one_run_shows_its_model_and_task() -> None:
    text = assert_uncut(terminal_table(table_of([run_row(np.random.default_rng(3), "gru", 0)])))
    assert "gru" in text and "adding" in text


def test_a_narrow_terminal_folds_numbers_rather_than_cutting_them() -> None:
    rng = np.random.default_rng(4)
    rows = [run_row(rng, m, s) for m in ("rnn", "lstm") for s in range(3)]
    assert "…" not in render(terminal_table(table_of(rows)), width=60)


@pytest.fixture(scope="module")
def sentiment_metrics(tmp_path_factory) -> dict:
    """A real run: a 2-layer LSTM on sentiment (it has a test split), a few steps."""
    run_dir = tmp_path_factory.mktemp("run") / "a-run-directory-with-a-long-name-2026-11-30"
    base = [o for o in SMALL if not o.startswith("task.")]  # sentiment has no val_size
    return run_small(run_dir, "task=sentiment", "model=lstm", "model.num_layers=2",
                     "task.seq_len=16", base=base)  # fmt: skip


def test_run_summary_fits_uncut(sentiment_metrics: dict) -> None:
    metrics = dict(sentiment_metrics)
    assert metrics["test"] and len(metrics["grad_norms"]["init"]["layers"]) == 2
    metrics["error"] = (
        "RuntimeError: [enforce fail at alloc_cpu.cpp:117] data. DefaultCPUAllocator: not "
        "enough memory: you tried to allocate 137438953472 bytes. "
        + "/a/very/long/path/without/any/spaces/at/all/that/must/fold/"
        * 2
    )
    table = summary_table(metrics, "/tmp/outputs/2026-11-30/16-00-00/" + "x" * 90)
    text = assert_uncut(table)
    assert "[enforce fail at alloc_cpu.cpp:117]" in text  # brackets are text, not markup
    assert "grad by lag end" in text and "L1" in text
    scores = " ".join(text[text.index("test split (best weights)") :].replace("│", " ").split())
    expected = ", ".join(f"{name} {value:.4f}" for name, value in metrics["test"].items())
    assert scores.startswith(f"test split (best weights) {expected} "), scores  # folded whole
    for line in text.splitlines()[:3]:
        assert len(line) <= WIDTH


def rule_width(table: pd.DataFrame, width: int) -> int:
    """How wide the comparison is drawn at `width` columns (its top rule)."""
    text = render(terminal_table(table, width=width), width=width)
    return len(next(line for line in text.splitlines() if line.startswith("┌")))


def path_rows(length: int) -> list[dict]:
    """Two cells, each with its data path (1 + `length` characters)."""
    rng = np.random.default_rng(5)
    return [run_row(rng, m, s, **{"task.corpus.path": m[0] + "p" * length})
            for m in ("rnn", "lstm") for s in range(2)]  # fmt: skip


def test_one_configuration_column_exactly_when_a_column_per_key_does_not_fit(capsys) -> None:
    """The switch happens at the width rich itself needs for a column per key (measured here by
    rendering without a limit): at that width a column per key, one column less and the keys go
    into "configuration"; 100 columns by default, and for print_table off a terminal."""
    length = next(n for n in range(1, 200) if rule_width(table_of(path_rows(n)), 1000) == 101)
    table = table_of(path_rows(length))  # exactly one column too wide for 100
    headers = [plain(c.header) for c in terminal_table(table, width=101).columns]
    assert headers[:2] == ["model", "path"]  # the last part of the key
    narrow = terminal_table(table)
    assert plain(narrow.columns[0].header) == "configuration"
    cells = [plain(cell) for cell in narrow.columns[0].cells]
    assert cells == [f"lstm, path=l{'p' * length}", f"rnn, path=r{'p' * length}"]
    print_table(table)  # not a terminal here: 100 columns
    printed = capsys.readouterr().out
    assert "configuration" in printed and max(map(len, printed.splitlines())) <= 100


def test_the_tables_frame_title_and_caption() -> None:
    rng = np.random.default_rng(6)
    table = table_of([run_row(rng, m, s) for m in ("rnn", "gru") for s in range(2)])
    lines = [line.rstrip() for line in render(terminal_table(table)).splitlines()]
    assert lines[0] == "comparison"  # the default title, at the left
    assert lines[1].startswith("┌─") and "┬" in lines[1] and lines[3].startswith("├─")
    assert lines[4].startswith("│ gru ") and lines[5].startswith("│       │")  # the interval
    bottom = next(i for i, line in enumerate(lines) if line.startswith("└─"))
    assert " ".join(lines[bottom + 1 :]) == (
        "final: mean ± std [95% t interval over seeds]; more columns (best, solved step, "
        "decay, horizon, timing): comparison.csv/.md"
    )
    same_last_part = table_of([run_row(rng, "gru", s, **{"task.lr": s, "optimizer.lr": -s})
                               for s in range(2)])  # fmt: skip
    headers = [plain(c.header) for c in terminal_table(same_last_part, width=200).columns]
    assert headers[:2] == ["optimizer.lr", "task.lr"]  # full keys: "lr" twice would say nothing


def test_headers_without_a_metric_name_or_the_usual_columns() -> None:
    """seqbench-compare --metrics best_metric solved_step ... (no test split: no test column)."""
    rng = np.random.default_rng(7)
    table = table_of([run_row(rng, m, 0) for m in ("rnn", "gru")])
    headers = [plain(c.header) for c in terminal_table(table.drop(columns="metric")).columns]
    assert "final metric" in headers
    usual = [
        c for c in table.columns if c.startswith(("final_", "baseline", "init_van", "end_van"))
    ]
    headers = [plain(c.header) for c in terminal_table(table.drop(columns=usual)).columns]
    assert headers[3:6] == ["best", "solved at step", "decay@init"]  # --metrics: other names


def test_aggregate_at_its_edges() -> None:
    """One run: no std; a -inf among the runs: mean -inf, no std; no completed run: no mean; an
    older metrics.json without "exploding": none counted; all without a numerical warning. An
    unknown key is named with the keys there are."""
    rng = np.random.default_rng(8)
    rows = [
        run_row(rng, "gru", 0),
        run_row(rng, "rnn", 0),
        run_row(rng, "rnn", 1),
        run_row(rng, "lstm", 0, status="failed"),
        run_row(rng, "lstm", 1, status="failed"),
    ]
    runs = runs_frame(rows).drop(columns="exploding")  # fmt: skip
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        table = aggregate(runs, ["model"]).set_index("model")
    assert table.loc["gru", "final_metric_mean"] == rows[0]["final_metric"]
    assert math.isnan(table.loc["gru", "final_metric_std"])
    assert table.loc["rnn", "end_vanishing_ratio_mean"] == -math.inf
    assert math.isnan(table.loc["rnn", "end_vanishing_ratio_std"])
    assert table.loc["rnn", "final_metric_std"] == pytest.approx(
        np.std([rows[1]["final_metric"], rows[2]["final_metric"]], ddof=1)
    )
    assert math.isnan(table.loc["lstm", "final_metric_mean"])
    assert table["exploding"].tolist() == [0, 0, 0]
    with pytest.raises(KeyError, match=r"no run has the key 'lr'; known keys: \['baseline', "):
        aggregate(runs, ["model", "lr"])


def test_step_counts_read_as_integers_with_thousands_separators() -> None:
    rng = np.random.default_rng(9)
    rows = [run_row(rng, "gru", s) for s in range(2)]
    rows[0]["solved_step"], rows[1]["solved_step"] = 1000.0, 2047.0
    display = to_display(aggregate(runs_frame(rows), ["model"]))
    # mean 1,523.5, std (ddof=1) 740.3: 2 digits of the spread, the mean to the same place;
    # t(0.975, 1) = 12.706 over 2 seeds: 1,523.5 ± 6,651
    assert display["solved_step"].tolist() == ["1,520 ± 740 [-5,130, 8,180]"]
    assert display["num_parameters"].tolist() == ["50,497"]  # the same in every run: no ± 0


@pytest.mark.parametrize("width", [60, 70, 80, 100, 120, 160])
@pytest.mark.parametrize(
    ("total", "metric", "loss"), [(300, "mse", 0.1556), (100_000, "accuracy", 12.34567)]
)
def test_the_live_bar_fits_one_line(width, total, metric, loss, monkeypatch) -> None:
    """The run's live progress bar at the terminal's width: one line, nothing cut (rich
    squeezed its nine columns into ellipses at 60 columns, and wrapped 'steps/s' at 80); the
    step count, the loss, the metric and the time left always, '--' for the metric before the
    first validation; the bar, the speed and the elapsed time where there is room."""
    from seqbench.loggers.console import ConsoleLogger

    monkeypatch.setenv("COLUMNS", str(width))  # the width rich's Console takes
    logger = ConsoleLogger(total, metric, "rich")
    try:
        logger.on_step(total // 3, loss, 1.0, False)
        for value, shown in ((None, "--"), (0.734512, "0.7345")):
            if value is not None:
                logger.on_eval(total // 3, {metric: value})
            console = Console(width=width, record=True, file=io.StringIO(), color_system=None)
            console.print(logger.progress.get_renderable())
            lines = console.export_text().rstrip("\n").split("\n")
            assert len(lines) == 1 and len(lines[0]) <= width and "…" not in lines[0], lines
            line = lines[0]
            assert f"{total // 3}/{total}" in line and f"loss {loss:.4f}" in line
            assert f"val {metric} {shown} " in line and re.search(r"eta \S+$", line.rstrip())
            if width >= 120:  # room for everything
                assert "steps/s" in line and "0:00:00" in line and "━" in line
            if width == 60:  # the optional columns went first
                assert "steps/s" not in line and "0:00:00" not in line and "━" not in line
    finally:
        logger.close()


def test_brackets_in_a_path_or_a_sample_are_printed_as_written(capsys) -> None:
    """Rich reads `[...]` as markup: a run directory `[exp1]` lost those characters, and a
    generated sample or a path with `[/x]` stopped the run with a MarkupError."""
    from seqbench.loggers.console import ConsoleLogger

    for job in (None, "#0"):  # a single run, then a sweep job's closing line
        console = ConsoleLogger(10, "bpc", "plain", sweep_job=job)
        console.info("Run dir: outputs/[exp1]/a[/x]")
        console.on_text(5, {"sample": "Ham. [Exit] [/Exit] [bold red]"})
        out = capsys.readouterr().out
        assert "Run dir: outputs/[exp1]/a[/x]\n" in out
        assert "step 5 sample: 'Ham. [Exit] [/Exit] [bold red]'\n" in out
    metrics = {"status": "completed", "metric": "bpc", "best_metric": 1.0, "baseline": 2.0,
               "steps": 10, "wall_time_s": 3.0}  # fmt: skip
    console.summary(metrics, "outputs/[exp1]/a[/x]")
    assert capsys.readouterr().out.endswith("-> outputs/[exp1]/a[/x]\n")


def test_the_stocks_flags_read_yes_or_no_in_the_summary(sentiment_metrics: dict) -> None:
    """beats_zero and beats_yesterday are 1.0 or 0.0 in metrics.json (a sweep's mean is then
    the fraction of seeds that beat the baseline); the run's summary says yes or no."""
    metrics = dict(sentiment_metrics)
    metrics["test"] = {"rmse": 0.0189, "rmse_vs_zero": 1.0, "beats_zero": 0.0,
                       "beats_yesterday": 1.0}  # fmt: skip
    text = " ".join(assert_uncut(summary_table(metrics, "run")).replace("│", " ").split())
    assert "rmse 0.0189, rmse_vs_zero 1.0000, beats_zero no, beats_yesterday yes" in text


def test_a_run_says_what_it_trains_then_where_it_writes(tmp_path: Path) -> None:
    """Two lines before the first step: the model, the task, its size and baseline; then the
    run directory on a line of its own (a long path broke the first line at 80 columns)."""
    from tests.conftest import seqbench_main

    run_dir = tmp_path / "run"
    result = seqbench_main(*SMALL, "log.progress=plain", "log.tensorboard=false",
                           f"hydra.run.dir={run_dir}", cwd=tmp_path)  # fmt: skip
    assert result.returncode == 0, result.stderr
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert result.stdout.splitlines()[:2] == [
        f"lstm on adding: {metrics['num_parameters']:,} parameters, cpu, seed 0; "
        f"baseline mse {metrics['baseline']:.4f}",
        f"run dir: {run_dir}",
    ]


@pytest.mark.parametrize("width", [50, 60, 70, 80, 90, 100, 120])
def test_a_narrow_terminal_breaks_no_header_and_names_the_columns_it_leaves_out(width) -> None:
    """Before, 80 columns broke every header mid-word ("configurat / ion", "vanish@ini / t").
    Now each column is at least as wide as its longest word; where they do not all fit, the
    vanishing ratios, then the baseline, are left out and the caption names them."""
    rng = np.random.default_rng(6)
    for rows in ([run_row(rng, m, s) for m in ("rnn", "lstm") for s in range(2)],
                 [run_row(rng, m, s, **{"task.seq_len": t}) for m in ("rnn", "lstm", "gru")
                  for t in (200, 1000) for s in range(3)]):  # fmt: skip
        rich_table = terminal_table(table_of(rows), "sweep", width=width)
        text = assert_uncut(rich_table, width)
        lines = text.splitlines()
        top = next(i for i, line in enumerate(lines) if line.startswith("┌"))
        rule = next(i for i, line in enumerate(lines) if line.startswith("├"))
        for i, column in enumerate(rich_table.columns):
            words = " ".join(line.split("│")[i + 1] for line in lines[top + 1 : rule]).split()
            assert words == plain(column.header).split(), (width, words)
        headers = [plain(c.header) for c in rich_table.columns]
        caption = " ".join(plain(rich_table.caption).split())
        for name in ("vanish@end", "vanish@init", "baseline"):
            assert (name in headers) != (f"{name}, " in caption), (width, name, caption)
        if width >= 100:
            assert {"vanish@end", "vanish@init", "baseline"} <= set(headers)


def test_the_summary_says_a_run_stopped_before_its_planned_steps(sentiment_metrics) -> None:
    """Early stopping, an Optuna trial pruned, an interruption: the status says why and the
    steps row how many of the planned steps ran (before: '200 (36.7 steps/s)', status
    'completed', nothing more)."""

    def rows(**changes) -> str:
        metrics = {**sentiment_metrics, "steps_planned": 2000, "steps": 200, **changes}
        return " ".join(assert_uncut(summary_table(metrics, "run")).replace("│", " ").split())

    early = rows(stopped_early=True, stopped_at_step=200)
    assert "status completed, stopped early at step 200 (train.early_stopping)" in early
    assert "steps 200 of 2,000 (" in early
    pruned = rows(status="pruned", pruned_at_step=300, steps=300)
    assert "status pruned at step 300 model" in pruned and "steps 300 of 2,000 (" in pruned
    whole = rows(steps=2000)
    assert "status completed model" in whole and "steps 2,000 (" in whole
