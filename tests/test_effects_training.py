"""What training does, read from the parameters a run leaves behind: the update actually taken is
the clipped one (norm and value mode); a run's weights are those of an independent loop over the
same seeded batches; the last validation is at the last step, in eval mode; the initialisation is
the one asked for; and a run stopped by SIGTERM between two validations resumes bit-identical to
one never stopped, for every optimizer and every scheduler (TensorBoard included)."""

from __future__ import annotations

import json
import math
import os
import signal
from pathlib import Path
from unittest import mock

import pandas as pd
import pytest
import torch

from tests.conftest import run_small, without_timings

# One plain gradient step: w1 = w0 - grad (SGD, lr 1, no momentum), one training step, no extras.
ONE_STEP = ("optimizer=sgd", "optimizer.momentum=0", "train.steps=1", "train.eval_every=1",
            "log.tensorboard=false", "inference.compare=false")  # fmt: skip


def weights(run_dir: Path) -> dict[str, torch.Tensor]:
    """The model's parameters in checkpoint.pt (float64, for exact differences)."""
    state = torch.load(run_dir / "checkpoint.pt", weights_only=True)["model"]
    return {k: v.double() for k, v in state.items()}


@pytest.fixture(scope="module")
def gradient_step(tmp_path_factory) -> dict:
    """The initial weights w0 and the unclipped step -g of the same first batch."""
    tmp = tmp_path_factory.mktemp("clip")
    # lr 1e-30 moves no float32 weight (and leaves a zero bias within 1e-30): w0
    run_small(tmp / "w0", *ONE_STEP, "optimizer.lr=1e-30", "train.clip.threshold=null")
    run_small(tmp / "free", *ONE_STEP, "optimizer.lr=1", "train.clip.threshold=null")
    w0, w1 = weights(tmp / "w0"), weights(tmp / "free")
    step = {k: w1[k] - w0[k] for k in w0}
    assert global_norm(step) > 0.05  # a step far above the weights' float32 resolution
    return {"tmp": tmp, "w0": w0, "step": step}


def taken_step(gradient_step: dict, name: str, *overrides: str) -> dict[str, torch.Tensor]:
    run_dir = gradient_step["tmp"] / name
    metrics = run_small(run_dir, *ONE_STEP, "optimizer.lr=1", *overrides)
    gradient_step.setdefault("metrics", {})[name] = metrics
    w1, w0 = weights(run_dir), gradient_step["w0"]
    return {k: w1[k] - w0[k] for k in w0}


def global_norm(tensors: dict[str, torch.Tensor]) -> float:
    return math.sqrt(sum(float(t.square().sum()) for t in tensors.values()))


def assert_steps_equal(gradient_step: dict, step: dict, expected: dict) -> None:
    """Equal up to float32 rounding: of the weights (an ulp of each) and of the step (1e-6)."""
    for key, w0 in gradient_step["w0"].items():
        ulp = torch.finfo(torch.float32).eps * (w0.abs() + step[key].abs())
        tolerance = 2 * ulp + 1e-6 * expected[key].abs() + 1e-30
        assert ((step[key] - expected[key]).abs() <= tolerance).all(), key


def test_clip_by_norm_scales_the_whole_step_to_the_threshold(gradient_step) -> None:
    free = gradient_step["step"]
    norm = global_norm(free)
    threshold = norm / 4  # well inside: the step must shrink to a quarter
    step = taken_step(gradient_step, "norm", f"train.clip.threshold={threshold!r}")
    assert global_norm(step) == pytest.approx(threshold, rel=1e-4)
    # the same direction: every element scaled by threshold / (||g|| + 1e-6), torch's formula
    scale = threshold / (norm + 1e-6)
    assert_steps_equal(gradient_step, step, {k: v * scale for k, v in free.items()})
    assert gradient_step["metrics"]["norm"]["clip_fraction"] == 1.0


def test_clip_by_norm_leaves_a_smaller_step_alone(gradient_step) -> None:
    free = gradient_step["step"]
    step = taken_step(gradient_step, "under", f"train.clip.threshold={global_norm(free) * 2!r}")
    assert_steps_equal(gradient_step, step, free)
    assert gradient_step["metrics"]["under"]["clip_fraction"] == 0.0


def test_clip_by_value_bounds_each_element_of_the_step(gradient_step) -> None:
    free = gradient_step["step"]
    largest = max(float(t.abs().max()) for t in free.values())
    threshold = largest / 3  # some elements are cut, the small ones are not
    step = taken_step(gradient_step, "value", "train.clip.mode=value",
                      f"train.clip.threshold={threshold!r}")  # fmt: skip
    clamped = {k: v.clamp(-threshold, threshold) for k, v in free.items()}
    assert_steps_equal(gradient_step, step, clamped)
    cut = sum(int((v.abs() > threshold * 1.01).sum()) for v in free.values())
    assert cut > 0 and gradient_step["metrics"]["value"]["clip_fraction"] == 1.0


