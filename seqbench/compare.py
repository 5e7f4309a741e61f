"""Comparison tables over finished runs: one row per configuration, mean ± std over seeds.

`load_runs` reads run directories (their metrics.json and .hydra/overrides.yaml) into one row
per run; `aggregate` groups them by the keys that differ between runs (the seed aside) and
reduces each group. Both are pure pandas and know nothing of Hydra's runtime. `main` is the
`seqbench-compare` command.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd
import yaml

if TYPE_CHECKING:
    from rich.table import Table

# Per-run numbers aggregated as mean ± std (over the runs that completed).
NUMERIC = [
    "final_metric",
    "best_metric",
    "test_metric",  # the test split (tasks that have one), scored once with the best weights
    "baseline",
    "solved_step",
    "init_vanishing_ratio",
    "init_decay_rate",
    "init_growth_rate",
    "init_memory_horizon",
    "end_vanishing_ratio",
    "end_decay_rate",
    "end_growth_rate",
    "end_memory_horizon",
    "max_grad_norm",
    "wall_time_s",
    "steps_per_s",
    "num_parameters",
]
IGNORED_KEYS = {"seed", "hardware", "log.progress", "log.tensorboard"}


def find_runs(paths: Iterable[Path]) -> list[Path]:
    """Run directories (holding metrics.json) at or below each path, sorted, without repeats."""
    found: set[Path] = set()
    for path in map(Path, paths):
        found.update(p.parent.resolve() for p in path.rglob("metrics.json"))  # path's own too
    return sorted(found)


def parse_overrides(items: Iterable[str]) -> dict[str, str]:
    """['model=gru', '+x=1', 'task.seq_len=50'] -> {'model': 'gru', 'x': '1', ...}."""
    out = {}
    for item in items:
        key, _, value = item.partition("=")
        out[key.lstrip("+~")] = value
    return out


def load_runs(run_dirs: Iterable[Path]) -> pd.DataFrame:
    """One row per run: its overrides (as columns named by key) and its metrics."""
    rows = []
    for run_dir in map(Path, run_dirs):
        metrics = json.loads((run_dir / "metrics.json").read_text())
        overrides_file = run_dir / ".hydra" / "overrides.yaml"
        if overrides_file.is_file():
            overrides = yaml.safe_load(overrides_file.read_text()) or []
        else:
            overrides = metrics.get("overrides", [])
        row = {
            k: _value(v)
            for k, v in parse_overrides(overrides).items()
            if not k.startswith("hydra.")
        }
        row.update(_run_numbers(metrics))
        row["run_dir"] = str(run_dir)
        rows.append(row)
    return pd.DataFrame(rows)


def _run_numbers(m: dict) -> dict:
    # the vanishing/exploding verdicts come from the lag profile (runs older than it: n/a; their
    # per-timestep summaries measured the loss's shape on padded and many-loss tasks)
    grads = m.get("grad_norms") or {}
    lags = m.get("lag_norms") or {}

    def layer0(when: str, key: str) -> float:
        snap = lags.get(when)
        value = snap["layers"][0].get(key) if snap else None  # older runs lack newer keys
        return math.nan if value is None else float(value)

    return {
        "model": m.get("model"),
        "task": m.get("task"),
        "seed": m.get("seed"),
        "status": m.get("status", "failed"),
        "metric": m.get("metric"),
        "mode": m.get("mode"),
        "final_metric": _num(m.get("final_metric")),
        "best_metric": _num(m.get("best_metric")),
        "test_metric": _num((m.get("test") or {}).get(m.get("metric"))),
        "baseline": _num(m.get("baseline")),
        "solved": bool(m.get("solved_step") is not None),
        "solved_step": _num(m.get("solved_step")),
        "init_vanishing_ratio": layer0("init", "vanishing_ratio"),
        "init_decay_rate": layer0("init", "decay_rate"),
        "end_vanishing_ratio": layer0("end", "vanishing_ratio"),
        "end_decay_rate": layer0("end", "decay_rate"),
        "init_growth_rate": layer0("init", "growth_rate"),
        "init_memory_horizon": layer0("init", "memory_horizon"),
        "end_growth_rate": layer0("end", "growth_rate"),
        "end_memory_horizon": layer0("end", "memory_horizon"),
        "exploding": any(
            bool(snap and snap["layers"][0].get("exploding"))
            for snap in (lags.get("init"), lags.get("end"))
        ),
        "max_grad_norm": _num(grads.get("max_norm")),
        "wall_time_s": _num(m.get("wall_time_s")),
        "steps_per_s": _num(m.get("steps_per_s")),
        "num_parameters": _num(m.get("num_parameters")),
        "error": m.get("error"),
    }


def _value(text: str) -> int | float | str:
    """An override's value as a number when it is one, so that 25 < 100 in the table."""
    for kind in (int, float):
        try:
            return kind(text)
        except ValueError:
            pass
    return text


