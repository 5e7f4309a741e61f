"""Gate activations on diagnostic steps (#12): the means the engine and the unrolled path record
against the gates written out from nn.LSTM/nn.GRU weights, and where a run writes them."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from seqbench.cells import CELLS, get_cell
from seqbench.model import SequenceModel

RNN = next(name for name, c in CELLS.items() if "relu" in c.nonlinearities)


def reference_gates(mod: nn.RNNBase, x: torch.Tensor, lengths=None) -> dict:
    """Gate means per layer (L, T, H) from the module's own weights: each layer's h_{t-1} from
    running nn.LSTM/nn.GRU itself, the gates written out from PyTorch's documented equations."""
    kind = type(mod).__name__
    names = {"LSTM": ("input", "forget", "output"), "GRU": ("reset", "update")}[kind]
    rows = {"LSTM": {"input": 0, "forget": 1, "output": 3}, "GRU": {"reset": 0, "update": 1}}[kind]
    B, T, _ = x.shape
    H = mod.hidden_size
    real = torch.ones(T, B, dtype=torch.bool)
    if lengths is not None:
        real = torch.arange(T)[:, None] < lengths[None, :]
    out = {name: [] for name in names}
    inp = x
    for layer in range(mod.num_layers):
        single = type(mod)(inp.shape[2], H, batch_first=True).double()
        for kind_ in ("weight_ih", "weight_hh", "bias_ih", "bias_hh"):
            getattr(single, f"{kind_}_l0").data.copy_(getattr(mod, f"{kind_}_l{layer}"))
        hs = single(inp)[0]  # (B, T, H)
        h_prev = torch.cat([torch.zeros(B, 1, H, dtype=x.dtype), hs[:, :-1]], dim=1)
        w_ih, w_hh = getattr(mod, f"weight_ih_l{layer}"), getattr(mod, f"weight_hh_l{layer}")
        b_ih, b_hh = getattr(mod, f"bias_ih_l{layer}"), getattr(mod, f"bias_hh_l{layer}")
        for name in names:
            r = slice(rows[name] * H, (rows[name] + 1) * H)
            gate = torch.sigmoid(inp @ w_ih[r].T + b_ih[r] + h_prev @ w_hh[r].T + b_hh[r])
            gate = gate.transpose(0, 1)  # (T, B, H)
            means = torch.stack([gate[t][real[t]].mean(0) for t in range(T)])  # (T, H)
            out[name].append(means)
        inp = hs
    return {name: torch.stack(v).detach().numpy() for name, v in out.items()}


GATED = sorted(name for name, c in CELLS.items() if c.gate_names)
# the gated cells PyTorch has a layer for: checked against its documented equations here, and
# like every gated cell against their own gate equations in tests/test_every_cell.py
PYTORCH_GATED = [name for name in GATED if CELLS[name].fused is not None]


@pytest.mark.parametrize("cell", PYTORCH_GATED)
@pytest.mark.parametrize("with_lengths", [False, True])
def test_gate_means_match_an_independent_reference(path, cell: str, with_lengths: bool) -> None:
    from seqbench.diagnostics import gate_means

    torch.manual_seed(0)
    model = SequenceModel(cell, 3, 1, 5, num_layers=2).double()
    x = torch.randn(4, 9, 3, dtype=torch.float64)
    lengths = torch.tensor([9, 4, 1, 6]) if with_lengths else None
    expected = reference_gates(model.rnn, x, lengths)
    names = get_cell(cell).gate_names
    assert tuple(expected) == names
    for engine in (True, False):
        model.engine = engine
        _, trace = model(x, record_states=True, lengths=lengths)
        got = gate_means(trace, names)
        assert list(got) == list(names)
        for name in names:
            assert got[name].shape == (2, 9, 5)
            np.testing.assert_allclose(got[name], expected[name], rtol=1e-10, err_msg=name)


def test_no_gates_for_the_vanilla_rnn_and_none_on_plain_steps() -> None:
    from seqbench.diagnostics import gate_means

    model = SequenceModel(RNN, 2, 1, 4, engine=True)
    _, trace = model(torch.rand(2, 5, 2), record_states=True)
    assert gate_means(trace, get_cell(RNN).gate_names) == {}
    lstm = SequenceModel(GATED[-1], 2, 1, 4, engine=True)
    _, trace = lstm(torch.rand(2, 5, 2))  # not a diagnostic step: no recorder, no gates
    assert trace == []


def test_gate_summaries_and_csv_columns_of_a_run(small_run, tmp_path) -> None:
    import pandas as pd

    metrics = small_run("model=lstm")
    gates = metrics["gates"]
    assert gates["memory_gate"] == "forget" and gates["init"]["step"] == 0
    layer = gates["init"]["layers"][0]
    assert set(layer) == {"input", "forget", "output"}
    grads = pd.read_csv(tmp_path / "run" / "grad_norms.csv")
    at_init = grads[grads["step"] == 0]
    assert layer["forget"]["mean"] == pytest.approx(at_init["gate_forget"].mean())
    # default forget bias 1: sigmoid(1 + small) ~ 0.73, no unit above 0.95 at init
    assert 0.6 < layer["forget"]["mean"] < 0.85 and layer["forget"]["above_0.95"] == 0.0
    from seqbench.plots import gate_and_gradient_figure

    figure = gate_and_gradient_figure(tmp_path / "run")  # the README's picture, from the files
    gradient, forget = (ax.images[0].get_array() for ax in figure.axes[:2])
    assert gradient.shape == (4, 8) and forget.shape == (4, 8)  # snapshots 0, 2, 4, 6 x (T, H)
    units = pd.read_csv(tmp_path / "run" / "gates.csv")
    assert len(units) == 4 * 8 and set(units.columns) == {"step", "layer", "unit", *layer}
    at_init_units = units[units["step"] == 0]
    assert at_init_units["forget"].mean() == pytest.approx(layer["forget"]["mean"], rel=1e-9)
    assert sorted(forget[0]) == pytest.approx(sorted(at_init_units["forget"]))
    saturated = small_run("model=lstm", "model.forget_bias=5.0", run_dir=tmp_path / "b")
    assert saturated["gates"]["init"]["layers"][0]["forget"]["above_0.95"] == 1.0
