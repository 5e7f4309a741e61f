"""The `seqbench` command: Hydra composes the config; this module builds the objects and runs."""

from __future__ import annotations

import json
import os
import shutil
import sys
from pathlib import Path

import hydra
import torch
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf

from seqbench.callbacks import Diverged, Interrupted
from seqbench.checkpoint import (
    BestCheckpoint,
    PeriodicCheckpoint,
    load_checkpoint,
    load_training_state,
    rng_state,
    save_checkpoint,
    set_rng_state,
)
from seqbench.config import check_config, register_configs
from seqbench.errors import EXIT_CODES, EXIT_IO, EXIT_USAGE, ConfigError
from seqbench.files import atomic_write
from seqbench.hardware import configure, seed_everything, select_device
from seqbench.inference import compare_inference
from seqbench.interrupt import stop_on_signals
from seqbench.loggers.console import ConsoleLogger
from seqbench.loggers.tensorboard import TensorBoardLogger
from seqbench.model import SequenceModel, count_parameters
from seqbench.results import RunRecorder
from seqbench.scheduler import SchedulerStep, build_scheduler
from seqbench.sweep import completed_before
from seqbench.tasks import build_task
from seqbench.train import (
    Clip,
    EarlyStopping,
    evaluate,
    measure_grad_norms,
    train,
)

register_configs()

# conf/ sits at the repository top level (the package is installed editable), so the command
# finds it from any working directory.
CONF_DIR = str(Path(__file__).resolve().parent.parent / "conf")

# Interrupted runs exit with 130 (SIGINT) or 143 (SIGTERM) after writing their files.


@hydra.main(version_base="1.3", config_path=CONF_DIR, config_name="config")
def main(cfg: DictConfig) -> float | None:
    hydra_cfg = HydraConfig.get()
    run_dir = Path(hydra_cfg.runtime.output_dir)
    if hydra_cfg.mode != RunMode.MULTIRUN:
        try:
            return run(cfg, run_dir)
        except ConfigError as err:
            print(f"seqbench: error: {err}", file=sys.stderr)
            sys.exit(EXIT_USAGE)
        except OSError as err:  # disk full, read-only file system, ...
            print(
                f"seqbench: error: writing the run's files in {run_dir} failed "
                f"({err.strerror or err}: {err.filename or ''}). Free disk space or choose a "
                "writable hydra.run.dir; the last complete checkpoint (checkpoint.pt or "
                "checkpoint.prev.pt) and result files are left as they were.",
                file=sys.stderr,
            )
            sys.exit(EXIT_IO)
    # In a sweep, one job's failure is recorded in its metrics.json and the sweep goes on.
    overrides = list(hydra_cfg.overrides.task)
    earlier = completed_before(run_dir, overrides)
    if earlier is not None:
        print(f"seqbench: {run_dir} already completed; skipping (delete it to run again)")
        return earlier["best_metric"]
    resume = None
    if _status(run_dir) == "interrupted" and (run_dir / "checkpoint.pt").exists():
        resume = run_dir  # continue where it stopped
    else:  # a failed or missing job runs again from the start: drop stale results first
        (run_dir / "metrics.json").unlink(missing_ok=True)
        shutil.rmtree(run_dir / "tb", ignore_errors=True)
    _set_job_threads(cfg, hydra_cfg)
    try:
        return run(cfg, run_dir, resume=resume)
    except Exception as err:  # recorded, reported, and the sweep goes on
        print(f"seqbench: job {hydra_cfg.job.num} failed: {err}", file=sys.stderr)
        if _status(run_dir) is None:
            _write_failed(run_dir, cfg, overrides, err)
        return None


def _status(run_dir: Path) -> str | None:
    try:
        return json.loads((run_dir / "metrics.json").read_text()).get("status")
    except (OSError, ValueError):
        return None


