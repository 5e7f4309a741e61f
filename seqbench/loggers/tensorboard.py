"""TensorBoard event files: scalars (each with its description), pictures at a bounded cadence,
the run's summary as text and its HParams entry. Where the files go: `loggers.runname`."""

from __future__ import annotations

import math
import time
import warnings
from pathlib import Path

import numpy as np
from omegaconf import OmegaConf
from torch.utils.tensorboard import SummaryWriter

from seqbench.callbacks import Callback
from seqbench.config import flatten
from seqbench.diagnostics import summarize, summarize_lags
from seqbench.loggers import pictures, tags
from seqbench.loggers.hparams import experiment_summary, session_summaries
from seqbench.loggers.runname import EVENTS

BATCH = 128  # events handed to the writer's thread at once (and at each validation, checkpoint)


class TensorBoardLogger(Callback):
    """Scalars: train/loss, val/<metric>, grad/total_norm, grad/clip_fraction; per layer, the
    verdicts of the lag profile (`seqbench.lags`) lag/vanishing_ratio, lag/growth_rate,
    lag/memory_horizon, lag/exploding, and those of the per-timestep norms (where the training
    signal lands) grad/vanishing_ratio, grad/decay_rate, grad/growth_rate, grad/memory_horizon,
    grad/max_norm, grad/nonzero_steps, at every step or snapshot. Images, drawn after each
    validation (with the snapshot taken at that step) and at the end of the run, never more
    often: per layer, log10 of the lag profile over (snapshot x lag) and log10 ||dL/dh_t|| over
    (snapshot x timestep), every snapshot's row; the lag profile and ||dL/dh_t|| vs t at init
    and at the latest snapshot. Gated cells, per layer: gates/<gate>_mean for every gate,
    gates/<memory gate>_above_0.95 (fraction of units) and the image gate_heatmap/layer<l>
    (the memory gate's mean over snapshot x timestep: LSTM forget, GRU update). Text: `summary`,
    the run's verdict, when it ends."""

    def __init__(
        self,
        log_dir: Path,
        explode_factor: float = 10.0,
        resume_step: int | None = None,
        snapshots: list[tuple[int, np.ndarray]] = (),
        clipped: int = 0,
        lr=None,
        gate_history: list[tuple[int, np.ndarray]] = (),
        flush_every: int = 0,
        memory_gate: str | None = None,
        lag_snapshots: list[tuple[int, np.ndarray]] = (),
    ) -> None:
        # On resume from the checkpoint of step c, the events logged after it (steps > c, from
        # a run that went on) are purged; those of step c itself (its loss, validation) were
        # written before the checkpoint and stay. A diagnostic snapshot of step c is taken after
        # the checkpoint: after a kill -9 it can be on disk twice (same values). A new run
        # starts its folder afresh (a failed sweep job run again, the same run dir twice).
        purge = None if resume_step is None else resume_step + 1
        if resume_step is None:
            for old in Path(log_dir).glob(EVENTS):
                old.unlink()
        # Events are handed to the writer's thread in batches (self.events): one hand-off per
        # step woke that thread at every step, which cost ~3 ms a step on a busy 2-core machine.
        self.writer = SummaryWriter(log_dir=str(log_dir), purge_step=purge, max_queue=2 * BATCH)
        self.events: list[tuple] = []  # (summary, step, wall time) not yet handed to the writer
        self.flush_every = flush_every  # checkpoint.every: events on disk before each checkpoint
        self.explode_factor = explode_factor
        self.snapshots: list[tuple[int, np.ndarray]] = list(snapshots)
        self.lag_snapshots: list[tuple[int, np.ndarray]] = list(lag_snapshots)  # (step, log10)
        self.steps = resume_step or 0
        self.clipped = clipped
        self.lr = lr  # () -> the current learning rate, logged as train/lr
        self.gate_history = list(gate_history)  # (step, the memory gate's (L, T) means)
        self.memory_gate = memory_gate
        self.described: set[str] = set()  # tags whose description is in this file already
        self.drawn = len(self.snapshots)  # snapshots already in the last pictures
        self.pending: int | None = None  # a validation step whose pictures are still to draw

    def scalars(self, step: int, values: dict[str, float]) -> None:
        """One event holding a point of each tag (an event per tag cost ~3x the time per step);
        the first point of each tag carries its description (tags.DESCRIPTIONS)."""
        if not values:
            return
        summary = tags.scalars({tag: float(v) for tag, v in values.items()}, self.described)
        self.described.update(values)
        self.add(summary, step)

    def add(self, summary, step: int) -> None:
        self.events.append((summary, step, time.time()))
        if len(self.events) >= BATCH:
            self.write()

    def write(self) -> None:
        """Hand the waiting events to the writer (it writes them to disk in its own thread)."""
        for summary, step, wall_time in self.events:
            self.writer.file_writer.add_summary(summary, step, wall_time)
        self.events.clear()

    def on_step(self, step: int, loss: float, grad_norm: float, clipped: bool) -> None:
        if self.pending is not None:  # the snapshot of the validation step is in by now
            self.draw(self.pending)
        self.steps, self.clipped = step, self.clipped + int(clipped)
        values = {"train/loss": loss, "grad/total_norm": grad_norm}
        if self.lr is not None:
            values["train/lr"] = self.lr()
        self.scalars(step, values)

    def on_step_end(self, step: int) -> None:
        if self.flush_every > 0 and step % self.flush_every == 0:
            self.write()
            self.writer.flush()  # runs before PeriodicCheckpoint (seqbench.job orders them)

    def on_eval(self, step: int, metrics: dict[str, float]) -> None:
        values = {f"val/{name}": value for name, value in metrics.items()}
        values["grad/clip_fraction"] = self.clipped / max(self.steps, 1)
        self.scalars(step, values)
        self.pending = step
        self.write()
        self.writer.flush()

    def on_text(self, step: int, texts: dict[str, str]) -> None:
        for name, text in texts.items():
            self.writer.add_text(f"sample/{name}", text, step)

    def on_grad_norms(
        self, step: int, norms: np.ndarray, positions: np.ndarray, log10: np.ndarray | None
    ) -> None:
        self.snapshots.append((step, norms))
        values = {}
        for layer, layer_norms in enumerate(norms):
            logs = None if log10 is None else log10[layer]
            s = summarize(layer_norms, self.explode_factor, positions, logs)
            # An underflowed ||dL/dh_1|| gives ratio -inf: TensorBoard cannot plot it, so the
            # point is skipped and grad/nonzero_steps shows how many timesteps still get gradient.
            if math.isfinite(s.vanishing_ratio):
                values[f"grad/vanishing_ratio/layer{layer}"] = s.vanishing_ratio
            if s.decay_rate is not None:
                values[f"grad/decay_rate/layer{layer}"] = s.decay_rate
            values[f"grad/max_norm/layer{layer}"] = s.max_norm
            if s.growth_rate is not None and math.isfinite(s.growth_rate):
                values[f"grad/growth_rate/layer{layer}"] = s.growth_rate
            values[f"grad/memory_horizon/layer{layer}"] = s.memory_horizon
            values[f"grad/nonzero_steps/layer{layer}"] = s.nonzero
        self.scalars(step, values)

    def on_lag_norms(self, step: int, profile) -> None:
        self.lag_snapshots.append((step, profile.log10))
        values = {}
        for layer, (logs, pairs) in enumerate(zip(profile.log10, profile.pairs, strict=True)):
            s = summarize_lags(logs, pairs, self.explode_factor)
            if math.isfinite(s.vanishing_ratio):  # -inf (underflow) cannot be plotted
                values[f"lag/vanishing_ratio/layer{layer}"] = s.vanishing_ratio
            if s.growth_rate is not None and math.isfinite(s.growth_rate):
                values[f"lag/growth_rate/layer{layer}"] = s.growth_rate
            values[f"lag/memory_horizon/layer{layer}"] = s.memory_horizon
            values[f"lag/exploding/layer{layer}"] = float(s.exploding)
        self.scalars(step, values)

    def on_gates(self, step: int, gates: dict[str, np.ndarray], memory_gate: str | None) -> None:
        values = {f"gates/{name}_mean/layer{layer}": np.nanmean(layer_means)
                  for name, means in gates.items()  # (L, T, H) over the batch's real positions
                  for layer, layer_means in enumerate(means)}  # fmt: skip
        if memory_gate is None:
            self.scalars(step, values)
            return
        self.memory_gate = memory_gate
        means = gates[memory_gate]
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)  # all-NaN (padding-only) columns
            per_unit = np.nanmean(means, axis=1)  # (L, H)
            self.gate_history.append((step, np.nanmean(means, axis=2)))  # (L, T)
        for layer in range(len(means)):
            saturated = float(np.mean(per_unit[layer] > 0.95))
            values[f"gates/{memory_gate}_above_0.95/layer{layer}"] = saturated
        self.scalars(step, values)

    def draw(self, step: int) -> None:
        """The pictures at `step`, from every snapshot so far; nothing when none is new."""
        self.pending = None
        if len(self.snapshots) == self.drawn or not self.snapshots:
            return
        self.drawn = len(self.snapshots)
        steps = [s for s, _ in self.snapshots]
        norms = np.stack([n for _, n in self.snapshots])  # (S, L, T)
        with np.errstate(divide="ignore"):
            logs = np.log10(norms)
        logs[~np.isfinite(logs)] = np.nan  # underflow to 0 shows as blank
        for layer in range(norms.shape[1]):
            title = f"log10 ||dL/dh_t||, layer {layer}"
            picture = pictures.heatmap_image(logs[:, layer], steps, title, "viridis")
            self.image(f"grad_heatmap/layer{layer}", picture, step)
        picks = [0, len(steps) - 1] if len(steps) > 1 else [0]
        lines = [(f"step {steps[i]}, layer {layer}", norms[i, layer], i == 0 and len(picks) > 1)
                 for i in picks for layer in range(norms.shape[1])]  # fmt: skip
        chart = pictures.line_chart(lines, "gradient norm vs timestep", "timestep t",
                                    "||dL/dh_t||")  # fmt: skip
        self.image("grad_norm_vs_t", chart, step)
        if self.lag_snapshots:
            self.draw_lags(step)
        if self.gate_history and self.memory_gate is not None:
            gate_steps = [s for s, _ in self.gate_history]
            means = np.stack([m for _, m in self.gate_history])  # (S, L, T)
            for layer in range(means.shape[1]):
                title = f"mean {self.memory_gate} gate, layer {layer}"
                picture = pictures.heatmap_image(means[:, layer], gate_steps, title, "magma",
                                                 vmin=0.0, vmax=1.0)  # fmt: skip
                self.image(f"gate_heatmap/layer{layer}", picture, step)

    def draw_lags(self, step: int) -> None:
        """The lag profile's pictures: per layer, log10 norm over (snapshot x lag), and the
        profile at init and at the latest snapshot."""
        steps = [s for s, _ in self.lag_snapshots]
        lags = max(logs.shape[1] for _, logs in self.lag_snapshots)
        layers = self.lag_snapshots[0][1].shape[0]
        grid = np.full((len(steps), layers, lags), np.nan)  # profiles differ in length (padding)
        for i, (_, logs) in enumerate(self.lag_snapshots):
            grid[i, :, : logs.shape[1]] = logs
        grid[~np.isfinite(grid)] = np.nan
        for layer in range(layers):
            title = f"log10 gradient norm by lag, layer {layer}"
            picture = pictures.heatmap_image(
                grid[:, layer],
                steps,
                title,
                "viridis",
                xlabel="lag k (steps back from the loss)",
                first=0,
            )
            self.image(f"lag_heatmap/layer{layer}", picture, step)
        picks = [0, len(steps) - 1] if len(steps) > 1 else [0]
        with np.errstate(over="ignore"):
            lines = [
                (
                    f"step {steps[i]}, layer {layer}",
                    np.power(10.0, grid[i, layer]),
                    i == 0 and len(picks) > 1,
                )
                for i in picks
                for layer in range(layers)
            ]
        chart = pictures.line_chart(lines, "gradient norm by lag", "lag k",
                                    "RMS ||d l_s/dh_(s-k)||", first=0)  # fmt: skip
        self.image("lag_profile", chart, step)

    def image(self, tag: str, rgb: np.ndarray, step: int) -> None:
        self.add(tags.image(tag, pictures.png(rgb), *rgb.shape[:2]), step)

    def write_end(self, hparams: dict, metrics: dict, experiment: bool = True) -> None:
        """At the end of the run (any status): the HParams entry, and the summary as text."""
        self.write_hparams(hparams, final_numbers(metrics), metrics["status"], experiment)
        self.writer.add_text("summary", summary_markdown(metrics), self.steps)

    def write_hparams(
        self, hparams: dict, metrics: dict[str, float], status: str, experiment: bool = True
    ) -> None:
        """The HParams dashboard entry of this run, in this run's own event file: its session
        (typed values, status) and the final numbers as hparams/* scalars. `experiment`: also the
        experiment it belongs to (a single run; a sweep writes one for all its jobs at the end).
        """
        metrics = {
            f"hparams/{k}": v for k, v in metrics.items() if v is not None and math.isfinite(v)
        }
        summaries = session_summaries(hparams, status)
        if experiment:
            summaries.insert(0, experiment_summary([hparams], HPARAM_METRICS))
        for summary in summaries:
            self.writer.file_writer.add_summary(summary)
        if status == "interrupted":  # the resumed run writes the final numbers
            return
        self.scalars(self.steps, metrics)

    def close(self) -> None:
        if self.snapshots and self.drawn < len(self.snapshots):  # the final snapshot's pictures
            self.draw(self.snapshots[-1][0])
        self.write()
        self.writer.close()


