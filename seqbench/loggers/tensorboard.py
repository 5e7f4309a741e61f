"""TensorBoard event files under <run_dir>/tb: scalars, gradient-norm pictures."""

from __future__ import annotations

import math
import warnings
from pathlib import Path

import numpy as np
from matplotlib.figure import Figure  # no pyplot: no global state, no window backend
from omegaconf import OmegaConf
from torch.utils.tensorboard import SummaryWriter

from seqbench.callbacks import Callback
from seqbench.config import flatten
from seqbench.diagnostics import summarize
from seqbench.loggers.hparams import experiment_summary, session_summaries


class TensorBoardLogger(Callback):
    """Scalars: train/loss, val/<metric>, grad/total_norm, grad/clip_fraction and, per layer,
    grad/vanishing_ratio, grad/decay_rate, grad/growth_rate, grad/memory_horizon, grad/max_norm.
    Images: per layer, log10 ||dL/dh_t|| over (training step x timestep); and ||dL/dh_t|| vs t
    at init and at the latest snapshot. Gated cells, per layer: gates/<gate>_mean for every
    gate, gates/<memory gate>_above_0.95 (fraction of units) and the image gate_heatmap/layer<l>
    (the memory gate's mean over training step x timestep: LSTM forget, GRU update)."""

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
    ) -> None:
        # On resume from the checkpoint of step c, the events logged after it (steps > c, from
        # a run that went on) are purged; those of step c itself (its loss, validation) were
        # written before the checkpoint and stay. A diagnostic snapshot of step c is taken after
        # the checkpoint: after a kill -9 it can be on disk twice (same values).
        purge = None if resume_step is None else resume_step + 1
        self.writer = SummaryWriter(log_dir=str(log_dir), purge_step=purge)
        self.flush_every = flush_every  # checkpoint.every: events on disk before each checkpoint
        self.explode_factor = explode_factor
        self.snapshots: list[tuple[int, np.ndarray]] = list(snapshots)
        self.steps = resume_step or 0
        self.clipped = clipped
        self.lr = lr  # () -> the current learning rate, logged as train/lr
        self.gate_history = list(gate_history)  # (step, the memory gate's (L, T) means)

    def on_step(self, step: int, loss: float, grad_norm: float, clipped: bool) -> None:
        self.steps, self.clipped = step, self.clipped + int(clipped)
        self.writer.add_scalar("train/loss", loss, step)
        self.writer.add_scalar("grad/total_norm", grad_norm, step)
        if self.lr is not None:
            self.writer.add_scalar("train/lr", self.lr(), step)

    def on_step_end(self, step: int) -> None:
        if self.flush_every > 0 and step % self.flush_every == 0:
            self.writer.flush()  # runs before PeriodicCheckpoint (seqbench.job orders them)

    def on_eval(self, step: int, metrics: dict[str, float]) -> None:
        for name, value in metrics.items():
            self.writer.add_scalar(f"val/{name}", value, step)
        self.writer.add_scalar("grad/clip_fraction", self.clipped / max(self.steps, 1), step)
        self.writer.flush()

    def on_text(self, step: int, texts: dict[str, str]) -> None:
        for name, text in texts.items():
            self.writer.add_text(f"sample/{name}", text, step)

    def on_grad_norms(
        self, step: int, norms: np.ndarray, positions: np.ndarray, log10: np.ndarray | None
    ) -> None:
        self.snapshots.append((step, norms))
        for layer, layer_norms in enumerate(norms):
            logs = None if log10 is None else log10[layer]
            s = summarize(layer_norms, self.explode_factor, positions, logs)
            # An underflowed ||dL/dh_1|| gives ratio -inf: TensorBoard cannot plot it, so the
            # point is skipped and grad/nonzero_steps shows how many timesteps still get gradient.
            if math.isfinite(s.vanishing_ratio):
                self.writer.add_scalar(
                    f"grad/vanishing_ratio/layer{layer}", s.vanishing_ratio, step
                )
            if s.decay_rate is not None:
                self.writer.add_scalar(f"grad/decay_rate/layer{layer}", s.decay_rate, step)
            self.writer.add_scalar(f"grad/max_norm/layer{layer}", s.max_norm, step)
            if s.growth_rate is not None and math.isfinite(s.growth_rate):
                self.writer.add_scalar(f"grad/growth_rate/layer{layer}", s.growth_rate, step)
            self.writer.add_scalar(f"grad/memory_horizon/layer{layer}", s.memory_horizon, step)
            self.writer.add_scalar(f"grad/nonzero_steps/layer{layer}", s.nonzero, step)
            self.writer.add_figure(f"grad_heatmap/layer{layer}", self._heatmap(layer), step)
        self.writer.add_figure("grad_norm_vs_t", self._norm_vs_t(), step)

    def on_gates(self, step: int, gates: dict[str, np.ndarray], memory_gate: str | None) -> None:
        for name, means in gates.items():  # (L, T, H) over the batch's real positions
            for layer, layer_means in enumerate(means):
                self.writer.add_scalar(
                    f"gates/{name}_mean/layer{layer}", float(np.nanmean(layer_means)), step
                )
        if memory_gate is None:
            return
        means = gates[memory_gate]
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)  # all-NaN (padding-only) columns
            per_unit = np.nanmean(means, axis=1)  # (L, H)
        self.gate_history.append((step, np.nanmean(means, axis=2)))
        for layer in range(len(means)):
            saturated = float(np.mean(per_unit[layer] > 0.95))
            self.writer.add_scalar(f"gates/{memory_gate}_above_0.95/layer{layer}", saturated, step)
            self.writer.add_figure(
                f"gate_heatmap/layer{layer}", self._gate_heatmap(layer, memory_gate), step
            )

    def _gate_heatmap(self, layer: int, gate: str) -> Figure:
        steps = [step for step, _ in self.gate_history]
        means = np.stack([m[layer] for _, m in self.gate_history])  # (S, T)
        return heatmap_figure(means, steps, f"mean {gate} gate, layer {layer}", cmap="magma",
                              vmin=0.0, vmax=1.0)  # fmt: skip

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
        for name, value in metrics.items():
            self.writer.add_scalar(name, value, self.steps)

    def close(self) -> None:
        self.writer.close()

    def _heatmap(self, layer: int) -> Figure:
        steps = [step for step, _ in self.snapshots]
        with np.errstate(divide="ignore"):
            logs = np.log10(np.stack([norms[layer] for _, norms in self.snapshots]))  # (S, T)
        logs[~np.isfinite(logs)] = np.nan  # underflow to 0 shows as blank
        return heatmap_figure(logs, steps, f"log10 ||dL/dh_t||, layer {layer}", cmap="viridis")

    def _norm_vs_t(self) -> Figure:
        fig = Figure(figsize=(6, 3.5))
        ax = fig.subplots()
        picks = [self.snapshots[0]] + ([self.snapshots[-1]] if len(self.snapshots) > 1 else [])
        for (step, norms), style in zip(picks, ("--", "-"), strict=False):
            for layer, layer_norms in enumerate(norms):
                t = np.arange(1, len(layer_norms) + 1)
                ax.semilogy(t, np.where(layer_norms > 0, layer_norms, np.nan), style,
                            label=f"step {step}, layer {layer}")  # fmt: skip
        ax.set(xlabel="timestep t", ylabel="||dL/dh_t||", title="gradient norm vs timestep")
        ax.legend(fontsize="small")
        fig.tight_layout()
        return fig


