"""Every value rule of check_config at its edge, on both sides: the last allowed value passes
(and PyTorch accepts it too, for optimizer and scheduler values), the first refused one fails
with a message that names exactly that key. Then Hypothesis draws values around every numeric
edge and checks the verdict against the rule, written out here independently."""

from __future__ import annotations

import math
import os
import re
from functools import cache
from pathlib import Path

import pytest
import torch
from hydra.utils import instantiate
from hypothesis import given, settings
from hypothesis import strategies as st
from omegaconf import DictConfig, OmegaConf

from seqbench.checks import check_config
from seqbench.errors import ConfigError
from seqbench.scheduler import build_scheduler
from tests.conftest import compose_config

TINY = 5e-324  # the smallest positive float: "> 0" and ">= 0" differ only here


def below(x: float) -> float:
    return math.nextafter(x, -math.inf)


def above(x: float) -> float:
    return math.nextafter(x, math.inf)


# key, the overrides that make the rule apply, accepted values (edges), refused values (edges)
EDGES = [
    ("model.cell", (), ["rnn", "lstm", "gru"], ["transformer", "LSTM"]),
    ("model.hidden_size", (), [1], [0]),
    ("model.num_layers", (), [1], [0]),
    ("model.dropout", ("model.num_layers=2",), [0.0, below(1.0)], [-TINY, 1.0]),
    ("model.dropout", ("model.num_layers=1",), [0.0], [TINY]),  # nothing between layers
    ("model.input_dropout", (), [0.0, below(1.0)], [-TINY, 1.0]),
    ("model.output_dropout", (), [0.0, below(1.0)], [-TINY, 1.0]),
    ("model.init", (), ["default", "orthogonal", "xavier", "identity"], ["zeros"]),
    ("model.nonlinearity", ("model=rnn",), ["tanh", "relu"], ["sigmoid", "ReLU"]),
    ("model.nonlinearity", ("model=lstm",), ["tanh"], ["relu"]),
    ("model.nonlinearity", ("model=gru",), ["tanh"], ["relu"]),
    ("model.recurrent_gain", (), [None, TINY], [0.0, -1.0]),
    ("model.embedding_dim", (), [1], [0]),
    ("model.engine", (), ["auto", "engine", "fused"], ["cuda"]),
    ("model.bidirectional", ("task=sentiment",), [True, False], []),
    ("model.bidirectional", ("task=stocks",), [True], []),
    ("model.bidirectional", ("task=adding",), [False], [True]),
    ("model.bidirectional", ("task=copy",), [False], [True]),
    ("model.bidirectional", ("task=chargen",), [False], [True]),
    ("model.bidirectional", ("task=stocks", "model.engine=engine"), [False], [True]),
    ("task.name", (), ["adding"], ["mnist"]),
    ("task.seq_len", (), [2], [1]),
    ("task.val_size", (), [1], [0]),
    ("task.num_symbols", ("task=copy",), [1], [0]),
    ("task.memory_len", ("task=copy",), [1], [0]),
    ("task.val_fraction", ("task=sentiment", f"task.test_fraction={TINY}"),
     [TINY, below(1.0)], [0.0, 1.0]),
    ("task.test_fraction", ("task=stocks", f"task.val_fraction={TINY}"),
     [TINY, below(1.0)], [0.0, -1.0]),
    ("task.val_fraction", ("task=chargen", "task.test_fraction=0.25"),  # val + test < 1
     [below(0.75)], [0.75]),
    ("task.min_freq", ("task=sentiment",), [1], [0]),
    ("task.max_vocab", ("task=sentiment",), [3], [2]),
    ("task.readout", ("task=sentiment",), ["last", "mean"], ["max", "Last"]),
    ("task.horizon", ("task=stocks",), [1], [0]),
    ("task.corpus", ("task=chargen",), ["shakespeare", "hamlet"], ["Hamlet", ""]),
    ("task.prompt", ("task=chargen",), ["a"], [""]),
    ("task.temperature", ("task=chargen",), [TINY], [0.0]),
    ("task.sample_len", ("task=chargen",), [1], [0]),
    ("optimizer.lr", (), [TINY], [0.0]),
    ("optimizer.weight_decay", (), [0.0], [-TINY]),
    ("optimizer.betas", (), [[0.0, 0.0], [below(1.0), below(1.0)]],
     [[0.9, 1.0], [-TINY, 0.9], [0.9], [0.9, 0.9, 0.9]]),
    ("optimizer.eps", (), [TINY], [0.0]),
    ("optimizer.eps", ("optimizer=rmsprop",), [TINY], [0.0]),
    ("optimizer.momentum", ("optimizer=sgd",), [0.0], [-TINY]),
    ("optimizer.momentum", ("optimizer=rmsprop",), [0.0], [-TINY]),
    ("optimizer.momentum", ("optimizer=sgd", "optimizer.nesterov=true"), [TINY], [0.0]),
    ("optimizer.alpha", ("optimizer=rmsprop",), [0.0, 1.0], [-TINY, above(1.0)]),
    ("hardware.device", (), ["cpu", "cuda", "auto"], ["tpu"]),
    ("hardware.num_threads", (), [0], [-1]),
    ("train.steps", (), [1], [0]),
    ("train.batch_size", (), [1], [0]),
    ("train.eval_every", (), [1], [0]),
    ("train.clip.mode", (), ["norm", "value"], ["max", "Norm"]),
    ("train.clip.threshold", (), [None, TINY], [0.0]),
    ("train.clip.threshold", ("train.clip.mode=value",), [TINY], [0.0]),
    ("diagnostics.every", (), [0], [-1]),
    ("diagnostics.explode_factor", (), [TINY], [0.0]),
    ("log.progress", (), ["auto", "rich", "plain", "none"], ["fancy"]),
    ("scheduler.factor", ("scheduler=plateau",), [TINY, below(1.0)], [0.0, 1.0]),
    ("scheduler.patience", ("scheduler=plateau",), [0], [-1]),
    ("scheduler.min_lr", ("scheduler=plateau",), [0.0], [-TINY]),
    ("scheduler.warmup_steps", ("scheduler=cosine", "train.steps=10"), [0, 9], [-1, 10]),
    ("scheduler.min_lr_ratio", ("scheduler=cosine",), [0.0, 1.0], [-TINY, above(1.0)]),
    ("scheduler.step_size", ("scheduler=step",), [1], [0]),
    ("scheduler.gamma", ("scheduler=step",), [TINY, 1.0], [0.0, above(1.0)]),
    ("train.early_stopping.patience", (), [0], [-1]),
    ("train.early_stopping.min_delta", (), [0.0], [-TINY]),
    ("inference.repeats", (), [1], [0]),
    ("checkpoint.every", (), [0], [-1]),
]  # fmt: skip


