"""model.input_dropout and model.output_dropout: active only in training mode, the exact masks of
torch.nn.functional.dropout on the tensors they name (checked against a hand-written forward
through the same layers, and by statistics read with hooks), off by default without drawing a
random number, refused outside [0, 1) with a message naming the key; and a real run with them,
weight decay and early stopping."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from seqbench.checks import check_config
from seqbench.config import ModelConfig
from seqbench.diagnostics import grad_norms
from seqbench.errors import ConfigError
from seqbench.model import SequenceModel
from seqbench.tasks.sentiment import read_out
from tests.conftest import ENGINE_CELLS, compose_config, run_small

VOCAB, CLASSES, B, T, E, H = 50, 2, 6, 7, 5, 4


def tokens(seed: int = 0) -> torch.Tensor:
    return torch.randint(1, VOCAB, (B, T), generator=torch.Generator().manual_seed(seed))


def token_model(cell: str = "lstm", **kw) -> SequenceModel:
    torch.manual_seed(0)
    return SequenceModel(cell, 1, CLASSES, H, vocab_size=VOCAB, embedding_dim=E, **kw)


def reference(model: SequenceModel, x: torch.Tensor, p_in: float, p_out: float) -> torch.Tensor:
    """The model's function written out through its own layers and F.dropout, in the order the
    masks are drawn (inputs first, then outputs)."""
    e = F.dropout(model.embed(x), p_in, True)  # (B, T, E)
    seq, _ = model.rnn(e)  # (B, T, H), laid out (T, B, H) in memory
    return model.head(F.dropout(seq.contiguous(), p_out, True))


def test_defaults_are_off() -> None:
    assert ModelConfig.input_dropout == 0.0 and ModelConfig.output_dropout == 0.0
    cfg = compose_config(["task=sentiment"])
    assert cfg.model.input_dropout == 0.0 and cfg.model.output_dropout == 0.0


@pytest.mark.parametrize("cell", ["rnn", "lstm", "gru"])
def test_off_draws_no_random_number_and_changes_nothing(cell: str) -> None:
    """Off (the default), a training-mode forward leaves torch's random state as it was, so
    every other run's numbers stay those of the code before these options existed."""
    plain, off = token_model(cell), token_model(cell, input_dropout=0.0, output_dropout=0.0)
    x = tokens()
    torch.manual_seed(5)
    before = torch.get_rng_state()
    out, _ = off.train()(x)
    assert torch.equal(torch.get_rng_state(), before)
    assert torch.equal(out, plain.train()(x)[0])


@pytest.mark.parametrize("path", ["fused", "engine", "unrolled", "bidirectional"])
def test_eval_mode_ignores_dropout(path: str) -> None:
    kw = {"engine": path == "engine", "bidirectional": path == "bidirectional"}
    with_dropout = token_model(input_dropout=0.6, output_dropout=0.7, **kw).eval()
    without = token_model(**kw).eval()
    x, lengths = tokens(), torch.tensor([7, 3, 1, 7, 5, 2])
    record = path == "unrolled"
    # with gradients on: the engine runs only then, and the unrolled path keeps h_t.grad
    expected = without(x, record_states=record, lengths=lengths)[0]
    torch.manual_seed(1)
    before = torch.get_rng_state()
    got = with_dropout(x, record_states=record, lengths=lengths)[0]
    assert torch.get_rng_state().equal(before)  # no mask drawn
    assert torch.equal(got, expected)


@pytest.mark.parametrize("p_in,p_out", [(0.3, 0.0), (0.0, 0.5), (0.25, 0.6)])
def test_training_masks_are_those_of_functional_dropout(p_in: float, p_out: float) -> None:
    model, x = token_model(input_dropout=p_in, output_dropout=p_out).train(), tokens()
    torch.manual_seed(3)
    got, _ = model(x)
    torch.manual_seed(3)
    expected = reference(model, x, p_in, p_out)
    assert torch.equal(got, expected)
    torch.manual_seed(4)
    assert not torch.equal(model(x)[0], got)  # a new mask on each training forward