def test_clip_gradients_in_place_to_torchs_formula() -> None:
    """The function alone: norm mode multiplies by threshold / (||g|| + 1e-6), value mode clamps,
    both report the norm before clipping; null leaves the gradient as it is."""
    from seqbench.train import Clip, clip_gradients

    grads = [torch.tensor([3.0, -4.0]), torch.tensor([[12.0]])]  # ||g|| = 13
    params = [torch.nn.Parameter(torch.zeros_like(g)) for g in grads]
    for clip, expected, clipped in [
        (Clip("norm", 6.5), [g * 6.5 / (13 + 1e-6) for g in grads], True),
        (Clip("norm", 13.5), grads, False),
        (Clip("value", 3.5), [torch.tensor([3.0, -3.5]), torch.tensor([[3.5]])], True),
        (Clip("value", 12.0), grads, False),
        (Clip("norm", None), grads, False),
        (Clip("value", None), grads, False),
    ]:
        for p, g in zip(params, grads, strict=True):
            p.grad = g.clone()
        assert clip_gradients(params, clip) == (pytest.approx(13.0), clipped), clip
        for p, e in zip(params, expected, strict=True):
            torch.testing.assert_close(p.grad, e, rtol=1e-6, atol=0)


def test_the_last_validation_is_at_the_last_step(small_run, tmp_path: Path) -> None:
    """8 steps, validation every 3: validations at 3, 6 and 8; the final metric is that of the
    final weights in eval mode (the float32 inference pass evaluates them again; with dropout
    left on, the two would differ)."""
    metrics = small_run("train.steps=8", "train.eval_every=3", "log.tensorboard=false",
                        "model.num_layers=2", "model.dropout=0.5", "inference.compare=true",
                        "inference.repeats=1", run_dir=tmp_path / "run")  # fmt: skip
    history = pd.read_csv(tmp_path / "run" / "history.csv")
    assert history["step"].tolist() == [3, 6, 8]
    assert metrics["final_metric"] == history["val_mse"].iloc[-1]
    assert metrics["inference"]["float32"]["mse"] == pytest.approx(metrics["final_metric"], 1e-6)
    assert metrics["final_metric"] != history["val_mse"].iloc[-2]


