"""One job: build the task, model, optimizer and callbacks from a composed config, train, and
write the run directory. The command line (`seqbench.cli`) maps Hydra and exit codes around it;
this module takes a config object and can be called without Hydra."""

from __future__ import annotations

import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from hydra.core.hydra_config import HydraConfig
from hydra.utils import instantiate
from omegaconf import OmegaConf

from seqbench.callbacks import Callback, Diverged, Interrupted
from seqbench.cells import get_cell
from seqbench.checkpoint import (
    BestCheckpoint,
    PeriodicCheckpoint,
    load_checkpoint,
    load_training_state,
    restore_training_state,
    save_checkpoint,
    training_state,
)
from seqbench.checks import check_config
from seqbench.config import diagnostics_every
from seqbench.errors import EXIT_CODES, ConfigError
from seqbench.hardware import (
    configure,
    release_collector,
    seed_everything,
    select_device,
    threads_for_step,
)
from seqbench.inference import compare_inference
from seqbench.interrupt import stop_on_signals
from seqbench.loggers.console import ConsoleLogger
from seqbench.loggers.runname import event_dir
from seqbench.loggers.tensorboard import TensorBoardLogger, run_hparams
from seqbench.model import SequenceModel, count_parameters, engine_choice
from seqbench.results import RunRecorder
from seqbench.resume import completed_before, resumed_config
from seqbench.scheduler import SchedulerStep, build_scheduler
from seqbench.tasks import Task, build_task
from seqbench.train import Clip, EarlyStopping, evaluate, measure_grad_norms, train
from seqbench.trials import trial_reporter


@dataclass
class Job:
    """What a run is made of, built from the config before training starts."""

    cfg: Any
    run_dir: Path
    device: torch.device
    task: Task
    model: SequenceModel
    optimizer: torch.optim.Optimizer
    scheduler: Any | None
    recorder: RunRecorder
    notice: str | None = None  # e.g. a cell without engine kernels trains on another path

    def state(self) -> dict:
        """The full training state at the current step, for checkpoint.pt."""
        config = OmegaConf.to_container(self.cfg, resolve=True)
        return training_state(self.model, self.optimizer, self.scheduler, self.recorder,
                              self.task.generator, config, self.task.stream)  # fmt: skip


