"""Every registered cell, none named: the engine against the cell's own reference equations
(``Cell.step`` through ``Cell.unroll``, by autograd, in float64) on the native kernels (their
time loop and the Python loop around them) and the pure-torch path, 1 and 2 layers, sequences
padded to different lengths: the outputs, dL/dx, every parameter's gradient, the per-timestep
norms and the gate means. A cell added as CONTRIBUTING.md says is checked here the day it is
added; cells PyTorch has a layer for are also checked against that layer in test_engine.py."""

from __future__ import annotations

import pytest
import torch

from seqbench.cells import CELLS, get_cell
from seqbench.engine import GradNormRecorder, recurrent
from seqbench.model import ReferenceStack, SequenceModel
from seqbench.tasks import TASKS
from tests.conftest import SMALL, run_small

ENGINE = sorted(name for name, c in CELLS.items() if c.engine is not None)
PATHS = {"native": {"SEQBENCH_NATIVE": "1"}, "python loop": {"SEQBENCH_NATIVE_LOOP": "0"},
         "torch": {"SEQBENCH_NATIVE": "0"}}  # fmt: skip


def stack_of(cell: str, n_in: int, hidden: int, layers: int) -> ReferenceStack:
    """The cell's parameters, exactly those it uses, seeded (float64)."""
    torch.manual_seed(7)
    return ReferenceStack(get_cell(cell), n_in, hidden, layers).double()


def flat(stack: ReferenceStack) -> list[torch.Tensor]:
    return [getattr(stack, f"{name}_l{layer}") for layer in range(stack.num_layers)
            for name in stack.cell.parameter_names]  # fmt: skip


def reference(stack: ReferenceStack, x: torch.Tensor, lengths: torch.Tensor):
    """The stack by the cell's own step equations: outputs (zero at padding), every layer's
    h_t (kept for their gradients) and each step's gate activations (B, n, H)."""
    spec = stack.cell
    real = (torch.arange(x.shape[1])[None, :] < lengths[:, None]).to(x.dtype)[..., None]
    seq, states, gates = x * real, [], []
    for layer in range(stack.num_layers):
        weights = tuple(getattr(stack, f"{k}_l{layer}", None)
                        for k in ("weight_ih", "weight_hh", "bias_ih", "bias_hh"))  # fmt: skip
        layer_gates = [] if spec.gate_names else None
        hs = spec.unroll(seq, weights, layer_gates)
        states.append(hs)
        gates.append(layer_gates)
        seq = torch.stack(hs, dim=1) * real
    return seq, states, gates


@pytest.mark.parametrize("path", list(PATHS))
@pytest.mark.parametrize("layers", [1, 2])
@pytest.mark.parametrize("cell", ENGINE)
def test_engine_is_the_cells_own_equations(cell, layers, path, monkeypatch):
    for key, value in PATHS[path].items():
        monkeypatch.setenv(key, value)
    B, T, n_in, H = 4, 9, 3, 5
    stack = stack_of(cell, n_in, H, layers)
    g = torch.Generator().manual_seed(1)
    x = torch.randn(B, T, n_in, generator=g, dtype=torch.float64, requires_grad=True)
    lengths = torch.tensor([T, 4, 1, 7])
    upstream = torch.randn(B, T, H, generator=g, dtype=torch.float64)
    upstream *= (torch.arange(T)[None, :] < lengths[:, None])[..., None]

    recorder = GradNormRecorder(track_gates=True)
    out = recurrent(get_cell(cell), x, flat(stack), num_layers=layers, hidden_size=H,
                    lengths=lengths, recorder=recorder)  # fmt: skip
    got = torch.autograd.grad(out, [x, *flat(stack)], upstream)

    ref_out, states, gates = reference(stack, x, lengths)
    flat_h = [h for hs in states for h in hs]
    ref = torch.autograd.grad(ref_out, [x, *flat(stack), *flat_h], upstream)
    torch.testing.assert_close(out, ref_out, rtol=1e-10, atol=1e-12)
    n = 1 + len(flat(stack))
    for name, a, b in zip(["x", *(f"param {i}" for i in range(n - 1))], got, ref[:n],
                          strict=True):  # fmt: skip
        torch.testing.assert_close(a, b, rtol=1e-9, atol=1e-12, msg=name)
    norms = torch.tensor([[h.norm().item() for h in ref[n + layer * T : n + (layer + 1) * T]]
                          for layer in range(layers)], dtype=torch.float64)  # fmt: skip
    torch.testing.assert_close(recorder.norms, norms, rtol=1e-9, atol=1e-14)

    names = get_cell(cell).gate_names
    assert len(recorder.gate_means) == (layers if names else 0)
    real = (torch.arange(T)[:, None] < lengths[None, :]).double()  # (T, B)
    for layer, means in enumerate(recorder.gate_means):  # (n, T, H) over the real sequences
        acts = torch.stack(gates[layer])  # (T, B, n, H)
        expected = (acts * real[..., None, None]).sum(1) / real.sum(1)[:, None, None]
        torch.testing.assert_close(means, expected.permute(1, 0, 2), rtol=1e-9, atol=1e-12)


