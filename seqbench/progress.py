"""A progress view of the whole sweep: one line per finished job and a count of done, failed
and remaining jobs, printed by the process that launched the sweep.

Jobs run in that process (basic launcher), in worker processes (joblib), on other machines (Ray,
Slurm): what they all share is the sweep directory, where every job writes its metrics.json when
it ends. So a thread polls the sweep directory, whatever the launcher.
"""

from __future__ import annotations

import json
import threading
from pathlib import Path
from typing import Any

from seqbench.errors import silent_if_stdout_closes

FINISHED = ("completed", "diverged", "failed", "interrupted", "pruned")


def sweep_keys(hydra_cfg: Any, overrides: list[str]) -> list[str]:
    """The keys the sweep varies: `hydra.sweeper.params`, and the command line's overrides with
    several values (a,b) or a sweep function (choice, range, interval, ...)."""
    keys = [str(k) for k in (hydra_cfg.sweeper.get("params") or {})]
    for override in overrides:
        key, _, value = override.partition("=")
        if "," in value or "(" in value:
            keys.append(key.lstrip("+~"))
    return keys


def count_jobs(hydra_cfg: Any, overrides: list[str]) -> int | None:
    """How many jobs the sweep will run: Optuna's n_trials, or the size of the basic sweeper's
    grid (`hydra.sweeper.params` plus the command line's sweep overrides); None if unknown."""
    sweeper = hydra_cfg.sweeper
    if "optuna" in str(sweeper.get("_target_", "")).lower():
        return int(sweeper.n_trials)
    try:
        from hydra._internal.core_plugins.basic_sweeper import BasicSweeper
        from hydra.core.override_parser.overrides_parser import OverridesParser

        params = [f"{k}={v}" for k, v in (sweeper.get("params") or {}).items()]
        parsed = OverridesParser.create().parse_overrides(params + list(overrides))
        return sum(len(batch) for batch in BasicSweeper.split_arguments(parsed, None))
    except Exception:  # a count is a nicety; the sweep reports its own errors
        return None


def describe(job: str, metrics: dict, sweep_keys: list[str]) -> str:
    """'#3 model=gru seed=1: completed, best mse 0.0123, 41.2s' for one finished job."""
    varying = [o for o in metrics.get("overrides", []) if o.split("=", 1)[0] in sweep_keys]
    status = metrics.get("status", "?")
    line = f"#{job} {' '.join(varying)}: {status}".replace(" :", ":")
    if metrics.get("best_metric") is not None:
        line += f", best {metrics.get('metric', 'metric')} {metrics['best_metric']:.4g}"
    if metrics.get("error") and status != "completed":
        line += f" ({str(metrics['error'])[:80]})"
    if metrics.get("wall_time_s") is not None:
        line += f", {metrics['wall_time_s']:.1f}s"
    return line


class SweepProgress:
    """Watch `sweep_dir` for jobs that finish; print one line each, with the running count.

    Jobs that had completed before the sweep started (a re-run skips them) count as done
    from the start; a metrics.json written after the start is a job that finished now.
    """

    def __init__(self, sweep_dir: Path, total: int | None, sweep_keys: list[str],
                 every_s: float = 1.0, out: Any = print) -> None:  # fmt: skip
        self.sweep_dir, self.total, self.sweep_keys = Path(sweep_dir), total, sweep_keys
        self.every_s, self.out = every_s, out
        self.seen = self._scan()
        self.status = {job: m["status"] for job, (_, m) in self.seen.items()
                       if m.get("status") == "completed"}  # fmt: skip
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._watch, name="seqbench-progress", daemon=True)

    def _scan(self) -> dict[str, tuple[int, dict]]:
        found = {}
        for path in self.sweep_dir.glob("*/metrics.json"):
            try:
                found[path.parent.name] = (path.stat().st_mtime_ns, json.loads(path.read_text()))
            except (OSError, ValueError):  # being written (atomic, but a rename can race a stat)
                continue
        return found

    def poll(self) -> list[str]:
        """Print (and return) a line for each job that finished since the last poll."""
        lines = []
        for job, (mtime, metrics) in sorted(self._scan().items(), key=lambda kv: kv[1][0]):
            if self.seen.get(job, (None,))[0] == mtime or metrics.get("status") not in FINISHED:
                continue
            self.seen[job] = (mtime, metrics)
            self.status[job] = metrics["status"]
            line = describe(job, metrics, self.sweep_keys)
            lines.append(f"seqbench: sweep {self.counts()}: {line}")
        with silent_if_stdout_closes():  # what read the lines went away: the sweep goes on
            for line in lines:
                self.out(line)
        return lines

    def counts(self) -> str:
        """'3/9 done, 1 failed, 6 to go' (or '3 done, 1 failed' when the total is unknown)."""
        done = sum(s != "interrupted" for s in self.status.values())
        failed = sum(s in ("failed", "diverged") for s in self.status.values())
        interrupted = len(self.status) - done
        text = f"{done}/{self.total} done" if self.total else f"{done} done"
        text += f", {failed} failed/diverged"
        if interrupted:
            text += f", {interrupted} interrupted"
        if self.total:
            text += f", {max(0, self.total - done)} to go"
        return text

    def _watch(self) -> None:
        while not self._stop.wait(self.every_s):
            self.poll()

    def start(self) -> SweepProgress:
        self._thread.start()
        return self

    def stop(self) -> None:
        """Stop watching, after a last look (jobs that ended since the previous poll)."""
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join()
        self.poll()
