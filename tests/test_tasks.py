"""Task generators: structure, seeding, and baselines checked by simulation; the registry, the
Task protocol, and each task's own value checks at their edges."""

from __future__ import annotations

import dataclasses
import functools
import inspect
import math
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from omegaconf import DictConfig
from torch import nn

from seqbench.checks import check_config
from seqbench.cli import CONF_DIR
from seqbench.config import optimization_direction
from seqbench.errors import ConfigError
from seqbench.tasks import TASKS, make_generator, task_class, task_schemas
from seqbench.tasks.adding import AddingTask, adding_batch
from seqbench.tasks.copy import CopyTask, copy_batch
from tests.conftest import compose_config

CPU = torch.device("cpu")


@pytest.mark.parametrize("seq_len", [2, 3, 50])
def test_adding_structure(seq_len: int) -> None:
    batch = adding_batch(256, seq_len, make_generator(CPU, 0))
    values, marker = batch.x[..., 0], batch.x[..., 1]
    assert batch.x.shape == (256, seq_len, 2)
    assert ((values >= 0) & (values <= 1)).all()
    half = seq_len // 2
    assert (marker[:, :half].sum(1) == 1).all() and (marker[:, half:].sum(1) == 1).all()
    torch.testing.assert_close(batch.y, (values * marker).sum(1))


def test_adding_baseline_is_variance_of_the_sum() -> None:
    task = AddingTask(CPU, seed=0, seq_len=20, val_size=8, val_seed=0)
    batch = task.sample(200_000)
    predict_one = torch.ones(200_000, 20, 1)
    assert task.loss(predict_one, batch).item() == pytest.approx(task.baseline, rel=0.02)
    assert task.baseline == pytest.approx(0.1667, abs=1e-4)


def test_copy_structure() -> None:
    t, m = 7, 10
    batch = copy_batch(64, t, make_generator(CPU, 0))
    ids = batch.x.argmax(-1)
    assert batch.x.shape == (64, t + 20, 10)
    assert ((ids[:, :m] >= 1) & (ids[:, :m] <= 8)).all()
    assert (ids[:, m : m + t - 1] == 0).all()
    assert (ids[:, m + t - 1] == 9).all()  # the delimiter
    assert (ids[:, m + t :] == 0).all()
    assert (batch.y[:, : t + m] == 0).all()
    assert torch.equal(batch.y[:, t + m :], ids[:, :m])


def test_copy_docstring_example() -> None:
    batch = copy_batch(1, 3, make_generator(CPU, 0), num_symbols=8, memory_len=3)
    assert batch.x.argmax(-1)[0, 3:].tolist() == [0, 0, 9, 0, 0, 0]
    assert batch.y[0, :6].tolist() == [0] * 6


def test_copy_memoryless_baseline() -> None:
    """Blanks with certainty, then a uniform guess over the 8 symbols, scores the baseline."""
    task = CopyTask(CPU, seed=0, seq_len=30, val_size=8, val_seed=0)
    batch = task.sample(512)
    logits = torch.full((512, 50, 10), -1e9)
    logits[:, :40, 0] = 0.0
    logits[:, 40:, 1:9] = 0.0
    assert task.loss(logits, batch).item() == pytest.approx(task.baseline, rel=1e-5)
    assert task.baseline == pytest.approx(10 * math.log(8) / 50)
    assert task.metrics(logits, batch)["accuracy"] == pytest.approx(0.125, abs=0.03)
    perfect = F.one_hot(batch.y, 10).float() * 100
    assert task.metrics(perfect, batch)["accuracy"] == 1.0


@pytest.mark.parametrize("task_cls", [AddingTask, CopyTask])
def test_seeded_and_fixed_validation(task_cls) -> None:
    a = task_cls(CPU, seed=1, seq_len=10, val_size=32, val_seed=5)
    b = task_cls(CPU, seed=1, seq_len=10, val_size=32, val_seed=5)
    c = task_cls(CPU, seed=2, seq_len=10, val_size=32, val_seed=5)
    assert torch.equal(a.sample(4).x, b.sample(4).x)
    assert not torch.equal(a.sample(4).x, c.sample(4).x)
    assert torch.equal(a.validation().x, c.validation().x)  # same validation set for every seed


# ---------------------------------------------------------------- the registry and the protocol


def test_every_task_has_a_yaml_and_every_yaml_a_task() -> None:
    yamls = {p.stem for p in (Path(CONF_DIR) / "task").glob("*.yaml")}
    assert set(TASKS) == yamls