def _num(value) -> float:
    return math.nan if value is None else float(value)


def varies(values: pd.Series) -> bool:
    """Do these values of one key differ? A missing value differs from any set one (map(str):
    pandas 3's astype(str) keeps the missing value missing, and nunique would not count it)."""
    return values.map(str).nunique() > 1


def group_keys(runs: pd.DataFrame) -> list[str]:
    """model and task, then every override key whose value differs between runs (not seed)."""
    core = {"model", "task", "status", "metric", "mode", "solved", "exploding", "error", "run_dir"}
    varying = [
        c for c in runs.columns
        if c not in core and c not in NUMERIC and c not in IGNORED_KEYS
        and varies(runs[c])
    ]  # fmt: skip
    return ["model", "task", *sorted(varying)]


def aggregate(runs: pd.DataFrame, by: Sequence[str] | None = None) -> pd.DataFrame:
    """One row per configuration: counts, and mean/std over completed runs of each number.

    Columns: the group keys, metric, runs, completed, diverged, failed, interrupted, solved
    (how many runs reached the task's threshold), exploding (how many runs, diverged ones
    included, had layer 0's gradient by lag flagged exploding at init or at the end), then
    <number>_mean and <number>_std.
    A -inf vanishing ratio (gradient underflow) stays -inf in the mean; std is NaN for one run.
    """
    by = list(by) if by else group_keys(runs)
    for key in by:
        if key not in runs.columns:
            raise KeyError(f"no run has the key {key!r}; known keys: {sorted(runs.columns)}")
    rows = []
    for values, group in runs.groupby(by, dropna=False, sort=True):
        values = values if isinstance(values, tuple) else (values,)
        row = dict(zip(by, values, strict=True))
        row["metric"] = group["metric"].dropna().iloc[0] if group["metric"].notna().any() else None
        status = group["status"]
        row["runs"] = len(group)
        for name in ("completed", "diverged", "failed", "interrupted"):
            row[name] = int((status == name).sum())
        done = group[status == "completed"]
        row["solved"] = int(done["solved"].sum())
        row["exploding"] = int(group["exploding"].sum()) if "exploding" in group else 0
        for col in NUMERIC:
            if col not in done.columns:
                row[f"{col}_mean"] = row[f"{col}_std"] = math.nan
                continue
            data = done[col].to_numpy(dtype=float)
            data = data[~np.isnan(data)]
            row[f"{col}_mean"] = float(np.mean(data)) if len(data) else math.nan
            row[f"{col}_std"] = (
                float(np.std(data, ddof=1))
                if len(data) > 1 and np.isfinite(data).all()
                else math.nan
            )
        rows.append(row)
    return pd.DataFrame(rows)


# Short headers for the terminal table.
SHORT = {
    "final_metric": "final",
    "best_metric": "best",
    "test_metric": "test",
    "solved_step": "solved at step",
    "init_vanishing_ratio": "vanish@init",
    "init_decay_rate": "decay@init",
    "end_vanishing_ratio": "vanish@end",
    "end_decay_rate": "decay@end",
    "init_growth_rate": "growth@init",
    "init_memory_horizon": "horizon@init",
    "end_growth_rate": "growth@end",
    "end_memory_horizon": "horizon@end",
    "max_grad_norm": "max |dL/dh|",
    "wall_time_s": "time s",
    "steps_per_s": "steps/s",
    "num_parameters": "params",
}


