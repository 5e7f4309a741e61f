"""Bad input: real `seqbench` subprocesses for many mistaken command lines (non-zero exit, no
traceback, a message naming the key), and property-based checks of the generators and of the
config validation."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from omegaconf import OmegaConf

from seqbench.config import check_config
from seqbench.errors import ConfigError
from seqbench.tasks import make_generator
from seqbench.tasks.adding import adding_batch
from seqbench.tasks.copy import copy_batch
from tests.conftest import compose_config, seqbench_cli

BAD = [
    # Hydra: unknown options, keys and types (Hydra's own message)
    ("model=transformer", "model"),
    ("task=mnist", "task"),
    ("optimizer=lbfgs", "optimizer"),
    ("hardware=tpu", "hardware"),
    ("model.hiden_size=3", "hiden_size"),
    ("train.stepz=3", "stepz"),
    ("model.hidden_size=abc", "model.hidden_size"),
    ("train.steps=1.5", "train.steps"),
    ("seed=abc", "seed"),
    ("task.memory_len=3", "memory_len"),  # the adding task has no memory
    ("log.tensorboard=maybe", "log.tensorboard"),
    # seqbench: impossible values
    ("model.hidden_size=0", "model.hidden_size"),
    ("model.num_layers=0", "model.num_layers"),
    ("model.dropout=1.5", "model.dropout"),
    ("model.dropout=0.3", "model.dropout"),  # one layer: nothing between layers
    ("model.init=zeros", "model.init"),
    ("model.embedding_dim=0", "model.embedding_dim"),
    ("task.seq_len=1", "task.seq_len"),
    ("task.seq_len=-5", "task.seq_len"),
    ("task.val_size=0", "task.val_size"),
    ("task=copy task.num_symbols=0", "task.num_symbols"),
    ("task=copy task.memory_len=0", "task.memory_len"),
    ("optimizer.lr=0", "optimizer.lr"),
    ("optimizer.lr=-1", "optimizer.lr"),
    ("optimizer.weight_decay=-0.1", "optimizer.weight_decay"),
    ("optimizer.betas=[0.9,1.5]", "optimizer.betas"),
    ("optimizer=sgd optimizer.momentum=-1", "optimizer.momentum"),
    ("optimizer=sgd optimizer.momentum=0 optimizer.nesterov=true", "optimizer.momentum"),
    ("optimizer=rmsprop optimizer.alpha=2", "optimizer.alpha"),
    ("train.batch_size=0", "train.batch_size"),
    ("train.eval_every=0", "train.eval_every"),
    ("train.clip.threshold=-1", "train.clip.threshold"),
    ("train.clip.mode=max", "train.clip.mode"),
    ("diagnostics.every=-1", "diagnostics.every"),
    ("diagnostics.explode_factor=0", "diagnostics.explode_factor"),
    ("log.progress=fancy", "log.progress"),
    ("checkpoint.every=-1", "checkpoint.every"),
    ("hardware.num_threads=-2", "hardware.num_threads"),
    ("task=chargen task.corpus=hamlet task.temperature=0", "task.temperature"),
    ("task=chargen task.corpus=hamlet task.prompt=@@", "task.prompt"),
    ("task=sentiment task.path=/nonexistent/reviews.csv", "task.path"),
    ("task=sentiment task.text_column=review", "task.text_column"),
    ("task=stocks task.ticker=XYZ", "task.ticker"),
    ("task=stocks task.horizon=0", "task.horizon"),
    ("resume=/nonexistent/run", "resume="),
]
if not torch.cuda.is_available():
    BAD.append(("hardware=cuda", "hardware=cuda"))


@pytest.mark.parametrize("args,key", BAD, ids=[a for a, _ in BAD])
def test_bad_command_line(tmp_path: Path, args: str, key: str) -> None:
    result = seqbench_cli("train.steps=2", "log.progress=none", *args.split(), cwd=tmp_path)
    assert result.returncode != 0
    assert "Traceback" not in result.stderr
    assert key in result.stderr, result.stderr
    assert not list(tmp_path.glob("outputs/*/*/metrics.json"))  # nothing half-written


@settings(max_examples=40, deadline=None)
@given(n=st.integers(1, 16), seq_len=st.integers(2, 60), seed=st.integers(0, 2**31 - 1))
def test_adding_generator_properties(n: int, seq_len: int, seed: int) -> None:
    batch = adding_batch(n, seq_len, make_generator(torch.device("cpu"), seed))
    values, marker = batch.x[..., 0], batch.x[..., 1]
    half = seq_len // 2
    assert (marker.sum(1) == 2).all()
    assert (marker[:, :half].sum(1) == 1).all()
    assert ((values >= 0) & (values <= 1)).all() and ((batch.y >= 0) & (batch.y <= 2)).all()
    torch.testing.assert_close(batch.y, (values * marker).sum(1))


@settings(max_examples=40, deadline=None)
@given(
    n=st.integers(1, 8), seq_len=st.integers(1, 40), symbols=st.integers(1, 12),
    memory=st.integers(1, 12), seed=st.integers(0, 2**31 - 1),
)  # fmt: skip
def test_copy_generator_properties(n, seq_len, symbols, memory, seed) -> None:
    batch = copy_batch(n, seq_len, make_generator(torch.device("cpu"), seed), symbols, memory)
    ids = batch.x.argmax(-1)
    assert batch.x.shape == (n, seq_len + 2 * memory, symbols + 2)
    assert (batch.x.sum(-1) == 1).all()  # one-hot
    assert ((ids[:, :memory] >= 1) & (ids[:, :memory] <= symbols)).all()
    assert ((ids == symbols + 1).sum(1) == 1).all()  # exactly one delimiter
    assert torch.equal(batch.y[:, -memory:], ids[:, :memory])
    assert (batch.y[:, :-memory] == 0).all()


BASE = compose_config(["hardware=cpu"])


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    hidden=st.integers(-3, 300), layers=st.integers(-1, 4),
    dropout=st.floats(-0.5, 1.5, allow_nan=False), lr=st.floats(-1, 1, allow_nan=False),
    seq_len=st.integers(-2, 500), threshold=st.one_of(st.none(), st.floats(-1, 10)),
)  # fmt: skip
def test_config_validation_names_exactly_the_bad_keys(
    hidden, layers, dropout, lr, seq_len, threshold
) -> None:
    cfg = OmegaConf.create(OmegaConf.to_container(BASE))
    cfg.model.hidden_size, cfg.model.num_layers, cfg.model.dropout = hidden, layers, dropout
    cfg.optimizer.lr, cfg.task.seq_len, cfg.train.clip.threshold = lr, seq_len, threshold
    bad = {
        "model.hidden_size": hidden < 1,
        "model.num_layers": layers < 1,
        "model.dropout": not (0 <= dropout < 1) or (dropout != 0 and layers < 2),
        "optimizer.lr": lr <= 0,
        "task.seq_len": seq_len < 2,
        "train.clip.threshold": threshold is not None and threshold <= 0,
    }
    if not any(bad.values()):
        check_config(cfg)
        return
    with pytest.raises(ConfigError) as err:
        check_config(cfg)
    for key, is_bad in bad.items():
        assert (f"{key}=" in str(err.value)) == is_bad, (key, str(err.value))
