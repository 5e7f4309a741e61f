"""The run directory's result files: metrics.json, history.csv, grad_norms.csv, lag_norms.csv
and (gated cells) gates.csv.

The CSVs grow as the run goes (`tail -F`, or a plotting script reading a live run): a validation
appends its row to history.csv, a snapshot its rows to grad_norms.csv, lag_norms.csv and
gates.csv, flushed at once, so a crash or kill -9 loses at most what came after the last write.
Their content at the end is byte for byte the whole-file `to_csv` of everything recorded.
metrics.json is written whole, at the end (or at an interrupt), to a temporary name in the same
directory and then renamed over the old one, so a crash leaves either no file, the previous one
or the new one.
"""

from __future__ import annotations

import json
import math
import time
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch

from seqbench.callbacks import Callback
from seqbench.diagnostics import summarize, summarize_lags
from seqbench.files import GrowingCSV, atomic_write
from seqbench.frames import gate_unit_frame, grad_norm_frame, history_frame, lag_norm_frame
from seqbench.lags import LagProfile

__all__ = ["STATUSES", "RunRecorder", "better", "gate_unit_frame", "grad_norm_frame",
           "history_frame", "lag_norm_frame"]  # fmt: skip

STATUSES = ("completed", "diverged", "failed", "interrupted", "pruned")
#: A unit's gate counts as saturated open above this mean activation (metrics.json "gates").
GATE_OPEN = 0.95


