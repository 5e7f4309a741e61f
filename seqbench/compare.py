"""Comparison tables over finished runs: one row per configuration, mean ± std over seeds and
a 95% interval, and who wins (`seqbench.verdicts`).

`load_runs` (`seqbench.rundirs`) reads run directories into one row per run; `aggregate` groups
them by the keys that differ between runs (the seed aside) and reduces each group. Both are pure
pandas (and SciPy for the intervals) and know nothing of Hydra's runtime. Numbers in every table
follow one rule (`seqbench.numbers`). `main` is the `seqbench-compare` command.
"""

from __future__ import annotations

import argparse
import math
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd

from seqbench.errors import exit_on_closed_stdout, stdout_console
from seqbench.numbers import format_cells, key_texts
from seqbench.rundirs import (
    IGNORED_KEYS,
    NUMERIC,
    UnreadableRun,
    find_runs,
    load_runs,
    parse_overrides,
)

if TYPE_CHECKING:
    from rich.table import Table

__all__ = ["IGNORED_KEYS", "NUMERIC", "aggregate", "find_runs", "format_cells", "group_keys",
           "load_runs", "main", "parse_overrides", "print_table", "terminal_table", "to_display",
           "varies", "write_tables"]  # fmt: skip


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

    Columns: the group keys, metric, runs, completed, diverged, failed, interrupted, pruned (an
    Optuna search's trials its pruner stopped: counted, not averaged), solved
    (how many runs reached the task's threshold) with solved_low/solved_high (Wilson's 95%
    interval of the fraction solved), exploding (how many runs, diverged ones included, had layer
    0's gradient by lag flagged exploding at init or at the end), then <number>_mean,
    <number>_std and <number>_low/_high (Student t 95% interval of the mean over seeds).
    A -inf vanishing ratio (gradient underflow) stays -inf in the mean; std is NaN for one run.
    """
    by = list(by) if by else group_keys(runs)
    for key in by:
        if key not in runs.columns:
            raise KeyError(f"no run has the key {key!r}; known keys: {sorted(runs.columns)}")
    from seqbench.stats import mean_interval, proportion_interval

    rows = []
    for values, group in runs.groupby(by, dropna=False, sort=True):
        values = values if isinstance(values, tuple) else (values,)
        row = dict(zip(by, values, strict=True))
        row["metric"] = group["metric"].dropna().iloc[0] if group["metric"].notna().any() else None
        status = group["status"]
        row["runs"] = len(group)
        for name in ("completed", "diverged", "failed", "interrupted", "pruned"):
            row[name] = int((status == name).sum())
        done = group[status == "completed"]
        row["solved"] = int(done["solved"].sum())
        row["solved_low"], row["solved_high"] = proportion_interval(row["solved"], len(done))
        row["exploding"] = int(group["exploding"].sum()) if "exploding" in group else 0
        for col in NUMERIC:
            if col not in done.columns:
                row[f"{col}_mean"] = row[f"{col}_std"] = math.nan
                row[f"{col}_low"] = row[f"{col}_high"] = math.nan
                continue
            data = done[col].to_numpy(dtype=float)
            data = data[~np.isnan(data)]
            row[f"{col}_mean"] = float(np.mean(data)) if len(data) else math.nan
            row[f"{col}_std"] = (
                float(np.std(data, ddof=1))
                if len(data) > 1 and np.isfinite(data).all()
                else math.nan
            )
            row[f"{col}_low"], row[f"{col}_high"] = mean_interval(data)
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


SUFFIXES = ("_mean", "_std", "_low", "_high")
COUNTS = ("runs", "completed", "diverged", "failed", "interrupted", "pruned", "solved",
          "exploding")  # fmt: skip


def to_display(table: pd.DataFrame, short: bool = False) -> pd.DataFrame:
    """Human columns: 'mean ± std [low, high]' strings (`format_cells`: std left out where it
    is 0 or undefined, the interval where there is one seed), counts as 'k/n' (solved with
    Wilson's interval of the fraction); with `short`, the terminal's headers."""
    keys = [c for c in table.columns if not c.endswith(SUFFIXES) and c not in COUNTS]
    out = table[keys].copy()
    for key in keys:  # a gap as 'n/a', long floats shortened (numbers.key_texts)
        texts = key_texts(out[key])
        if out[key].isna().any() or texts != [str(v) for v in out[key]]:
            out[key] = texts
    out["seeds"] = table["completed"].astype(str) + "/" + table["runs"].astype(str)
    failures = table["diverged"].astype(str) + "/" + table["failed"].astype(str)
    out["div/fail" if short else "diverged/failed"] = failures
    out["solved"] = [
        f"{k}/{n}" if short or "solved_low" not in table or math.isnan(lo)
        else f"{k}/{n} [{lo:.2f}, {hi:.2f}]"
        for k, n, lo, hi in zip(table["solved"], table["completed"],
                                table.get("solved_low", table["solved"] * math.nan),
                                table.get("solved_high", table["solved"] * math.nan), strict=True)
    ]  # fmt: skip
    if "pruned" in table.columns and table["pruned"].any():  # an Optuna search's pruned trials
        out["pruned"] = table["pruned"].astype(str) + "/" + table["runs"].astype(str)
    if "exploding" in table.columns:
        out["exploding"] = table["exploding"].astype(str) + "/" + table["runs"].astype(str)
    for col in NUMERIC:
        if f"{col}_mean" not in table.columns:
            continue
        if col == "test_metric" and table[f"{col}_mean"].isna().all():
            continue  # a task without a test split: no column of n/a
        nan = [math.nan] * len(table)
        out[SHORT[col] if short and col in SHORT else col] = format_cells(
            table[f"{col}_mean"], table[f"{col}_std"], table.get(f"{col}_low", nan),
            table.get(f"{col}_high", nan), integer=col in ("num_parameters", "solved_step"),
        )  # fmt: skip
    return out


#: How the tables' intervals are taken, said under every table that shows them.
INTERVALS = (
    "Cells: mean ± std over the completed seeds [95% interval of the mean: Student t over the "
    "seeds; with 3 seeds it is the mean ± 2.48 std and assumes the seeds spread roughly "
    "normally, so it cannot resolve differences smaller than that]; solved: k/n [Wilson's 95% "
    "interval of the fraction]."
)


def write_tables(
    table: pd.DataFrame,
    out_dir: Path,
    formats: Sequence[str] = ("csv", "md"),
    pairs: pd.DataFrame | None = None,
) -> list[Path]:
    """comparison.csv (raw numbers), comparison.md / comparison.tex (display strings); with
    `pairs` (`seqbench.verdicts.pair_frame`), who wins: comparison_pairs.csv (raw) and, in
    comparison.md, the verdict lines and the table of pairs."""
    from seqbench.files import atomic_write
    from seqbench.verdicts import pairs_markdown, verdict_lines

    written = []
    display = to_display(table)
    text = display.to_markdown(index=False) + "\n\n" + INTERVALS + "\n"
    if pairs is not None and len(pairs):
        lines = "\n".join(f"- {line}" for line in verdict_lines(pairs, width=10**6))
        text += f"\n## Who wins\n\n{lines}\n\n{pairs_markdown(pairs)}\n"
    for fmt in formats:
        path = Path(out_dir) / f"comparison.{ {'csv': 'csv', 'md': 'md', 'latex': 'tex'}[fmt] }"
        if fmt == "csv":
            atomic_write(path, lambda f: table.to_csv(f, index=False))
            if pairs is not None and len(pairs):
                pairs_path = Path(out_dir) / "comparison_pairs.csv"
                atomic_write(pairs_path, lambda f: pairs.to_csv(f, index=False))
                written.append(pairs_path)
        elif fmt == "md":
            atomic_write(path, lambda f: f.write(text))
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


def _short_parts(table: pd.DataFrame) -> tuple[dict[str, list[str]], dict[str, str], pd.DataFrame]:
    """What the short table shows: the keys that differ ({header: cells}), the columns of
    numbers ({display column: header}) and the display strings they come from."""
    # the interval beside the compared number (the final metric), not beside every number
    shown = table.drop(columns=[c for c in table.columns if c.endswith(("_low", "_high"))
                                and not c.startswith(("final_metric", "test_metric"))])  # fmt: skip
    display = to_display(shown)
    keys = [c for c in table.columns
            if not c.endswith(SUFFIXES) and c not in COUNTS and c != "metric"]  # fmt: skip
    differ = [k for k in keys if varies(table[k])] or keys
    metric = next((m for m in table.get("metric", []) if isinstance(m, str)), "metric")
    numbers = [c for c in TERMINAL if f"{c}_mean" in table.columns]
    numbers = numbers or [c for c in NUMERIC if c in display]  # --metrics (test: if scored)
    columns = {"seeds": "seeds", "solved": "solved"}
    columns.update({c: TERMINAL.get(c, SHORT.get(c, c)).format(metric=metric) for c in numbers})
    short = {k: k.rsplit(".", 1)[-1] for k in differ}
    if len(set(short.values())) < len(short):  # seq_len of two groups: keep the full keys
        short = {k: k for k in differ}
    return {short[k]: key_texts(table[k]) for k in differ}, columns, display


def short_markdown(table: pd.DataFrame) -> str:
    """The terminal's table as Markdown (TensorBoard's Text tab: the columns a reader compares
    first, which a narrow pane shows whole; comparison.md has every column)."""
    config, columns, display = _short_parts(table)
    frame = pd.DataFrame({**config, **{h: display[c].tolist() for c, h in columns.items()}})
    return frame.to_markdown(index=False)


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

    config, columns, display = _short_parts(table)

    def natural(header: str, cells: list[str]) -> int:  # its width unwrapped, rule and padding
        return max(len(header), *(len(line) for cell in cells for line in cell.split("\n"))) + 3

    # an interval goes on its own line under its mean ± std: the column stays narrow
    display = display.apply(lambda col: col.map(lambda v: str(v).replace(" [", "\n[")))
    used = 1 + sum(natural(h, [str(v) for v in display[c]]) for c, h in columns.items())
    if len(config) > 1 and used + sum(natural(h, c) for h, c in config.items()) > width:
        pairs = [[v if k in ("model", "task") else f"{k}={v}" for v in cells]
                 for k, cells in config.items()]  # fmt: skip
        config = {"configuration": [", ".join(row) for row in zip(*pairs, strict=True)]}

    def least(header: str, cells: list[str]) -> int:  # narrowest without breaking a word
        return max(len(word) for text in (header, *cells) for word in text.split()) + 3

    # A narrow terminal: the vanishing ratios, then the baseline, go to comparison.csv/.md
    # rather than have every header broken mid-word ("configurat / ion" at 80 columns).
    shown = {**config, **{h: [str(v) for v in display[c]] for c, h in columns.items()}}
    narrowest = {h: least(h, []) if h in config else least(h, v) for h, v in shown.items()}
    dropped = []
    for column in ("end_vanishing_ratio", "init_vanishing_ratio", "baseline"):
        if 1 + sum(narrowest.values()) <= width or column not in columns:
            continue
        dropped.append(columns.pop(column))
        del narrowest[dropped[-1]], shown[dropped[-1]]
    widths: dict[str, int | None] = dict.fromkeys(shown)  # None: as rich lays it out
    spare = width - 1 - sum(narrowest.values())  # what is left with every word whole
    if 1 + sum(natural(h, v) for h, v in shown.items()) > width and spare >= 0:
        first = [h for h in shown if h.startswith(("final", "test"))]  # the metric, then the rest
        for h in [*first, *(h for h in shown if h not in first)]:
            grow = min(spare, natural(h, shown[h]) - narrowest[h])
            widths[h], spare = narrowest[h] + grow - 3, spare - grow

    failures = int(table["diverged"].sum() + table["failed"].sum())
    caption = (
        "final: mean ± std [95% t interval over seeds]; more columns ("
        + "".join(f"{name}, " for name in dropped)
        + "best, solved step, decay, horizon, timing): comparison.csv/.md"
    )
    if failures:
        caption = (f"{int(table['diverged'].sum())} diverged, {int(table['failed'].sum())} "
                   f"failed (errors in their metrics.json); {caption}")  # fmt: skip
    rich_table = Table(title=Text(title), title_justify="left", caption=caption,
                       caption_justify="left", box=box.SQUARE, padding=(0, 1))  # fmt: skip
    for header in config:
        rich_table.add_column(Text(header), overflow="fold", width=widths[header])
    for header in columns.values():
        rich_table.add_column(Text(header), overflow="fold", justify="right", width=widths[header])
    for i in range(len(table)):
        cells = [cells[i] for cells in config.values()]
        cells += [str(display[c].iloc[i]) for c in columns]
        rich_table.add_row(*map(Text, cells))  # as written: brackets in a value are not markup
    return rich_table


def print_table(
    table: pd.DataFrame, title: str = "comparison", pairs: pd.DataFrame | None = None
) -> None:
    """Print `terminal_table` (100 columns when stdout is not a terminal, e.g. a log file), then
    who wins, one line per setting (`seqbench.verdicts.verdict_lines`)."""
    from rich.text import Text

    from seqbench.verdicts import verdict_lines

    console = stdout_console()
    if not console.is_terminal:
        console = stdout_console(width=100)
    console.print(terminal_table(table, title, width=console.width), soft_wrap=False)
    if pairs is not None:
        for line in verdict_lines(pairs, width=console.width):
            console.print(Text(line), soft_wrap=True)


@exit_on_closed_stdout()
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
    parser.add_argument(
        "--vs", help="the key whose values are compared pair by pair (default: model)"
    )
    args = parser.parse_args(argv)
    found: set[Path] = set()
    for path in args.paths:  # each path given holds runs: a typo is not silently left out
        if not path.exists():
            return _error(f"{path} does not exist. Give run or sweep directories (each with a "
                          f"metrics.json at or below it).")  # fmt: skip
        if not (under := find_runs([path])):
            return _error(f"no metrics.json under {path}: it holds no finished seqbench run (a "
                          f"run writes one when it ends, even when it fails).")  # fmt: skip
        found.update(under)
    runs = sorted(found)
    from seqbench.verdicts import pair_frame

    try:
        loaded = load_runs(runs)
    except UnreadableRun as err:
        return _error(str(err))
    try:
        table = aggregate(loaded, args.by)
    except KeyError as err:
        return _error(f"--by {err.args[0]}")
    by = args.by or group_keys(loaded)
    if args.vs is not None and args.vs not in by:
        return _error(f"--vs {args.vs!r} is not a key of the table; choose one of {by}")
    pairs = pair_frame(loaded, by, args.vs)
    if args.metrics:
        keep = [c for c in table.columns if not c.endswith(("_mean", "_std"))
                or c.rsplit("_", 1)[0] in args.metrics]  # fmt: skip
        table = table[keep]
    try:
        args.out.mkdir(parents=True, exist_ok=True)
        written = write_tables(table, args.out, args.format, pairs)
    except OSError as err:
        return _error(f"--out {args.out}: cannot write the tables there ({err.strerror or err}); "
                      f"give a directory you can write to.")  # fmt: skip
    for path in written:
        print(f"wrote {path}")
    print_table(table, title=f"{len(runs)} runs", pairs=pairs)
    return 0


def _error(message: str) -> int:
    print(f"seqbench-compare: error: {message}", file=sys.stderr)
    return 2