def run(
    cfg: Any, run_dir: Path, resume: Path | None = None, sweep_job: str | None = None,
    side_by_side: bool = False, go_on: str | None = None,
) -> float | None:  # fmt: skip
    """Train one configuration and write its run directory; return the best validation metric.

    With `resume` (or `cfg.resume`), continue the run in that directory from its checkpoint.
    `sweep_job` (a multirun job's label) keeps the console to one line for the job;
    `side_by_side` (a launcher that runs jobs at the same time) leaves out its live bar.
    `go_on` tells an interrupted sweep job's user how to continue (default: resume=RUN_DIR).
    Exits with 130/143/141 after writing every file when SIGINT/SIGTERM or a closed stdout
    (SIGPIPE) stopped the run.
    """
    check_config(cfg)
    resume = resume or (Path(cfg.resume) if cfg.resume else None)
    state = None
    if resume is not None:
        state = load_training_state(resume)
        cfg = resumed_config(cfg, state["config"])
        run_dir = resume
        if (done := completed_before(resume, steps_planned=cfg.train.steps)) is not None:
            print(
                f"seqbench: {resume} already completed ({done['steps']:,} of "
                f"{cfg.train.steps:,} steps); nothing to resume, and its files are left as "
                f"they are. To train it longer: seqbench resume={resume} "
                f"train.steps=N resume_force=true, with N > {cfg.train.steps}."
            )
            return done["best_metric"]
    device, notice = select_device(cfg.hardware.device)
    configure(cfg.hardware.flush_denormal, cfg.hardware.num_threads)
    step_work = cfg.train.batch_size * get_cell(cfg.model.cell).gates * cfg.model.hidden_size
    threads_for_step(cfg.hardware.num_threads, step_work)  # small steps: 1 thread
    seed_everything(cfg.seed)
    job = build_job(cfg, Path(run_dir), device)
    task, recorder = job.task, job.recorder
    stopping = cfg.train.early_stopping
    early = EarlyStopping(task.metric, task.mode, stopping.patience, stopping.min_delta)
    best = BestCheckpoint(job.run_dir / "best.pt", job.model, task.metric, task.mode)
    start_step = 0
    if state is not None:
        start_step = restore_training_state(state, job.model, job.optimizer, job.scheduler,
                                            recorder, task.generator, task.stream)  # fmt: skip
        for row in recorder.history:  # early stopping's count follows from the history
            early.on_eval(row["step"], {task.metric: row[f"val_{task.metric}"]})
        best.best = recorder.best["value"] if recorder.best else None
    recorder.start_files()  # the CSVs as of the checkpoint (or empty); rows are appended from here

    console = ConsoleLogger(cfg.train.steps, task.metric, cfg.log.progress, start_step, sweep_job,
                            side_by_side)  # fmt: skip
    callbacks: list[Callback] = [recorder, best, early, console]
    if job.scheduler is not None:  # logged rates are those after s updates: lr(s)
        callbacks.append(SchedulerStep(job.scheduler, task.metric))
    tensorboard = None
    if cfg.log.tensorboard:  # before the checkpoint: its events reach the disk first
        log_dir = event_dir(job.run_dir, recorder.info["overrides"], resumed=state is not None)
        tensorboard = TensorBoardLogger(
            log_dir, cfg.diagnostics.explode_factor, resume_step=start_step or None,
            snapshots=[(s, n) for s, n, *_ in recorder.snapshots], clipped=recorder.clipped_steps,
            lr=recorder.lr, gate_history=recorder.memory_gate_history(),
            flush_every=cfg.checkpoint.every,
            lag_snapshots=[(s, logs) for s, logs, _ in recorder.lag_snapshots],
        )  # fmt: skip
        callbacks.append(tensorboard)
    callbacks.append(PeriodicCheckpoint(job.run_dir, cfg.checkpoint.every, job.state))
    trial = trial_reporter(job.run_dir, task.metric)  # an Optuna trial: report, maybe prune
    if trial is not None:
        callbacks.insert(1, trial)
    if job.notice:
        console.info(job.notice)
    if state is not None:
        console.info(f"Resuming {job.run_dir} at step {start_step} (from {state['source']}).")
    if sweep_job is None:  # a sweep says the device notice once (sweep.HydraHooks)
        if notice:
            console.info(notice)
        console.info(
            f"{cfg.model.cell} on {task.name}: {recorder.info['num_parameters']:,} parameters, "
            f"{device}, seed {cfg.seed}; baseline {task.metric} {task.baseline:.4f}"
        )
        console.info(f"run dir: {job.run_dir}")  # a line of its own: a path is long

    status, extra, stopped = "completed", {"diverged_step": None, "error": None}, None
    final_saved = False
    release_collector()  # start-up is over (a single run's on_run_start held the collector)
    try:
        with stop_on_signals() as stop:
            train(
                job.model, task, job.optimizer, steps=cfg.train.steps,
                batch_size=cfg.train.batch_size, eval_every=cfg.train.eval_every,
                clip=Clip(**cfg.train.clip), diagnostics_every=diagnostics_every(cfg),
                lag_sources=cfg.diagnostics.lag_sources, callbacks=callbacks,
                start_step=start_step, stop=lambda: stop() or console.closed,
                done=lambda: early() or (trial is not None and trial()),
                snapshots_held={step for step, *_ in recorder.snapshots},
            )  # fmt: skip
        extra["stopped_early"] = early.stopped_at is not None
        extra["stopped_at_step"] = early.stopped_at
        if trial is not None and trial.pruned_at is not None:
            status, extra["pruned_at_step"] = "pruned", trial.pruned_at
        final_snapshot(job, callbacks)
        final_saved = True
        extra.update(final_evaluations(job))
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
            save_checkpoint(job.run_dir, job.state())
        metrics = recorder.write(status, **extra)
        if tensorboard is not None:
            tensorboard.write_end(run_hparams(cfg), metrics, experiment=sweep_job is None)
        for callback in callbacks:
            getattr(callback, "close", lambda: None)()
    console.summary(metrics, str(job.run_dir))
    if stopped is not None:
        go_on = go_on or f"resume with: seqbench resume={job.run_dir}"
        print(f"seqbench: interrupted ({stopped}) after step {recorder.steps_done}; {go_on}",
              file=sys.stderr)  # fmt: skip
        sys.exit(EXIT_CODES[stopped])
    return metrics["best_metric"]


