"""Structured-config schemas, registered in Hydra's ConfigStore.

YAML files under ``conf/`` hold values; these dataclasses hold the types. Every option YAML
starts from its schema (``defaults: [/schema/..@_here_, _self_]``), so a misspelled key or a
value of the wrong type fails when Hydra composes the config, with Hydra's own message.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from hydra.core.config_store import ConfigStore
from omegaconf import MISSING, OmegaConf

from seqbench.errors import ConfigError


@dataclass
class ModelConfig:
    cell: str = MISSING  # rnn | lstm | gru
    hidden_size: int = 64
    num_layers: int = 1
    dropout: float = 0.0  # between stacked layers (needs num_layers > 1)
    forget_bias: float = 1.0  # LSTM only: initial forget-gate bias
    init: str = "default"  # default | orthogonal | xavier
    embedding_dim: int = 64  # token tasks only: size of the input embeddings
    engine: str = "auto"  # auto (engine on CPU, fused cuDNN on CUDA) | engine | fused
    bidirectional: bool = False  # only tasks whose bidirectional_refusal is None


@dataclass
class OptimizerConfig:
    _target_: str = MISSING
    _partial_: bool = True
    lr: float = 1e-3
    weight_decay: float = 0.0


@dataclass
class AdamConfig(OptimizerConfig):
    _target_: str = "torch.optim.Adam"
    lr: float = 3e-3
    betas: list[float] = field(default_factory=lambda: [0.9, 0.999])
    eps: float = 1e-8


@dataclass
class AdamWConfig(AdamConfig):
    _target_: str = "torch.optim.AdamW"
    weight_decay: float = 0.01


@dataclass
class SGDConfig(OptimizerConfig):
    _target_: str = "torch.optim.SGD"
    lr: float = 0.05
    momentum: float = 0.9
    nesterov: bool = False


@dataclass
class RMSpropConfig(OptimizerConfig):
    _target_: str = "torch.optim.RMSprop"
    alpha: float = 0.99
    eps: float = 1e-8
    momentum: float = 0.0


@dataclass
class SchedulerConfig:
    name: str = MISSING


@dataclass
class NoSchedulerConfig(SchedulerConfig):
    name: str = "none"


@dataclass
class PlateauConfig(SchedulerConfig):
    name: str = "plateau"
    factor: float = 0.5
    patience: int = 5
    threshold: float = 1e-4
    min_lr: float = 0.0


@dataclass
class CosineConfig(SchedulerConfig):
    name: str = "cosine"
    warmup_steps: int | None = None  # null: WARMUP_FRACTION (5%) of train.steps, rounded down
    min_lr_ratio: float = 0.0


@dataclass
class StepScheduleConfig(SchedulerConfig):
    name: str = "step"
    step_size: int = 1000
    gamma: float = 0.5


@dataclass
class HardwareConfig:
    device: str = MISSING  # cpu | cuda | auto (cuda when present): the option's name
    flush_denormal: bool = True  # float32 denormals -> 0: 4-7x faster RNN backward on CPU
    num_threads: int = 0  # torch intra-op threads; 0 keeps torch's default


@dataclass
class ClipConfig:
    mode: str = "norm"  # norm | value
    threshold: float | None = 1.0  # null disables clipping


@dataclass
class EarlyStoppingConfig:
    patience: int = 0  # validations without an improvement of at least min_delta; 0 = off
    min_delta: float = 0.0


@dataclass
class TrainConfig:
    steps: int = 3000
    batch_size: int = 64
    eval_every: int = 100
    clip: ClipConfig = field(default_factory=ClipConfig)
    early_stopping: EarlyStoppingConfig = field(default_factory=EarlyStoppingConfig)


@dataclass
class DiagnosticsConfig:
    every: int = 100  # exact dL/dh_t norms at step 0 and every `every` steps; 0 = only at init
    explode_factor: float = 10.0  # flag exploding when max_t ||dL/dh_t|| > factor * ||dL/dh_T||
    log_magnitude: bool = False  # engine: also log10 ||dL/dh_t||, exact below float64's range


@dataclass
class CheckpointConfig:
    every: int = 500  # full training state every N steps (and at the end); 0 = only at the end


@dataclass
class InferenceConfig:
    compare: bool = True  # after training (CPU): float32 vs dynamic int8, metric and speed
    repeats: int = 3


@dataclass
class LogConfig:
    progress: str = "auto"  # auto (rich on a terminal, plain lines otherwise) | rich | plain | none
    tensorboard: bool = True


@dataclass
class Config:
    model: Any = MISSING
    task: Any = MISSING
    optimizer: Any = MISSING
    scheduler: Any = MISSING
    hardware: HardwareConfig = MISSING
    seed: int = 0
    train: TrainConfig = field(default_factory=TrainConfig)
    diagnostics: DiagnosticsConfig = field(default_factory=DiagnosticsConfig)
    log: LogConfig = field(default_factory=LogConfig)
    checkpoint: CheckpointConfig = field(default_factory=CheckpointConfig)
    inference: InferenceConfig = field(default_factory=InferenceConfig)
    resume: str | None = None  # a run directory to continue from its checkpoint
    resume_force: bool = False  # allow overrides that differ from the checkpoint's config


def register_configs() -> None:
    """Put every schema in Hydra's ConfigStore and the resolvers in OmegaConf (idempotent)."""
    from seqbench.tasks import task_schemas  # here, not at the top: tasks import torch

    OmegaConf.register_new_resolver("seqbench_direction", optimization_direction, replace=True)
    cs = ConfigStore.instance()
    _rename_optuna_sweeper_config(cs)
    cs.store(name="seqbench_schema", node=Config)
    cs.store(group="schema", name="model", node=ModelConfig)
    for name, schema in task_schemas().items():
        cs.store(group="schema/task", name=name, node=schema)
    cs.store(group="schema/optimizer", name="adam", node=AdamConfig)
    cs.store(group="schema/optimizer", name="adamw", node=AdamWConfig)
    cs.store(group="schema/optimizer", name="sgd", node=SGDConfig)
    cs.store(group="schema/optimizer", name="rmsprop", node=RMSpropConfig)
    cs.store(group="schema", name="hardware", node=HardwareConfig)
    cs.store(group="schema/scheduler", name="none", node=NoSchedulerConfig)
    cs.store(group="schema/scheduler", name="plateau", node=PlateauConfig)
    cs.store(group="schema/scheduler", name="cosine", node=CosineConfig)
    cs.store(group="schema/scheduler", name="step", node=StepScheduleConfig)