@pytest.mark.parametrize("name", sorted(TASKS))
def test_task_module_schema_and_name_agree(name: str) -> None:
    task = TASKS[name]
    assert task.__module__ == f"seqbench.tasks.{name}"  # one module per task, named after it
    assert task.schema.name == name and task_schemas()[name] is task.schema
    assert task_class(name) is task


@pytest.mark.parametrize("name", sorted(TASKS))
def test_schema_fields_are_the_constructor_arguments(name: str) -> None:
    """build_task passes every schema field but `name`: a stale or missing field fails here."""
    task = TASKS[name]
    fields = {f.name for f in dataclasses.fields(task.schema)} - {"name"}
    arguments = set(inspect.signature(task.__init__).parameters) - {"self", "device", "seed"}
    assert fields == arguments


@pytest.mark.parametrize("name", sorted(TASKS))
def test_every_task_implements_the_protocol(name: str) -> None:
    task = TASKS[name]
    for method in ("check", "sample", "loss", "sources", "reads", "evaluate", "solved", "report"):
        assert callable(getattr(task, method)), method
    refusal = task.bidirectional_refusal
    assert refusal is None or (isinstance(refusal, str) and refusal)
    assert task.mode in ("min", "max")


@pytest.mark.parametrize("name", sorted(TASKS))
def test_sources_are_where_the_loss_reads(name: str) -> None:
    """Every task's sources (where its lag profile starts) are output positions its loss has a
    gradient at, at least one per sequence: a source the loss never reads would measure a
    gradient of nothing."""
    cfg = compose_config([f"task={name}"])
    task = task_class(name)(device=CPU, seed=0, **{
        k: v for k, v in dict(cfg.task).items() if k != "name"})  # fmt: skip
    batch = task.sample(6)
    output = torch.randn(*batch.x.shape[:2], task.output_size, requires_grad=True)
    (grad,) = torch.autograd.grad(task.loss(output, batch), output)
    sources = task.sources(batch)
    assert sources.dtype == torch.bool and sources.shape == batch.x.shape[:2]
    assert sources.any(1).all()
    assert (grad.abs().sum(-1)[sources] > 0).all()


READ_VARIANTS = [[f"task={name}"] for name in sorted(TASKS)] + [
    ["task=sentiment", "task.readout=mean"],
    ["task=stocks", "task.stateful=true"],
]


@pytest.mark.parametrize("overrides", READ_VARIANTS, ids=" ".join)
def test_reads_are_all_the_loss_reads(overrides: list[str]) -> None:
    """A task that names one read position per sequence (`Task.reads`: the model's head then
    runs there only, the output is NaN elsewhere) has a loss whose gradient is at exactly those
    positions, equal when every other output is NaN; the same loss and weight gradients from
    a model whose head runs at them only, on the engine and on the fused layer."""
    cfg = compose_config(overrides)
    name = cfg.task.name
    task = task_class(name)(device=CPU, seed=0, **{
        k: v for k, v in dict(cfg.task).items() if k != "name"})  # fmt: skip
    if task.stream is not None:
        task.stream.layout(4)
    batch = task.sample(4)
    read = task.reads(batch)
    expected = {"adding": True, "copy": False, "chargen": False,
                "sentiment": cfg.task.get("readout") == "last",
                "stocks": not cfg.task.get("stateful")}[name]  # fmt: skip
    assert (read is not None) == expected
    if read is None:
        return
    rows = torch.arange(len(read))
    assert read.dtype == torch.int64 and read.shape == (len(batch.x),)
    output = torch.randn(*batch.x.shape[:2], task.output_size, requires_grad=True)
    (grad,) = torch.autograd.grad(task.loss(output, batch), output)
    at = torch.zeros(batch.x.shape[:2], dtype=torch.bool)
    at[rows, read] = True
    assert (grad.abs().sum(-1)[at] > 0).all() and (grad[~at] == 0).all()
    assert torch.equal(task.sources(batch), at)  # the lag profile starts there too
    hidden = output.detach().clone()
    hidden[~at] = math.nan
    assert torch.equal(task.loss(hidden, batch), task.loss(output, batch))

    from seqbench.model import SequenceModel

    for engine in (True, False):
        torch.manual_seed(0)
        model = SequenceModel("lstm", task.input_size, task.output_size, hidden_size=8,
                              vocab_size=task.vocab_size, engine=engine).double()  # fmt: skip
        grads = []
        for head_at in (None, read):
            model.zero_grad()
            out, _ = model(batch.x if task.vocab_size else batch.x.double(), read=head_at,
                           lengths=batch.lengths)  # fmt: skip
            loss = task.loss(out, batch)
            loss.backward()
            grads.append([loss.detach(), *(p.grad.clone() for p in model.parameters())])
        assert torch.isnan(out[~at]).all() and not torch.isnan(out[at]).any()
        for whole, picked in zip(*grads, strict=True):
            torch.testing.assert_close(picked, whole, rtol=1e-12, atol=1e-15)


