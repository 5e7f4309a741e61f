"""What the report reads from disk: the sweeps named on the command line, their runs (through
seqbench.compare, as seqbench-compare reads them), the commands and configs that made them."""

from __future__ import annotations

import shlex
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path

import pandas as pd
import yaml

from seqbench.compare import aggregate, find_runs, group_keys, load_runs
from seqbench.rundirs import UnreadableRun, read_metrics


class ReportError(Exception):
    """Input the report cannot use: printed as one paragraph, exit status 2."""


@dataclass
class Sweep:
    """One section of the report: a sweep directory (or a single run) and what it holds."""

    path: Path
    runs: pd.DataFrame  # compare.load_runs: one row per run
    by: list[str]  # the configuration keys (compare.group_keys)
    table: pd.DataFrame  # compare.aggregate: one row per configuration
    metrics: dict[str, dict] = field(default_factory=dict)  # run_dir -> metrics.json
    command: str | None = None  # the sweep's command line (multirun.yaml)
    cwd: str | None = None  # where it was typed

    @property
    def completed(self) -> pd.DataFrame:
        return self.runs[self.runs["status"] == "completed"]

    def groups(self, completed_only: bool = False):
        """(values tuple, runs) per configuration, in the table's order."""
        runs = self.completed if completed_only else self.runs
        for values, group in runs.groupby(self.by, dropna=False, sort=True):
            yield (values if isinstance(values, tuple) else (values,)), group


def counted(number: int, noun: str) -> str:
    """'1 run', '3 runs'."""
    return f"{number} {noun}{'s' * (number != 1)}"


def sweep_dirs(path: Path) -> list[Path]:
    """The sections a command-line path gives: itself when it is a sweep or a run directory,
    else every sweep (multirun.yaml) below it, else all the runs below it as one section."""
    if not path.exists():
        raise ReportError(
            f"{path} does not exist. Give a sweep directory (multirun/DATE/TIME, or the "
            f"hydra.sweep.dir of a `seqbench -m` command) or a run directory (one holding "
            f"metrics.json)."
        )
    if not path.is_dir():
        raise ReportError(
            f"{path} is not a directory. Give a sweep directory (multirun/DATE/TIME) or a run "
            f"directory (one holding metrics.json), not a file."
        )
    if (path / "metrics.json").is_file() or (path / "multirun.yaml").is_file():
        found = [path]
    else:
        found = sorted(p.parent for p in path.rglob("multirun.yaml")) or [path]
    for directory in found:
        if not find_runs([directory]):
            raise ReportError(
                f"{directory} is not a seqbench sweep or run: no metrics.json at or below it "
                f"(a run writes one when it ends, even when it fails). Give the directory of a "
                f"finished `seqbench` run or `seqbench -m` sweep."
            )
    return found


def load_sweep(path: Path) -> Sweep:
    """Read one section: its runs, the comparison table, the sweep's command."""
    run_dirs = find_runs([path])
    try:
        metrics = {str(run_dir): read_metrics(run_dir) for run_dir in run_dirs}
        runs = load_runs(run_dirs)
    except UnreadableRun as err:  # names the file and what to do
        raise ReportError(str(err)) from None
    except (OSError, ValueError, yaml.YAMLError) as err:
        raise ReportError(f"the runs under {path} cannot be read ({err}).") from None
    by = group_keys(runs)
    command, cwd = sweep_command(path)
    return Sweep(path, runs, by, aggregate(runs, by), metrics, command, cwd)


def sweep_command(path: Path) -> tuple[str | None, str | None]:
    """`seqbench -m ...` as typed (from multirun.yaml), and the directory it was typed in."""
    multirun = path / "multirun.yaml"
    if not multirun.is_file():
        return None, None
    hydra = (yaml.safe_load(multirun.read_text()) or {}).get("hydra", {})
    overrides = hydra.get("overrides", {})
    # Hydra keeps its own overrides apart; the order they were typed in among the others is
    # lost, so they come last, as `hydra.sweep.dir=...` usually does
    words = list(overrides.get("task", []))
    words += [o for o in overrides.get("hydra", []) if o != "hydra.mode=MULTIRUN"]
    return " ".join(["seqbench", "-m", *map(shlex.quote, words)]), hydra.get("runtime", {}).get(
        "cwd"
    )


def run_overrides(run_dir: Path, metrics: dict) -> list[str]:
    """The run's command-line overrides (.hydra/overrides.yaml, else metrics.json's)."""
    overrides_file = Path(run_dir) / ".hydra" / "overrides.yaml"
    if overrides_file.is_file():
        return list(yaml.safe_load(overrides_file.read_text()) or [])
    return list(metrics.get("overrides") or [])


def run_command(run_dir: Path, metrics: dict) -> str:
    """The command that reproduces one run on its own."""
    return " ".join(["seqbench", *map(shlex.quote, run_overrides(run_dir, metrics))])


def run_config(run_dir: Path) -> str | None:
    """The run's composed config (.hydra/config.yaml) as text, or None."""
    config = Path(run_dir) / ".hydra" / "config.yaml"
    return config.read_text() if config.is_file() else None


def differing_keys(run_dirs: list[Path]) -> list[str]:
    """Dotted config keys whose value differs between the runs' config.yaml files."""
    flat = []
    for run_dir in run_dirs:
        text = run_config(run_dir)
        if text is not None:
            flat.append(_flatten(yaml.safe_load(text) or {}))
    keys = sorted(set().union(*flat)) if flat else []
    return [k for k in keys if len({repr(f.get(k)) for f in flat}) > 1]


def _flatten(tree: dict, prefix: str = "") -> dict:
    out = {}
    for key, value in tree.items():
        if isinstance(value, dict):
            out.update(_flatten(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = value
    return out


def finished_between(run_dirs: list[Path]) -> tuple[datetime, datetime]:
    """When the first and the last run wrote metrics.json (UTC)."""
    times = [(Path(d) / "metrics.json").stat().st_mtime for d in run_dirs]
    return tuple(datetime.fromtimestamp(t, tz=timezone.utc) for t in (min(times), max(times)))
