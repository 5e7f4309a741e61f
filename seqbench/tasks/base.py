"""What every task shares: the batch, the `Task` protocol, the base config schemas, the value
checks common to several tasks, and the plumbing of the generated tasks.

A leaf of the package: task modules import it and it imports nothing of seqbench, so
`seqbench.tasks` can discover the task modules without an import cycle.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar, Protocol

import torch
from omegaconf import MISSING
from torch import Tensor, nn

if TYPE_CHECKING:
    from seqbench.tasks.streams import StreamWalk

# How a task reports a bad value: need(ok, "task.key", "what is allowed"). check_config passes
# its own reporter, which collects every problem into one ConfigError.
Need = Callable[[bool, str, str], None]


@dataclass
class TaskConfig:
    name: str = MISSING  # the task's registry name, set by its schema
    seq_len: int = MISSING  # every task sets its own default


@dataclass
class StreamTaskConfig(TaskConfig):
    # false: independent windows of seq_len, each from a zero state; true: the training split
    # as train.batch_size contiguous streams, walked a window at a time with the state carried
    # (detached) from one window to the next, and val/test scored by the same walk
    stateful: bool = False


@dataclass
class SyntheticTaskConfig(TaskConfig):
    val_size: int = 1024  # fixed validation set, drawn once from val_seed
    val_seed: int = 1234  # the validation set's own seed: the same set for every run seed


@dataclass
class Batch:
    x: Tensor  # (B, T, input_size) float features, or (B, T) token ids when vocab_size is set
    y: Tensor  # task-specific target
    lengths: Tensor | None = None  # (B,) real lengths when sequences are padded at the end
    # stateful windows of streams (`task.stateful`): the state the window starts from (the
    # model's form; None: zero), and where its final state goes for the stream's next window
    state: Any = None
    carry: Callable[[Any], None] | None = None


class Task(Protocol):
    """What the training loop, the config checks and the result files use of a task.

    A task module defines one class with these attributes and `TASK = ThatClass`; the registry in
    `seqbench.tasks` finds it, and conf/task/<name>.yaml selects it by `name`.
    """

    name: ClassVar[str]  # the registry name: conf/task/<name>.yaml, `task=<name>`
    schema: ClassVar[type[TaskConfig]]  # its config dataclass: fields = constructor arguments
    bidirectional_refusal: ClassVar[str | None]  # why model.bidirectional is refused; None: allowed
    input_size: int  # features per step (ignored when vocab_size is set)
    vocab_size: int | None  # token inputs: the model embeds ids in 0..vocab_size-1
    output_size: int
    metric: str  # the validation metric that decides "best" and is compared to the baseline
    mode: str  # "min" or "max": which direction of `metric` is better
    baseline: float  # `metric` of the trivial baseline described in the task's docstring
    baseline_name: str
    splits: tuple[str, ...]  # ("val",) or ("val", "test"); test is evaluated once, at the end
    info: dict[str, Any]  # extra facts for metrics.json (data sizes, more baselines, ...)
    generator: torch.Generator  # draws every training batch: its state is the data position
    # `task.stateful=true`: the walk along the training streams (its place and carried state
    # are checkpointed); None for a task that draws independent windows
    stream: StreamWalk | None

    @classmethod
    def check(cls, cfg: Any, need: Need) -> None:
        """Report every impossible value of the task's config node `cfg` through `need`."""
        ...

    def sample(self, batch_size: int) -> Batch:
        """A fresh training batch from the task's seeded generator."""
        ...

    def loss(self, output: Tensor, batch: Batch) -> Tensor:
        """Training loss from the model output (B, T, output_size)."""
        ...

    def sources(self, batch: Batch) -> Tensor:
        """(B, T) bool: the output positions whose loss terms the lag profile follows back
        (`seqbench.lags`): where the loss reads, or the part of it that needs memory."""
        ...

    def reads(self, batch: Batch) -> Tensor | None:
        """(B,) long: the one output position each sequence's loss reads, where the loss reads
        nothing else (the model's head then runs there only); None where it reads more.
        Optional: without it the head runs at every position (`seqbench.train.reads`)."""
        ...

    def evaluate(self, model: nn.Module, split: str = "val") -> dict[str, float]:
        """Metrics (including `metric`) on a fixed split; called under torch.no_grad()."""
        ...

    def solved(self, metrics: dict[str, float]) -> bool:
        """Whether validation `metrics` pass the task's threshold (recorded as solved_step)."""
        ...

    def report(self, model: nn.Module) -> dict[str, str]:
        """Texts to show after each validation (e.g. a generated sample); {} when none."""
        ...


def check_seq_len(cfg: Any, need: Need) -> None:
    need(cfg.seq_len >= 2, "task.seq_len", "an integer >= 2")


def check_split_fractions(cfg: Any, need: Need) -> None:
    """The val/test fractions of a task that splits one data set into train, val and test."""
    fractions = cfg.val_fraction + cfg.test_fraction
    need(0 < cfg.val_fraction < 1, "task.val_fraction", "a fraction in (0, 1)")
    need(0 < cfg.test_fraction < 1, "task.test_fraction", "a fraction in (0, 1)")
    need(fractions < 1, "task.val_fraction", "val + test fractions must leave training data")


def last_step_sources(batch: Batch) -> Tensor:
    """(B, T) bool, True at the last step only: a loss read once, at the end."""
    mask = torch.zeros(batch.x.shape[:2], dtype=torch.bool, device=batch.x.device)
    mask[:, -1] = True
    return mask


def last_step_reads(batch: Batch) -> Tensor:
    """(B,) long, the last step of every sequence: where a loss read once, at the end, reads."""
    return torch.full((len(batch.x),), batch.x.shape[1] - 1, device=batch.x.device)


def make_generator(device: torch.device, seed: int) -> torch.Generator:
    return torch.Generator(device=device).manual_seed(seed)


class SyntheticTask:
    """Shared plumbing of the generated tasks: a seeded training stream and a fixed validation
    set drawn once from `val_seed`, so every seed is compared on the same validation data."""

    vocab_size = None
    splits = ("val",)
    stream = None  # independent windows, never a stream

    def __init__(self, device: torch.device, seed: int, val_size: int, val_seed: int) -> None:
        self.generator = make_generator(device, seed)
        self.info: dict[str, Any] = {}
        self._validation = self.batch(val_size, make_generator(device, val_seed))

    @classmethod
    def check(cls, cfg: Any, need: Need) -> None:
        check_seq_len(cfg, need)
        need(cfg.val_size >= 1, "task.val_size", "a positive integer")

    def batch(self, n: int, generator: torch.Generator) -> Batch:
        raise NotImplementedError

    def metrics(self, output: Tensor, batch: Batch) -> dict[str, float]:
        raise NotImplementedError

    def sample(self, batch_size: int) -> Batch:
        return self.batch(batch_size, self.generator)

    def reads(self, batch: Batch) -> Tensor | None:
        return None

    def validation(self) -> Batch:
        return self._validation

    def evaluate(self, model: nn.Module, split: str = "val") -> dict[str, float]:
        if split != "val":
            raise ValueError(f"{type(self).__name__} has no {split!r} split")
        output, _ = model(self._validation.x)
        return self.metrics(output, self._validation)

    def report(self, model: nn.Module) -> dict[str, str]:
        return {}
