"""What the report says about each sweep, in reading order: a header (what varied, how many runs,
when), the command, the headline, the tables, the figures with captions saying what to look at,
the runs that did not complete, and the config."""

from __future__ import annotations

import os
from collections.abc import Sequence
from datetime import datetime, timezone
from pathlib import Path

import numpy as np

from seqbench.compare import varies
from seqbench.report.collect import Sweep, counted, differing_keys, finished_between, run_config
from seqbench.report.render import Code, Details, Heading, Text
from seqbench.report.tables import (
    fmt,
    gate_table,
    gradient_table,
    label,
    pairs_table,
    results_table,
    runs_table,
)
from seqbench.report.views import figure_blocks


def report_blocks(
    sweeps: list[Sweep], title: str, where: Path | None = None, vs: Sequence[str] = ()
) -> list:
    """The whole report: a title, a table of contents, then one section per sweep. Paths are
    shown relative to `where` (the report's folder) when they lie below it, else by the sweep
    directory's name: a report sent to someone else carries no path of this machine. Who wins
    compares the models, and also the values of each key of `vs` where a sweep varies it."""
    now = datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    runs = sum(len(s.runs) for s in sweeps)
    blocks: list = [
        Heading(title, 1),
        Text(
            f"{counted(len(sweeps), 'sweep')}, {counted(runs, 'run')}; written {now} by "
            f"`seqbench-report` from the run directories (metrics.json, history.csv, "
            f"lag_norms.csv, grad_norms.csv, gates.csv, .hydra/) without re-training."
        ),
    ]
    if len(sweeps) > 1:
        items = "; ".join(f"{i}. {_title(s)}" for i, s in enumerate(sweeps, 1))
        blocks.append(Text(f"Contents: {items}."))
    for index, sweep in enumerate(sweeps, 1):
        blocks += sweep_blocks(sweep, index, where, vs)
    return blocks


def _title(sweep: Sweep) -> str:
    tasks = sorted(sweep.runs["task"].dropna().astype(str).unique())
    varied = [
        f"{k} ∈ {{{', '.join(map(str, _values(sweep, k)))}}}"
        for k in sweep.by
        if len(_values(sweep, k)) > 1
    ]
    seeds = sweep.runs["seed"].dropna().nunique()
    return f"{'/'.join(tasks)}: {' × '.join(varied) or 'one configuration'}, {seeds} seed" + (
        "s" if seeds != 1 else ""
    )


def _values(sweep: Sweep, key: str) -> list:
    values = sweep.runs[key].dropna().unique().tolist()
    return sorted(
        values, key=lambda v: (isinstance(v, str), v if not isinstance(v, str) else 0, str(v))
    )


def shown(path: Path, where: Path | None) -> str:
    """`path` relative to `where` if it lies below it, else its last part."""
    path = Path(path).resolve()
    if where is not None and path.is_relative_to(Path(where).resolve()):
        return str(path.relative_to(Path(where).resolve())) or "."
    return path.name


def sweep_blocks(
    sweep: Sweep, index: int, where: Path | None = None, vs: Sequence[str] = ()
) -> list:
    blocks: list = [Heading(f"{index}. {_title(sweep)}", 2, f"sweep-{index}")]
    blocks.append(Text(_header(sweep, where)))
    if sweep.command:
        typed = ""
        if sweep.cwd:  # where it was typed, from the sweep directory: '..' for its parent
            typed = f" (typed in `{os.path.relpath(sweep.cwd, sweep.path.resolve())}` from the "
            typed += "sweep directory)"
        blocks += [Text(f"The sweep's command{typed}:"), Code(sweep.command, "bash")]
    blocks += [Heading("Results", 3), Text(_headline(sweep)), results_table(sweep)]
    blocks += _verdict_blocks(sweep)
    for key in dict.fromkeys(vs):  # the model's section is always there
        if key != "model" and key in sweep.by and varies(sweep.runs[key]):
            blocks += _verdict_blocks(sweep, key)
    blocks += [Text(_table_note(sweep)), Heading("Gradients", 3), gradient_table(sweep)]
    gates = gate_table(sweep)
    if gates is not None:
        blocks += [Text(_gate_note(sweep)), gates]
    blocks += figure_blocks(sweep, f"s{index}")
    blocks += _text_blocks(sweep)
    unfinished = sweep.runs[sweep.runs["status"] != "completed"]
    if len(unfinished):
        blocks += [
            Heading("Runs that did not complete", 3),
            Text(
                f"{len(unfinished)} of {len(sweep.runs)} runs did not complete; they are left "
                "out of the means, the curves and the heat maps (the table counts them)."
            ),
            runs_table(sweep, only_unfinished=True),
        ]
    blocks.append(Details(f"All {len(sweep.runs)} runs and their commands", [runs_table(sweep)]))
    blocks += _config_blocks(sweep)
    return blocks


