"""What seqbench knows about a recurrent cell, in one description per cell.

A :class:`Cell` holds the cell's name and gate count, its reference step equations (the
unrolled diagnostic path of :mod:`seqbench.model` and the tests), its initialisation (per gate
block; the LSTM's forget-gate bias), the fused PyTorch layer when there is one, and its pieces
of the BPTT engine (:class:`EngineKernels`; ``None`` for a cell the engine cannot run, which
then trains on the fused or the reference path).

The weights follow PyTorch's layout, gate blocks stacked along the rows: per layer
``weight_ih (G*H, I)`` and ``bias_ih (G*H)``, and by the cell's kind of recurrence
(``Cell.recurrence``): a full matrix ``weight_hh (G*H, H)`` with ``bias_hh (G*H)`` (RNN, LSTM,
GRU: PyTorch's layers), a diagonal ``weight_hh (G*H)``, one weight per unit and gate (IndRNN),
or none (minGRU, minLSTM: gates that read only the input).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import torch
import torch.nn.functional as F
from torch import Tensor, nn

INITS = ("default", "orthogonal", "xavier", "identity")

#: Cell.recurrence -> the parameters of one layer, in the order the engine takes them.
PARAMETERS = {
    "full": ("weight_ih", "weight_hh", "bias_ih", "bias_hh"),
    "diagonal": ("weight_ih", "weight_hh", "bias_ih"),
    "none": ("weight_ih", "bias_ih"),
}

#: std of the Gaussian input weights of ``init="identity"`` (IRNN: Le, Jaitly & Hinton, 2015).
IDENTITY_INPUT_STD = 1e-3


class LayerForward(Protocol):
    """What the engine hands a cell's forward kernel (seqbench.engine.forward.LayerForward):
    one layer over ``steps`` x ``batch`` with ``hidden`` units; the kernel fills ``h_all``
    (T+1, B, H; ``h_all[0]`` is the initial state). ``lens``: pointer to the int64 lengths or 0;
    ``valid``: (T, B, 1) 0/1 mask or None; ``native``: whether to use the C++ kernel;
    ``from_h0``: ``h_all[0]`` is a given state, so step 0 makes the recurrent product too (from
    zero it is skipped); ``c0``: the initial cell state (B, H) of a cell that carries one, or
    None (zero)."""

    steps: int
    batch: int
    hidden: int
    dtype: torch.dtype
    device: torch.device
    native: bool
    from_h0: bool
    c0: Tensor | None
    lens: int
    valid: Tensor | None
    h_all: Tensor
    w_ih: Tensor
    w_hh: Tensor
    b_ih: Tensor
    b_hh: Tensor
    w_hh_t: Tensor

    def empty(self, shape: tuple[int, ...]) -> Tensor: ...
    def projector(self, proj: Tensor, bias: Tensor) -> Callable[[int], None]: ...
    def params(self, *values: int) -> Any: ...
    def run_native(
        self,
        P: Any,
        proj: Tensor,
        bias: Tensor,
        rec: Tensor,
        rec_stride: int,
        rec_bias: Tensor | None = None,
        recurrent: Callable[[int], None] | None = None,
    ) -> None: ...


class BackwardState(Protocol):
    """What a cell's pure-torch backward step reads and updates
    (seqbench.engine.backward_torch.BackwardState)."""

    rec: Tensor
    cc: Tensor | None
    saved: tuple[Tensor, ...]
    h_all: Tensor
    w_hh: Tensor
    hidden: int


# step(x_proj_t, h_proj, h, c) -> (h, c): one step from the input projection W_ih x_t + b_ih
# (B, G*H), the recurrent projection (B, G*H: W_hh h_{t-1} + b_hh for a full recurrence,
# weight_hh * h_{t-1} per gate block for a diagonal one, None for none) and the previous state;
# c is the cell state of cells that carry one (LSTM) and passes through unchanged otherwise.
Step = Callable[[Tensor, Tensor, Tensor, Tensor], tuple[Tensor, Tensor]]


def same_split(dgates: Tensor, w_ih: Tensor, hidden: int) -> tuple[Tensor, Tensor, Tensor]:
    """dG columns feeding the input and the recurrent weights, and w_ih's rows in dG's order."""
    return dgates, dgates, w_ih


def same_order(
    dw_ih: Tensor, colsum: Tensor, hidden: int, dtype: torch.dtype
) -> tuple[Tensor, Tensor, Tensor]:
    """(dw_ih, db_ih, db_hh) in PyTorch's gate order from the engine's dG column order."""
    db = colsum.to(dtype)
    return dw_ih, db, db


@dataclass(frozen=True)
class EngineKernels:
    """A cell's pieces of :mod:`seqbench.engine` (see ``seqbench/engine/__init__.py``).

    Attributes:
        forward: runs one layer forward (native kernel or pure torch, as ``layer.native``
            says), fills ``layer.h_all`` and returns the tensors its backward needs.
        backward_step: the pure-torch backward equations of one step: from ``dh`` (B, H) and
            the carry scales ``b`` ((B, 1) float64, one per sequence), write dG into ``d``
            (B, dgate_blocks*H) and update ``state.rec`` (and ``state.cc``) for step t-1.
        dgate_blocks: columns of dG per hidden unit (``W`` of the C++ kernel).
        native_saved: the saved tensors as the native kernel's (ACT, AUX1, AUX2) slots (a
            diagonal cell leaves AUX2 to the engine, which puts its weight_hh there).
        native_source: the C++ kernel file (``<cell>.cpp`` next to the module), or None for a
            cell that runs on the pure-torch path only.
        carry_in_kernel: the backward kernel writes its own part of the recurrent carry into
            ``rec`` (GRU: dh_t * z_t), so the recurrent product is added to it.
        split_dgates: (dG, w_ih, H) -> (dG columns for w_ih, dG columns for w_hh, w_ih's rows
            in the order of the first).
        pytorch_grads: (dw_ih, dG column sums (float64), H, dtype) -> (dw_ih, db_ih, db_hh) in
            PyTorch's gate order.
        saved_elements: (T, B, H) -> elements of the buffers ``forward`` keeps beside the
            hidden states (for the memory table of ``scripts/bench.py``).
        gate_blocks: the H-wide blocks of the forward's first saved tensor (T, B, k*H) that hold
            the activations of the cell's ``gate_names``, in that order (recorded on
            diagnostic steps without another pass).
        diag_blocks: a diagonal recurrence's gate blocks (``weight_hh`` is diag_blocks*H): the
            native kernel sums their gradient per step (``DIAG_W`` of its ``Bwd`` struct), and
            ``diagonal_grad(state, t, dG_t) -> (B, diag_blocks*H)`` gives the pure-torch path
            each sequence's contribution at step t.
        cell_states: a cell that carries a cell state (``Cell.cell_state``): the forward's
            saved tensors -> its c_0..c_T (T+1, B, H) (``c_0`` is the given initial cell state),
            from which the engine reads the final cell state.

    A cell without a full recurrent matrix writes the whole recurrent carry in its backward
    kernel (``carry_in_kernel``): the engine makes no product with ``weight_hh``.
    """

    forward: Callable[[LayerForward], tuple[Tensor, ...]]
    backward_step: Callable[[BackwardState, int, Tensor, Tensor, Tensor], None]
    dgate_blocks: int
    native_saved: Callable[[tuple[Tensor, ...], Tensor], tuple[Tensor | None, ...]]
    native_source: Path | None = None
    carry_in_kernel: bool = False
    split_dgates: Callable[[Tensor, Tensor, int], tuple[Tensor, Tensor, Tensor]] = same_split
    pytorch_grads: Callable[..., tuple[Tensor, Tensor, Tensor]] = same_order
    saved_elements: Callable[[int, int, int], int] = lambda steps, batch, hidden: 0
    gate_blocks: tuple[int, ...] = ()
    diag_blocks: int = 0
    diagonal_grad: Callable[[BackwardState, int, Tensor], Tensor] | None = None
    cell_states: Callable[[tuple[Tensor, ...]], Tensor] | None = None


@dataclass(frozen=True)
class Cell:
    """One recurrent cell, described once.

    Attributes:
        name: the config's ``model.cell``.
        gates: gate blocks in the weights (G: weight_ih is (G*H, I)).
        step: the reference step equations (see ``Step``).
        cell_state: carries a cell state c beside h (LSTM).
        forget_gate: index of the forget-gate block, for ``model.forget_bias``; None if none.
        fused: the fused PyTorch layer (``nn.LSTM``), or None (then the reference path runs).
        fused_cell: PyTorch's single-step module (``nn.LSTMCell``), an independent reference
            for the tests.
        quantizable: ``torch.ao`` dynamic int8 quantization supports ``fused``.
        engine: the engine's kernels, or None (then the model falls back with a notice).
        nonlinearities: the values of ``model.nonlinearity`` the cell takes, its own first
            (a gated cell's tanh is fixed: it has only that one).
        variant: ``nonlinearity -> Cell``, the cell computing with another nonlinearity (same
            name, weights and kernel files); None for a cell with one.
        gate_names: the gates whose mean activation is recorded on diagnostic steps (LSTM
            input, forget, output); empty for a cell without gates.
        memory_gate: the gate that keeps the state (LSTM forget, GRU update): its heat map and
            saturation are reported.
        gate_activations: ``(x_proj, h_proj) -> (B, len(gate_names), H)``, the gates of one
            step from the same projections as ``step`` (the reference path).
        recurrence: how h_{t-1} enters a step: "full" (a matrix ``weight_hh`` and ``bias_hh``),
            "diagonal" (a vector ``weight_hh``, one weight per unit and gate block) or "none"
            (the gates read only the input); the parameters (``parameter_names``),
            initialisation, ``recurrent_gain`` and the engine follow it.
    """

    name: str
    gates: int
    step: Step
    cell_state: bool = False
    forget_gate: int | None = None
    fused: type[nn.RNNBase] | None = None
    fused_cell: type[nn.RNNCellBase] | None = None
    quantizable: bool = False
    engine: EngineKernels | None = None
    nonlinearities: tuple[str, ...] = ("tanh",)
    variant: Callable[[str], Cell] | None = None
    gate_names: tuple[str, ...] = ()
    memory_gate: str | None = None
    gate_activations: Callable[[Tensor, Tensor], Tensor] | None = None
    recurrence: str = "full"

    @property
    def parameter_names(self) -> tuple[str, ...]:
        """One layer's parameters, in the order the engine takes them (see PARAMETERS)."""
        return PARAMETERS[self.recurrence]

    def recurrent_projection(self, h: Tensor, w_hh: Tensor | None, b_hh: Tensor | None):
        """What h_{t-1} contributes to the gates: W_hh h + b_hh (full), weight_hh * h in every
        gate block (diagonal), or None (none)."""
        if self.recurrence == "full":
            return F.linear(h, w_hh, b_hh)
        if self.recurrence == "diagonal":
            return h.repeat(1, self.gates) * w_hh
        return None

    def with_nonlinearity(self, nonlinearity: str) -> Cell:
        """This cell computing with ``nonlinearity`` (one of ``nonlinearities``)."""
        if nonlinearity not in self.nonlinearities:
            raise ValueError(
                f"cell {self.name!r} takes nonlinearity {' or '.join(self.nonlinearities)}, "
                f"not {nonlinearity!r}"
            )
        if nonlinearity == self.nonlinearities[0] or self.variant is None:
            return self
        return self.variant(nonlinearity)

    def unroll(
        self,
        seq: Tensor,
        weights: tuple[Tensor, Tensor, Tensor, Tensor],
        gates: list[Tensor] | None = None,
        state: tuple[Tensor, Tensor | None] | None = None,
        final: list[Tensor] | None = None,
    ) -> list[Tensor]:
        """One layer over seq (B, T, I), step by step, from ``state`` = (h_0, c_0) (None: zero;
        c_0 None: zero; c is the cell state of a cell that carries one). Returns h_1..h_T; with
        ``gates`` (a list), also appends each step's gate activations (B, n, H), detached; with
        ``final`` (a list), appends the final h_T and c_T."""
        w_ih, w_hh, b_ih, b_hh = weights
        batch, steps, _ = seq.shape
        hidden = w_ih.shape[0] // self.gates
        x_proj = F.linear(seq, w_ih, b_ih)  # (B, T, G*H): the input path of every step at once
        h, c = state if state is not None else (None, None)
        h = seq.new_zeros(batch, hidden) if h is None else h
        c = seq.new_zeros(batch, hidden) if c is None else c
        hs = []
        for t in range(steps):
            h_proj = self.recurrent_projection(h, w_hh, b_hh)
            if gates is not None and self.gate_activations is not None:
                gates.append(self.gate_activations(x_proj[:, t], h_proj).detach())
            h, c = self.step(x_proj[:, t], h_proj, h, c)
            hs.append(h)
        if final is not None:
            final += [h, c]
        return hs

    def initialise(
        self, rnn: nn.Module, init: str, forget_bias: float, recurrent_gain: float | None = None
    ) -> None:
        """Apply ``init`` to a layer stack of this cell, then the forget-gate bias if any, then
        the recurrent gain.

        "default" keeps the stack's own initialisation; "orthogonal": an orthogonal square
        block per gate of weight_hh, Xavier-uniform blocks of weight_ih, zero biases;
        "xavier": Xavier-uniform blocks everywhere, zero biases; "identity" (IRNN): an identity
        block per gate of weight_hh, Gaussian weight_ih (std ``IDENTITY_INPUT_STD``), zero
        biases. A diagonal weight_hh is a diagonal matrix: orthogonal and identity make it all
        ones, xavier uniform in [0, 1]. ``recurrent_gain`` g (None: leave as is) scales every
        gate block of every weight_hh so that its spectral radius is g (a diagonal block: its
        largest |weight|): with orthogonal or identity blocks every singular value becomes g,
        so ||dh_t/dh_{t-1}|| of a linear(ised) step is g. A cell without a recurrent weight
        refuses a gain.
        """
        if init not in INITS:
            raise ValueError(f"unknown init {init!r}; choose one of {list(INITS)}")
        if init != "default":
            with torch.no_grad():
                for name, param in rnn.named_parameters():
                    blocks = param.chunk(self.gates, dim=0)  # one square block per gate
                    if name.startswith("bias"):
                        param.zero_()
                    elif name.startswith("weight_hh") and param.dim() == 1 and init == "xavier":
                        param.uniform_(0.0, 1.0)  # a diagonal weight: in [0, 1]
                    elif name.startswith("weight_hh") and param.dim() == 1:
                        param.fill_(1.0)  # orthogonal and identity: the diagonal of ones
                    elif init == "orthogonal" and name.startswith("weight_hh"):
                        for block in blocks:
                            nn.init.orthogonal_(block)
                    elif init == "identity" and name.startswith("weight_hh"):
                        for block in blocks:
                            block.copy_(torch.eye(*block.shape))
                    elif init == "identity":
                        param.normal_(0.0, IDENTITY_INPUT_STD)
                    else:
                        for block in blocks:
                            nn.init.xavier_uniform_(block)
        if self.forget_gate is not None:
            self.set_forget_bias(rnn, forget_bias)
        if recurrent_gain is not None:
            self.set_recurrent_gain(rnn, recurrent_gain)

    def set_recurrent_gain(self, rnn: nn.Module, gain: float) -> None:
        """Scale every gate block of every ``weight_hh`` to spectral radius ``gain``."""
        if gain <= 0:
            raise ValueError(f"recurrent gain must be > 0, got {gain}")
        if self.recurrence == "none":
            raise ValueError(
                f"cell {self.name!r} has no recurrent weight (its gates read only the input): "
                "a recurrent gain cannot apply; leave model.recurrent_gain null"
            )
        with torch.no_grad():
            for name, param in rnn.named_parameters():
                if not name.startswith("weight_hh"):
                    continue
                for block in param.chunk(self.gates, dim=0):
                    if block.dim() == 1:  # a diagonal matrix: its eigenvalues are its entries
                        radius = block.double().abs().max().item()
                    else:
                        radius = torch.linalg.eigvals(block.double()).abs().max().item()
                    if radius == 0.0:
                        raise ValueError(f"{name} has a zero block: no gain can scale it")
                    block.mul_(gain / radius)

    def set_forget_bias(self, rnn: Any, value: float) -> None:
        """Make the effective forget-gate bias exactly ``value`` in every layer and direction.

        PyTorch adds two bias vectors; the forget slice of ``bias_ih`` gets the value and that
        of ``bias_hh`` is zeroed, so the two do not add up to twice the value.
        """
        if self.forget_gate is None:
            raise ValueError(f"cell {self.name!r} has no forget gate")
        h = rnn.hidden_size
        rows = slice(self.forget_gate * h, (self.forget_gate + 1) * h)
        suffixes = ("", "_reverse") if rnn.bidirectional else ("",)
        with torch.no_grad():
            for layer in range(rnn.num_layers):
                for suffix in suffixes:
                    getattr(rnn, f"bias_ih_l{layer}{suffix}")[rows].fill_(value)
                    if (bias_hh := getattr(rnn, f"bias_hh_l{layer}{suffix}", None)) is not None:
                        bias_hh[rows].zero_()


def kernel_file(module_file: str) -> Path | None:
    """The C++ kernel file next to a cell module (``lstm.py`` -> ``lstm.cpp``), if shipped."""
    path = Path(module_file).with_suffix(".cpp")
    return path if path.is_file() else None