def build_job(cfg: Any, run_dir: Path, device: torch.device) -> Job:
    """Task, model, optimizer, scheduler and the run's recorder, in the order that fixes what
    each seed draws (task data first, then the model's initial weights)."""
    task = build_task(cfg.task, device, cfg.seed)
    if task.stream is not None:  # task.stateful: the training split as batch_size streams
        task.stream.layout(cfg.train.batch_size)
    m = cfg.model
    model_args = dict(m)  # every other key of model.* is an argument of SequenceModel
    engine, engine_notice = engine_choice(m.cell, model_args.pop("engine"), device.type,
                                          m.bidirectional)  # fmt: skip
    try:
        model = SequenceModel(
            input_size=task.input_size, output_size=task.output_size, vocab_size=task.vocab_size,
            track_log10=cfg.diagnostics.log_magnitude, engine=engine, **model_args,
        ).to(device)  # fmt: skip
    except RuntimeError as err:  # torch.OutOfMemoryError (CUDA) is one too
        if (size := _allocation(str(err))) is None:
            raise
        raise ConfigError(
            f"model.hidden_size={m.hidden_size} with model.num_layers={m.num_layers}: the "
            f"model does not fit in memory on {device} (one of its weights alone needs "
            f"{size}); choose a smaller model.hidden_size or model.num_layers."
        ) from None
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
    recorder = RunRecorder(
        run_dir, info, task.metric, task.mode, cfg.diagnostics.explode_factor,
        solved=task.solved, lr=lambda: optimizer.param_groups[0]["lr"],
    )  # fmt: skip
    return Job(cfg, run_dir, device, task, model, optimizer, scheduler, recorder, engine_notice)


def _allocation(message: str) -> str | None:
    """The size an out-of-memory error says was asked for ('149.0 GiB'), or None for another
    error. CPU: 'you tried to allocate 160000000000 bytes'; CUDA: 'Tried to allocate 149.01
    GiB'."""
    import re

    if found := re.search(r"tried to allocate (\d+) bytes", message, re.IGNORECASE):
        return f"{int(found.group(1)) / 2**30:,.1f} GiB"
    if found := re.search(r"tried to allocate ([\d.]+ [KMGT]iB)", message, re.IGNORECASE):
        return found.group(1)
    return None


def final_snapshot(job: Job, callbacks: list[Callback]) -> None:
    """After the last step: a gradient-norm snapshot at the final weights, then checkpoint.pt."""
    cfg, step = job.cfg, job.recorder.steps_done
    snap = measure_grad_norms(job.model, job.task, cfg.train.batch_size,
                              cfg.diagnostics.lag_sources)  # fmt: skip
    for callback in callbacks:
        callback.on_grad_norms(step, snap.norms, snap.positions, snap.log10)
        callback.on_lag_norms(step, snap.lags)
        if snap.gates:
            callback.on_gates(step, snap.gates, job.model.spec.memory_gate)
    save_checkpoint(job.run_dir, job.state())


def final_evaluations(job: Job) -> dict[str, Any]:
    """The float32 vs int8 comparison (CPU) and the test split, scored once with the best
    validation weights (best.pt), for metrics.json."""
    results: dict[str, Any] = {}
    if job.cfg.inference.compare and job.device.type == "cpu":
        results["inference"] = compare_inference(job.model, job.task, job.cfg.inference.repeats)
    if "test" in job.task.splits:
        best = load_checkpoint(job.run_dir / "best.pt", job.device)["model"]
        job.model.load_state_dict(best)
        results["test"] = evaluate(job.model, job.task, "test")
    return results
