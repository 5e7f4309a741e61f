"""The ReLU RNN and the initialisations that set the gradient's regime (#12): the engine's
ReLU RNN against autograd through PyTorch's own nn.RNN(nonlinearity='relu'), model.init=identity
and model.recurrent_gain against torch.linalg."""

from __future__ import annotations

import math
import warnings

import numpy as np
import pytest
import torch
from torch import nn

from seqbench.cells import CELLS, get_cell
from seqbench.diagnostics import grad_norms
from seqbench.engine import GradNormRecorder, dropout_masks, recurrent
from seqbench.model import SequenceModel
from tests.conftest import run_small
from tests.test_engine import assert_rel, run_module

RNN = "rnn"  # the vanilla RNN, whose ReLU option these tests are about
RELU = get_cell(RNN).with_nonlinearity("relu")


def relu_rnn(n_in: int, H: int, L: int, dtype=torch.float64, seed: int = 0) -> nn.RNN:
    torch.manual_seed(seed)
    return nn.RNN(n_in, H, num_layers=L, batch_first=True, nonlinearity="relu").to(dtype)


def run_engine(mod: nn.RNN, x, **kw):
    weights = list(mod._flat_weights)
    return recurrent(RELU, x, weights, num_layers=mod.num_layers, hidden_size=mod.hidden_size, **kw)


def unrolled(mod: nn.RNN, x, lengths=None, masks=None):
    """Autograd through nn.RNNCell(nonlinearity='relu') step by step with the module's weights:
    (output (B, T, H), per-layer states h_t with grads retained, the cells)."""
    B, T, _ = x.shape
    H = mod.hidden_size
    inp, hs, cells = [x[:, t] for t in range(T)], [], []
    for layer in range(mod.num_layers):
        cell = nn.RNNCell(inp[0].shape[1], H, nonlinearity="relu").to(x.dtype)
        with torch.no_grad():
            for name in ("weight_ih", "weight_hh", "bias_ih", "bias_hh"):
                getattr(cell, name).copy_(getattr(mod, f"{name}_l{layer}"))
        cells.append(cell)
        h, outs, states = x.new_zeros(B, H), [], []
        for t in range(T):
            hn = cell(inp[t], h)
            if lengths is not None:
                hn = torch.where((t < lengths)[:, None], hn, h)
            hn.retain_grad()
            states.append(hn)
            outs.append(hn if lengths is None else hn * (t < lengths)[:, None])
            h = hn
        hs.append(states)
        if masks is not None and layer < mod.num_layers - 1:
            outs = [o * masks[layer][t] for t, o in enumerate(outs)]
        inp = outs
    return torch.stack(inp, 1), hs, cells


def norms_of(hs, lengths=None) -> torch.Tensor:
    out = torch.zeros(len(hs), len(hs[0]), dtype=torch.float64)
    for layer, states in enumerate(hs):
        for t, h in enumerate(states):
            g = h.grad if lengths is None else h.grad * (t < lengths)[:, None]
            out[layer, t] = g.double().norm()
    return out


# ------------------------------------------------------------------ ReLU RNN: engine vs autograd


def test_relu_is_an_option_of_the_vanilla_rnn() -> None:
    """The vanilla RNN takes tanh (its own) or relu, as its variant; a cell takes only the
    nonlinearities it lists, its own first."""
    assert get_cell(RNN).with_nonlinearity("tanh") is get_cell(RNN)
    assert RELU.name == RNN and RELU.fused(2, 3).nonlinearity == "relu"
    for cell in CELLS.values():
        assert cell.with_nonlinearity(cell.nonlinearities[0]) is cell
        with pytest.raises(ValueError, match=f"cell {cell.name!r} takes"):
            cell.with_nonlinearity("sigmoid")


