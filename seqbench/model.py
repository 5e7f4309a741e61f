"""Recurrent sequence models: a stack of one of seqbench's cells (:mod:`seqbench.cells`) with a
linear head on every step (or where the loss reads)."""

from __future__ import annotations

import functools
import math
import warnings
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from seqbench.cells import CELLS, INITS, Cell, get_cell
from seqbench.engine import GradNormRecorder, recurrent
from seqbench.engine.recorder import batch_means
from seqbench.engine.slices import in_slices

__all__ = [
    "CELLS",
    "ENGINES",
    "INITS",
    "ReferenceStack",
    "SequenceModel",
    "Trace",
    "count_parameters",
    "engine_choice",
    "reverse_padded",
    "set_forget_bias",
]

ENGINES = ("auto", "engine", "fused")


class UnrolledStates(list):
    """The unrolled path's trace: per layer (and direction) the states h_1..h_T with their grads
    retained, ``gate_means``: per entry the (n_gates, T, H) means of the cell's gates over
    the batch's real positions (float64, CPU; empty for a cell without gates), and
    ``directions``: 2 for a bidirectional model (entries forward, backward per layer), else 1."""

    def __init__(self, directions: int = 1) -> None:
        super().__init__()
        self.gate_means: list[Tensor] = []
        self.directions = directions


# What forward() returns beside the outputs: the engine's recorder, the unrolled hidden states
# (per layer, per step), or nothing.
Trace = GradNormRecorder | list[list[Tensor]]


def valid_mask(lengths: Tensor | None, steps: int) -> Tensor | None:
    """(T, B, 1) 1.0 at real positions, 0.0 at padding; None without lengths."""
    if lengths is None:
        return None
    t = torch.arange(steps, device=lengths.device)[:, None]
    return (t < lengths[None, :]).double()[..., None]


def engine_choice(
    cell: str, choice: str, device_type: str, bidirectional: bool
) -> tuple[bool, str | None]:
    """Whether a model runs on seqbench's BPTT engine, and a one-line notice when a cell without
    engine kernels falls back. ``choice`` is ``model.engine``: "engine" always, "auto" on the
    CPU for unidirectional models (the fused cuDNN layer is faster on CUDA), "fused" never."""
    wanted = choice == "engine" or (choice == "auto" and device_type == "cpu" and not bidirectional)
    spec = get_cell(cell)
    if wanted and spec.engine is None:
        path = "fused PyTorch layer" if spec.fused is not None else "unrolled reference path"
        return False, (
            f"cell {cell!r} has no engine kernels: training on the {path} instead "
            "(per-timestep norms from autograd, every diagnostics.every steps)"
        )
    return wanted, None


class ReferenceStack(nn.Module):
    """The parameters of a layer stack for a cell without a fused PyTorch layer, named as
    ``nn.LSTM``'s (``weight_ih_l0``, ..., ``_reverse``), exactly those the cell uses
    (``Cell.parameter_names``: a diagonal ``weight_hh`` is a vector, a cell without recurrent
    weights has none), initialised as PyTorch does (uniform in +-1/sqrt(hidden); a diagonal
    ``weight_hh`` uniform in [0, 1], as the IndRNN paper). It runs through the cell's reference
    equations."""

    def __init__(
        self,
        cell: Cell,
        input_size: int,
        hidden_size: int,
        num_layers: int = 1,
        batch_first: bool = True,
        dropout: float = 0.0,
        bidirectional: bool = False,
    ) -> None:
        super().__init__()
        self.cell = cell
        self.input_size, self.hidden_size, self.num_layers = input_size, hidden_size, num_layers
        self.dropout, self.bidirectional = dropout, bidirectional
        rows = cell.gates * hidden_size
        bound = 1.0 / math.sqrt(hidden_size)
        for layer in range(num_layers):
            width = input_size if layer == 0 else hidden_size * (2 if bidirectional else 1)
            for suffix in ("", "_reverse") if bidirectional else ("",):
                shapes = {"weight_ih": (rows, width), "bias_ih": (rows,), "bias_hh": (rows,),
                          "weight_hh": (rows, hidden_size) if cell.recurrence == "full"
                          else (rows,)}  # fmt: skip
                for kind in cell.parameter_names:
                    low = 0.0 if kind == "weight_hh" and cell.recurrence == "diagonal" else -bound
                    high = 1.0 if low == 0.0 else bound
                    param = nn.Parameter(torch.empty(shapes[kind]).uniform_(low, high))
                    self.register_parameter(f"{kind}_l{layer}{suffix}", param)


