"""The cell registry (seqbench.cells): one module per cell, one YAML per cell, nothing else;
initialisation from the cell's description; the fallback of a cell the engine cannot run."""

from __future__ import annotations

import importlib
import re
from dataclasses import replace
from functools import partial
from pathlib import Path

import pytest
import torch
import yaml

from seqbench import model
from seqbench.cells import CELLS, INITS, Cell, get_cell
from seqbench.engine import native, recurrent
from seqbench.model import ReferenceStack, SequenceModel, engine_choice

ROOT = Path(__file__).resolve().parent.parent
CELL_DIR = ROOT / "seqbench" / "cells"


def test_every_cell_module_is_registered_under_its_name() -> None:
    modules = {p.stem for p in CELL_DIR.glob("*.py")} - {"__init__", "base"}
    assert modules == set(CELLS)
    for name in modules:
        assert importlib.import_module(f"seqbench.cells.{name}").CELL is CELLS[name]
    assert model.CELLS is CELLS  # the model, the config checks and the engine read this one


def test_every_model_yaml_names_a_registered_cell_and_every_cell_has_one() -> None:
    yamls = {
        p.stem: yaml.safe_load(p.read_text()) for p in (ROOT / "conf" / "model").glob("*.yaml")
    }
    assert {name: cfg["cell"] for name, cfg in yamls.items()} == {name: name for name in CELLS}


def test_kernel_files_are_shipped() -> None:
    tomllib = pytest.importorskip("tomllib")  # Python >= 3.11
    package_data = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"][
        "package-data"
    ]["seqbench"]
    shipped = {p for pattern in package_data for p in (ROOT / "seqbench").glob(pattern)}
    assert native.sources() and set(native.sources()) <= shipped
    assert (ROOT / "seqbench" / "engine" / "csrc" / "seqbench.h") in shipped
    for cpp in CELL_DIR.glob("*.cpp"):
        assert CELLS[cpp.stem].engine.native_source == cpp


def test_unknown_cell_lists_the_valid_names() -> None:
    with pytest.raises(ValueError, match=re.escape(f"unknown cell 'lstn'; choose one of "
                                                   f"{sorted(CELLS)}")):  # fmt: skip
        get_cell("lstn")
    with pytest.raises(ValueError, match="unknown cell"):
        SequenceModel("lstn", 2, 1)


@pytest.mark.parametrize("init", INITS)
@pytest.mark.parametrize("cell", [n for n, c in CELLS.items() if c.forget_gate is not None])
def test_forget_bias_lands_in_the_forget_gate_of_every_layer_and_direction(
    cell: str, init: str
) -> None:
    spec = get_cell(cell)
    torch.manual_seed(0)
    m = SequenceModel(cell, 3, 1, hidden_size=5, num_layers=2, bidirectional=True, init=init,
                      forget_bias=2.5)  # fmt: skip
    torch.manual_seed(0)  # the same draws, no init
    layer = spec.fused or partial(ReferenceStack, spec)
    raw = layer(3, 5, 2, batch_first=True, bidirectional=True)
    forget = slice(5 * spec.forget_gate, 5 * (spec.forget_gate + 1))
    others = torch.ones(5 * spec.gates, dtype=torch.bool)
    others[forget] = False
    for layer in range(2):
        for suffix in ("", "_reverse"):
            for kind, value in (("bias_ih", 2.5), ("bias_hh", 0.0)):
                if kind not in spec.parameter_names:  # one bias: it holds the value
                    continue
                name = f"{kind}_l{layer}{suffix}"
                bias, before = getattr(m.rnn, name).detach(), getattr(raw, name).detach()
                assert (bias[forget] == value).all(), name
                if init == "default":
                    assert torch.equal(bias[others], before[others]), name
                else:
                    assert (bias[others] == 0).all(), name


def test_a_cell_without_engine_kernels_falls_back_with_a_notice(monkeypatch) -> None:
    plain = replace(get_cell("rnn"), name="rnn_plain", engine=None)
    monkeypatch.setitem(CELLS, "rnn_plain", plain)
    use, notice = engine_choice("rnn_plain", "auto", "cpu", False)
    assert not use and "no engine kernels" in notice and "fused" in notice
    assert "\n" not in notice
    assert engine_choice("rnn_plain", "fused", "cpu", False) == (False, None)
    with pytest.warns(UserWarning, match="no engine kernels"):
        m = SequenceModel("rnn_plain", 2, 1, hidden_size=4, engine=True)
    assert not m.engine
    x = torch.randn(3, 6, 2)
    out, states = m(x, record_states=True)
    out[:, -1].sum().backward()
    assert len(states) == 1 and states[0][0].grad is not None
    with pytest.raises(ValueError, match="cell must be one of"):
        recurrent("rnn_plain", x, list(m.rnn._flat_weights), num_layers=1, hidden_size=4)