def heatmap_figure(values: np.ndarray, steps: list[int], title: str, **imshow) -> Figure:
    """values (S, T) as an image: timestep t across, training step (snapshot) up."""
    fig = Figure(figsize=(6, 3.5))
    ax = fig.subplots()
    image = ax.imshow(
        values, aspect="auto", origin="lower", interpolation="nearest",
        extent=(0.5, values.shape[1] + 0.5, -0.5, len(steps) - 0.5), **imshow,
    )  # fmt: skip
    ticks = np.linspace(0, len(steps) - 1, min(len(steps), 6)).round().astype(int)
    ax.set_yticks(ticks, [str(steps[i]) for i in ticks])
    ax.set(xlabel="timestep t", ylabel="training step", title=title)
    fig.colorbar(image, ax=ax)
    fig.tight_layout()
    return fig


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
    """The HParams metrics of a finished run, from its metrics.json content."""
    end = (metrics.get("grad_norms") or {}).get("end") or {"layers": [{}]}
    return {
        "best_metric": metrics.get("best_metric"),
        "final_metric": metrics.get("final_metric"),
        "solved_step": metrics.get("solved_step"),
        "end_vanishing_ratio": end["layers"][0].get("vanishing_ratio"),
        "diverged": float(metrics["status"] == "diverged"),
    }