def run_hparams(cfg) -> dict:
    """What the HParams dashboard compares: model, task, optimizer and training settings."""
    flat = {"model": cfg.model.cell, "task": cfg.task.name, "seed": cfg.seed,
            "optimizer": cfg.optimizer._target_.rsplit(".", 1)[-1].lower()}  # fmt: skip
    for group in ("model", "task", "optimizer", "train"):
        node = OmegaConf.to_container(cfg[group], resolve=True)
        for key, value in flatten(node, group):
            if not key.split(".")[-1].startswith("_"):
                flat[key] = value
    return flat


HPARAM_METRICS = tuple(f"hparams/{name}" for name in (
    "best_metric", "final_metric", "solved_step", "end_vanishing_ratio", "diverged"))  # fmt: skip


def final_numbers(metrics: dict) -> dict[str, float]:
    """The HParams metrics of a finished run, from its metrics.json content (the vanishing
    ratio: by lag, layer 0, at the end)."""
    end = (metrics.get("lag_norms") or {}).get("end") or {"layers": [{}]}
    return {
        "best_metric": metrics.get("best_metric"),
        "final_metric": metrics.get("final_metric"),
        "solved_step": metrics.get("solved_step"),
        "end_vanishing_ratio": end["layers"][0].get("vanishing_ratio"),
        "diverged": float(metrics["status"] == "diverged"),
    }