@pytest.mark.parametrize(
    "L,B,T,n_in,H,lengths",
    [(1, 3, 5, 2, 4, None), (2, 4, 9, 3, 5, None), (2, 4, 9, 3, 5, [9, 4, 1, 6]),
     (1, 1, 1, 1, 3, None)],
)  # fmt: skip
def test_relu_grads_match_nn_rnn(path, L, B, T, n_in, H, lengths):
    mod = relu_rnn(n_in, H, L)
    lens = None if lengths is None else torch.tensor(lengths)
    x = torch.randn(B, T, n_in, dtype=torch.float64, requires_grad=True)
    go = torch.randn(B, T, H, dtype=torch.float64)
    params = [x, *mod._flat_weights]
    ref = run_module(mod, x, lens)
    out = run_engine(mod, x, lengths=lens)
    assert_rel(out, ref, 1e-10, "output")
    g_ref = torch.autograd.grad(ref, params, go)
    g_eng = torch.autograd.grad(out, params, go)
    for a, b, name in zip(g_eng, g_ref, ["x", *mod._flat_weights_names], strict=True):
        assert_rel(a, b, 1e-10, name)


def test_relu_grads_match_nn_rnn_float32(path):
    mod = relu_rnn(3, 16, 2, dtype=torch.float32)
    x = torch.randn(6, 20, 3, requires_grad=True)
    go = torch.randn(6, 20, 16)
    params = [x, *mod._flat_weights]
    g_ref = torch.autograd.grad(mod(x)[0], params, go)
    out = run_engine(mod, x)
    assert_rel(out, mod(x)[0], 1e-5, "output")
    g_eng = torch.autograd.grad(out, params, go)
    for a, b, name in zip(g_eng, g_ref, ["x", *mod._flat_weights_names], strict=True):
        assert_rel(a, b, 1e-5, name)


def test_relu_dropout_same_masks(path):
    B, T, n_in, H, L, p = 3, 6, 2, 4, 3, 0.4
    mod = relu_rnn(n_in, H, L)
    x = torch.randn(B, T, n_in, dtype=torch.float64, requires_grad=True)
    go = torch.randn(B, T, H, dtype=torch.float64)
    torch.manual_seed(123)
    out = run_engine(mod, x, dropout=p, training=True)
    g_eng = torch.autograd.grad(out, [x, *mod._flat_weights], go)
    torch.manual_seed(123)
    masks = dropout_masks(L, T, B, H, p, dtype=torch.float64)
    ref, _, cells = unrolled(mod, x, masks=masks)
    cell_params = [w for c in cells for w in (c.weight_ih, c.weight_hh, c.bias_ih, c.bias_hh)]
    g_ref = torch.autograd.grad(ref, [x, *cell_params], go)
    assert_rel(out, ref, 1e-10, "output")
    for a, b, name in zip(g_eng, g_ref, ["x", *mod._flat_weights_names], strict=True):
        assert_rel(a, b, 1e-10, name)


@pytest.mark.parametrize("with_lengths", [False, True])
def test_relu_norms_and_log10_match_unrolled_cells(path, with_lengths):
    B, T, n_in, H, L = 4, 8, 3, 5, 2
    mod = relu_rnn(n_in, H, L)
    lens = torch.tensor([8, 3, 5, 1]) if with_lengths else None
    x = torch.randn(B, T, n_in, dtype=torch.float64)
    w = torch.randn(B, T, H, dtype=torch.float64)
    rec = GradNormRecorder(track_log10=True)
    (run_engine(mod, x, lengths=lens, recorder=rec) * w).sum().backward()
    ref, hs, _ = unrolled(mod, x, lengths=lens)
    (ref * w).sum().backward()
    expected = norms_of(hs, lens)
    torch.testing.assert_close(rec.norms, expected, rtol=1e-4, atol=0)
    torch.testing.assert_close(rec.log10_norms, expected.log10(), rtol=0, atol=1e-6)