def test_tasks_without_text_report_nothing() -> None:
    for task in (
        AddingTask(CPU, seed=0, seq_len=4, val_size=2, val_seed=0),
        CopyTask(CPU, seed=0, seq_len=4, val_size=2, val_seed=0),
    ):
        assert task.report(nn.Identity()) == {}


def test_unknown_task_lists_the_valid_names() -> None:
    with pytest.raises(ValueError, match=r"unknown task 'nope'; choose one of \['adding'"):
        task_class("nope")
    cfg = compose_config(["task.name=nope"])
    with pytest.raises(ConfigError, match=r"task\.name='nope' is not allowed \(one of \["):
        check_config(cfg)


def test_optimization_direction_follows_the_task_mode() -> None:
    for name, task in TASKS.items():
        expected = "maximize" if task.mode == "max" else "minimize"
        assert optimization_direction(name) == expected


# ---------------------------------------------------------------- each task's own value checks


@functools.cache
def _composed(task: str) -> DictConfig:
    return compose_config([f"task={task}"])


# (task, key, the first value refused, the edge value accepted, what the message allows)
EDGES = [
    ("adding", "seq_len", 1, 2, "an integer >= 2"),
    ("adding", "val_size", 0, 1, "a positive integer"),
    ("copy", "seq_len", 1, 2, "an integer >= 2"),
    ("copy", "val_size", 0, 1, "a positive integer"),
    ("copy", "num_symbols", 0, 1, "a positive integer"),
    ("copy", "memory_len", 0, 1, "a positive integer"),
    ("sentiment", "seq_len", 1, 2, "an integer >= 2"),
    ("sentiment", "val_fraction", 0.0, 0.001, "a fraction in (0, 1)"),
    ("sentiment", "test_fraction", 0.0, 0.001, "a fraction in (0, 1)"),
    ("sentiment", "min_freq", 0, 1, "a positive integer"),
    ("sentiment", "max_vocab", 2, 3, "an integer >= 3 (<pad>, <unk>, a word)"),
    ("stocks", "seq_len", 1, 2, "an integer >= 2"),
    ("stocks", "val_fraction", 0.0, 0.001, "a fraction in (0, 1)"),
    ("stocks", "test_fraction", 0.0, 0.001, "a fraction in (0, 1)"),
    ("stocks", "horizon", 0, 1, "a positive number of days"),
    ("chargen", "seq_len", 1, 2, "an integer >= 2"),
    ("chargen", "val_fraction", 0.0, 0.001, "a fraction in (0, 1)"),
    ("chargen", "corpus", "bible", "hamlet", "shakespeare or hamlet"),
    ("chargen", "prompt", "", "T", "at least one character"),
    ("chargen", "temperature", 0.0, 1e-6, "a value > 0"),
    ("chargen", "sample_len", 0, 1, "a positive integer"),
]


@pytest.mark.parametrize("task,key,bad,edge,allowed", EDGES)
def test_task_checks_refuse_past_the_edge_and_accept_it(task, key, bad, edge, allowed) -> None:
    cfg = _composed(task).copy()
    cfg.task[key] = bad
    with pytest.raises(ConfigError) as err:
        check_config(cfg)
    assert str(err.value) == f"task.{key}={bad!r} is not allowed ({allowed})."
    cfg.task[key] = edge
    check_config(cfg)


@pytest.mark.parametrize("task", ["sentiment", "stocks", "chargen"])
def test_val_and_test_fractions_must_leave_training_data(task: str) -> None:
    cfg = _composed(task).copy()
    cfg.task.val_fraction, cfg.task.test_fraction = 0.5, 0.5
    with pytest.raises(ConfigError) as err:
        check_config(cfg)
    allowed = "val + test fractions must leave training data"
    assert str(err.value) == f"task.val_fraction=0.5 is not allowed ({allowed})."
    cfg.task.test_fraction = 0.49
    check_config(cfg)
