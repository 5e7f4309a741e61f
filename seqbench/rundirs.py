"""Finished runs read back from their directories: one row per run, from its metrics.json and
.hydra/overrides.yaml (the comparison's input, `seqbench.compare.aggregate`). Pure pandas; it
knows nothing of Hydra's runtime or torch."""

from __future__ import annotations

import json
import math
from collections.abc import Iterable, Sequence
from pathlib import Path

import pandas as pd
import yaml

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
    """One row per run: its overrides (as columns named by key) and its metrics.

    A key that some runs override and others leave at its default gets, in the others, the
    value they ran with (`composed`), so that `task.seq_len=100` and the default 100 are one
    setting. A value no file records stays missing (pandas' NA in a column of ints)."""
    run_dirs = list(map(Path, run_dirs))
    metrics = [read_metrics(d) for d in run_dirs]
    settings = [_overrides(d, m) for d, m in zip(run_dirs, metrics, strict=True)]
    keys = list(dict.fromkeys(k for s in settings for k in s))
    for run_dir, setting in zip(run_dirs, settings, strict=True):
        if missing := [k for k in keys if k not in setting]:
            setting.update(composed(run_dir, missing))
    rows = []
    for run_dir, m, setting in zip(run_dirs, metrics, settings, strict=True):
        # a stream task's mode (task.stateful) even where the default left it out of the
        # overrides, so that a windowed run and a stateful one differ in the table
        stateful = (m.get("task_info") or {}).get("stateful")
        if stateful is not None and setting.get("task.stateful") is None:
            setting["task.stateful"] = "true" if stateful else "false"
        rows.append({**setting, **_run_numbers(m), "run_dir": str(run_dir)})
    frame = pd.DataFrame(rows)
    for key in keys:  # a gap would turn a column of ints into floats (100.0): nullable ints
        values = [row.get(key) for row in rows]
        present = [v for v in values if v is not None]
        if len(present) < len(values) and all(type(v) is int for v in present):
            frame[key] = pd.array(values, dtype="Int64")
    return frame


class UnreadableRun(ValueError):
    """A run directory whose metrics.json or .hydra/overrides.yaml cannot be read; the message
    names the file and what to do."""


def _unreadable(path: Path, err: Exception) -> UnreadableRun:
    reason = str(err).splitlines()[0] if str(err) else type(err).__name__
    return UnreadableRun(f"{path} cannot be read ({reason}). Remove that run directory or leave "
                         f"it out of the paths given.")  # fmt: skip


def read_metrics(run_dir: Path) -> dict:
    """A run's metrics.json; `UnreadableRun` where it is missing, corrupt or not an object."""
    try:
        metrics = json.loads((run_dir / "metrics.json").read_text())
    except (OSError, UnicodeDecodeError, ValueError) as err:
        raise _unreadable(run_dir / "metrics.json", err) from None
    if not isinstance(metrics, dict):
        raise _unreadable(run_dir / "metrics.json", ValueError("not a JSON object"))
    return metrics


def _overrides(run_dir: Path, metrics: dict) -> dict:
    overrides_file = run_dir / ".hydra" / "overrides.yaml"
    if overrides_file.is_file():
        try:
            overrides = yaml.safe_load(overrides_file.read_text()) or []
        except (OSError, UnicodeDecodeError, yaml.YAMLError) as err:
            raise _unreadable(overrides_file, err) from None
    else:
        overrides = metrics.get("overrides", [])
    return {
        k: _value(v) for k, v in parse_overrides(overrides).items() if not k.startswith("hydra.")
    }


def composed(run_dir: Path, keys: Sequence[str]) -> dict[str, int | float | str | None]:
    """What a run that did not override these keys ran with, spelled as overrides are: the
    value at that path of its composed config (.hydra/config.yaml: `task.seq_len` -> 100) or
    the option its config group chose (.hydra/hydra.yaml: `optimizer` -> 'adam'). None where
    neither file is there or holds the key."""
    config, choices = _yaml(run_dir / ".hydra" / "config.yaml"), None
    out = {}
    for key in keys:
        node = config
        for part in key.split("."):
            node = node.get(part, _ABSENT) if isinstance(node, dict) else _ABSENT
        if isinstance(node, bool) or node is None:
            out[key] = {True: "true", False: "false", None: "null"}[node]
        elif node is not _ABSENT and not isinstance(node, dict | list):
            out[key] = _value(str(node))
        else:  # a group (its node is a mapping) or no such path: the group's choice, if any
            if choices is None:  # hydra.yaml only when needed: it is the larger file
                hydra = _yaml(run_dir / ".hydra" / "hydra.yaml") or {}
                choices = (hydra.get("hydra") or {}).get("runtime", {}).get("choices") or {}
            out[key] = None if choices.get(key) is None else _value(str(choices[key]))
    return out


_ABSENT = object()


def _yaml(path: Path):
    """A YAML file's content (libyaml's parser where PyYAML has it: 7-9x faster on Hydra's
    files), None where it is missing or unreadable."""
    try:
        return yaml.load(path.read_text(), Loader=_LOADER) if path.is_file() else None
    except (OSError, UnicodeDecodeError, yaml.YAMLError):
        return None


_LOADER = getattr(yaml, "CSafeLoader", yaml.SafeLoader)


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
        # solved: the kept weights (best.pt) pass the task's threshold; runs older than that
        # record say whether any validation passed
        "solved": bool(m["best_solved"])
        if m.get("best_solved") is not None
        else m.get("solved_step") is not None,
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