@pytest.mark.parametrize("cell", sorted(CELLS))
def test_a_cell_has_exactly_the_parameters_it_uses(cell: str) -> None:
    """The parameter count is the cell's own: W_ih and its bias, and what its recurrence
    needs (a matrix and its bias, a vector, or nothing)."""
    spec = get_cell(cell)
    model = SequenceModel(cell, 3, 2, hidden_size=5, num_layers=2)
    rows = spec.gates * 5
    recurrent_part = {"full": rows * 5 + rows, "diagonal": rows, "none": 0}[spec.recurrence]
    per_layer = [rows * width + rows + recurrent_part for width in (3, 5)]
    assert sum(p.numel() for p in model.rnn.parameters()) == sum(per_layer)
    names = {name.rsplit("_l", 1)[0] for name, _ in model.rnn.named_parameters()}
    assert names == set(spec.parameter_names)


@pytest.mark.parametrize("task", sorted(TASKS))
@pytest.mark.parametrize("cell", sorted(CELLS))
def test_every_cell_runs_every_task(cell: str, task: str, tmp_path) -> None:
    """A smoke run: a few steps of the cell on the task, diagnostics included, completes."""
    fields = TASKS[task].schema.__dataclass_fields__
    base = [o for o in SMALL if o.split("=")[0][5:] in fields or not o.startswith("task.")]
    extra = ["task.corpus=hamlet", "task.sample_len=5"] if "corpus" in fields else []
    metrics = run_small(tmp_path / "run", f"model={cell}", f"task={task}", "train.steps=2",
                        "train.eval_every=2", "log.tensorboard=false", *extra,
                        base=base)  # fmt: skip
    assert metrics["status"] == "completed" and metrics["model"] == cell
    assert metrics["lag_norms"]["end"]["layers"]


DIAGONAL = sorted(name for name, c in CELLS.items() if c.recurrence == "diagonal")


@pytest.mark.parametrize("cell", DIAGONAL)
def test_recurrent_max_clips_the_diagonal_weights_after_every_update(cell: str, tmp_path) -> None:
    """model.recurrent_max (the IndRNN paper's constraint): after training, every recurrent
    weight lies in [-max, max]; without it the same run leaves some outside (the initial ones
    are 1, and a large learning rate moves them)."""

    def recurrent_weights(*overrides: str) -> torch.Tensor:
        run_dir = tmp_path / "-".join(overrides or ("free",))
        run_small(run_dir, f"model={cell}", "model.init=orthogonal", "optimizer.lr=0.05",
                  "train.steps=3", "train.eval_every=3", "log.tensorboard=false",
                  *overrides)  # fmt: skip
        state = torch.load(run_dir / "checkpoint.pt", weights_only=False)["model"]
        return torch.cat([v for k, v in state.items() if ".weight_hh" in k])

    free = recurrent_weights()
    assert free.abs().max() > 0.9
    clipped = recurrent_weights("model.recurrent_max=0.5")
    assert clipped.abs().max() <= 0.5
    assert (clipped.abs() == 0.5).any()
