"""Bad input: many mistaken command lines (an exit status, no traceback, the message that names
the key and what is allowed), and property-based checks of the generators and of the config
validation.

Each command line runs through the command's own Hydra main in this process (a process costs about
20 times more and behaves the same up to the exit); a few also run as real processes."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from omegaconf import OmegaConf

from seqbench.cells import CELLS
from seqbench.checks import check_config
from seqbench.errors import ConfigError
from seqbench.tasks import make_generator
from seqbench.tasks.adding import adding_batch
from seqbench.tasks.copy import copy_batch
from tests.conftest import compose_config, seqbench_cli, seqbench_main

HYDRA, USAGE = 1, 2  # exit statuses: Hydra's own errors; seqbench's (errors.EXIT_USAGE)


def refused(key_value: str, allowed: str) -> str:
    return f"seqbench: error: {key_value} is not allowed ({allowed})."


def unknown_option(group: str, option: str, options: list[str]) -> str:
    listed = "".join(f"\t{o}\n" for o in options)
    return f"Could not find '{group}/{option}'\n\nAvailable options in '{group}':\n{listed}"


def not_converted(key: str, value: str, kind: str) -> str:
    return (
        f"Value '{value}' of type '{kind}' could not be converted to Integer\n    full_key: {key}\n"
    )


def no_such_key(key: str, schema: str) -> str:
    name = key.rsplit(".", 1)[-1]
    return f"Key '{name}' not in '{schema}'\n    full_key: {key}\n"


POSITIVE = "a positive integer"
# (command line, exit status, a part of stderr that names the key, its value and what is allowed)
BAD = [
    # Hydra: unknown options, keys and types (Hydra's own message)
    ("model=transformer", HYDRA, unknown_option("model", "transformer", sorted(CELLS))),
    ("task=mnist", HYDRA,
     unknown_option("task", "mnist", ["adding", "chargen", "copy", "sentiment", "stocks"])),
    ("optimizer=lbfgs", HYDRA,
     unknown_option("optimizer", "lbfgs", ["adam", "adamw", "rmsprop", "sgd"])),
    ("hardware=tpu", HYDRA, unknown_option("hardware", "tpu", ["auto", "cpu", "cuda"])),
    ("model.hiden_size=3", HYDRA, no_such_key("model.hiden_size", "ModelConfig")),
    ("train.stepz=3", HYDRA, no_such_key("train.stepz", "TrainConfig")),
    ("model.hidden_size=abc", HYDRA, not_converted("model.hidden_size", "abc", "str")),
    ("train.steps=1.5", HYDRA, not_converted("train.steps", "1.5", "float")),
    ("seed=abc", HYDRA, not_converted("seed", "abc", "str")),
    ("task.memory_len=3", HYDRA, no_such_key("task.memory_len", "AddingConfig")),  # adding has none
    ("log.tensorboard=maybe", HYDRA,
     "Value 'maybe' is not a valid bool (type str)\n    full_key: log.tensorboard\n"),
    # seqbench: a key that `+` appends but no schema declares (Hydra composes it silently)
    ("+train.stesp=3", USAGE,
     refused("train.stesp=3", "no such key: did you mean train.steps? train has batch_size, "
             "clip, early_stopping, eval_every and steps")),
    ("+foo=1", USAGE, ("seqbench: error: foo=1 is not allowed (no such key: the top level has "
                       "checkpoint, diagnostics, hardware, inference, log, model, optimizer,")),
    ("+train.clip.tresh=3", USAGE,
     refused("train.clip.tresh=3", "no such key: did you mean train.clip.threshold? train.clip "
             "has mode and threshold")),
    ("+model.hiden_size=3", USAGE, "model.hiden_size=3 is not allowed (no such key: did you mean "
                                   "model.hidden_size? model has bidirectional, cell,"),
    ("+optimizer.momentum=0.9", USAGE,  # Adam has none; the optimizer's own arguments pass
     "optimizer.momentum=0.9 is not allowed (no such key: optimizer has amsgrad, betas,"),
    # seqbench: impossible values
    ("model.hidden_size=0", USAGE, refused("model.hidden_size=0", POSITIVE)),
    ("model.num_layers=0", USAGE, refused("model.num_layers=0", POSITIVE)),
    ("model.dropout=1.5", USAGE, "model.dropout=1.5 is not allowed (a probability in [0, 1))"),
    ("model.dropout=0.3", USAGE,  # one layer: nothing between layers
     refused("model.dropout=0.3",
             "dropout acts between stacked layers, so it needs model.num_layers >= 2")),
    ("model.init=zeros", USAGE, ("seqbench: error: model.init='zeros' is not allowed (one of [",
                                 "'default', 'orthogonal', 'xavier'")),
    ("model.embedding_dim=0", USAGE, refused("model.embedding_dim=0", POSITIVE)),
    ("model.hidden_size=1000000", USAGE,  # 16 TB for W_hh: a value no machine can run
     "seqbench: error: model.hidden_size=1000000 with model.num_layers=1: the model does not "
     "fit in memory on cpu (one of its weights alone needs "),
    ("task.seq_len=1", USAGE, refused("task.seq_len=1", "an integer >= 2")),
    ("task.seq_len=-5", USAGE, refused("task.seq_len=-5", "an integer >= 2")),
    ("task.val_size=0", USAGE, refused("task.val_size=0", POSITIVE)),
    ("task=copy task.num_symbols=0", USAGE, refused("task.num_symbols=0", POSITIVE)),
    ("task=copy task.memory_len=0", USAGE, refused("task.memory_len=0", POSITIVE)),
    ("optimizer.lr=0", USAGE, refused("optimizer.lr=0.0", "a learning rate > 0")),
    ("optimizer.lr=-1", USAGE, refused("optimizer.lr=-1.0", "a learning rate > 0")),
    ("optimizer.weight_decay=-0.1", USAGE, refused("optimizer.weight_decay=-0.1", "a value >= 0")),
    ("optimizer.betas=[0.9,1.5]", USAGE,
     refused("optimizer.betas=[0.9, 1.5]", "two values in [0, 1), e.g. [0.9, 0.999]")),
    ("optimizer=sgd optimizer.momentum=-1", USAGE,
     refused("optimizer.momentum=-1.0", "a value >= 0")),
    ("optimizer=sgd optimizer.momentum=0 optimizer.nesterov=true", USAGE,
     refused("optimizer.momentum=0.0", "> 0 with optimizer.nesterov=true")),
    ("optimizer=rmsprop optimizer.alpha=2", USAGE,
     refused("optimizer.alpha=2.0", "a smoothing constant in [0, 1]")),
    ("train.batch_size=0", USAGE, refused("train.batch_size=0", POSITIVE)),
    ("train.eval_every=0", USAGE, refused("train.eval_every=0", POSITIVE)),
    ("train.clip.threshold=-1", USAGE,
     refused("train.clip.threshold=-1.0", "a value > 0, or null")),
    ("train.clip.mode=max", USAGE, refused("train.clip.mode='max'", "norm or value")),
    ("diagnostics.every=-1", USAGE,
     refused("diagnostics.every=-1", "auto (max(1, train.steps // 50): about 50 snapshots per "
             "run), 0 (at init and at the end only) or a positive number of steps")),
    ("diagnostics.explode_factor=0", USAGE,
     refused("diagnostics.explode_factor=0.0", "a value > 0")),
    ("log.progress=fancy", USAGE,
     refused("log.progress='fancy'", "one of ['auto', 'rich', 'plain', 'none']")),
    ("checkpoint.every=-1", USAGE,
     refused("checkpoint.every=-1", "0 (only at the end) or a positive integer")),
    ("hardware.num_threads=-2", USAGE,
     refused("hardware.num_threads=-2", "0 (torch default) or more")),
    ("task=chargen task.corpus=hamlet task.temperature=0", USAGE,
     refused("task.temperature=0.0", "a value > 0")),
    ("task=chargen task.corpus=hamlet task.prompt=@@", USAGE,
     "seqbench: error: task.prompt='@@' has characters that never occur in the training text "
     "('@'); use characters of the corpus, e.g. task.prompt="),
    ("task=sentiment task.path=/nonexistent/reviews.csv", USAGE,
     "seqbench: error: task.path='/nonexistent/reviews.csv' does not exist"),
    ("task=sentiment task.text_column=review", USAGE,
     "seqbench: error: task.text_column='review' is not a column of "),
    ("task=stocks task.ticker=XYZ", USAGE,
     "seqbench: error: task.ticker='XYZ' does not occur in column 'Ticker' of "),
    ("task=stocks task.horizon=0", USAGE,
     refused("task.horizon=0", "a positive number of days")),
    ("resume=/nonexistent/run", USAGE,
     "seqbench: error: resume=/nonexistent/run: no usable checkpoint (checkpoint.pt is missing; "
     "checkpoint.prev.pt is missing)."),
]  # fmt: skip
if not torch.cuda.is_available():
    BAD.append(("hardware=cuda", USAGE, ("seqbench: error: hardware=cuda was asked for, but "
                "PyTorch sees no CUDA device", "Use hardware=cpu, or hardware=auto")))  # fmt: skip
# also as real processes: one of each kind (Hydra, a value, a key, a data file, a run directory)
IN_A_PROCESS = {"model=transformer", "model.hidden_size=0", "+train.stesp=3",
                "resume=/nonexistent/run",
                "task=sentiment task.path=/nonexistent/reviews.csv"}  # fmt: skip


def check_refused(result, tmp_path: Path, code: int, message: str | tuple[str, ...]) -> None:
    assert result.returncode == code, result.stderr
    assert "Traceback" not in result.stderr
    assert "Warning" not in result.stderr  # no library warning before our message
    for part in (message,) if isinstance(message, str) else message:
        assert part in result.stderr, result.stderr
    assert not list(tmp_path.glob("outputs/*/*/metrics.json"))  # nothing half-written


@pytest.mark.parametrize(
    "args,code,message", BAD, ids=[f"{i}:{a}" for i, (a, *_) in enumerate(BAD)]
)
def test_bad_command_line(tmp_path: Path, args: str, code: int, message: str) -> None:
    result = seqbench_main("train.steps=2", "log.progress=none", *args.split(), cwd=tmp_path)
    check_refused(result, tmp_path, code, message)


@pytest.mark.parametrize("args,code,message", [b for b in BAD if b[0] in IN_A_PROCESS],
                         ids=sorted(IN_A_PROCESS, key=[b[0] for b in BAD].index))  # fmt: skip
def test_bad_command_line_in_a_real_process(tmp_path: Path, args: str, code: int, message) -> None:
    result = seqbench_cli("train.steps=2", "log.progress=none", *args.split(), cwd=tmp_path)
    check_refused(result, tmp_path, code, message)


def test_a_sweep_with_an_unknown_key_is_refused_before_any_job(tmp_path: Path) -> None:
    result = seqbench_main("-m", "seed=0,1", "+train.stesp=3", "log.progress=none",
                           "hydra.sweep.dir=sweep", cwd=tmp_path)  # fmt: skip
    message = "train.stesp=3 is not allowed (no such key: did you mean train.steps?"
    check_refused(result, tmp_path, USAGE, message)
    assert not (tmp_path / "sweep").exists()


def test_out_of_memory_messages_are_read_on_cpu_and_cuda() -> None:
    from seqbench.job import _allocation

    assert _allocation("DefaultCPUAllocator: can't allocate memory: you tried to allocate "
                       "160000000000 bytes. Error code 12") == "149.0 GiB"  # fmt: skip
    assert _allocation("CUDA out of memory. Tried to allocate 149.01 GiB. GPU 0 has a total "
                       "capacity of 79.1 GiB") == "149.01 GiB"  # fmt: skip
    assert _allocation("mat1 and mat2 shapes cannot be multiplied") is None


def test_a_key_the_optimizer_takes_reaches_it() -> None:
    """`+optimizer.amsgrad=true` is an argument of torch.optim.Adam: accepted and passed on;
    SGD has no such argument, so there it is refused."""
    from hydra.utils import instantiate

    cfg = compose_config(["+optimizer.amsgrad=true"])
    check_config(cfg)
    optimizer = instantiate(cfg.optimizer)([torch.nn.Parameter(torch.zeros(1))])
    assert optimizer.defaults["amsgrad"] is True
    with pytest.raises(ConfigError, match=r"optimizer.amsgrad=True is not allowed \(no such key: "
                       r"optimizer has dampening, .*momentum, nesterov"):  # fmt: skip
        check_config(compose_config(["optimizer=sgd", "+optimizer.amsgrad=true"]))


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