class SequenceModel(nn.Module):
    """A stacked recurrent layer (the cell's fused PyTorch layer, batch first), a linear head.

    Args:
        cell: a registered cell (:data:`seqbench.cells.CELLS`): "rnn" (tanh), "lstm", "gru".
        input_size: features per timestep.
        output_size: outputs per timestep (the head runs at every step, or at `read`'s).
        hidden_size: units per layer.
        num_layers: stacked layers.
        dropout: dropout on the outputs of every layer but the last.
        input_dropout: dropout on what the first layer reads, in training mode only: the token
            embeddings on token tasks (embedding dropout), the input features otherwise.
        output_dropout: dropout on the last layer's outputs, which the head reads, in training
            mode only. Both default to 0 (off: no random numbers are drawn).
        forget_bias: cells with a forget gate (LSTM): its initial bias.
        init: "default" (PyTorch's uniform), "orthogonal" (orthogonal recurrent blocks, Xavier
            input weights, zero biases), "xavier" (Xavier-uniform weights, zero biases) or
            "identity" (IRNN: identity recurrent blocks, Gaussian input weights of std 1e-3,
            zero biases).
        nonlinearity: one of the cell's ``nonlinearities``, None for its own (the first of
            them; the vanilla RNN: "tanh" or "relu"; a gated cell: "tanh" only).
        recurrent_gain: scale every gate block of weight_hh to this spectral radius after
            ``init`` (None: leave it); above 1 the gradient grows going back in time.
        recurrent_max: a diagonal cell (IndRNN): clip every recurrent weight to
            [-recurrent_max, recurrent_max] after each optimizer step (`constrain`); None: no
            clipping.
        vocab_size: token inputs: embed ids (B, T) in 0..vocab_size-1 first (id 0 is padding).
        embedding_dim: size of those embeddings.
        bidirectional: a second, backward recurrence per layer (for sequence classification and
            regression read at one step: sentiment, stocks). The head sees, at step t, the
            forward state at t and the backward direction's final state (after reading the whole
            sequence backwards); with `lengths`, each sequence is reversed within its own length.
        engine: train through seqbench's BPTT engine (`seqbench.engine`: hand-written backward,
            exact per-timestep gradient norms on every step at almost no cost) instead of the
            fused PyTorch layer. Same parameters and the same function either way. A cell
            without engine kernels falls back to the fused (or reference) path with a warning.
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
        input_dropout: float = 0.0,
        output_dropout: float = 0.0,
        forget_bias: float = 1.0,
        init: str = "default",
        nonlinearity: str | None = None,
        recurrent_gain: float | None = None,
        recurrent_max: float | None = None,
        vocab_size: int | None = None,
        embedding_dim: int = 64,
        bidirectional: bool = False,
        engine: bool = False,
        track_log10: bool = False,
    ) -> None:
        super().__init__()
        nonlinearity = nonlinearity or get_cell(cell).nonlinearities[0]
        spec = get_cell(cell).with_nonlinearity(nonlinearity)
        if init not in INITS:
            raise ValueError(f"unknown init {init!r}; choose one of {list(INITS)}")
        if bidirectional and engine:
            raise ValueError("the BPTT engine is unidirectional; use the fused path")
        if engine and spec.engine is None:
            warnings.warn(engine_choice(cell, "engine", "cpu", False)[1], stacklevel=2)
            engine = False
        if recurrent_max is not None and spec.recurrence != "diagonal":
            raise ValueError(f"cell {cell!r} has no per-unit recurrent weight to clip")
        self.cell, self.nonlinearity, self.recurrent_max = cell, nonlinearity, recurrent_max
        self.spec, self.engine, self.track_log10 = spec, engine, track_log10
        self.bidirectional = bidirectional
        self.input_dropout, self.output_dropout = input_dropout, output_dropout
        self.embed = None
        if vocab_size is not None:
            self.embed = nn.Embedding(vocab_size, embedding_dim, padding_idx=0)
            input_size = embedding_dim
        stack = spec.fused or (lambda *a, **kw: ReferenceStack(spec, *a, **kw))
        self.rnn = stack(
            input_size, hidden_size, num_layers, batch_first=True, dropout=dropout,
            bidirectional=bidirectional,
        )  # fmt: skip
        self.head = nn.Linear(hidden_size * (2 if bidirectional else 1), output_size)
        spec.initialise(self.rnn, init, forget_bias, recurrent_gain)

    def forward(
        self,
        x: Tensor,
        record_states: bool = False,
        lengths: Tensor | None = None,
        state: Any = None,
        return_state: bool = False,
        read: Tensor | None = None,
    ) -> tuple[Tensor, Trace] | tuple[Tensor, Trace, Any]:
        """Map inputs (B, T, I), or token ids (B, T), to outputs (B, T, O), and a trace from which
        `diagnostics.grad_norms` reads ||dL/dh_t|| after ``backward()`` when `record_states`.

        - engine (with gradients, or without ``record_states``): the trace is its recorder.
        - otherwise, with ``record_states``: the stack is unrolled step by step through the same
          parameters and every h_t of every layer is kept with ``retain_grad()``, so each
          ``h_t.grad`` is the total derivative through the recurrence; the trace is those states.
        - otherwise the fused layer runs and the trace is empty (a cell without a fused layer
          runs unrolled).
        Bidirectional: the trace has two entries per layer (forward, then backward), the
        backward one in its processing order (its first entry has read the last real step).
        `lengths` (B,) matters only to bidirectional models (unidirectional ones are causal).
        `state`: the initial state, as the fused layer takes it: ``h`` (L, B, H), or ``(h, c)``
        for a cell with a cell state; None: zero. `return_state`: also return the final state so
        (a third value; stateful truncated BPTT carries it, detached, to the next window). The
        same on every path; unidirectional models, without `lengths`. `read` (B,): the one
        position each sequence's loss reads (`Task.reads`); the head runs there only, and the
        output is NaN at every other position.
        """
        if (state is not None or return_state) and (self.bidirectional or lengths is not None):
            raise ValueError("an initial or final state needs a unidirectional model, no lengths")
        if self.embed is not None:
            x = self.embed(x)  # (B, T) -> (B, T, E)
        x = self._dropout(x, self.input_dropout)
        if self.bidirectional:
            unroll = record_states or self.spec.fused is None
            return self._bidirectional(x, unroll, lengths, record_states, read)
        seq, trace, final = self._stack(x, record_states, lengths, state, return_state)
        output = self._readout(seq, read)
        return (output, trace, final) if return_state else (output, trace)

    def run(self, x: Tensor, state: Any = None) -> tuple[Tensor, Any]:
        """The stack alone over x (B, T, I) from `state` (None: zero): its last layer's outputs
        (B, T, H) and its final state (as `forward`'s), to continue from (a generated text, one
        character at a time). Unidirectional models only."""
        seq, _, final = self._stack(x, False, None, state, want_state=True)
        return seq, final

    def _stack(
        self, x: Tensor, record_states: bool, lengths: Tensor | None, state: Any, want_state: bool
    ) -> tuple[Tensor, Trace, Any]:
        """The unidirectional stack over x (B, T, I): its last layer's outputs (B, T, H), the
        trace (see `forward`) and the final state (None unless `want_state`)."""
        h0, c0 = state if isinstance(state, tuple) else (state, None)
        # without gradients too (validation): 0.35-0.55x the fused layer's time (performance.md)
        if self.engine and (torch.is_grad_enabled() or not record_states):
            recorder = None
            if record_states:  # the gate means over real positions come with the norms
                recorder = GradNormRecorder(self.track_log10, track_gates=True)
                recorder.valid = valid_mask(lengths, x.shape[1])
            weights = [w for layer in range(self.rnn.num_layers)
                       for w in _layer_weights(self.rnn, layer) if w is not None]  # fmt: skip
            run = functools.partial(
                recurrent, self.spec, weights=weights, num_layers=self.rnn.num_layers,
                hidden_size=self.rnn.hidden_size, dropout=self.rnn.dropout,
                training=self.training, recorder=recorder, return_state=want_state,
            )  # fmt: skip
            seq = in_slices(run, x, h0, c0, want_state)  # one call when gradients are on
            seq, final = seq if want_state else (seq, None)
            return seq, recorder if recorder is not None else [], final
        if not record_states and self.spec.fused is not None:
            seq, final = self.rnn(x, state)  # (B, T, H)
            return seq, [], final
        states = UnrolledStates()
        seq, finals = x, []  # finals: h_T, c_T of each layer
        for layer in range(self.rnn.num_layers):
            if layer > 0:
                seq = F.dropout(seq, self.rnn.dropout, self.training)
            gates = [] if record_states and self.spec.gate_names else None
            start = None if h0 is None else (h0[layer], None if c0 is None else c0[layer])
            hs = self.spec.unroll(seq, _layer_weights(self.rnn, layer), gates, start, finals)
            if record_states:
                for h in hs:
                    h.retain_grad()
                if gates:
                    valid = valid_mask(lengths, len(gates))
                    states.gate_means.append(batch_means(torch.stack(gates), valid))
            states.append(hs)
            seq = torch.stack(hs, dim=1)  # (B, T, H)
        h_n = torch.stack(finals[0::2])
        final = (h_n, torch.stack(finals[1::2])) if self.spec.cell_state else h_n
        return seq, states if record_states else [], final

    @torch.no_grad()
    def constrain(self) -> None:
        """After an optimizer step: clip a diagonal cell's recurrent weights to
        [-recurrent_max, recurrent_max] (the IndRNN paper's constraint); nothing otherwise."""
        if self.recurrent_max is None:
            return
        for name, param in self.rnn.named_parameters():
            if name.startswith("weight_hh"):
                param.clamp_(-self.recurrent_max, self.recurrent_max)

    def _dropout(self, x: Tensor, p: float) -> Tensor:
        # p = 0 skips the call, so runs without dropout draw exactly the same random numbers.
        # The mask follows memory order, and the fused and engine outputs are (T, B, H) in memory:
        # contiguous() makes every path (fused, engine, unrolled) draw the same mask for a seed.
        return F.dropout(x.contiguous(), p, self.training) if p > 0 else x

    def _readout(self, seq: Tensor, read: Tensor | None = None) -> Tensor:
        """The head on the last layer's outputs (B, T, H), after `output_dropout` (over all of
        them: the same mask), at every position or at `read`'s (see `forward`)."""
        features = self._dropout(seq, self.output_dropout)
        if read is None:
            return self.head(features)
        rows = torch.arange(len(features), device=features.device)
        out = features.new_full((*features.shape[:2], self.head.out_features), math.nan)
        return out.index_put((rows, read), self.head(features[rows, read]))

    def _bidirectional(
        self, x: Tensor, unroll: bool, lengths: Tensor | None, record: bool, read: Tensor | None
    ) -> tuple[Tensor, Trace]:
        steps, hidden = x.shape[1], self.rnn.hidden_size
        states = UnrolledStates(directions=2)
        if not unroll:
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
                gates = ([], []) if record and self.spec.gate_names else (None, None)
                forward = self.spec.unroll(seq, _layer_weights(self.rnn, layer), gates[0])
                backward = self.spec.unroll(
                    reverse_padded(seq, lengths), _layer_weights(self.rnn, layer, "_reverse"),
                    gates[1],
                )  # fmt: skip
                if record:
                    for h in forward + backward:
                        h.retain_grad()
                    states += [forward, backward]
                    for direction in gates if gates[0] else ():  # both in processing order
                        valid = valid_mask(lengths, steps)
                        states.gate_means.append(batch_means(torch.stack(direction), valid))
                backward_seq = reverse_padded(torch.stack(backward, dim=1), lengths)
                seq = torch.cat([torch.stack(forward, dim=1), backward_seq], dim=-1)
        # forward state at each step, backward state after the whole sequence (at step 1)
        features = torch.cat([seq[..., :hidden], seq[:, :1, hidden:].expand(-1, steps, -1)], -1)
        return self._readout(features, read), states


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


def set_forget_bias(rnn: nn.Module, value: float) -> None:
    """Make the effective forget-gate bias exactly `value` in every layer and direction of a
    stack whose cell has a forget gate (see :meth:`seqbench.cells.Cell.set_forget_bias`)."""
    _cell_of(rnn).set_forget_bias(rnn, value)


def _cell_of(rnn: nn.Module) -> Cell:
    if isinstance(rnn, ReferenceStack):
        return rnn.cell
    for cell in CELLS.values():
        for variant in map(cell.with_nonlinearity, cell.nonlinearities):
            if variant.fused is not None and type(rnn) is variant.fused:
                return variant
    raise ValueError(f"{type(rnn).__name__} is not the layer stack of a registered cell")


def _layer_weights(
    rnn: nn.Module, layer: int, suffix: str = ""
) -> tuple[Tensor, Tensor | None, Tensor, Tensor | None]:
    """(weight_ih, weight_hh, bias_ih, bias_hh) of a layer, None for those its cell lacks."""
    return tuple(
        getattr(rnn, f"{kind}_l{layer}{suffix}", None)
        for kind in ("weight_ih", "weight_hh", "bias_ih", "bias_hh")
    )  # type: ignore[return-value]