def test_a_run_is_plain_clipped_sgd_steps_on_its_seeded_batches(tmp_path: Path) -> None:
    """An independent loop over the same seeded model and batches: per step, the gradient of the
    batch loss, clipped to norm 0.5, times the step schedule's rate. Validations and gradient-norm
    snapshots (every 2 steps) must not change what is trained."""
    from seqbench.hardware import configure, seed_everything
    from seqbench.job import build_job
    from tests.conftest import SMALL, compose_config

    overrides = ["optimizer=sgd", "optimizer.momentum=0", "optimizer.lr=0.5", "train.steps=6",
                 "train.eval_every=2", "diagnostics.every=2", "scheduler=step",
                 "scheduler.step_size=2", "scheduler.gamma=0.5", "train.clip.threshold=0.5",
                 "log.tensorboard=false", "inference.compare=false"]  # fmt: skip
    metrics = run_small(tmp_path / "run", *overrides)
    cfg = compose_config([*SMALL, *overrides])
    configure(cfg.hardware.flush_denormal, cfg.hardware.num_threads)
    seed_everything(cfg.seed)
    job = build_job(cfg, tmp_path / "reference", torch.device("cpu"))
    params = list(job.model.parameters())
    clipped = 0
    for step in range(6):
        batch = job.task.sample(8)
        job.model.train()
        output, _ = job.model(batch.x, lengths=batch.lengths)
        grads = torch.autograd.grad(job.task.loss(output, batch), params)
        norm = torch.stack([g.norm() for g in grads]).norm()
        clipped += int(norm > 0.5)
        scale = min(1.0, 0.5 / (float(norm) + 1e-6))
        with torch.no_grad():
            for p, g in zip(params, grads, strict=True):
                p -= 0.5 * 0.5 ** (step // 2) * scale * g
    trained = torch.load(tmp_path / "run" / "checkpoint.pt", weights_only=True)["model"]
    for name, p in job.model.named_parameters():
        torch.testing.assert_close(trained[name], p.detach(), rtol=1e-5, atol=1e-6, msg=name)
    assert clipped > 0 and metrics["clip_fraction"] == pytest.approx(clipped / 6)


@pytest.mark.parametrize("cell", ["rnn", "lstm", "gru"])
def test_initialisations(cell: str) -> None:
    """orthogonal: each gate's recurrent block is orthogonal, biases 0 (LSTM: the forget gate
    holds forget_bias); xavier: each block within Xavier's bound and not orthogonal; default:
    PyTorch's U(-1/sqrt(H), 1/sqrt(H))."""
    from seqbench.model import SequenceModel

    hidden, inputs = 16, 3
    gates = {"rnn": 1, "lstm": 4, "gru": 3}[cell]
    eye = torch.eye(hidden)
    bound = {"ih": math.sqrt(6 / (inputs + hidden)), "hh": math.sqrt(6 / (2 * hidden))}
    for init in ("orthogonal", "xavier", "default"):
        torch.manual_seed(0)
        rnn = SequenceModel(cell, inputs, 1, hidden_size=hidden, num_layers=2, init=init,
                            forget_bias=2.5).rnn  # fmt: skip
        for layer in range(2):
            ih = getattr(rnn, f"weight_ih_l{layer}").detach()
            hh = getattr(rnn, f"weight_hh_l{layer}").detach()
            biases = [getattr(rnn, f"bias_{k}_l{layer}").detach() for k in ("ih", "hh")]
            fan_in = inputs if layer == 0 else hidden
            if init == "default":
                for w in (ih, hh, *([] if cell == "lstm" else biases)):
                    assert w.abs().max() <= 1 / math.sqrt(hidden) and w.std() > 0.3 / hidden**0.5
                continue
            for block in hh.chunk(gates):
                orthogonal = torch.allclose(block @ block.T, eye, atol=1e-5)
                assert orthogonal == (init == "orthogonal"), (init, layer)
                if init == "xavier":
                    assert block.abs().max() <= bound["hh"]
            ih_bound = math.sqrt(6 / (fan_in + hidden))
            for block in ih.chunk(gates):
                assert block.abs().max() <= ih_bound and block.std() > ih_bound / 4
            expected = torch.zeros(gates * hidden)
            if cell == "lstm":  # PyTorch's gate order i, f, g, o; the bias sum is what counts
                expected[hidden : 2 * hidden] = 2.5
            torch.testing.assert_close(biases[0] + biases[1], expected)


# --- resume ---------------------------------------------------------------------------------

# 8 steps, validations at 3, 6 and 8, a periodic checkpoint at 4; SIGTERM during step 5 stops the
# run after it: between two validations, with two training losses not yet in history.csv
RESUMABLE = ("train.steps=8", "train.eval_every=3", "checkpoint.every=4", "diagnostics.every=2",
             "inference.compare=false")  # fmt: skip
SCHEDULES = {
    "none": (),
    # every validation is "bad" (no value beats best * (1 - 10)): the rate halves at the 2nd,
    # so the count carried across the resume decides the rate of steps 7 and 8
    "plateau": ("scheduler.patience=1", "scheduler.threshold=10"),
    "cosine": ("scheduler.warmup_steps=3", "scheduler.min_lr_ratio=0.1"),
    "step": ("scheduler.step_size=2", "scheduler.gamma=0.5"),
}


def sigterm_during_step(step: int):
    """Patch the loop so that this process receives SIGTERM while it computes `step` (1-based),
    as a scheduler's kill would arrive: the run stops after that step."""
    from seqbench import train

    calls, clip = [], train.clip_gradients

    def clip_and_maybe_signal(*args, **kwargs):
        calls.append(1)
        if len(calls) == step:
            os.kill(os.getpid(), signal.SIGTERM)
        return clip(*args, **kwargs)

    return mock.patch.object(train, "clip_gradients", clip_and_maybe_signal)


def resume_from_step_5(tmp: Path, *overrides: str) -> tuple[dict, dict]:
    """The files of an uninterrupted run, and those of the same run stopped by SIGTERM after
    step 5 and resumed (in this process, like the command does)."""
    run_small(tmp / "straight", *RESUMABLE, *overrides)
    run_dir = tmp / "run"
    with sigterm_during_step(5), pytest.raises(SystemExit) as stopped:
        run_small(run_dir, *RESUMABLE, *overrides)
    assert stopped.value.code == 143
    interrupted = json.loads((run_dir / "metrics.json").read_text())
    assert (interrupted["status"], interrupted["steps"]) == ("interrupted", 5)
    run_small(tmp / "unused", *RESUMABLE, *overrides, f"resume={run_dir}")
    return read_run(tmp / "straight"), read_run(run_dir)


def read_run(run_dir: Path) -> dict:
    return {
        "checkpoint": torch.load(run_dir / "checkpoint.pt", weights_only=True),
        "best": torch.load(run_dir / "best.pt", weights_only=True),
        "metrics": without_timings(json.loads((run_dir / "metrics.json").read_text())),
        "history": pd.read_csv(run_dir / "history.csv").drop(columns="wall_time"),
        "grad_norms": pd.read_csv(run_dir / "grad_norms.csv"),
        "dir": run_dir,
    }


def assert_same_tensors(a, b, where: str = "") -> None:
    """Bit-identical nested state (dicts, lists, tensors, numbers)."""
    if isinstance(a, torch.Tensor):
        assert isinstance(b, torch.Tensor) and a.dtype == b.dtype and torch.equal(a, b), where
    elif isinstance(a, dict):
        assert a.keys() == b.keys(), where
        for key in a:
            assert_same_tensors(a[key], b[key], f"{where}.{key}")
    elif isinstance(a, list | tuple):
        assert len(a) == len(b), where
        for i, (x, y) in enumerate(zip(a, b, strict=True)):
            assert_same_tensors(x, y, f"{where}[{i}]")
    else:
        assert a == b or (a != a and b != b), (where, a, b)  # NaN == NaN here


@pytest.mark.parametrize(
    "optimizer,scheduler",
    [("adam", "none"), ("adam", "plateau"), ("adam", "cosine"), ("adam", "step"),
     ("adamw", "cosine"), ("sgd", "plateau"), ("rmsprop", "step")],
)  # fmt: skip
def test_resume_between_validations_is_bit_identical(tmp_path: Path, optimizer, scheduler) -> None:
    straight, resumed = resume_from_step_5(
        tmp_path, f"optimizer={optimizer}", f"scheduler={scheduler}", *SCHEDULES[scheduler],
        "log.tensorboard=false",
    )  # fmt: skip
    for key in ("model", "optimizer", "scheduler", "step", "rng"):
        assert_same_tensors(straight["checkpoint"][key], resumed["checkpoint"][key], key)
    assert_same_tensors(straight["best"], resumed["best"], "best.pt")
    assert straight["metrics"] == resumed["metrics"]
    pd.testing.assert_frame_equal(straight["history"], resumed["history"])
    pd.testing.assert_frame_equal(straight["grad_norms"], resumed["grad_norms"])
    lrs = straight["history"]["lr"].tolist()
    assert (len(set(lrs)) > 1) == (scheduler != "none")  # the schedule did act within 8 steps


def test_best_pt_from_before_the_stop_survives_the_resume(tmp_path: Path) -> None:
    """With a rate too small to move any weight, every validation ties the first: best.pt is
    from step 3, before the stop, and the resumed run must not replace it."""
    straight, resumed = resume_from_step_5(tmp_path, "optimizer.lr=1e-30", "log.tensorboard=false")
    assert straight["history"]["val_mse"].nunique() == 1
    assert straight["best"]["step"] == straight["metrics"]["best_step"] == 3
    assert_same_tensors(straight["best"], resumed["best"], "best.pt")


# --- TensorBoard across a resume --------------------------------------------------------------


def scalars(run_dir: Path) -> dict[str, list[tuple[int, float]]]:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    (folder,) = {p.parent for p in (run_dir / "tb").rglob("events.out.tfevents.*")}
    events = EventAccumulator(str(folder), size_guidance={"scalars": 0}).Reload()
    return {tag: [(e.step, e.value) for e in events.Scalars(tag)]
            for tag in events.Tags()["scalars"]}  # fmt: skip


_RESUMED_TENSORBOARD: list[tuple[dict, dict]] = []  # computed once, by whichever test runs first


def resumed_tensorboard(tmp_path: Path) -> tuple[dict, dict]:
    """TensorBoard scalars of an uninterrupted run and of the same run resumed from step 5.
    (Inside the tests, not a fixture: `make mutate` orders tests by their own duration.)"""
    if not _RESUMED_TENSORBOARD:
        straight, resumed = resume_from_step_5(tmp_path, "scheduler=step", *SCHEDULES["step"])
        _RESUMED_TENSORBOARD.append((scalars(straight["dir"]), scalars(resumed["dir"])))
    return _RESUMED_TENSORBOARD[0]


def test_resumed_tensorboard_has_no_repeated_steps(tmp_path: Path) -> None:
    """Events logged after the checkpoint (steps 6-8 of the first pass) are purged: every
    step of every tag appears once, with the uninterrupted run's value."""
    straight, resumed = resumed_tensorboard(tmp_path)
    assert resumed.keys() == straight.keys()
    for tag, points in resumed.items():
        steps = [step for step, _ in points]
        assert steps == sorted(set(steps)), (tag, steps)
        assert set(points) <= set(straight[tag]), tag


def test_resumed_tensorboard_misses_no_step(tmp_path: Path) -> None:
    straight, resumed = resumed_tensorboard(tmp_path)
    for tag in straight:
        assert resumed[tag] == straight[tag], tag