def test_engine_choice_is_the_cli_rule() -> None:
    assert engine_choice("gru", "auto", "cpu", False) == (True, None)
    assert engine_choice("gru", "auto", "cuda", False) == (False, None)
    assert engine_choice("gru", "auto", "cpu", True) == (False, None)
    assert engine_choice("gru", "engine", "cuda", False) == (True, None)
    assert engine_choice("gru", "fused", "cpu", False) == (False, None)


def test_a_cell_with_only_reference_equations_trains_unrolled(monkeypatch) -> None:
    """No fused layer, no engine kernels: the model keeps nn.RNN-named parameters and runs the
    cell's step equations, here the tanh RNN's, so it computes what nn.RNN computes."""
    bare = Cell(name="tanh_bare", gates=1, step=get_cell("rnn").step)
    monkeypatch.setitem(CELLS, "tanh_bare", bare)
    assert "unrolled reference" in engine_choice("tanh_bare", "auto", "cpu", False)[1]
    torch.manual_seed(0)
    m = SequenceModel("tanh_bare", 2, 1, hidden_size=4, num_layers=2, init="orthogonal")
    fused = torch.nn.RNN(2, 4, 2, batch_first=True)
    fused.load_state_dict(m.rnn.state_dict())
    x = torch.randn(3, 6, 2)
    out, trace = m(x)
    assert trace == []
    torch.testing.assert_close(out, m.head(fused(x)[0]))
    out, states = m(x, record_states=True)
    assert len(states) == 2 and len(states[0]) == 6
    bi = SequenceModel("tanh_bare", 2, 1, hidden_size=4, bidirectional=True)
    assert bi(x, lengths=torch.tensor([6, 2, 4]))[0].shape == (3, 6, 1)


def test_a_cell_without_a_native_kernel_runs_the_engine_in_torch(monkeypatch) -> None:
    spec = get_cell("gru")
    torch_only = replace(spec, name="gru_torch", engine=replace(spec.engine, native_source=None))
    monkeypatch.setitem(CELLS, "gru_torch", torch_only)
    monkeypatch.setenv("SEQBENCH_NATIVE", "1")
    torch.manual_seed(0)
    mod = spec.fused(2, 4, 2, batch_first=True).double()
    x = torch.randn(3, 5, 2, dtype=torch.float64)
    out = recurrent("gru_torch", x, list(mod._flat_weights), num_layers=2, hidden_size=4)
    torch.testing.assert_close(out, mod(x)[0])
    assert "gru_torch" not in {c.name for c in native.native_cells()}


def test_identity_init_and_the_refusals_of_a_cell() -> None:
    """IRNN: identity recurrent blocks, input weights drawn around 0 with IDENTITY_INPUT_STD,
    zero biases; an unknown init and a forget bias on a cell without a forget gate are refused
    with the options named."""
    from seqbench.cells.base import IDENTITY_INPUT_STD

    rnn = torch.nn.RNN(400, 100)
    get_cell("rnn").initialise(rnn, "identity", forget_bias=1.0)
    assert torch.equal(rnn.weight_hh_l0, torch.eye(100)) and not rnn.bias_ih_l0.any()
    w = rnn.weight_ih_l0.double()  # 40,000 draws: the mean within 5 standard errors of 0
    assert abs(w.mean().item()) < 5 * IDENTITY_INPUT_STD / 200
    assert w.std().item() == pytest.approx(IDENTITY_INPUT_STD, rel=0.02)
    with pytest.raises(ValueError, match=r"unknown init 'zeros'; choose one of \['default', "):
        get_cell("rnn").initialise(rnn, "zeros", forget_bias=1.0)
    with pytest.raises(ValueError, match=r"^cell 'gru' has no forget gate$"):
        get_cell("gru").set_forget_bias(torch.nn.GRU(2, 3), 1.0)


def test_a_gated_cell_unrolls_without_collecting_gates() -> None:
    lstm = torch.nn.LSTM(2, 3, batch_first=True)
    weights = (lstm.weight_ih_l0, lstm.weight_hh_l0, lstm.bias_ih_l0, lstm.bias_hh_l0)
    x = torch.randn(4, 5, 2)
    hs = get_cell("lstm").unroll(x, weights)  # gates=None: nothing collected
    torch.testing.assert_close(torch.stack(hs, dim=1), lstm(x)[0])