class RunRecorder(Callback):
    """Collects what the loop reports and writes the run's result files.

    Args:
        run_dir: the Hydra run directory.
        info: fixed facts recorded in metrics.json (model, task, seed, parameter count, ...).
        metric: the task's validation metric; mode: "min" or "max".
        explode_factor: passed to `diagnostics.summarize`.
        solved: the task's test of "solved" on validation metrics (None: the task has none);
            the first validation step that passes is recorded as solved_step, and whether the
            best validation (the weights best.pt keeps) passes as best_solved.
        lr: the current learning rate, recorded in history.csv.
    """

    def __init__(
        self,
        run_dir: Path,
        info: dict,
        metric: str,
        mode: str,
        explode_factor: float,
        solved: Callable[[dict[str, float]], bool] | None = None,
        lr: Callable[[], float] | None = None,
    ) -> None:
        self.run_dir = Path(run_dir)
        self.info = info
        self.metric = metric
        self.mode = mode
        self.explode_factor = explode_factor
        self.start = time.perf_counter()
        self.steps_done = 0
        self.clipped_steps = 0
        self.losses_since_eval: list[float] = []
        self.history: list[dict] = []
        self.snapshots: list[tuple[int, np.ndarray, np.ndarray, np.ndarray | None]] = []
        # (step, log10 norms (E, K), pairs (E, K)) of each snapshot's lag profile
        self.lag_snapshots: list[tuple[int, np.ndarray, np.ndarray]] = []
        # (step, {gate: (L, T) mean over units}, {gate: (L, H) mean over timesteps}), memory gate
        self.gate_snapshots: list[tuple[int, dict, dict]] = []
        self.memory_gate: str | None = None
        self.best: dict | None = None
        self.solved = solved
        self.lr = lr
        self.solved_step: int | None = None
        self.max_grad_norm = 0.0
        self.texts: dict[str, dict] = {}  # the task's last text per name (a sample), its step
        self.files = {
            "history": GrowingCSV(self.run_dir / "history.csv", history_frame),
            "grad_norms": GrowingCSV(
                self.run_dir / "grad_norms.csv",
                lambda snapshots: grad_norm_frame(snapshots, self.gate_snapshots),
            ),
            "gates": GrowingCSV(self.run_dir / "gates.csv", gate_unit_frame),
            "lag_norms": GrowingCSV(self.run_dir / "lag_norms.csv", lag_norm_frame),
        }

    def elapsed(self) -> float:
        return time.perf_counter() - self.start

    def state_dict(self) -> dict:
        """Everything needed to continue recording after a resume (tensors and plain values)."""
        return {
            "steps_done": self.steps_done,
            "clipped_steps": self.clipped_steps,
            "losses_since_eval": list(self.losses_since_eval),
            "history": list(self.history),
            "snapshots": [
                (
                    step,
                    torch.from_numpy(norms),
                    torch.from_numpy(positions),
                    None if log10 is None else torch.from_numpy(log10),
                )
                for step, norms, positions, log10 in self.snapshots
            ],
            "lag_snapshots": [
                (step, torch.from_numpy(log10), torch.from_numpy(pairs))
                for step, log10, pairs in self.lag_snapshots
            ],
            "gate_snapshots": [
                (
                    step,
                    {k: torch.from_numpy(v) for k, v in per_t.items()},
                    {k: torch.from_numpy(v) for k, v in per_unit.items()},
                )
                for step, per_t, per_unit in self.gate_snapshots
            ],
            "memory_gate": self.memory_gate,
            "best": self.best,
            "solved_step": self.solved_step,
            "max_grad_norm": self.max_grad_norm,
            "texts": dict(self.texts),
            "elapsed": self.elapsed(),
            "overrides": self.info.get("overrides"),  # the original command's, kept on resume
        }

    def load_state_dict(self, state: dict) -> None:
        self.steps_done = state["steps_done"]
        self.clipped_steps = state["clipped_steps"]
        self.losses_since_eval = list(state["losses_since_eval"])
        self.history = list(state["history"])
        self.snapshots = [
            (s, n.numpy(), p.numpy(), None if g is None else g.numpy())
            for s, n, p, g in state["snapshots"]
        ]
        self.lag_snapshots = [
            (step, log10.numpy(), pairs.numpy())
            for step, log10, pairs in state.get("lag_snapshots", [])  # older checkpoints: none
        ]
        self.gate_snapshots = [
            (step, {k: v.numpy() for k, v in per_t.items()},
             {k: v.numpy() for k, v in per_unit.items()})
            for step, per_t, per_unit in state.get("gate_snapshots", [])
        ]  # fmt: skip
        self.memory_gate = state.get("memory_gate")
        self.best = state["best"]
        self.solved_step = state["solved_step"]
        self.max_grad_norm = state["max_grad_norm"]
        self.texts = dict(state.get("texts", {}))
        self.start = time.perf_counter() - state["elapsed"]  # wall time adds up across resumes
        self.info["overrides"] = state["overrides"]
        for file in self.files.values():
            file.columns = None  # rewritten whole from this state at the next write

    def start_files(self) -> None:
        """Make the CSVs hold what is recorded now: nothing for a new run (an earlier run's files
        go; each file appears with its first row, so `tail -F` follows it), the checkpoint's rows
        for a resumed one (what a killed run wrote after its checkpoint, a half-written last line
        included, goes). Rows are appended from here on."""
        for name, items in self.recorded().items():
            if items:
                self.files[name].rewrite(items)
            else:
                self.files[name].path.unlink(missing_ok=True)
                self.files[name].columns = None

    def recorded(self) -> dict[str, list]:
        return {"history": self.history, "grad_norms": self.snapshots,
                "gates": self.gate_snapshots, "lag_norms": self.lag_snapshots}  # fmt: skip

    def append_files(self, final: bool = False) -> None:
        """Append what was recorded since the last write (`final`: history.csv and grad_norms.csv
        with their header only if nothing was). A snapshot's rows go out once its gates are
        known: at the next hook after on_grad_norms (on_gates, on_step, write)."""
        for name, items in self.recorded().items():
            if items or (final and name != "gates"):
                self.files[name].extend(items)

    def on_step(self, step: int, loss: float, grad_norm: float, clipped: bool) -> None:
        if self.snapshots:  # the step's snapshot, gates or not
            self.files["grad_norms"].extend(self.snapshots)
        self.steps_done = step
        self.clipped_steps += int(clipped)
        self.losses_since_eval.append(loss)

    def on_eval(self, step: int, metrics: dict[str, float]) -> None:
        train_loss = float(np.mean(self.losses_since_eval)) if self.losses_since_eval else math.nan
        self.losses_since_eval = []
        row = {"step": step, "wall_time": round(self.elapsed(), 3), "train_loss": train_loss}
        if self.lr is not None:
            row["lr"] = self.lr()
        row.update({f"val_{k}": v for k, v in metrics.items()})
        self.history.append(row)
        value = metrics[self.metric]
        if self.best is None or better(value, self.best["value"], self.mode):
            passes = None if self.solved is None else bool(self.solved(metrics))
            self.best = {"value": value, "step": step, "solved": passes}
        if self.solved_step is None and self.solved is not None and self.solved(metrics):
            self.solved_step = step
        self.files["history"].extend(self.history)

    def on_text(self, step: int, texts: dict[str, str]) -> None:
        self.texts.update({name: {"step": step, "text": text} for name, text in texts.items()})

    def on_grad_norms(
        self, step: int, norms: np.ndarray, positions: np.ndarray, log10: np.ndarray | None
    ) -> None:
        if self.snapshots:  # the one before, should it be pending
            self.files["grad_norms"].extend(self.snapshots)
        self.snapshots.append((step, norms, positions, log10))
        self.max_grad_norm = max(self.max_grad_norm, float(norms.max()))

    def on_lag_norms(self, step: int, profile: LagProfile) -> None:
        self.lag_snapshots.append((step, profile.log10, profile.pairs))
        self.files["lag_norms"].extend(self.lag_snapshots)

    def on_gates(self, step: int, gates: dict[str, np.ndarray], memory_gate: str | None) -> None:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)  # all-NaN slices: padding only
            per_t = {name: np.nanmean(g, axis=2) for name, g in gates.items()}  # (L, T)
            per_unit = {name: np.nanmean(g, axis=1) for name, g in gates.items()}  # (L, H)
        self.gate_snapshots.append((step, per_t, per_unit))
        self.memory_gate = memory_gate
        self.append_files()

    def memory_gate_history(self) -> list[tuple[int, np.ndarray]]:
        """(step, the memory gate's (L, T) means) per gate snapshot: TensorBoard's heat map
        resumes from it."""
        gate = self.memory_gate
        return [(step, per_t[gate]) for step, per_t, _ in self.gate_snapshots if gate in per_t]

    def gate_summary(self, index: int) -> dict | None:
        """Per layer and gate: the mean activation over timesteps and units, and the fraction
        of units whose mean (over the batch's real positions and timesteps) is above GATE_OPEN."""
        if not self.gate_snapshots:
            return None
        step, per_t, per_unit = self.gate_snapshots[index]
        layers = [
            {
                name: {
                    "mean": float(np.nanmean(per_t[name][layer])),
                    f"above_{GATE_OPEN}": float(np.mean(per_unit[name][layer] > GATE_OPEN)),
                }
                for name in per_t
            }
            for layer in range(len(next(iter(per_t.values()))))
        ]
        return {"step": step, "layers": layers}

    def gate_metrics(self) -> dict:
        """metrics.json's "gates" (gated cells only): the gate summaries at init and at the last
        snapshot that has gates."""
        if not self.gate_snapshots:
            return {}
        init, end = self.gate_summary(0), self.gate_summary(-1)
        return {"gates": {"memory_gate": self.memory_gate, "init": init, "end": end}}

    @property
    def clip_fraction(self) -> float:
        return self.clipped_steps / self.steps_done if self.steps_done else 0.0

    def grad_summary(self, index: int) -> dict | None:
        if not self.snapshots:
            return None
        step, norms, positions, log10 = self.snapshots[index]
        layers = [
            summarize(
                norms[i], self.explode_factor, positions, None if log10 is None else log10[i]
            ).as_dict()
            for i in range(len(norms))
        ]
        return {"step": step, "timesteps": norms.shape[1], "layers": layers}

    def lag_summary(self, index: int) -> dict | None:
        """The lag verdicts of snapshot `index`, per layer (`diagnostics.summarize_lags`)."""
        if not self.lag_snapshots:
            return None
        step, log10, pairs = self.lag_snapshots[index]
        layers = [
            summarize_lags(log10[i], pairs[i], self.explode_factor).as_dict()
            for i in range(len(log10))
        ]
        return {"step": step, "lags": log10.shape[1], "layers": layers}

    def metrics(self, status: str, **extra: Any) -> dict:
        """The content of metrics.json."""
        assert status in STATUSES, status
        wall = self.elapsed()
        final = self.history[-1] if self.history else {}
        return {
            "status": status,
            **self.info,
            "steps": self.steps_done,
            "wall_time_s": round(wall, 3),
            "steps_per_s": round(self.steps_done / wall, 3) if wall > 0 else None,
            "metric": self.metric,
            "mode": self.mode,
            "final_metric": final.get(f"val_{self.metric}"),
            "final": {k[4:]: v for k, v in final.items() if k.startswith("val_")},
            "best_metric": self.best["value"] if self.best else None,
            "best_step": self.best["step"] if self.best else None,
            "solved_step": self.solved_step,
            # the kept weights (best.pt, the best validation) pass the task's threshold
            "best_solved": (self.best or {}).get("solved"),
            "clip_fraction": round(self.clip_fraction, 6),
            "grad_norms": {
                "init": self.grad_summary(0),
                "end": self.grad_summary(-1),
                "max_norm": self.max_grad_norm if self.snapshots else None,
            },
            # the vanishing/exploding verdicts: by lag from where each loss term reads
            "lag_norms": {"init": self.lag_summary(0), "end": self.lag_summary(-1)},
            **self.gate_metrics(),
            **({"texts": self.texts} if self.texts else {}),  # e.g. the last generated sample
            **extra,
        }

    def write(self, status: str, **extra: Any) -> dict:
        """Write metrics.json and append what the CSVs still lack; return the metrics dict."""
        metrics = self.metrics(status, **extra)
        atomic_write(self.run_dir / "metrics.json", lambda f: json.dump(metrics, f, indent=2))
        self.append_files(final=True)
        return metrics


def better(value: float, best: float, mode: str) -> bool:
    """Is `value` an improvement on `best` (NaN never is)?"""
    if math.isnan(value):
        return False
    if math.isnan(best):
        return True
    return value < best if mode == "min" else value > best