def _text_blocks(sweep: Sweep) -> list:
    """The task's last text of each configuration's first completed seed (chargen: a sample
    generated after the last validation), from metrics.json's "texts"."""
    blocks: list = []
    for values, group in sweep.groups(completed_only=True):
        first = group.sort_values("seed").iloc[0]
        for name, text in (sweep.metrics[first["run_dir"]].get("texts") or {}).items():
            blocks += [
                Text(
                    f"{label(sweep, values)}, seed {first['seed']}, {name} at step "
                    f"{text['step']:,}:"
                ),
                Code(text["text"], "text"),
            ]
    if blocks:
        blocks.insert(0, Heading("Samples", 3))
    return blocks


def _header(sweep: Sweep, where: Path | None = None) -> str:
    runs = sweep.runs
    counts = runs["status"].value_counts()
    status = ", ".join(f"{n} {s}" for s, n in counts.items())
    first, last = finished_between([Path(d) for d in runs["run_dir"]])
    when = f"{first:%Y-%m-%d %H:%M}" + (
        f" to {last:%Y-%m-%d %H:%M} UTC" if f"{last:%H:%M}" != f"{first:%H:%M}" else " UTC"
    )
    varied = [
        f"{k} ({', '.join(map(str, _values(sweep, k)))})"
        for k in sweep.by
        if len(_values(sweep, k)) > 1
    ]
    seeds = _values(sweep, "seed")
    metrics = next(iter(sweep.metrics.values()))
    wall = float(np.nansum(runs["wall_time_s"].to_numpy(dtype=float)))
    parts = [
        f"Directory `{shown(sweep.path, where)}`: {len(runs)} runs ({status}), finished {when}, "
        f"{wall:,.{1 if wall < 10 else 0}f} s of training in all",
        f"What varied: {'; '.join(varied) or 'nothing but the seed'}; seeds "
        f"{', '.join(map(str, seeds))}",
    ]
    metric, mode = metrics.get("metric"), metrics.get("mode")
    if metric:
        better = "lower" if mode == "min" else "higher"
        baseline = metrics.get("baseline")
        name = metrics.get("baseline_name")
        parts.append(
            f"Metric: validation {metric} ({better} is better)"
            + (
                f"; baseline {baseline:.4g}" + (f", {name}" if name else "")
                if isinstance(baseline, float)
                else ""
            )
        )
    device = metrics.get("device")
    if device:
        parts.append(f"Device {device}, torch {metrics.get('torch', '?')}")
    return ". ".join(parts) + "."


def _headline(sweep: Sweep) -> str:
    """Which configuration did best, which solved the task, how far the gradient reaches."""
    table = sweep.table
    done = table[table["completed"] > 0]
    if done.empty:
        return "No run completed: there is nothing to compare (see the runs below)."
    metrics = next(iter(sweep.metrics.values()))
    metric, mode = metrics.get("metric", "metric"), metrics.get("mode", "min")
    finals = done["final_metric_mean"].astype(float)
    best = finals.idxmin() if mode == "min" else finals.idxmax()
    names = {i: label(sweep, tuple(table.loc[i, k] for k in sweep.by)) for i in table.index}
    row = table.loc[best]
    text = [
        f"Best last validation {metric}: {names[best]}, "
        f"{fmt(row['final_metric_mean'], row['final_metric_std'])}"
    ]
    tests = done["test_metric_mean"].astype(float)
    if tests.notna().any():
        top = tests.idxmin() if mode == "min" else tests.idxmax()
        text.append(
            f"best test {metric} (best validation weights): {names[top]}, "
            f"{fmt(table.loc[top, 'test_metric_mean'], table.loc[top, 'test_metric_std'])}"
        )
    baseline = row["baseline_mean"]
    if np.isfinite(baseline):
        text[0] += f" (baseline {baseline:.4g})"
        beat = [
            names[i]
            for i, r in done.iterrows()
            if (r["final_metric_mean"] < r["baseline_mean"]) == (mode == "min")
        ]
        text.append(
            f"below the baseline at the end: {', '.join(beat)}"
            if mode == "min" and beat
            else f"above the baseline at the end: {', '.join(beat)}"
            if beat
            else "no configuration beat the baseline at the end"
        )
    solved = [
        f"{names[i]} {int(r['solved'])}/{int(r['completed'])} (at step "
        f"{fmt(r['solved_step_mean'], r['solved_step_std'], integer=True)})"
        for i, r in done.iterrows()
        if r["solved"] > 0
    ]
    if solved:
        never = [names[i] for i, r in done.iterrows() if r["solved"] == 0]
        text.append(
            "solved by " + "; ".join(solved) + (f"; never by {', '.join(never)}" if never else "")
        )
    return "; ".join(text) + "."


