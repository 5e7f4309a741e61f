"""The `seqbench` command: Hydra composes the config; this module builds the objects and runs."""

from __future__ import annotations

import sys
from pathlib import Path

import hydra
import torch
from hydra.core.hydra_config import HydraConfig
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf

from seqbench.checkpoint import BestCheckpoint, load_checkpoint, save_checkpoint
from seqbench.config import ConfigError, check_config, register_configs
from seqbench.hardware import configure, seed_everything, select_device
from seqbench.loggers.console import ConsoleLogger
from seqbench.loggers.tensorboard import TensorBoardLogger
from seqbench.model import SequenceModel, count_parameters
from seqbench.results import RunRecorder
from seqbench.tasks import build_task
from seqbench.train import Clip, Diverged, evaluate, measure_grad_norms, train

register_configs()

# conf/ sits at the repository top level (the package is installed editable), so the command
# finds it from any working directory.
CONF_DIR = str(Path(__file__).resolve().parent.parent / "conf")

EXIT_USAGE = 2  # a value that cannot run; nothing was written
EXIT_INTERRUPTED = 130  # Ctrl-C; result files were written with status "interrupted"


@hydra.main(version_base="1.3", config_path=CONF_DIR, config_name="config")
def main(cfg: DictConfig) -> float | None:
    try:
        return run(cfg, Path(HydraConfig.get().runtime.output_dir))
    except ConfigError as err:
        print(f"seqbench: error: {err}", file=sys.stderr)
        sys.exit(EXIT_USAGE)


def run(cfg: DictConfig, run_dir: Path) -> float | None:
    """Train one configuration and write its run directory; return the best validation metric."""
    check_config(cfg)
    device, notice = select_device(cfg.hardware.device)
    configure(cfg.hardware.flush_denormal, cfg.hardware.num_threads)
    seed_everything(cfg.seed)
    task = build_task(cfg.task, device, cfg.seed)
    m = cfg.model
    model = SequenceModel(
        m.cell, task.input_size, task.output_size, hidden_size=m.hidden_size,
        num_layers=m.num_layers, dropout=m.dropout, forget_bias=m.forget_bias, init=m.init,
        vocab_size=task.vocab_size, embedding_dim=m.embedding_dim,
    ).to(device)  # fmt: skip
    optimizer = instantiate(cfg.optimizer)(model.parameters())

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
    recorder = RunRecorder(run_dir, info, task.metric, task.mode, cfg.diagnostics.explode_factor)
    console = ConsoleLogger(cfg.train.steps, task.metric, cfg.log.progress)
    best = BestCheckpoint(run_dir / "best.pt", model, task.metric, task.mode)
    callbacks = [recorder, best, console]
    if cfg.log.tensorboard:
        callbacks.append(TensorBoardLogger(run_dir / "tb", cfg.diagnostics.explode_factor))
    if notice:
        console.info(notice)
    console.info(
        f"{m.cell} on {task.name}: {info['num_parameters']:,} parameters, {device}, "
        f"seed {cfg.seed}; baseline {task.metric} {task.baseline:.4f}. Run dir: {run_dir}"
    )

    status, extra, interrupted = "completed", {"diverged_step": None, "error": None}, False
    final_saved = False
    try:
        train(
            model, task, optimizer, steps=cfg.train.steps, batch_size=cfg.train.batch_size,
            eval_every=cfg.train.eval_every, clip=Clip(**cfg.train.clip),
            diagnostics_every=cfg.diagnostics.every, callbacks=callbacks,
        )  # fmt: skip
        norms, positions = measure_grad_norms(model, task, cfg.train.batch_size)
        for callback in callbacks:
            callback.on_grad_norms(recorder.steps_done, norms, positions)
        _save_final(run_dir, model, optimizer, cfg, recorder.steps_done)
        final_saved = True
        if "test" in task.splits:  # once, at the end, with the best validation weights
            model.load_state_dict(load_checkpoint(run_dir / "best.pt", device)["model"])
            extra["test"] = evaluate(model, task, "test")
    except Diverged as err:
        status, extra = "diverged", {"diverged_step": err.step, "error": str(err)}
    except KeyboardInterrupt:
        status, interrupted = "interrupted", True
    except Exception as err:  # a bug or a resource error: record it, then re-raise below
        status, extra["error"] = "failed", f"{type(err).__name__}: {err}"
        raise
    finally:
        console.close()
        if not final_saved:
            _save_final(run_dir, model, optimizer, cfg, recorder.steps_done)
        metrics = recorder.write(status, **extra)
        for callback in callbacks:
            getattr(callback, "close", lambda: None)()
    console.summary(metrics, str(run_dir))
    if interrupted:
        sys.exit(EXIT_INTERRUPTED)
    return metrics["best_metric"]


def _save_final(run_dir: Path, model, optimizer, cfg: DictConfig, step: int) -> None:
    config = OmegaConf.to_container(cfg, resolve=True)
    save_checkpoint(run_dir / "checkpoint.pt", model, optimizer, config, step)
