"""Recurrent sequence models: a tanh RNN, LSTM or GRU stack with a linear head on every step."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from seqbench.engine import GradNormRecorder, recurrent

CELLS: dict[str, type[nn.RNNBase]] = {"rnn": nn.RNN, "lstm": nn.LSTM, "gru": nn.GRU}
ENGINES = ("auto", "engine", "fused")

# What forward() returns beside the outputs: the engine's recorder, the unrolled hidden states
# (per layer, per step), or nothing.
Trace = GradNormRecorder | list[list[Tensor]]
INITS = ("default", "orthogonal", "xavier")


class SequenceModel(nn.Module):
    """A stacked recurrent layer (`nn.RNN`/`nn.LSTM`/`nn.GRU`, batch first) and a linear readout.

    Args:
        cell: "rnn" (tanh), "lstm" or "gru".
        input_size: features per timestep.
        output_size: outputs per timestep (the head is applied at every step).
        hidden_size: units per layer.
        num_layers: stacked layers.
        dropout: dropout on the outputs of every layer but the last.
        forget_bias: LSTM only: initial forget-gate bias.
        init: "default" (PyTorch's uniform), "orthogonal" (orthogonal recurrent blocks, Xavier
            input weights, zero biases) or "xavier" (Xavier-uniform weights, zero biases).
        vocab_size: token inputs: embed ids (B, T) in 0..vocab_size-1 first (id 0 is padding).
        embedding_dim: size of those embeddings.
        bidirectional: a second, backward recurrence per layer (for sequence classification and
            regression read at one step: sentiment, stocks). The head sees, at step t, the
            forward state at t and the backward direction's final state (after reading the whole
            sequence backwards); with `lengths`, each sequence is reversed within its own length.
        engine: train through seqbench's BPTT engine (`seqbench.engine`: hand-written backward,
            exact per-timestep gradient norms on every step at almost no cost) instead of the
            fused PyTorch layer. Same parameters and the same function either way.
        track_log10: with the engine, also record log10 ||dL/dh_t||, exact even where the norm
            underflows float64 (`diagnostics.log_magnitude`).
    """

    def __init__(
        self,
        cell: str,
        input_size: int,
        output_size: int,
        hidden_size: int = 64,
        num_layers: int = 1,
        dropout: float = 0.0,
        forget_bias: float = 1.0,
        init: str = "default",
        vocab_size: int | None = None,
        embedding_dim: int = 64,
        bidirectional: bool = False,
        engine: bool = False,
        track_log10: bool = False,
    ) -> None:
        super().__init__()
        if cell not in CELLS:
            raise ValueError(f"unknown cell {cell!r}; choose one of {sorted(CELLS)}")
        if init not in INITS:
            raise ValueError(f"unknown init {init!r}; choose one of {list(INITS)}")
        if bidirectional and engine:
            raise ValueError("the BPTT engine is unidirectional; use the fused path")
        self.cell = cell
        self.engine = engine
        self.track_log10 = track_log10
        self.bidirectional = bidirectional
        self.embed = None
        if vocab_size is not None:
            self.embed = nn.Embedding(vocab_size, embedding_dim, padding_idx=0)
            input_size = embedding_dim
        self.rnn = CELLS[cell](
            input_size, hidden_size, num_layers, batch_first=True, dropout=dropout,
            bidirectional=bidirectional,
        )  # fmt: skip
        self.head = nn.Linear(hidden_size * (2 if bidirectional else 1), output_size)
        _init_recurrent(self.rnn, init)
        if cell == "lstm":
            set_forget_bias(self.rnn, forget_bias)

    def forward(
        self, x: Tensor, record_states: bool = False, lengths: Tensor | None = None
    ) -> tuple[Tensor, Trace]:
        """Map inputs (B, T, I), or token ids (B, T), to outputs (B, T, O), and a trace from which
        `diagnostics.grad_norms` reads ||dL/dh_t|| after ``backward()`` when `record_states`.

        - engine (when gradients are on): the trace is the engine's `GradNormRecorder`.
        - otherwise, with ``record_states``: the stack is unrolled step by step through the same
          parameters and every h_t of every layer is kept with ``retain_grad()``, so each
          ``h_t.grad`` is the total derivative through the recurrence; the trace is those states.
        - otherwise the fused layer runs and the trace is empty.
        Bidirectional: the trace has two entries per layer (forward, then backward), the
        backward one in its processing order (its first entry has read the last real step).
        `lengths` (B,) matters only to bidirectional models (unidirectional ones are causal).
        """
        if self.embed is not None:
            x = self.embed(x)  # (B, T) -> (B, T, E)
        if self.engine and torch.is_grad_enabled():
            recorder = GradNormRecorder(self.track_log10) if record_states else None
            weights = [w for layer in range(self.rnn.num_layers)
                       for w in _layer_weights(self.rnn, layer)]  # fmt: skip
            seq = recurrent(
                self.cell, x, weights, num_layers=self.rnn.num_layers,
                hidden_size=self.rnn.hidden_size, dropout=self.rnn.dropout,
                training=self.training, recorder=recorder,
            )  # fmt: skip
            return self.head(seq), recorder if recorder is not None else []
        if self.bidirectional:
            return self._bidirectional(x, record_states, lengths)
        if not record_states:
            seq, _ = self.rnn(x)  # (B, T, H)
            return self.head(seq), []
        states: list[list[Tensor]] = []
        seq = x
        for layer in range(self.rnn.num_layers):
            if layer > 0:
                seq = F.dropout(seq, self.rnn.dropout, self.training)
            hs = _unroll_layer(self.cell, seq, _layer_weights(self.rnn, layer))
            for h in hs:
                h.retain_grad()
            states.append(hs)
            seq = torch.stack(hs, dim=1)  # (B, T, H)
        return self.head(seq), states

    def _bidirectional(
        self, x: Tensor, record_states: bool, lengths: Tensor | None
    ) -> tuple[Tensor, Trace]:
        steps, hidden = x.shape[1], self.rnn.hidden_size
        states: list[list[Tensor]] = []
        if not record_states:
            if lengths is None:
                seq, _ = self.rnn(x)  # (B, T, 2H)
            else:
                packed = nn.utils.rnn.pack_padded_sequence(
                    x, lengths.cpu(), batch_first=True, enforce_sorted=False
                )
                seq, _ = nn.utils.rnn.pad_packed_sequence(
                    self.rnn(packed)[0], batch_first=True, total_length=steps
                )
        else:
            seq = x
            for layer in range(self.rnn.num_layers):
                if layer > 0:
                    seq = F.dropout(seq, self.rnn.dropout, self.training)
                forward = _unroll_layer(self.cell, seq, _layer_weights(self.rnn, layer))
                backward = _unroll_layer(
                    self.cell, reverse_padded(seq, lengths),
                    _layer_weights(self.rnn, layer, "_reverse"),
                )  # fmt: skip
                for h in forward + backward:
                    h.retain_grad()
                states += [forward, backward]
                backward_seq = reverse_padded(torch.stack(backward, dim=1), lengths)
                seq = torch.cat([torch.stack(forward, dim=1), backward_seq], dim=-1)
        # forward state at each step, backward state after the whole sequence (at step 1)
        features = torch.cat([seq[..., :hidden], seq[:, :1, hidden:].expand(-1, steps, -1)], -1)
        return self.head(features), states


def reverse_padded(seq: Tensor, lengths: Tensor | None) -> Tensor:
    """Reverse each sequence of (B, T, ...) within its own length; padding stays at the end."""
    if lengths is None:
        return seq.flip(1)
    steps = seq.shape[1]
    t = torch.arange(steps, device=seq.device)[None, :]  # (1, T)
    real = lengths.to(seq.device)[:, None]  # (B, 1)
    index = torch.where(t < real, real - 1 - t, t)  # (B, T)
    return seq.gather(1, index.view(*index.shape, *[1] * (seq.dim() - 2)).expand_as(seq))


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def set_forget_bias(lstm: nn.LSTM, value: float) -> None:
    """Make the effective forget-gate bias exactly `value` in every layer.

    PyTorch adds two bias vectors (gate order i, f, g, o); the forget slice of `bias_ih` gets the
    value and that of `bias_hh` is zeroed, so the two do not add up to twice the value.
    """
    h = lstm.hidden_size
    suffixes = ("", "_reverse") if lstm.bidirectional else ("",)
    with torch.no_grad():
        for layer in range(lstm.num_layers):
            for suffix in suffixes:
                getattr(lstm, f"bias_ih_l{layer}{suffix}")[h : 2 * h].fill_(value)
                getattr(lstm, f"bias_hh_l{layer}{suffix}")[h : 2 * h].zero_()


def _init_recurrent(rnn: nn.RNNBase, init: str) -> None:
    if init == "default":
        return
    gates = rnn.weight_hh_l0.shape[0] // rnn.hidden_size
    with torch.no_grad():
        for name, param in rnn.named_parameters():
            if name.startswith("bias"):
                param.zero_()
            elif init == "orthogonal" and name.startswith("weight_hh"):
                for block in param.chunk(gates, dim=0):  # one square block per gate
                    nn.init.orthogonal_(block)
            else:
                for block in param.chunk(gates, dim=0):
                    nn.init.xavier_uniform_(block)


def _layer_weights(
    rnn: nn.RNNBase, layer: int, suffix: str = ""
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    return tuple(
        getattr(rnn, f"{kind}_l{layer}{suffix}")
        for kind in ("weight_ih", "weight_hh", "bias_ih", "bias_hh")
    )  # type: ignore[return-value]


def _unroll_layer(
    cell: str, seq: Tensor, weights: tuple[Tensor, Tensor, Tensor, Tensor]
) -> list[Tensor]:
    """One layer, step by step, with PyTorch's documented equations. Returns h_1..h_T."""
    w_ih, w_hh, b_ih, b_hh = weights
    batch, steps, _ = seq.shape
    hidden = w_hh.shape[1]
    x_proj = F.linear(seq, w_ih, b_ih)  # (B, T, G*H): the input path of every step at once
    h = seq.new_zeros(batch, hidden)
    c = seq.new_zeros(batch, hidden)
    hs = []
    for t in range(steps):
        h_proj = F.linear(h, w_hh, b_hh)  # (B, G*H)
        if cell == "rnn":
            h = torch.tanh(x_proj[:, t] + h_proj)
        elif cell == "lstm":
            i, f, g, o = (x_proj[:, t] + h_proj).chunk(4, dim=1)
            c = torch.sigmoid(f) * c + torch.sigmoid(i) * torch.tanh(g)
            h = torch.sigmoid(o) * torch.tanh(c)
        else:  # gru, gate order r, z, n
            x_r, x_z, x_n = x_proj[:, t].chunk(3, dim=1)
            h_r, h_z, h_n = h_proj.chunk(3, dim=1)
            r = torch.sigmoid(x_r + h_r)
            z = torch.sigmoid(x_z + h_z)
            n = torch.tanh(x_n + r * h_n)
            h = (1 - z) * n + z * h
        hs.append(h)
    return hs
