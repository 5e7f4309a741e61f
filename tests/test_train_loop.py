"""The training loop called directly on a tiny padded task (no Hydra, no files): one step of
`train` is one optimizer step on the task's loss over the batch's real positions; what it reports
and how it stops. In-process and fast, so that these are the first tests a mutant of train.py
meets."""

from __future__ import annotations

import copy
import math

import numpy as np
import pytest
import torch

from seqbench.callbacks import Callback, Diverged, Interrupted
from seqbench.diagnostics import grad_norms
from seqbench.tasks.base import Batch
from seqbench.train import Clip, EarlyStopping, measure_grad_norms, train

LENGTHS = torch.tensor([4, 2])


class Padded:
    """Two sequences of 4 steps, the second padded after 2 with large values that must not
    count: the loss is the squared output at each sequence's last real step."""

    def sample(self, batch_size: int) -> Batch:
        x = torch.tensor([[0.5, -1.0, 0.25, 1.0], [1.0, 0.5, 5.0, 5.0]])[..., None]
        return Batch(x=x, y=torch.zeros(2), lengths=LENGTHS)

    def loss(self, output: torch.Tensor, batch: Batch) -> torch.Tensor:
        last = output[torch.arange(2), batch.lengths - 1, 0]  # (B,)
        return last.square().mean()

    def sources(self, batch: Batch) -> torch.Tensor:
        return torch.arange(4)[None, :] == (batch.lengths[:, None] - 1)

    def evaluate(self, model, split: str = "val") -> dict[str, float]:
        return {"loss": 0.0}

    def report(self, model) -> dict[str, str]:
        return {}


class Recorder(Callback):
    def __init__(self) -> None:
        self.calls: list[tuple] = []

    def __getattribute__(self, name: str):
        if name.startswith("on_"):
            return lambda *args: self.calls.append((name, *args))
        return super().__getattribute__(name)


def model() -> torch.nn.Module:
    from seqbench.model import SequenceModel

    torch.manual_seed(0)
    return SequenceModel("lstm", 1, 1, hidden_size=3, bidirectional=True)


def run(net, steps: int = 1, **kwargs) -> Recorder:
    recorder = Recorder()
    optimizer = torch.optim.SGD(net.parameters(), lr=1.0)
    options = dict(steps=steps, batch_size=2, eval_every=10, clip=Clip(threshold=None),
                   diagnostics_every=0, callbacks=[recorder])  # fmt: skip
    train(net, Padded(), optimizer, **{**options, **kwargs})
    return recorder


def test_one_step_is_one_sgd_step_over_the_real_positions() -> None:
    net, reference = model(), model()
    batch = Padded().sample(2)
    output, _ = reference(batch.x, lengths=batch.lengths)  # the backward direction starts at 2
    Padded().loss(output, batch).backward()
    expected = {k: p - p.grad for k, p in reference.named_parameters()}
    recorder = run(net)  # start_step left at its default: step 0 is the first
    for k, p in net.named_parameters():
        torch.testing.assert_close(p, expected[k], rtol=0, atol=1e-6)
    steps = [c[1] for c in recorder.calls if c[0] == "on_step"]
    assert steps == [1]
    [(_, step, norms, positions, _)] = [c for c in recorder.calls if c[0] == "on_grad_norms"]
    assert step == 0 and positions.tolist() == [2, 2, 1, 1] and norms.shape == (2, 4)


def test_measuring_norms_updates_nothing_and_sees_the_real_positions() -> None:
    net, reference = model(), model()
    before = copy.deepcopy(net.state_dict())
    norms, positions, _, gates, lags = measure_grad_norms(net, Padded(), 2)
    assert all(p.grad is None for p in net.parameters())  # no gradient left behind
    assert all(torch.equal(v, net.state_dict()[k]) for k, v in before.items())
    batch = Padded().sample(2)
    output, states = reference(batch.x, record_states=True, lengths=batch.lengths)
    Padded().loss(output, batch).backward()
    np.testing.assert_allclose(norms, grad_norms(states), rtol=1e-12)
    assert positions.tolist() == [2, 2, 1, 1] and set(gates) == {"input", "forget", "output"}
    # each sequence's lags from its own last step (4 and 2): lags 0, 1 by both, 2, 3 by one
    assert lags.pairs.tolist() == [[2, 2, 1, 1]] * 2  # forward, and backward from its final state