def summary_markdown(metrics: dict) -> str:
    """The run's verdict as a Markdown table (TensorBoard's Text tab): status, the metric against
    its baseline, clipped steps, and the vanishing ratio per layer at init and at the end."""
    name, status = metrics["metric"], metrics["status"]
    if metrics.get("diverged_step") is not None:
        status += f" at step {metrics['diverged_step']}"
    best = _number(metrics.get("best_metric"))
    stateful = (metrics.get("task_info") or {}).get("stateful")  # task.stateful=true
    task = f"{metrics['task']} (stateful)" if stateful else metrics["task"]
    rows = [
        ("status", status),
        ("model / task / seed", f"{metrics['model']} / {task} / {metrics['seed']}"),
        ("steps", f"{metrics.get('steps', 0):,} of {metrics.get('steps_planned', 0):,}"),
        (f"final val {name}", _number(metrics.get("final_metric"))),
        (f"best val {name}", f"{best} at step {metrics.get('best_step')}"),
        (
            "baseline",
            f"{_number(metrics.get('baseline'))} ({metrics.get('baseline_name')}; "
            f"{metrics.get('mode')} is better)",
        ),
        ("solved at step", str(metrics.get("solved_step") or "not solved")),
        ("clipped steps", f"{100 * (metrics.get('clip_fraction') or 0):.1f}%"),
    ]
    for when in ("init", "end"):
        snapshot = (metrics.get("lag_norms") or {}).get(when)
        for layer, s in enumerate((snapshot or {}).get("layers", [])):
            label = f"gradient by lag, {when} (step {snapshot['step']}), layer {layer}"
            growth = "n/a" if s["growth_rate"] is None else f"{s['growth_rate']:.3g}"
            text = (f"vanishing ratio {s['vanishing_ratio']:.2f} over {s['max_lag']} lags, "
                    f"growth {growth} per step back, horizon {s['memory_horizon']} lags"
                    + (", EXPLODING" if s["exploding"] else ""))  # fmt: skip
            rows.append((label, text))
    if metrics.get("error"):
        rows.append(("error", str(metrics["error"]).replace("|", "/")))
    return "| | |\n|---|---|\n" + "\n".join(f"| {k} | {v} |" for k, v in rows)


def _number(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.4g}"