def to_display(table: pd.DataFrame, short: bool = False) -> pd.DataFrame:
    """Human columns: 'mean ± std' strings (std left out where it is 0 or undefined), counts as
    'k/n'; with `short`, the terminal's headers."""
    counts = ("runs", "completed", "diverged", "failed", "interrupted", "solved", "exploding")
    keys = [c for c in table.columns if not c.endswith(("_mean", "_std")) and c not in counts]
    out = table[keys].copy()
    out["seeds"] = table["completed"].astype(str) + "/" + table["runs"].astype(str)
    failures = table["diverged"].astype(str) + "/" + table["failed"].astype(str)
    out["div/fail" if short else "diverged/failed"] = failures
    out["solved"] = table["solved"].astype(str) + "/" + table["completed"].astype(str)
    if "exploding" in table.columns:
        out["exploding"] = table["exploding"].astype(str) + "/" + table["runs"].astype(str)
    for col in NUMERIC:
        if f"{col}_mean" not in table.columns:
            continue
        if col == "test_metric" and table[f"{col}_mean"].isna().all():
            continue  # a task without a test split: no column of n/a
        out[SHORT[col] if short and col in SHORT else col] = [
            _fmt(m, s, integer=col in ("num_parameters", "solved_step"))
            for m, s in zip(table[f"{col}_mean"], table[f"{col}_std"], strict=True)
        ]
    return out


def _fmt(mean: float, std: float, *, integer: bool) -> str:
    if math.isnan(mean):
        return "n/a"
    text = f"{mean:,.0f}" if integer else f"{mean:.4g}"
    if math.isnan(std) or std == 0:
        return text
    return f"{text} ± {std:,.0f}" if integer else f"{text} ± {std:.2g}"


def write_tables(
    table: pd.DataFrame, out_dir: Path, formats: Sequence[str] = ("csv", "md")
) -> list[Path]:
    """comparison.csv (raw numbers), comparison.md / comparison.tex (display strings)."""
    from seqbench.files import atomic_write

    written = []
    display = to_display(table)
    for fmt in formats:
        path = Path(out_dir) / f"comparison.{ {'csv': 'csv', 'md': 'md', 'latex': 'tex'}[fmt] }"
        if fmt == "csv":
            atomic_write(path, lambda f: table.to_csv(f, index=False))
        elif fmt == "md":
            atomic_write(path, lambda f: f.write(display.to_markdown(index=False) + "\n"))
        else:
            atomic_write(path, lambda f: f.write(display.to_latex(index=False)))
        written.append(path)
    return written


# What the terminal shows (everything else stays in comparison.csv/.md): the numbers a reader
# compares first, each a "mean ± std" string that must fit 100 columns uncut.
TERMINAL = {
    "final_metric": "final {metric}",
    "baseline": "baseline",
    "init_vanishing_ratio": "vanish@init",
    "end_vanishing_ratio": "vanish@end",
}