def run(cfg: DictConfig, run_dir: Path, resume: Path | None = None) -> float | None:
    """Train one configuration and write its run directory; return the best validation metric.

    With `resume` (or `cfg.resume`), continue the run in that directory from its checkpoint.
    """
    check_config(cfg)
    resume = resume or (Path(cfg.resume) if cfg.resume else None)
    state = None
    if resume is not None:
        state = load_training_state(resume)
        cfg = resumed_config(cfg, state["config"])
        run_dir = resume
    device, notice = select_device(cfg.hardware.device)
    configure(cfg.hardware.flush_denormal, cfg.hardware.num_threads)
    seed_everything(cfg.seed)
    task = build_task(cfg.task, device, cfg.seed)
    m = cfg.model
    model = SequenceModel(
        m.cell, task.input_size, task.output_size, hidden_size=m.hidden_size,
        num_layers=m.num_layers, dropout=m.dropout, forget_bias=m.forget_bias, init=m.init,
        vocab_size=task.vocab_size, embedding_dim=m.embedding_dim,
        track_log10=cfg.diagnostics.log_magnitude,
        bidirectional=m.bidirectional,
        engine=m.engine == "engine" or (m.engine == "auto" and device.type == "cpu"
                                        and not m.bidirectional),
    ).to(device)  # fmt: skip
    try:
        optimizer = instantiate(cfg.optimizer)(model.parameters())
    except ValueError as err:  # torch.optim's own checks, for anything check_config missed
        raise ConfigError(f"optimizer: {err}. Check the optimizer.* values.") from err

    info = {
        "model": m.cell,
        "task": task.name,
        "seed": cfg.seed,
        "num_parameters": count_parameters(model),
        "steps_planned": cfg.train.steps,
        "device": str(device),
        "baseline": task.baseline,
        "baseline_name": task.baseline_name,
        "overrides": list(HydraConfig.get().overrides.task) if HydraConfig.initialized() else [],
        "torch": torch.__version__,
        "task_info": task.info,
    }
    scheduler = build_scheduler(cfg.scheduler, optimizer, cfg.train.steps, task.mode)

    def lr() -> float:
        return optimizer.param_groups[0]["lr"]

    recorder = RunRecorder(
        run_dir, info, task.metric, task.mode, cfg.diagnostics.explode_factor,
        solved=getattr(task, "solved", None), lr=lr,
    )  # fmt: skip
    stopping = cfg.train.early_stopping
    early = EarlyStopping(task.metric, task.mode, stopping.patience, stopping.min_delta)
    best = BestCheckpoint(run_dir / "best.pt", model, task.metric, task.mode)
    start_step = 0
    if state is not None:
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        recorder.load_state_dict(state["recorder"])
        if scheduler is not None:
            scheduler.load_state_dict(state["scheduler"])
        for row in recorder.history:  # early stopping's count follows from the history
            early.on_eval(row["step"], {task.metric: row[f"val_{task.metric}"]})
        best.best = recorder.best["value"] if recorder.best else None
        set_rng_state(state["rng"], task.generator)
        start_step = state["step"]

    def training_state() -> dict:
        return {
            "model": model.state_dict(),
            "optimizer": optimizer.state_dict(),
            "config": OmegaConf.to_container(cfg, resolve=True),
            "step": recorder.steps_done,
            "rng": rng_state(task.generator),
            "scheduler": scheduler.state_dict() if scheduler is not None else None,
            "recorder": recorder.state_dict(),
        }

    console = ConsoleLogger(cfg.train.steps, task.metric, cfg.log.progress, start_step)
    callbacks = [recorder, best, early, console]
    if scheduler is not None:  # logged rates are those after s updates: lr(s)
        callbacks.append(SchedulerStep(scheduler, task.metric))
    callbacks.append(PeriodicCheckpoint(run_dir, cfg.checkpoint.every, training_state))
    tensorboard = None
    if cfg.log.tensorboard:
        tensorboard = TensorBoardLogger(
            run_dir / "tb", cfg.diagnostics.explode_factor, resume_step=start_step or None,
            snapshots=[(s, n) for s, n, *_ in recorder.snapshots], clipped=recorder.clipped_steps,
            lr=lr,
        )  # fmt: skip
        callbacks.append(tensorboard)
    if notice:
        console.info(notice)
    if state is not None:
        console.info(f"Resuming {run_dir} at step {start_step} (from {state['source']}).")
    console.info(
        f"{m.cell} on {task.name}: {info['num_parameters']:,} parameters, {device}, "
        f"seed {cfg.seed}; baseline {task.metric} {task.baseline:.4f}. Run dir: {run_dir}"
    )

    status, extra, stopped = "completed", {"diverged_step": None, "error": None}, None
    final_saved = False
    try:
        with stop_on_signals() as stop:
            train(
                model, task, optimizer, steps=cfg.train.steps, batch_size=cfg.train.batch_size,
                eval_every=cfg.train.eval_every, clip=Clip(**cfg.train.clip),
                diagnostics_every=cfg.diagnostics.every, callbacks=callbacks,
                start_step=start_step, stop=stop, done=early,
            )  # fmt: skip
        extra["stopped_early"] = early.stopped_at is not None
        extra["stopped_at_step"] = early.stopped_at
        snapshot = measure_grad_norms(model, task, cfg.train.batch_size)
        for callback in callbacks:
            callback.on_grad_norms(recorder.steps_done, *snapshot)
        save_checkpoint(run_dir, training_state())
        final_saved = True
        if cfg.inference.compare and device.type == "cpu":
            extra["inference"] = compare_inference(model, task, cfg.inference.repeats)
        if "test" in task.splits:  # once, at the end, with the best validation weights
            model.load_state_dict(load_checkpoint(run_dir / "best.pt", device)["model"])
            extra["test"] = evaluate(model, task, "test")
    except Diverged as err:
        status, extra = "diverged", {"diverged_step": err.step, "error": str(err)}
    except Interrupted as err:
        status, stopped = "interrupted", err.reason
    except KeyboardInterrupt:  # a second Ctrl-C: mid-step, so the checkpoint stays as it was
        status, stopped, final_saved = "interrupted", "SIGINT", True
    except Exception as err:  # a bug or a resource error: record it, then re-raise below
        status, extra["error"] = "failed", f"{type(err).__name__}: {err}"
        raise
    finally:
        console.close()
        if not final_saved:
            save_checkpoint(run_dir, training_state())
        metrics = recorder.write(status, **extra)
        if tensorboard is not None:
            tensorboard.write_hparams(_hparams(cfg), _final_numbers(metrics))
        for callback in callbacks:
            getattr(callback, "close", lambda: None)()
    console.summary(metrics, str(run_dir))
    if stopped is not None:
        print(
            f"seqbench: interrupted ({stopped}) after step {recorder.steps_done}; "
            f"resume with: seqbench resume={run_dir}",
            file=sys.stderr,
        )
        sys.exit(EXIT_CODES[stopped])
    return metrics["best_metric"]