def test_exploding_relu_norms_in_float32_match_float64(path):
    """An IRNN at gain 2 over 100 steps: ||dL/dh_1|| is ~1e29 times ||dL/dh_T||; the float32
    engine reports the float64 reference's norms."""
    B, T, H = 2, 100, 6
    model = SequenceModel(RNN, 2, 1, H, nonlinearity="relu", init="identity", recurrent_gain=2.0)
    mod = model.rnn
    with torch.no_grad():
        mod.bias_ih_l0.fill_(0.1)  # every unit active: the gain acts on every step
    x = torch.rand(B, T, 2)
    rec = GradNormRecorder(track_log10=True)
    run_engine(mod, x, recorder=rec)[:, -1].sum().backward()
    mod64 = relu_rnn(2, H, 1)
    mod64.load_state_dict(mod.state_dict())
    ref, hs, _ = unrolled(mod64, x.double())
    ref[:, -1].sum().backward()
    expected = norms_of(hs)
    assert expected[0, 0] > 1e28 * expected[0, -1]
    torch.testing.assert_close(rec.norms, expected, rtol=1e-4, atol=0)


def test_sequence_model_relu_matches_nn_rnn_on_every_path() -> None:
    """Fused, unrolled and engine paths of SequenceModel(nonlinearity="relu"): the outputs of
    nn.RNN(nonlinearity='relu'), and the same per-timestep norms on the last two."""
    torch.manual_seed(0)
    model = SequenceModel(RNN, 3, 2, 5, num_layers=2, nonlinearity="relu").double()
    assert model.rnn.nonlinearity == "relu"
    x = torch.randn(4, 7, 3, dtype=torch.float64)
    reference = nn.RNN(3, 5, 2, batch_first=True, nonlinearity="relu").double()
    reference.load_state_dict(model.rnn.state_dict())
    expected = model.head(reference(x)[0])
    torch.testing.assert_close(model(x)[0], expected)  # fused
    norms = []
    for engine in (False, True):
        model.engine = engine
        model.zero_grad()
        out, trace = model(x, record_states=True)
        torch.testing.assert_close(out, expected)
        out[:, -1].sum().backward()
        norms.append(grad_norms(trace))
    assert norms[0].shape == (2, 7)
    torch.testing.assert_close(norms[1], norms[0], rtol=1e-10, atol=0)


def test_relu_model_quantizes_its_head_only() -> None:
    from seqbench.inference import quantizable_modules

    torch.manual_seed(0)
    model = SequenceModel(RNN, 2, 1, 8, nonlinearity="relu")
    with warnings.catch_warnings():  # torch.ao.quantization is deprecated in favour of torchao
        warnings.simplefilter("ignore")
        from torch.ao.quantization import quantize_dynamic

        q = quantize_dynamic(model, quantizable_modules(), dtype=torch.qint8)
    assert type(q.rnn) is type(model.rnn) and q.rnn.nonlinearity == "relu"
    x = torch.rand(3, 10, 2)
    torch.testing.assert_close(q(x)[0], model(x)[0], atol=0.05, rtol=0.05)


def test_a_relu_irnn_run_with_the_int8_comparison(small_run) -> None:
    metrics = small_run(f"model={RNN}", "model.nonlinearity=relu", "model.init=identity",
                        "model.recurrent_gain=1.2", "inference.compare=true")  # fmt: skip
    assert metrics["status"] == "completed"
    assert metrics["inference"]["quantized_modules"] == ["Linear"]  # the head (torch.ao...Linear)
    assert metrics["grad_norms"]["init"]["layers"][0]["vanishing_ratio"] > 0  # grows back in time


# ------------------------------------------------------------------ init=identity, recurrent_gain


@pytest.mark.parametrize("init", ["default", "orthogonal", "xavier", "identity"])
@pytest.mark.parametrize("cell", sorted(n for n, c in CELLS.items() if c.recurrence != "none"))
def test_recurrent_gain_sets_the_spectral_radius_of_every_block(cell: str, init: str) -> None:
    """Every gate block of every recurrent weight gets the gain as its spectral radius (a
    diagonal weight: as its diagonal matrix's, its largest |entry|)."""
    torch.manual_seed(0)
    gain, H = 1.3, 6
    model = SequenceModel(cell, 3, 1, H, num_layers=2, init=init, recurrent_gain=gain)
    gates = get_cell(cell).gates
    for layer in range(2):
        w_hh = getattr(model.rnn, f"weight_hh_l{layer}").detach().double()
        for block in w_hh.chunk(gates, dim=0):
            block = block if block.dim() == 2 else torch.diag(block)
            radius = torch.linalg.eigvals(block).abs().max().item()
            assert radius == pytest.approx(gain, rel=1e-6)
            if init in ("orthogonal", "identity"):  # every singular value is the gain
                svd = torch.linalg.svdvals(block)
                torch.testing.assert_close(svd, torch.full_like(svd, gain), rtol=1e-6, atol=0)