def check_config(cfg: Any) -> None:
    """Reject impossible values before anything is built or written.

    Raises:
        ConfigError: naming every offending key, its value and what is allowed.
    """
    from seqbench.hardware import DEVICES
    from seqbench.loggers.console import MODES
    from seqbench.model import CELLS, ENGINES, INITS
    from seqbench.tasks import TASKS

    problems: list[str] = []

    def need(ok: bool, key: str, allowed: str) -> None:
        if not ok:
            value = _lookup(cfg, key)
            problems.append(f"{key}={value!r} is not allowed ({allowed})")

    need(cfg.model.cell in CELLS, "model.cell", f"one of {sorted(CELLS)}")
    need(cfg.model.hidden_size >= 1, "model.hidden_size", "a positive integer")
    need(cfg.model.num_layers >= 1, "model.num_layers", "a positive integer")
    need(0.0 <= cfg.model.dropout < 1.0, "model.dropout", "a probability in [0, 1)")
    need(
        cfg.model.dropout == 0.0 or cfg.model.num_layers > 1,
        "model.dropout",
        "dropout acts between stacked layers, so it needs model.num_layers >= 2",
    )
    need(cfg.model.init in INITS, "model.init", f"one of {list(INITS)}")
    need(cfg.model.embedding_dim >= 1, "model.embedding_dim", "a positive integer")
    need(cfg.model.engine in ENGINES, "model.engine", f"one of {list(ENGINES)}")
    task = TASKS.get(cfg.task.name)
    if cfg.model.bidirectional:
        refusal = task.bidirectional_refusal if task is not None else None
        allowed = [name for name, t in TASKS.items() if t.bidirectional_refusal is None]
        need(
            refusal is None,
            "model.bidirectional",
            f"only for {_and(allowed)}: with task={cfg.task.name} {refusal}",
        )
        need(
            cfg.model.engine != "engine",
            "model.bidirectional",
            "the BPTT engine is unidirectional: use model.engine=auto or fused with it",
        )
    need(task is not None, "task.name", f"one of {sorted(TASKS)}")
    if task is not None:
        task.check(cfg.task, need)  # the task's own rules, e.g. task.seq_len >= 2
    need(cfg.optimizer.lr > 0, "optimizer.lr", "a learning rate > 0")
    need(cfg.optimizer.weight_decay >= 0, "optimizer.weight_decay", "a value >= 0")
    if "betas" in cfg.optimizer:
        betas = list(cfg.optimizer.betas)
        ok = len(betas) == 2 and all(0.0 <= b < 1.0 for b in betas)
        need(ok, "optimizer.betas", "two values in [0, 1), e.g. [0.9, 0.999]")
    if "eps" in cfg.optimizer:
        need(cfg.optimizer.eps > 0, "optimizer.eps", "a value > 0")
    if "momentum" in cfg.optimizer:
        need(cfg.optimizer.momentum >= 0, "optimizer.momentum", "a value >= 0")
    if cfg.optimizer.get("nesterov"):
        need(cfg.optimizer.momentum > 0, "optimizer.momentum", "> 0 with optimizer.nesterov=true")
    if "alpha" in cfg.optimizer:
        need(0 <= cfg.optimizer.alpha <= 1, "optimizer.alpha", "a smoothing constant in [0, 1]")
    need(cfg.hardware.device in DEVICES, "hardware.device", f"one of {list(DEVICES)}")
    need(cfg.hardware.num_threads >= 0, "hardware.num_threads", "0 (torch default) or more")
    need(cfg.train.steps >= 1, "train.steps", "a positive integer")
    need(cfg.train.batch_size >= 1, "train.batch_size", "a positive integer")
    need(cfg.train.eval_every >= 1, "train.eval_every", "a positive integer")
    need(cfg.train.clip.mode in ("norm", "value"), "train.clip.mode", "norm or value")
    threshold = cfg.train.clip.threshold
    need(threshold is None or threshold > 0, "train.clip.threshold", "a value > 0, or null")
    need(cfg.diagnostics.every >= 0, "diagnostics.every", "0 (init only) or a positive integer")
    need(cfg.diagnostics.explode_factor > 0, "diagnostics.explode_factor", "a value > 0")
    need(cfg.log.progress in MODES, "log.progress", f"one of {list(MODES)}")
    sched = cfg.scheduler
    if sched.name == "plateau":
        need(0 < sched.factor < 1, "scheduler.factor", "a factor in (0, 1)")
        need(sched.patience >= 0, "scheduler.patience", "0 or more validations")
        need(sched.min_lr >= 0, "scheduler.min_lr", "a value >= 0")
    if sched.name == "cosine":
        warmup = sched.warmup_steps
        need(warmup is None or 0 <= warmup < cfg.train.steps, "scheduler.warmup_steps",
             "0 or more, and fewer than train.steps")  # fmt: skip
        need(0 <= sched.min_lr_ratio <= 1, "scheduler.min_lr_ratio", "a ratio in [0, 1]")
    if sched.name == "step":
        need(sched.step_size >= 1, "scheduler.step_size", "a positive number of steps")
        need(0 < sched.gamma <= 1, "scheduler.gamma", "a factor in (0, 1]")
    stopping = cfg.train.early_stopping
    need(stopping.patience >= 0, "train.early_stopping.patience", "0 (off) or more validations")
    need(stopping.min_delta >= 0, "train.early_stopping.min_delta", "a value >= 0")
    need(cfg.inference.repeats >= 1, "inference.repeats", "a positive integer")
    need(cfg.checkpoint.every >= 0, "checkpoint.every", "0 (only at the end) or a positive integer")
    if problems:
        raise ConfigError("; ".join(problems) + ".")