@cache
def base_config(overrides: tuple[str, ...]) -> DictConfig:
    return compose_config(["hardware=cpu", "train.steps=1000", *overrides])


def with_value(overrides: tuple[str, ...], key: str, value) -> DictConfig:
    cfg = OmegaConf.create(OmegaConf.to_container(base_config(overrides)))
    OmegaConf.update(cfg, key, value)
    return cfg


def named_keys(message: str) -> set[str]:
    """The keys a ConfigError names: each problem reads 'key=value is not allowed (...)'."""
    return set(re.findall(r"(?:^|; )([a-z_.]+)=.*? is not allowed", message))


def ids(edges) -> list[str]:
    return [f"{key}[{','.join(o.split('=')[-1] for o in over)}]" for key, over, *_ in edges]


@pytest.mark.parametrize("key,overrides,accepted,refused", EDGES, ids=ids(EDGES))
def test_each_rule_at_its_edge(key: str, overrides: tuple, accepted: list, refused: list) -> None:
    for value in accepted:
        cfg = with_value(overrides, key, value)
        check_config(cfg)  # raises if refused
        if key.startswith("optimizer."):  # what seqbench accepts, torch.optim accepts
            instantiate(cfg.optimizer)([torch.nn.Parameter(torch.zeros(1))])
        if key.startswith("scheduler."):
            optimizer = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=1.0)
            build_scheduler(cfg.scheduler, optimizer, cfg.train.steps, "min")
    for value in refused:
        with pytest.raises(ConfigError) as err:
            check_config(with_value(overrides, key, value))
        assert named_keys(str(err.value)) == {key}, (value, str(err.value))
        assert f"{key}={value!r} is not allowed" in str(err.value)