def terminal_table(table: pd.DataFrame, title: str = "comparison", width: int = 100) -> Table:
    """The sweep's table for a terminal `width` columns wide: the keys that differ between rows
    (all group keys when there is one row), seeds completed/run, solved/completed, final
    metric, baseline and layer 0's vanishing ratio by lag at init and at the end, nothing cut.

    One column per key when they fit beside the numbers, else one "configuration" column of
    `key=value` pairs. Every cell folds onto more lines rather than losing characters to an
    ellipsis, and the widest (the keys) fold first.
    """
    from rich import box
    from rich.table import Table
    from rich.text import Text

    display = to_display(table)
    counts = ("runs", "completed", "diverged", "failed", "interrupted", "solved", "exploding")
    keys = [c for c in table.columns
            if not c.endswith(("_mean", "_std")) and c not in counts and c != "metric"]  # fmt: skip
    differ = [k for k in keys if varies(table[k])] or keys
    metric = next((m for m in table.get("metric", []) if isinstance(m, str)), "metric")
    numbers = [c for c in TERMINAL if f"{c}_mean" in table.columns]
    numbers = numbers or [c for c in NUMERIC if c in display]  # --metrics (test: if scored)
    columns = {"seeds": "seeds", "solved": "solved"}
    columns.update({c: TERMINAL.get(c, SHORT.get(c, c)).format(metric=metric) for c in numbers})
    short = {k: k.rsplit(".", 1)[-1] for k in differ}
    if len(set(short.values())) < len(short):  # seq_len of two groups: keep the full keys
        short = {k: k for k in differ}
    config = {short[k]: [str(v) for v in table[k]] for k in differ}

    def natural(header: str, cells: list[str]) -> int:  # its width unwrapped, rule and padding
        return max(len(header), *map(len, cells)) + 3

    used = 1 + sum(natural(h, [str(v) for v in display[c]]) for c, h in columns.items())
    if used + sum(natural(h, cells) for h, cells in config.items()) > width:
        pairs = [[v if k in ("model", "task") else f"{k}={v}" for v in cells]
                 for k, cells in config.items()]  # fmt: skip
        config = {"configuration": [", ".join(row) for row in zip(*pairs, strict=True)]}

    failures = int(table["diverged"].sum() + table["failed"].sum())
    caption = "more columns (best, solved step, decay, horizon, timing): comparison.csv/.md"
    if failures:
        caption = (f"{int(table['diverged'].sum())} diverged, {int(table['failed'].sum())} "
                   f"failed (errors in their metrics.json); {caption}")  # fmt: skip
    rich_table = Table(title=Text(title), title_justify="left", caption=caption,
                       caption_justify="left", box=box.SQUARE, padding=(0, 1))  # fmt: skip
    for header in config:
        rich_table.add_column(Text(header), overflow="fold")
    for header in columns.values():
        rich_table.add_column(Text(header), overflow="fold", justify="right")
    for i in range(len(table)):
        cells = [cells[i] for cells in config.values()]
        cells += [str(display[c].iloc[i]) for c in columns]
        rich_table.add_row(*map(Text, cells))  # as written: brackets in a value are not markup
    return rich_table


def print_table(table: pd.DataFrame, title: str = "comparison") -> None:
    """Print `terminal_table` (100 columns when stdout is not a terminal, e.g. a log file)."""
    from rich.console import Console

    console = Console()
    if not console.is_terminal:
        console = Console(width=100)
    console.print(terminal_table(table, title, width=console.width), soft_wrap=False)


def main(argv: Sequence[str] | None = None) -> int:
    """`seqbench-compare PATH...`: the comparison table of any finished runs or sweeps."""
    parser = argparse.ArgumentParser(
        prog="seqbench-compare",
        description="Aggregate finished seqbench runs (mean ± std over seeds) into a table.",
    )
    parser.add_argument("paths", nargs="+", type=Path, help="run or sweep directories")
    parser.add_argument("--by", nargs="+", help="group-by keys (default: keys that differ)")
    parser.add_argument("--metrics", nargs="+", choices=NUMERIC, help="numbers to show")
    parser.add_argument(
        "--format", nargs="+", default=["csv", "md"], choices=["csv", "md", "latex"]
    )
    parser.add_argument("--out", type=Path, default=Path("."), help="where to write the tables")
    args = parser.parse_args(argv)
    runs = find_runs(args.paths)
    if not runs:
        print(
            f"seqbench-compare: error: no metrics.json under {[str(p) for p in args.paths]}",
            file=sys.stderr,
        )
        return 2
    try:
        table = aggregate(load_runs(runs), args.by)
    except KeyError as err:
        print(f"seqbench-compare: error: --by {err.args[0]}", file=sys.stderr)
        return 2
    if args.metrics:
        keep = [c for c in table.columns if not c.endswith(("_mean", "_std"))
                or c.rsplit("_", 1)[0] in args.metrics]  # fmt: skip
        table = table[keep]
    args.out.mkdir(parents=True, exist_ok=True)
    for path in write_tables(table, args.out, args.format):
        print(f"wrote {path}")
    print_table(table, title=f"{len(runs)} runs")
    return 0
