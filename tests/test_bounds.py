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

from seqbench.cells import CELLS
from seqbench.checks import check_config
from seqbench.errors import ConfigError
from seqbench.scheduler import build_scheduler
from tests.conftest import compose_config

TINY = 5e-324  # the smallest positive float: "> 0" and ">= 0" differ only here


def below(x: float) -> float:
    return math.nextafter(x, -math.inf)


def above(x: float) -> float:
    return math.nextafter(x, math.inf)


def listed(names: list[str]) -> str:
    """['a', 'b', 'c'] -> 'a, b and c', as the refusals list names."""
    return " and ".join([", ".join(names[:-1]), names[-1]] if len(names) > 1 else names)


# the registry's cells by what a rule is about (the messages name them)
RELU_CELLS = listed(sorted(n for n, c in CELLS.items() if "relu" in c.nonlinearities))
NO_RECURRENT = sorted(n for n, c in CELLS.items() if c.recurrence == "none")
DIAGONAL = sorted(n for n, c in CELLS.items() if c.recurrence == "diagonal")

# key, the overrides that make the rule apply, accepted values (edges), refused values (edges),
# and what the refusal tells the user is allowed (the start of it, for the long ones)
EDGES = [
    ("model.cell", (), sorted(CELLS), ["transformer", "LSTM"], f"one of {sorted(CELLS)}"),
    ("model.hidden_size", (), [1], [0], "a positive integer"),
    ("model.num_layers", (), [1], [0], "a positive integer"),
    ("model.dropout", ("model.num_layers=2",), [0.0, below(1.0)], [-TINY, 1.0],
     "a probability in [0, 1)"),
    ("model.dropout", ("model.num_layers=1",), [0.0], [TINY],  # nothing between layers
     "dropout acts between stacked layers, so it needs model.num_layers >= 2"),
    ("model.input_dropout", (), [0.0, below(1.0)], [-TINY, 1.0], "a probability in [0, 1)"),
    ("model.output_dropout", (), [0.0, below(1.0)], [-TINY, 1.0], "a probability in [0, 1)"),
    ("model.init", (), ["default", "orthogonal", "xavier", "identity"], ["zeros"],
     "one of ['default', 'orthogonal', 'xavier', 'identity']"),
    ("model.nonlinearity", ("model=rnn",), ["tanh", "relu"], ["sigmoid", "ReLU"],
     "model.cell=rnn takes tanh or relu"),
    ("model.nonlinearity", ("model=lstm",), [None, "tanh"], ["relu"],
     f"model.cell=lstm takes tanh; relu is an option of {RELU_CELLS}"),
    ("model.nonlinearity", ("model=gru",), [None, "tanh"], ["relu"],
     f"model.cell=gru takes tanh; relu is an option of {RELU_CELLS}"),
    ("model.recurrent_gain", (), [None, TINY], [0.0, -1.0], "a spectral radius > 0, or null"),
    ("model.recurrent_gain", (f"model={NO_RECURRENT[0]}",), [None], [1.0],
     f"null for {listed(NO_RECURRENT)}, whose gates read only the input"),
    ("model.recurrent_max", (f"model={DIAGONAL[0]}",), [None, TINY], [0.0, -1.0],
     "a bound > 0, or null"),
    ("model.recurrent_max", ("model=lstm",), [None], [1.0],
     f"null, or a bound for a cell with one weight per unit: {listed(DIAGONAL)}"),
    ("model.embedding_dim", (), [1], [0], "a positive integer"),
    ("model.engine", (), ["auto", "engine", "fused"], ["cuda"],
     "one of ['auto', 'engine', 'fused']"),
    ("model.bidirectional", ("task=sentiment",), [True, False], [], None),
    ("model.bidirectional", ("task=stocks",), [True], [], None),
    ("model.bidirectional", ("task=adding",), [False], [True],
     "only for sentiment and stocks: with task=adding"),
    ("model.bidirectional", ("task=copy",), [False], [True],
     "only for sentiment and stocks: with task=copy"),
    ("model.bidirectional", ("task=chargen",), [False], [True],
     "only for sentiment and stocks: with task=chargen"),
    ("model.bidirectional", ("task=stocks", "model.engine=engine"), [False], [True],
     "the BPTT engine is unidirectional: use model.engine=auto or fused with it"),
    ("task.stateful", ("task=stocks",), [True, False], [], None),
    ("task.stateful", ("task=stocks", "model.bidirectional=true"), [False], [True],
     "false with model.bidirectional=true: a backward direction reads each window from its end"),
    ("task.name", (), ["adding"], ["mnist"],
     "one of ['adding', 'chargen', 'copy', 'sentiment', 'stocks']"),
    ("task.name", ("model.bidirectional=true",), [], ["mnist"],  # no task: no other refusal
     "one of ['adding', 'chargen', 'copy', 'sentiment', 'stocks']"),
    ("task.seq_len", (), [2], [1], "an integer >= 2"),
    ("task.val_size", (), [1], [0], "a positive integer"),
    ("task.num_symbols", ("task=copy",), [1], [0], "a positive integer"),
    ("task.memory_len", ("task=copy",), [1], [0], "a positive integer"),
    ("task.val_fraction", ("task=sentiment", f"task.test_fraction={TINY}"),
     [TINY, below(1.0)], [0.0, 1.0], "a fraction in (0, 1)"),
    ("task.test_fraction", ("task=stocks", f"task.val_fraction={TINY}"),
     [TINY, below(1.0)], [0.0, -1.0], "a fraction in (0, 1)"),
    ("task.val_fraction", ("task=chargen", "task.test_fraction=0.25"),  # val + test < 1
     [below(0.75)], [0.75], "val + test fractions must leave training data"),
    ("task.min_freq", ("task=sentiment",), [1], [0], "a positive integer"),
    ("task.max_vocab", ("task=sentiment",), [3], [2], "an integer >= 3 (<pad>, <unk>, a word)"),
    ("task.readout", ("task=sentiment",), ["last", "mean"], ["max", "Last"],
     "one of ['last', 'mean']"),
    ("task.horizon", ("task=stocks",), [1], [0], "a positive number of days"),
    ("task.corpus", ("task=chargen",), ["shakespeare", "hamlet"], ["Hamlet", ""],
     "shakespeare or hamlet"),
    ("task.prompt", ("task=chargen",), ["a"], [""], "at least one character"),
    ("task.temperature", ("task=chargen",), [TINY], [0.0], "a value > 0"),
    ("task.sample_len", ("task=chargen",), [1], [0], "a positive integer"),
    ("optimizer._target_", (), ["torch.optim.Adam", "torch.optim.NAdam"],
     ["torch.optim.Nope", "nope", "torch.optim"], "a class that can be imported, e.g. "
     "torch.optim.NAdam; or one of the optimizer group's options, which seqbench --help lists"),
    ("optimizer.lr", (), [TINY], [0.0], "a learning rate > 0"),
    ("optimizer.weight_decay", (), [0.0], [-TINY], "a value >= 0"),
    ("optimizer.betas", (), [[0.0, 0.0], [below(1.0), below(1.0)]],
     [[0.9, 1.0], [-TINY, 0.9], [0.9], [0.9, 0.9, 0.9]], "two values in [0, 1), e.g. [0.9, 0.999]"),
    ("optimizer.eps", (), [TINY], [0.0], "a value > 0"),
    ("optimizer.eps", ("optimizer=rmsprop",), [TINY], [0.0], "a value > 0"),
    ("optimizer.momentum", ("optimizer=sgd",), [0.0], [-TINY], "a value >= 0"),
    ("optimizer.momentum", ("optimizer=rmsprop",), [0.0], [-TINY], "a value >= 0"),
    ("optimizer.momentum", ("optimizer=sgd", "optimizer.nesterov=true"), [TINY], [0.0],
     "> 0 with optimizer.nesterov=true"),
    ("optimizer.alpha", ("optimizer=rmsprop",), [0.0, 1.0], [-TINY, above(1.0)],
     "a smoothing constant in [0, 1]"),
    ("hardware.device", (), ["cpu", "cuda", "auto"], ["tpu"], "one of ['cpu', 'cuda', 'auto']"),
    ("hardware.num_threads", (), [0], [-1], "0 (torch default) or more"),
    ("train.steps", (), [1], [0], "a positive integer"),
    ("train.batch_size", (), [1], [0], "a positive integer"),
    ("train.eval_every", (), [1], [0], "a positive integer"),
    ("train.clip.mode", (), ["norm", "value"], ["max", "Norm"], "norm or value"),
    ("train.clip.threshold", (), [None, TINY], [0.0], "a value > 0, or null"),
    ("train.clip.threshold", ("train.clip.mode=value",), [TINY], [0.0], "a value > 0, or null"),
    ("diagnostics.every", (), [0], [-1],
     "auto (max(1, train.steps // 50): about 50 snapshots per run), 0 (at init and at the end "
     "only) or a positive number of steps"),
    ("diagnostics.explode_factor", (), [TINY], [0.0], "a value > 0"),
    ("diagnostics.lag_sources", (), [1], [0], "a positive integer"),
    ("log.progress", (), ["auto", "rich", "plain", "none"], ["fancy"],
     "one of ['auto', 'rich', 'plain', 'none']"),
    ("scheduler.factor", ("scheduler=plateau",), [TINY, below(1.0)], [0.0, 1.0],
     "a factor in (0, 1)"),
    ("scheduler.patience", ("scheduler=plateau",), [0], [-1], "0 or more validations"),
    ("scheduler.min_lr", ("scheduler=plateau",), [0.0], [-TINY], "a value >= 0"),
    ("scheduler.warmup_steps", ("scheduler=cosine", "train.steps=10"), [0, 9], [-1, 10],
     "0 or more, and fewer than train.steps"),
    ("scheduler.min_lr_ratio", ("scheduler=cosine",), [0.0, 1.0], [-TINY, above(1.0)],
     "a ratio in [0, 1]"),
    ("scheduler.step_size", ("scheduler=step",), [1], [0], "a positive number of steps"),
    ("scheduler.gamma", ("scheduler=step",), [TINY, 1.0], [0.0, above(1.0)], "a factor in (0, 1]"),
    ("train.early_stopping.patience", (), [0], [-1], "0 (off) or more validations"),
    ("train.early_stopping.min_delta", (), [0.0], [-TINY], "a value >= 0"),
    ("inference.repeats", (), [1], [0], "a positive integer"),
    ("checkpoint.every", (), [0], [-1], "0 (only at the end) or a positive integer"),
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


@pytest.fixture(scope="module", autouse=True)
def composed() -> None:
    """Compose every base config before the first case, so that each case times only its checks:
    `make mutate` runs a mutant's covering tests fastest first, by these times, and these cases
    are the ones that kill check_config's mutants."""
    for _, overrides, *_ in EDGES + RULES:
        base_config(overrides)
    torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=1.0)  # torch.optim's first use: 1-2 s