def resumed_config(cfg: DictConfig, saved: dict) -> DictConfig:
    """The checkpoint's config, plus this command's log.* settings.

    Raises:
        ConfigError: an override on this command line differs from the checkpoint's config
            (listing each key), unless resume_force=true, which applies them.
    """
    current = OmegaConf.to_container(cfg, resolve=True)
    if HydraConfig.initialized():
        explicit = [o.split("=", 1)[0].lstrip("+~") for o in HydraConfig.get().overrides.task]
    else:  # called as a library: every key counts as given
        explicit = [key for key, _ in _flatten(current, "")]
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
            differing.append(f"{key} (checkpoint: {theirs}, now: {ours})")
    if differing:
        raise ConfigError(
            f"resume={cfg.resume}: this command line changes the run's config: "
            + "; ".join(differing)
            + ". Resume without those overrides, or add resume_force=true to apply them."
        )
    OmegaConf.update(merged, "resume", cfg.resume, force_add=True)
    return merged


def _write_failed(run_dir: Path, cfg: DictConfig, overrides: list[str], err: Exception) -> None:
    """metrics.json for a job that failed before (or while) training."""
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


def _set_job_threads(cfg: DictConfig, hydra_cfg: DictConfig) -> None:
    """Parallel jobs (joblib launcher) share the cores: give each its share of torch threads
    unless hardware.num_threads says otherwise."""
    if cfg.hardware.num_threads > 0:
        return
    launcher = hydra_cfg.launcher
    n_jobs = launcher.get("n_jobs") if "joblib" in str(launcher.get("_target_", "")) else None
    if n_jobs:
        cores = os.cpu_count() or 1
        jobs = cores if n_jobs < 0 else min(n_jobs, cores)
        torch.set_num_threads(max(1, cores // jobs))


def _hparams(cfg: DictConfig) -> dict:
    """What the HParams dashboard compares: model, task, optimizer and training settings."""
    flat = {"model": cfg.model.cell, "task": cfg.task.name, "seed": cfg.seed,
            "optimizer": cfg.optimizer._target_.rsplit(".", 1)[-1].lower()}  # fmt: skip
    for group in ("model", "task", "optimizer", "train"):
        node = OmegaConf.to_container(cfg[group], resolve=True)
        for key, value in _flatten(node, group):
            if not key.split(".")[-1].startswith("_"):
                flat[key] = value
    return flat


def _flatten(node: dict, prefix: str):
    for key, value in node.items():
        name = f"{prefix}.{key}" if prefix else str(key)
        if isinstance(value, dict):
            yield from _flatten(value, name)
        else:
            yield name, value


def _final_numbers(metrics: dict) -> dict[str, float]:
    end = (metrics.get("grad_norms") or {}).get("end") or {"layers": [{}]}
    return {
        "best_metric": metrics.get("best_metric"),
        "final_metric": metrics.get("final_metric"),
        "solved_step": metrics.get("solved_step"),
        "end_vanishing_ratio": end["layers"][0].get("vanishing_ratio"),
        "diverged": float(metrics["status"] == "diverged"),
    }