def _and(names: list[str]) -> str:
    """['a', 'b', 'c'] -> 'a, b and c'."""
    return " and ".join([", ".join(names[:-1]), names[-1]] if len(names) > 1 else names)


def _lookup(cfg: Any, key: str) -> Any:
    node = cfg
    for part in key.split("."):
        node = node[part]
    return node


def optimization_direction(task_name: str) -> str:
    """'minimize' or 'maximize': how a sweeper should treat the task's validation metric."""
    from seqbench.tasks import task_class

    return "maximize" if task_class(task_name).mode == "max" else "minimize"


def _rename_optuna_sweeper_config(cs: ConfigStore) -> None:
    """Make conf/hydra/sweeper/optuna.yaml (the plugin's config plus the task's direction) what
    `hydra/sweeper=optuna` selects: the plugin stores its own `optuna` node on import, and Hydra
    refuses a YAML and a stored node of the same name, so the stored one moves to optuna_plugin.
    """
    from hydra.core.plugins import Plugins

    Plugins.instance()  # scans (re-executes) the plugin modules once; later calls do not
    try:
        from hydra_plugins.hydra_optuna_sweeper.config import OptunaSweeperConf
    except ImportError:  # the plugin is not installed: hydra/sweeper=optuna is unavailable anyway
        return
    cs.repo.get("hydra", {}).get("sweeper", {}).pop("optuna.yaml", None)
    cs.store(group="hydra/sweeper", name="optuna_plugin", node=OptunaSweeperConf)


def flatten(node: dict, prefix: str = ""):
    """Yield (dotted.key, value) for every leaf of a nested dict."""
    for key, value in node.items():
        name = f"{prefix}.{key}" if prefix else str(key)
        if isinstance(value, dict):
            yield from flatten(value, name)
        else:
            yield name, value