def test_identity_init_is_the_irnn() -> None:
    torch.manual_seed(0)
    model = SequenceModel(RNN, 2, 1, 64, num_layers=2, nonlinearity="relu", init="identity")
    for layer in range(2):
        w_hh = getattr(model.rnn, f"weight_hh_l{layer}").detach()
        assert torch.equal(w_hh, torch.eye(64))
        w_ih = getattr(model.rnn, f"weight_ih_l{layer}").detach()
        assert 0.5e-3 < w_ih.std().item() < 2e-3
        for kind in ("bias_ih", "bias_hh"):
            assert not getattr(model.rnn, f"{kind}_l{layer}").any()
    torch.manual_seed(0)
    irnn12 = SequenceModel(RNN, 2, 1, 64, nonlinearity="relu", init="identity", recurrent_gain=1.2)
    assert torch.allclose(irnn12.rnn.weight_hh_l0.detach(), 1.2 * torch.eye(64))


def test_without_gain_the_init_is_unchanged() -> None:
    for name, cell in CELLS.items():
        torch.manual_seed(0)
        a = SequenceModel(name, 2, 1, 8).state_dict()
        torch.manual_seed(0)
        b = SequenceModel(name, 2, 1, 8, recurrent_gain=None,
                          nonlinearity=cell.nonlinearities[0]).state_dict()  # fmt: skip
        assert all(torch.equal(a[k], b[k]) for k in a)


@pytest.mark.parametrize("cell", sorted(n for n, c in CELLS.items() if c.recurrence == "none"))
def test_a_cell_without_recurrent_weights_refuses_a_gain(cell: str) -> None:
    with pytest.raises(ValueError, match="has no recurrent weight"):
        SequenceModel(cell, 2, 1, 8, recurrent_gain=1.2)


def test_gain_sets_the_regime_at_init() -> None:
    """tanh RNN at T=50, loss on the last step: gain 0.5 vanishes, an IRNN at 1.2 explodes."""

    def ratio(**kw) -> float:
        torch.manual_seed(0)
        model = SequenceModel(RNN, 2, 1, 32, engine=True, **kw)
        x = torch.rand(16, 50, 2)
        out, rec = model(x, record_states=True)
        out[:, -1].square().mean().backward()
        return (rec.norms[0, 0] / rec.norms[0, -1]).log10().item()

    assert ratio(init="orthogonal", recurrent_gain=0.5) < -5
    assert ratio(nonlinearity="relu", init="identity", recurrent_gain=1.2) > 2


# ------------------------------------------------------------------ growth rate, memory horizon


def test_growth_rate_and_memory_horizon_on_crafted_norms() -> None:
    from seqbench.diagnostics import memory_horizon, summarize

    T = 40
    grows = 1.2 ** np.arange(T)[::-1]  # ||dL/dh_t|| = 1.2^(T-t): x1.2 per step back
    s = summarize(grows)
    assert s.growth_rate == pytest.approx(1.2) and s.exploding and s.memory_horizon == T
    vanishes = 0.5 ** np.arange(T)[::-1]  # x0.5 per step back: 0.5^10 = 9.8e-4 < 1e-3
    s = summarize(vanishes)
    assert s.growth_rate == pytest.approx(0.5) and not s.exploding
    assert s.memory_horizon == 10  # t = T, T-1, ..., T-9 hold >= 1e-3 of ||dL/dh_T||
    assert summarize(np.ones(T)).memory_horizon == T
    # the first step back that falls below ends the horizon, whatever comes before it
    norms = np.array([5.0, 1e-4, 1.0, 0.9, 1.0])
    assert summarize(norms).memory_horizon == 3
    assert memory_horizon(np.log10([1.0, 1e-3, 1.0])) == 3  # exactly 1e-3 is not below
    assert summarize(np.array([1.0, 1.0, 0.0])).memory_horizon == 0  # no gradient at T
    # padded batches: T is the last real step; log-magnitudes beyond float64 work the same
    assert (
        summarize(np.r_[vanishes, 0.0, 0.0], positions=np.r_[np.ones(T), 0, 0]).memory_horizon == 10
    )
    logs = -500.0 * np.arange(T)[::-1]  # 1e-500 per step back: horizon 1
    s = summarize(np.zeros(T), log10=logs)
    assert s.memory_horizon == 1 and s.growth_rate == 0.0
    assert summarize(np.zeros(T), log10=-logs).growth_rate == math.inf