def compared_pairs(sweep: Sweep, vs: str | None = None):
    """Every pair of the models (`seqbench.verdicts.pair_frame`), or of the values of `vs`,
    named `key=value` (e.g. stateful=True) so that a verdict line reads on its own."""
    from seqbench.verdicts import pair_frame

    pairs = pair_frame(sweep.runs, sweep.by, vs)
    if vs is not None and vs != "model" and not pairs.empty:
        short = vs.rsplit(".", 1)[-1]
        pairs[["a", "b"]] = pairs[["a", "b"]].map(lambda v: f"{short}={v}")
    return pairs


def _verdict_blocks(sweep: Sweep, vs: str | None = None) -> list:
    """Who wins, per setting: the verdict lines and every pair (`seqbench.verdicts`); the
    models, or the values of `vs`."""
    from seqbench.verdicts import verdict_lines

    pairs = compared_pairs(sweep, vs)
    if pairs.empty:
        return []
    lines = verdict_lines(pairs, width=10**6)
    return [
        Heading("Who wins" if vs is None else f"Who wins: {vs.rsplit('.', 1)[-1]}", 3),
        *(Text(line) for line in lines[:-1]),  # one paragraph per setting
        pairs_table(pairs),
        Text(lines[-1]),
    ]


def _table_note(sweep: Sweep) -> str:
    return (
        "Means ± standard deviation over the completed seeds (diverged and failed runs are "
        "counted, not averaged), and in brackets the 95% interval of the mean (Student t over "
        "the seeds: with 3 seeds the mean ± 2.48 std, assuming the seeds spread roughly "
        "normally) and of the fraction solved (Wilson), computed by `seqbench.compare` as "
        "`seqbench-compare` does; "
        "`last val` is the last validation (a run that stops early: the one that stopped it), "
        "`best val` the best one, whose weights the run keeps (best.pt); `solved` counts the "
        "seeds whose kept weights reach the task's threshold, `first solved at step` the first "
        "validation step that did; `test` (tasks that have one) is the held-out test split, "
        "scored once at the end with the kept weights. The gradient table follows each loss term "
        "back from where it reads (lag 0) through the recurrence (`seqbench.lags`): the "
        "vanishing ratio is log10 of the gradient at the largest lag counted over the one at "
        "lag 0 (the lags that more than half of the (sequence, source) pairs reach: `lags "
        "counted`), how many orders of magnitude it loses (0: none); growth per step back is "
        "the fitted factor per lag (below 1: vanishing, above 1: exploding); the memory horizon "
        "counts the lags, lag 0 included, while the gradient stays ≥ 1e-3 of its value at lag "
        "0; exploding counts the runs whose gradient by lag grew above 10× its value at lag 0. "
        "`max ‖dL/dh_t‖` is the per-timestep norm's largest value over training."
    )


def _gate_note(sweep: Sweep) -> str:
    return (
        "Gated cells: the memory gate of layer 0 (LSTM: forget, GRU: update), its mean "
        "activation and the share of units whose mean is above 0.95 (units that hold their "
        "state across many steps), mean over the completed seeds."
    )


def _config_blocks(sweep: Sweep) -> list:
    run_dirs = [Path(d) for d in sweep.runs["run_dir"]]
    first = next((d for d in run_dirs if run_config(d) is not None), None)
    if first is None:
        return []
    differ = differing_keys(run_dirs)
    note = (
        f"The composed config of `{first.name}` (its `.hydra/config.yaml`); the runs differ "
        f"only in {', '.join(f'`{k}`' for k in differ)}."
        if differ
        else f"The composed config of `{first.name}` (its `.hydra/config.yaml`), the same for "
        "every run."
    )
    return [Details("Config", [Text(note), Code(run_config(first) or "", "yaml")])]