@pytest.mark.parametrize("cell", ENGINE_CELLS)
def test_engine_path_applies_the_same_masks_and_gradients(cell: str) -> None:
    """The BPTT engine (the CPU default) with dropout: the fused layer's outputs and gradients
    under the same masks, and the per-timestep norms recorded through the output mask."""
    engine = token_model(cell, input_dropout=0.4, output_dropout=0.5, engine=True).train()
    fused = token_model(cell, input_dropout=0.4, output_dropout=0.5).train()
    x = tokens(1)
    torch.manual_seed(7)
    out, recorder = engine(x, record_states=True)
    torch.manual_seed(7)
    expected = reference(fused, x, 0.4, 0.5)
    torch.testing.assert_close(out, expected, rtol=1e-5, atol=1e-6)
    out.square().sum().backward()
    expected.square().sum().backward()
    for (name, a), (_, b) in zip(engine.named_parameters(), fused.named_parameters(), strict=True):
        torch.testing.assert_close(a.grad, b.grad, rtol=1e-4, atol=1e-6, msg=name)
    torch.manual_seed(7)  # the unrolled path (autograd's h_t.grad) under the same masks
    unrolled, states = fused(x, record_states=True)
    unrolled.square().sum().backward()
    np.testing.assert_allclose(grad_norms(recorder), grad_norms(states), rtol=1e-4)


@pytest.mark.parametrize("where", ["input", "output"])
def test_mask_statistics(where: str) -> None:
    """Read with hooks, independently of F.dropout: each element is zeroed with probability p and
    the others are scaled by exactly 1/(1-p)."""
    p = 0.3
    model = token_model(**{f"{where}_dropout": p}).train()
    seen: dict[str, torch.Tensor] = {}
    model.embed.register_forward_hook(lambda m, i, out: seen.__setitem__("embedded", out))
    model.rnn.register_forward_pre_hook(lambda m, i: seen.__setitem__("rnn_in", i[0]))
    model.rnn.register_forward_hook(lambda m, i, out: seen.__setitem__("rnn_out", out[0]))
    model.head.register_forward_pre_hook(lambda m, i: seen.__setitem__("head_in", i[0]))
    x = torch.randint(1, VOCAB, (400, T), generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        model(x)
    before, after = (seen["embedded"], seen["rnn_in"]) if where == "input" else (
        seen["rnn_out"], seen["head_in"])  # fmt: skip
    kept = after != 0
    torch.testing.assert_close(after[kept], before[kept] / (1 - p))
    n = before.numel()
    dropped = (~kept).float().mean().item()
    assert abs(dropped - p) < 5 * math.sqrt(p * (1 - p) / n), (dropped, n)
    other = ("rnn_out", "head_in") if where == "input" else ("embedded", "rnn_in")
    assert torch.equal(seen[other[0]], seen[other[1]])  # the other place is untouched


@pytest.mark.parametrize("key", ["model.input_dropout", "model.output_dropout"])
@pytest.mark.parametrize("value,ok", [(0.0, True), (0.5, True), (-0.1, False), (1.0, False)])
def test_bounds_refused_with_the_key_named(key: str, value: float, ok: bool) -> None:
    cfg = compose_config(["task=sentiment", "hardware=cpu", f"{key}={value}"])
    if ok:
        check_config(cfg)
        return
    with pytest.raises(ConfigError) as err:
        check_config(cfg)
    assert str(err.value) == f"{key}={value!r} is not allowed (a probability in [0, 1))."


def test_a_regularised_sentiment_run(tmp_path: Path) -> None:
    """Dropout, AdamW's weight decay and early stopping together on the real corpus: the run
    stops at the first validation without improvement (min_delta=1 is never met) and scores the
    test split with the best weights."""
    metrics = run_small(
        tmp_path / "run", "task=sentiment", "model.embedding_dim=8", "model.input_dropout=0.3",
        "model.output_dropout=0.3", "optimizer=adamw", "optimizer.weight_decay=0.1",
        "train.steps=30", "train.early_stopping.patience=1", "train.early_stopping.min_delta=1",
        "task.seq_len=24", "inference.compare=false",
        base=["hardware=cpu", "train.batch_size=8", "train.eval_every=3", "model.hidden_size=8",
              "diagnostics.every=2", "log.progress=none"],
    )  # fmt: skip
    # evaluations at steps 3 and 6, then the stop
    assert (metrics["steps"], metrics["stopped_at_step"]) == (6, 6), metrics
    assert 0.0 <= metrics["test"]["accuracy"] <= 1.0


@pytest.mark.parametrize("readout", ["last", "mean"])
def test_sentiment_readout(readout: str) -> None:
    """task.readout: each snippet's last real output, or the mean over its real outputs,
    written out one sequence at a time; padding never counts."""
    output = torch.randn(4, 6, 3)
    lengths = torch.tensor([6, 1, 3, 4])
    got = read_out(output, lengths, readout)
    for row, n in enumerate(lengths.tolist()):
        real = output[row, :n]
        expected = real[-1] if readout == "last" else real.sum(0) / n
        torch.testing.assert_close(got[row], expected)
    padded = output.clone()
    padded[1, 1:] = 1e6  # what lies beyond a sequence's length is ignored
    torch.testing.assert_close(read_out(padded, lengths, readout), got)
