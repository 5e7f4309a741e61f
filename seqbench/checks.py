"""check_config: every value that composes but cannot run, refused before anything is built or
written, with one message naming each key and what is allowed. The root of validation: it asks
the model, the tasks, the hardware and the console what they allow (config.py only holds the
schemas, so everything can import it)."""

from __future__ import annotations

from dataclasses import fields, is_dataclass
from difflib import get_close_matches
from typing import Any

from seqbench.errors import ConfigError


def check_config(cfg: Any) -> None:
    """Reject impossible values before anything is built or written.

    Raises:
        ConfigError: naming every offending key, its value and what is allowed.
    """
    from seqbench.config import diagnostics_every
    from seqbench.hardware import DEVICES
    from seqbench.loggers.console import MODES
    from seqbench.model import CELLS, ENGINES, INITS
    from seqbench.tasks import TASKS

    problems: list[str] = []

    def need(ok: bool, key: str, allowed: str) -> None:
        if not ok:
            value = _lookup(cfg, key)
            problems.append(f"{key}={value!r} is not allowed ({allowed})")

    problems += key_problems(cfg)
    need(cfg.model.cell in CELLS, "model.cell", f"one of {sorted(CELLS)}")
    need(cfg.model.hidden_size >= 1, "model.hidden_size", "a positive integer")
    need(cfg.model.num_layers >= 1, "model.num_layers", "a positive integer")
    need(0.0 <= cfg.model.dropout < 1.0, "model.dropout", "a probability in [0, 1)")
    need(
        cfg.model.dropout == 0.0 or cfg.model.num_layers > 1,
        "model.dropout",
        "dropout acts between stacked layers, so it needs model.num_layers >= 2",
    )
    need(0.0 <= cfg.model.input_dropout < 1.0, "model.input_dropout", "a probability in [0, 1)")
    need(0.0 <= cfg.model.output_dropout < 1.0, "model.output_dropout", "a probability in [0, 1)")
    need(cfg.model.init in INITS, "model.init", f"one of {list(INITS)}")
    cell = CELLS.get(cfg.model.cell)
    nonlinearity = cfg.model.nonlinearity
    if cell is not None and nonlinearity is not None and nonlinearity not in cell.nonlinearities:
        others = sorted(n for n, c in CELLS.items() if cfg.model.nonlinearity in c.nonlinearities)
        need(
            False,
            "model.nonlinearity",
            f"model.cell={cfg.model.cell} takes {' or '.join(cell.nonlinearities)}"
            + (f"; {cfg.model.nonlinearity} is an option of {_and(others)}" if others else ""),
        )
    gain = cfg.model.recurrent_gain
    need(gain is None or gain > 0, "model.recurrent_gain", "a spectral radius > 0, or null")
    without = sorted(n for n, c in CELLS.items() if c.recurrence == "none")
    need(
        gain is None or cell is None or cell.recurrence != "none",
        "model.recurrent_gain",
        f"null for {_and(without)}, whose gates read only the input (no recurrent weight)",
    )
    clip = cfg.model.recurrent_max
    diagonal = sorted(n for n, c in CELLS.items() if c.recurrence == "diagonal")
    need(clip is None or clip > 0, "model.recurrent_max", "a bound > 0, or null")
    need(
        clip is None or cell is None or cell.recurrence == "diagonal",
        "model.recurrent_max",
        f"null, or a bound for a cell with one weight per unit: {_and(diagonal)}",
    )
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
        need(
            not cfg.task.get("stateful", False),
            "task.stateful",
            "false with model.bidirectional=true: a backward direction reads each window from "
            "its end, so there is no state to carry into the next window",
        )
    need(task is not None, "task.name", f"one of {sorted(TASKS)}")
    if task is not None:
        task.check(cfg.task, need)  # the task's own rules, e.g. task.seq_len >= 2
    need(_keyword_arguments(cfg.optimizer._target_) is not None, "optimizer._target_",
         "a class that can be imported, e.g. torch.optim.NAdam; or one of the optimizer "
         "group's options, which seqbench --help lists")  # fmt: skip
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
    try:
        diagnostics_every(cfg)
    except ConfigError:
        need(False, "diagnostics.every", "auto (max(1, train.steps // 50): about 50 snapshots "
             "per run), 0 (at init and at the end only) or a positive number of steps")  # fmt: skip
    need(cfg.diagnostics.explode_factor > 0, "diagnostics.explode_factor", "a value > 0")
    need(cfg.diagnostics.lag_sources >= 1, "diagnostics.lag_sources", "a positive integer")
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


def check_keys(cfg: Any) -> None:
    """Refuse a key that no schema declares (see `unknown_keys`).

    Raises:
        ConfigError: naming each such key, the nearest known key and the keys allowed.
    """
    if problems := key_problems(cfg):
        raise ConfigError("; ".join(problems) + ".")


def key_problems(cfg: Any) -> list[str]:
    problems = []
    for key, known in unknown_keys(cfg):
        parent, _, name = key.rpartition(".")
        close = get_close_matches(name, known, n=1)
        hint = f"did you mean {parent + '.' if parent else ''}{close[0]}? " if close else ""
        allowed = f"no such key: {hint}{parent or 'the top level'} has {_and(known)}"
        problems.append(f"{key}={_lookup(cfg, key)!r} is not allowed ({allowed})")
    return problems


def unknown_keys(node: Any, prefix: str = "") -> list[tuple[str, list[str]]]:
    """(dotted key, the keys allowed beside it) for every key that no schema declares. Hydra's
    `+key=value` appends one even to a structured config (where a misspelled key without the +
    fails as the config composes), and a run would ignore it or fail on it deep inside. A
    schema with a `_target_` (the optimizer) also takes its target's keyword arguments:
    `+optimizer.amsgrad=true` reaches torch.optim.Adam."""
    from omegaconf import DictConfig, OmegaConf

    schema = OmegaConf.get_type(node) if isinstance(node, DictConfig) else None
    if not is_dataclass(schema):  # a leaf, a plain mapping (a dict-valued key, a test's config)
        return []
    known = [f.name for f in fields(schema) if not f.name.startswith("_")]
    extra = [k for k in node if k not in known and not k.startswith("_")]
    extra = [k for k in extra if (prefix, k) != ("", "hydra")]  # a callback's config has it
    if extra and "_target_" in node:
        known += _keyword_arguments(node._target_) or []
        extra = [k for k in extra if k not in known]
    found = [(f"{prefix}{k}", sorted(set(known))) for k in extra]
    for key in known:
        if key in node:
            found += unknown_keys(node._get_node(key), f"{prefix}{key}.")
    return found


def _keyword_arguments(target: str) -> list[str] | None:
    """The keyword arguments of a class's constructor (torch.optim.Adam: lr, betas, ...), or
    None where `target` names no class that can be imported."""
    import importlib
    import inspect

    module, _, name = target.rpartition(".")
    try:
        parameters = inspect.signature(getattr(importlib.import_module(module), name)).parameters
    except (ImportError, AttributeError, TypeError, ValueError):
        return None
    return [p.name for p in parameters.values() if p.kind is p.KEYWORD_ONLY or
            (p.kind is p.POSITIONAL_OR_KEYWORD and p.name not in ("self", "params"))]  # fmt: skip


def _and(names: list[str]) -> str:
    """['a', 'b', 'c'] -> 'a, b and c'."""
    return " and ".join([", ".join(names[:-1]), names[-1]] if len(names) > 1 else names)


def _lookup(cfg: Any, key: str) -> Any:
    node = cfg
    for part in key.split("."):
        node = node[part]
    return node