@pytest.mark.parametrize("key,overrides,accepted,refused,allowed", EDGES, ids=ids(EDGES))
def test_each_rule_at_its_edge(
    key: str, overrides: tuple, accepted: list, refused: list, allowed: str | None
) -> None:
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
        assert f"{key}={value!r} is not allowed ({allowed}" in str(err.value)


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
    covered = {key for key, _, _, refused, _ in EDGES if refused}
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
    ("diagnostics.lag_sources", (), lambda v: v >= 1, st.integers(-3, 3)),
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


def test_several_refusals_make_one_message() -> None:
    cfg = with_value((), "train.steps", 0)
    OmegaConf.update(cfg, "optimizer.lr", 0.0)
    with pytest.raises(ConfigError) as err:
        check_config(cfg)
    assert str(err.value) == "optimizer.lr=0.0 is not allowed (a learning rate > 0); " \
        "train.steps=0 is not allowed (a positive integer)."  # fmt: skip


def test_lists_in_messages_read_as_english() -> None:
    """The lists that refusals name ('only for adding, copy and stocks')."""
    from seqbench.checks import _and

    assert [_and(names) for names in (["a"], ["a", "b"], ["a", "b", "c"], ["a", "b", "c", "d"])] \
        == ["a", "a and b", "a, b and c", "a, b, c and d"]  # fmt: skip