def test_a_non_finite_loss_or_gradient_stops_training_at_its_step() -> None:
    class NanLoss(Padded):
        def loss(self, output, batch):
            return super().loss(output, batch) * math.nan

    net = model()
    optimizer = torch.optim.SGD(net.parameters(), lr=1.0)
    common = dict(batch_size=2, eval_every=1, clip=Clip(threshold=None), diagnostics_every=0)
    with pytest.raises(Diverged, match=r"^the training loss became non-finite at step 2$"):
        train(net, NanLoss(), optimizer, steps=5, start_step=2, **common)
    next(net.parameters()).register_hook(lambda g: g * math.inf)
    with pytest.raises(Diverged, match=r"^the gradient norm became non-finite at step 3$") as err:
        train(net, Padded(), optimizer, steps=5, start_step=3, **common)
    assert err.value.step == 3


def test_a_stop_request_interrupts_between_steps() -> None:
    requests = iter([None, None, "SIGTERM"])
    with pytest.raises(Interrupted) as err:
        run(model(), steps=10, start_step=4, stop=lambda: next(requests))
    assert (err.value.step, err.value.reason) == (6, "SIGTERM")


def test_early_stopping_counts_validations_without_a_real_improvement() -> None:
    stopper = EarlyStopping("loss", "min", patience=2)  # min_delta 0 by default
    for step, value, stopped in ((1, 1.0, None), (2, 0.999, None), (3, 0.999, None), (4, 1.5, 4)):
        stopper.on_eval(step, {"loss": value})
        assert stopper.stopped_at == stopped
    strict = EarlyStopping("acc", "max", patience=1, min_delta=0.1)
    strict.on_eval(1, {"acc": 0.5})
    strict.on_eval(2, {"acc": 0.6})  # +0.1 is not more than min_delta
    assert strict.stopped_at == 2


def test_a_gradient_exactly_at_the_threshold_is_not_clipped() -> None:
    from seqbench.train import clip_gradients

    weight = torch.nn.Parameter(torch.zeros(2))
    weight.grad = torch.tensor([0.6, 0.8])  # norm 1 (exactly, in float32)
    assert clip_gradients([weight], Clip("norm", 1.0)) == (pytest.approx(1.0), False)
    assert clip_gradients([weight], Clip("norm", 0.5))[1]
    weight.grad = torch.tensor([0.5, -0.5])
    assert not clip_gradients([weight], Clip("value", 0.5))[1]
    assert clip_gradients([weight], Clip("value", 0.25))[1]
    assert weight.grad.tolist() == [0.25, -0.25]


def test_the_head_runs_where_the_task_reads_and_the_step_is_the_same() -> None:
    """A task that names where its loss reads (`Task.reads`) gets outputs there only (NaN at
    every other position) in training steps and in a snapshot, and the same SGD step as the
    head on every position (the task without `reads`, above)."""

    class Reads(Padded):
        def reads(self, batch: Batch) -> torch.Tensor:
            return batch.lengths - 1

    outputs: list[torch.Tensor] = []
    nets = {}
    for task in (Padded(), Reads()):
        net = nets[type(task).__name__] = model()
        hook = net.register_forward_hook(lambda m, args, out: outputs.append(out[0].detach()))
        train(net, task, torch.optim.SGD(net.parameters(), lr=1.0), steps=1, batch_size=2,
              eval_every=10, clip=Clip(threshold=None), diagnostics_every=0)  # fmt: skip
        measure_grad_norms(net, task, 2)
        hook.remove()
    # per run: the training step, then the snapshot (Padded.evaluate runs no model)
    assert [int(torch.isnan(out).sum()) for out in outputs] == [0, 0, 6, 6]
    whole, picked = (dict(nets[name].named_parameters()) for name in ("Padded", "Reads"))
    for name, param in whole.items():
        torch.testing.assert_close(picked[name], param, rtol=0, atol=1e-7, msg=name)