def rule_keys() -> set[str]:
    """The key of every `need(condition, "key", allowed)` call in seqbench's source (check_config
    and the checks that components carry)."""
    import ast

    import seqbench

    keys = set()
    for path in Path(seqbench.__file__).parent.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Call) and getattr(node.func, "id", None) == "need":
                key = node.args[1]
                assert isinstance(key, ast.Constant), ast.unparse(node)
                keys.add(key.value)
    return keys


@pytest.mark.skipif("MUTANT_UNDER_TEST" in os.environ, reason="mutmut rewrites the source")
def test_every_rule_has_an_edge() -> None:
    """A rule added without an edge in EDGES fails here."""
    keys = rule_keys()
    assert len(keys) > 40, sorted(keys)
    covered = {key for key, _, _, refused in EDGES if refused}
    assert keys <= covered, sorted(keys - covered)


# Numeric rules written out independently: key, overrides, allowed(value), values to draw.
RULES = [
    ("model.hidden_size", (), lambda v: v >= 1, st.integers(-3, 3)),
    ("model.dropout", ("model.num_layers=2",), lambda v: 0 <= v < 1, st.floats(-0.5, 1.5)),
    ("task.seq_len", (), lambda v: v >= 2, st.integers(-3, 4)),
    ("optimizer.lr", (), lambda v: v > 0, st.floats(-1, 1)),
    ("optimizer.eps", (), lambda v: v > 0, st.floats(-1e-8, 1e-8)),
    ("optimizer.alpha", ("optimizer=rmsprop",), lambda v: 0 <= v <= 1, st.floats(-0.5, 1.5)),
    ("scheduler.factor", ("scheduler=plateau",), lambda v: 0 < v < 1, st.floats(-0.5, 1.5)),
    ("scheduler.patience", ("scheduler=plateau",), lambda v: v >= 0, st.integers(-3, 3)),
    ("scheduler.min_lr", ("scheduler=plateau",), lambda v: v >= 0, st.floats(-1, 1)),
    ("scheduler.warmup_steps", ("scheduler=cosine",), lambda v: 0 <= v < 1000,
     st.integers(-3, 1003)),
    ("scheduler.min_lr_ratio", ("scheduler=cosine",), lambda v: 0 <= v <= 1, st.floats(-0.5, 1.5)),
    ("scheduler.step_size", ("scheduler=step",), lambda v: v >= 1, st.integers(-3, 3)),
    ("scheduler.gamma", ("scheduler=step",), lambda v: 0 < v <= 1, st.floats(-0.5, 1.5)),
    ("train.early_stopping.patience", (), lambda v: v >= 0, st.integers(-3, 3)),
    ("train.early_stopping.min_delta", (), lambda v: v >= 0, st.floats(-1, 1)),
    ("train.clip.threshold", (), lambda v: v > 0, st.floats(-1, 1)),
    ("inference.repeats", (), lambda v: v >= 1, st.integers(-3, 3)),
    ("checkpoint.every", (), lambda v: v >= 0, st.integers(-3, 3)),
]  # fmt: skip


@settings(max_examples=150, deadline=None)
@given(data=st.data())
def test_numeric_rules_accept_exactly_the_allowed_values(data) -> None:
    key, overrides, allowed, values = data.draw(st.sampled_from(RULES))
    value = data.draw(values)
    cfg = with_value(overrides, key, value)
    if allowed(value):
        check_config(cfg)
    else:
        with pytest.raises(ConfigError) as err:
            check_config(cfg)
        assert named_keys(str(err.value)) == {key}, str(err.value)


def test_lists_in_messages_read_as_english() -> None:
    """The lists that refusals name ('only for adding, copy and stocks')."""
    from seqbench.checks import _and

    assert [_and(names) for names in (["a"], ["a", "b"], ["a", "b", "c"], ["a", "b", "c", "d"])] \
        == ["a", "a and b", "a, b and c", "a, b, c and d"]  # fmt: skip
