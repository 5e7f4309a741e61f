"""Continuing runs: `resume=RUN_DIR` on the command line, and a sweep re-run into the same
directory (completed jobs are skipped, interrupted ones continue, failed ones start again)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig, OmegaConf

from seqbench.config import flatten
from seqbench.errors import ConfigError
from seqbench.files import atomic_write


def resumed_config(cfg: DictConfig, saved: dict) -> DictConfig:
    """The checkpoint's config, plus this command's log.* settings.

    Raises:
        ConfigError: an override on this command line differs from the checkpoint's config
            (listing each key that differs, old -> new: a group override such as task=chargen
            by the keys of the group that change), unless resume_force=true applies them.
    """
    current = OmegaConf.to_container(cfg, resolve=True)
    if HydraConfig.initialized():
        explicit = [o.split("=", 1)[0].lstrip("+~") for o in HydraConfig.get().overrides.task]
    else:  # called as a library: every key counts as given
        explicit = [key for key, _ in flatten(current)]
    current_cfg = OmegaConf.create(current)  # resolved, once
    merged = OmegaConf.create(saved)
    differing = []
    for key in explicit:
        if key in ("resume", "resume_force") or key.startswith("hydra"):
            continue
        ours, theirs = OmegaConf.select(current_cfg, key), OmegaConf.select(merged, key)
        if key.startswith("log.") or cfg.resume_force:
            OmegaConf.update(merged, key, ours, force_add=True)
        elif ours != theirs:
            differing += changes(key, theirs, ours)
    if differing:
        raise ConfigError(
            f"resume={cfg.resume}: this command line changes the run's config: "
            + "; ".join(differing)
            + ". Resume without those overrides, or add resume_force=true to apply them."
        )
    OmegaConf.update(merged, "resume", cfg.resume, force_add=True)
    return merged


def changes(key: str, old: Any, new: Any) -> list[str]:
    """'key: old → new' for each leaf under `key` that differs ('absent' where one side lacks
    it or holds null, which count as the same): a changed group lists its changed keys, not
    its whole config twice."""
    old = OmegaConf.to_container(old) if OmegaConf.is_config(old) else old
    new = OmegaConf.to_container(new) if OmegaConf.is_config(new) else new
    if not (isinstance(old, dict) and isinstance(new, dict)):
        return [f"{key}: {_shown(old)} → {_shown(new)}"]
    before, after = dict(flatten(old, key)), dict(flatten(new, key))
    return [
        f"{name}: {_shown(before.get(name, _ABSENT))} → {_shown(after.get(name, _ABSENT))}"
        for name in sorted(before.keys() | after.keys(), key=[*before, *after].index)
        if before.get(name) != after.get(name)
    ]


_ABSENT = object()


def _shown(value: Any) -> str:
    return "absent" if value is _ABSENT or value is None else str(value)


def read_metrics(run_dir: Path) -> dict:
    """The run's metrics.json, or {} when there is none (or it is unreadable, e.g. truncated)."""
    try:
        return json.loads((Path(run_dir) / "metrics.json").read_text())
    except (OSError, ValueError):
        return {}


def run_status(run_dir: Path) -> str | None:
    """The status recorded in the run's metrics.json, or None if there is none (or unreadable)."""
    return read_metrics(run_dir).get("status")


def completed_before(
    run_dir: Path, overrides: list[str] | None = None, **expected: Any
) -> dict | None:
    """metrics.json of a run in `run_dir` that completed with the `expected` values (a sweep
    job's `overrides`; a resumed run's `steps_planned`, since resuming a completed run would
    train nothing and write its last snapshot a second time), else None."""
    if overrides is not None:
        expected["overrides"] = overrides
    metrics = read_metrics(run_dir)
    if metrics.get("status") == "completed" and all(
        metrics.get(key) == value for key, value in expected.items()
    ):
        return metrics
    return None


def go_on_with_sweep(sweep_dir: Path | str) -> str:
    """How to continue an interrupted sweep, after "run its command again" (the message of a
    sweep's job, and of resume= at a sweep's directory)."""
    return (
        f"with hydra.sweep.dir={sweep_dir}: its completed jobs are skipped and interrupted ones "
        "resume from their checkpoints"
    )


def prepare_sweep_job(run_dir: Path) -> Path | None:
    """Before a sweep job runs into `run_dir`: the directory to resume from when an earlier run
    there was interrupted with a checkpoint; otherwise drop stale results and return None."""
    if run_status(run_dir) == "interrupted" and (run_dir / "checkpoint.pt").exists():
        return run_dir
    (run_dir / "metrics.json").unlink(missing_ok=True)
    shutil.rmtree(run_dir / "tb", ignore_errors=True)
    return None


def write_failed(run_dir: Path, cfg: Any, overrides: list[str], err: Exception) -> None:
    """metrics.json for a sweep job that failed before (or while) training."""
    metrics = {
        "status": "failed",
        "model": cfg.model.cell,
        "task": cfg.task.name,
        "seed": cfg.seed,
        "steps": 0,
        "overrides": overrides,
        "error": f"{type(err).__name__}: {err}",
    }
    run_dir.mkdir(parents=True, exist_ok=True)
    atomic_write(run_dir / "metrics.json", lambda f: json.dump(metrics, f, indent=2))