def test_comparison_table_counts_exploding_runs_and_shows_growth_and_horizon(tmp_path) -> None:
    import json

    from seqbench.compare import aggregate, load_runs, to_display

    def run(name: str, status: str, growth: float, horizon: int, exploding: bool) -> None:
        layer = {
            "vanishing_ratio": 1.0,
            "decay_rate": -math.log10(growth),
            "max_norm": 1.0,
            "exploding": exploding,
            "growth_rate": growth,
            "memory_horizon": horizon,
        }
        snap = {"step": 0, "lags": 50, "layers": [{**layer, "max_lag": 49, "pairs": 8}]}
        per_t = {"step": 0, "timesteps": 50, "layers": [{**layer, "exploding": not exploding}]}
        metrics = {
            "status": status,
            "model": name,
            "task": "t",
            "seed": 0,
            "metric": "mse",
            "grad_norms": {"init": per_t, "end": per_t, "max_norm": 1.0},
            "lag_norms": {"init": snap, "end": snap},
        }
        (tmp_path / name).mkdir()
        (tmp_path / name / "metrics.json").write_text(json.dumps(metrics))

    run("a", "diverged", 1.2, 50, True)
    run("b", "completed", 0.8, 31, False)
    table = aggregate(load_runs(sorted(tmp_path.iterdir())))
    assert table.set_index("model")["exploding"].to_dict() == {"a": 1, "b": 0}
    shown = to_display(table, short=True).set_index("model")
    assert shown.loc["a", "exploding"] == "1/1" and shown.loc["b", "horizon@init"] == "31"
    assert shown.loc["b", "growth@init"] == "0.8"


def test_the_exploding_preset_diverges_unclipped_and_trains_clipped(tmp_path) -> None:
    """experiment=exploding's tanh RNN, shortened: flagged exploding at init; without clipping it
    diverges (recorded with its step), with clipping it completes."""
    short = ("experiment=exploding", f"model={RNN}", "train.steps=40", "train.eval_every=20",
             "diagnostics.every=20", "log.progress=none")  # fmt: skip
    unclipped = run_small(tmp_path / "a", *short, "train.clip.threshold=null", base=())
    assert unclipped["status"] == "diverged" and 0 < unclipped["diverged_step"] < 40
    clipped = run_small(tmp_path / "b", *short, base=())
    assert clipped["status"] == "completed" and clipped["clip_fraction"] > 0.5
    init = clipped["grad_norms"]["init"]["layers"][0]
    assert init["exploding"] and init["growth_rate"] > 1.1 and init["memory_horizon"] == 50


def test_a_gain_that_cannot_be_applied_is_refused_by_the_cell() -> None:
    """set_recurrent_gain called as a library (the config's check is not in the way): a gain
    of 0 or below, and a zero block no gain can scale, raise a ValueError that says so."""
    cell = get_cell("lstm")
    rnn = nn.LSTM(3, 4)
    for gain in (0.0, -1.0):
        with pytest.raises(ValueError, match=f"recurrent gain must be > 0, got {gain}"):
            cell.set_recurrent_gain(rnn, gain)
    with torch.no_grad():
        rnn.weight_hh_l0[4:8].zero_()  # the forget block
    with pytest.raises(ValueError, match="weight_hh_l0 has a zero block"):
        cell.set_recurrent_gain(rnn, 1.5)
