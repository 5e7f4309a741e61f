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


@dataclass
class ModelConfig:
    cell: str = MISSING  # rnn | lstm | gru | indrnn | mingru | minlstm (conf/model/)
    hidden_size: int = 64
    num_layers: int = 1
    dropout: float = 0.0  # between stacked layers (needs num_layers > 1)
    input_dropout: float = 0.0  # on the first layer's inputs: the token embeddings on token tasks
    output_dropout: float = 0.0  # on the last layer's outputs, before the head
    forget_bias: float = 1.0  # LSTM only: initial forget-gate bias
    init: str = "default"  # default | orthogonal | xavier | identity (IRNN: identity W_hh blocks)
    nonlinearity: str | None = None  # null: the cell's own (rnn: tanh, or relu; indrnn: relu)
    recurrent_gain: float | None = None  # scale each W_hh gate block to this spectral radius
    recurrent_max: float | None = None  # diagonal cells (indrnn): clip |W_hh| after each update
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
    num_threads: int = 0  # torch threads; 0: 1 for a small step, else torch's default (README)


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
    # exact dL/dh_t norms at step 0, every `every` steps and at the end; 0 = at init and end
    # only; auto = max(1, train.steps // 50): about 50 points per curve for a run of any length
    every: Any = "auto"
    explode_factor: float = 10.0  # exploding: the largest norm by lag > factor * the one at lag 0
    log_magnitude: bool = False  # engine: also log10 ||dL/dh_t||, exact below float64's range
    # lag profile (seqbench/lags.py): at most this many (sequence, source) pairs per snapshot
    # on tasks with several loss terms per sequence (copy, chargen), latest sources first
    lag_sources: int = 64


@dataclass
class CheckpointConfig:
    every: int = 500  # full training state every N steps (and at the end); 0 = only at the end


@dataclass
class InferenceConfig:
    # after training (CPU): float32 vs dynamic int8, metric and speed; off by default: it cost
    # about 5% of the default job (2 s of ~40 s) for a question most runs do not ask
    compare: bool = False
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
    from seqbench.schemas import task_schemas  # read from source: task modules import torch

    OmegaConf.register_new_resolver("seqbench_direction", optimization_direction, replace=True)
    OmegaConf.register_new_resolver("seqbench_groups", config_groups, replace=True)
    cs = ConfigStore.instance()
    _rename_plugin_configs(cs)
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


def config_groups() -> str:
    """`seqbench --help`'s list of the groups a user chooses from: every folder of conf/ but
    hydra/, with its options ("model: gru, lstm, rnn"), one line each. Hydra's own
    $APP_CONFIG_GROUPS would also list the schemas that the options extend (schema/...)."""
    from pathlib import Path

    conf = Path(__file__).resolve().parent.parent / "conf"
    lines = [
        f"{group.name}: {', '.join(sorted(p.stem for p in group.glob('*.yaml')))}"
        for group in sorted(conf.iterdir())
        if group.is_dir() and group.name != "hydra" and any(group.glob("*.yaml"))
    ]
    return "\n".join(lines)


def optimization_direction(task_name: str) -> str:
    """'minimize' or 'maximize': how a sweeper should treat the task's validation metric."""
    from seqbench.tasks import task_class

    return "maximize" if task_class(task_name).mode == "max" else "minimize"


def _rename_plugin_configs(cs: ConfigStore) -> None:
    """Make conf/hydra/launcher/ray.yaml (the plugin's config plus seqbench's launcher) what
    `hydra/launcher=ray` selects: the Ray plugin stores its own `ray` node on import, and Hydra
    refuses a YAML and a stored node of the same name, so the stored one moves to ray_plugin.
    """
    from hydra.core.plugins import Plugins

    Plugins.instance()  # scans (re-executes) the plugin modules once; later calls do not
    rename_plugin_configs(cs)


def rename_plugin_configs(cs: ConfigStore) -> None:
    """The renames of `_rename_plugin_configs`, without the plugin scan. Also run by
    hydra_plugins.seqbench_plugins each time it is executed: Hydra re-scans (re-executes) every
    plugin module when a job restores its singletons (`Singleton.set_state`, e.g. joblib running
    a job in the launching process), which stores the plugins' nodes again."""
    try:
        from hydra_plugins.hydra_ray_launcher._config import RayLauncherConf
    except ImportError:  # not installed: hydra/launcher=ray is unavailable anyway
        return
    cs.repo.get("hydra", {}).get("launcher", {}).pop("ray.yaml", None)
    cs.store(group="hydra/launcher", name="ray_plugin", node=RayLauncherConf)


AUTO_POINTS = 50  # diagnostics.every=auto: about this many snapshots per run


def diagnostics_every(cfg: Any) -> int:
    """diagnostics.every as a number of steps (`auto`: max(1, train.steps // AUTO_POINTS)).

    Raises:
        ConfigError: a value other than auto, 0 or a positive integer.
    """
    from seqbench.errors import ConfigError

    every = cfg.diagnostics.every
    if every == "auto":
        return max(1, cfg.train.steps // AUTO_POINTS)
    if isinstance(every, int) and not isinstance(every, bool) and every >= 0:
        return every
    raise ConfigError(
        f"diagnostics.every={every!r} is not allowed: use auto (max(1, train.steps // "
        f"{AUTO_POINTS}), about {AUTO_POINTS} snapshots per run), 0 (only at init and at the "
        "end) or a positive number of steps."
    )


def flatten(node: dict, prefix: str = ""):
    """Yield (dotted.key, value) for every leaf of a nested dict."""
    for key, value in node.items():
        name = f"{prefix}.{key}" if prefix else str(key)
        if isinstance(value, dict):
            yield from flatten(value, name)
        else:
            yield name, value
