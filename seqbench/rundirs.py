"""Finished runs read back from their directories: one row per run, from its metrics.json and
.hydra/overrides.yaml (the comparison's input, `seqbench.compare.aggregate`). Pure pandas; it
knows nothing of Hydra's runtime or torch."""

from __future__ import annotations

import json
import math
from collections.abc import Iterable
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
        # a stream task's mode (task.stateful) even where the default left it out of the
        # overrides, so that a windowed run and a stateful one differ in the table
        stateful = (metrics.get("task_info") or {}).get("stateful")
        if stateful is not None:
            row.setdefault("task.stateful", "true" if stateful else "false")
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
