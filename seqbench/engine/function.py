"""The engine's autograd function: :func:`recurrent` runs a stacked recurrent network forward
and its backward is the hand-written BPTT (``forward.py``, ``backward_native.py``,
``backward_torch.py``), delivering the per-timestep norms to a :class:`GradNormRecorder`."""

from __future__ import annotations

import torch

from seqbench.cells import CELLS, Cell
from seqbench.engine.backward_native import layer_backward_native
from seqbench.engine.backward_torch import layer_backward_torch
from seqbench.engine.buffers import cache
from seqbench.engine.forward import layer_forward
from seqbench.engine.native import use_native
from seqbench.engine.recorder import GradNormRecorder
from seqbench.engine.states import (
    NO_FINAL,
    FinalGrads,
    add_at_last_step,
    check_state,
    final_steps,
)

#: The refusal of a double backward (``create_graph=True``) through the engine.
DOUBLE_BACKWARD = (
    "seqbench.engine: double backward is not supported. This backward runs with "
    "create_graph=True (a gradient penalty, a Hessian-vector product, ...), but the engine's "
    "hand-written BPTT returns gradients that carry no graph, so every term built from them "
    "would be silently dropped. Use model.engine=fused (PyTorch's own layers, which support "
    "double backward) for such a loss, or take the gradient with create_graph=False."
)


def layer_weights(cell: Cell, weights, num_layers: int) -> list[tuple]:
    """Per layer (w_ih, w_hh, b_ih, b_hh) from the flat list of the cell's parameters
    (``Cell.parameter_names`` per layer), None for those its recurrence lacks."""
    names, n = cell.parameter_names, len(cell.parameter_names)
    kinds = ("weight_ih", "weight_hh", "bias_ih", "bias_hh")
    layers = []
    for layer in range(num_layers):
        given = dict(zip(names, weights[n * layer : n * layer + n], strict=True))
        layers.append(tuple(given.get(kind) for kind in kinds))
    return layers


def engine_cells() -> list[str]:
    """Names of the registered cells the engine can run."""
    return [name for name, cell in CELLS.items() if cell.engine is not None]


def dropout_masks(
    num_layers: int,
    seq_len: int,
    batch: int,
    hidden_size: int,
    p: float,
    *,
    dtype: torch.dtype = torch.float32,
    device: torch.device | str = "cpu",
) -> list[torch.Tensor]:
    """The inter-layer dropout masks :func:`recurrent` draws when ``training`` and ``p > 0``.

    Returns ``num_layers - 1`` tensors of shape ``(T, B, H)`` (time-major), with values 0 or
    ``1/(1-p)`` (inverted dropout); mask ``l`` multiplies layer ``l``'s output sequence before
    it enters layer ``l+1``. Masks are drawn in layer order with ``torch.bernoulli_`` from the
    global RNG of ``device``, and :func:`recurrent` draws nothing else, so re-seeding and calling
    this function reproduces the masks of a ``recurrent`` call exactly.
    """
    masks = []
    for _ in range(num_layers - 1):
        m = torch.empty(seq_len, batch, hidden_size, dtype=dtype, device=device)
        if p >= 1.0:
            m.zero_()
        else:
            m.bernoulli_(1.0 - p).mul_(1.0 / (1.0 - p))
        masks.append(m)
    return masks


class _Recurrent(torch.autograd.Function):
    """Arguments as :func:`recurrent`'s, with the cell's description in place of its name."""

    @staticmethod
    def forward(ctx, cell, num_layers, hidden_size, dropout, training, lengths, recorder,
                want_state, x, h0, c0, *weights):  # fmt: skip
        ctx.set_materialize_grads(False)  # an unused output (the outputs or a final state): None
        B, T, _ = x.shape
        dt, dev = x.dtype, x.device
        nat = use_native(x, cell)
        valid = lens_cpu = None
        if lengths is not None:
            lens_cpu = lengths.to(device="cpu", dtype=torch.int64).clamp(0, T).contiguous()
            steps = torch.arange(T, device=dev)[:, None]
            valid_b = steps < lens_cpu.to(dev)[None, :]  # (T, B) bool
            valid = valid_b.to(dt)[..., None]  # (T, B, 1)
        inp = cache.empty((T, B, x.shape[2]), dt, dev).copy_(x.transpose(0, 1))
        if valid is not None:
            inp.masked_fill_(~valid_b[..., None], 0.0)
        masks = []
        if training and dropout > 0 and num_layers > 1:
            masks = dropout_masks(num_layers, T, B, hidden_size, dropout, dtype=dt, device=dev)
        inputs, h_alls, saved_all = [], [], []
        for layer, layer_w in enumerate(layer_weights(cell, weights, num_layers)):
            start = (None if h0 is None else h0[layer], None if c0 is None else c0[layer])
            h_all, saved = layer_forward(cell, inp, layer_w, lens_cpu, valid, nat, *start)
            if recorder is not None:  # gate means on diagnostic steps, from what backward keeps
                recorder._record_forward(layer, cell, saved, valid, hidden_size)
            inputs.append(inp)
            h_alls.append(h_all)
            saved_all.append(saved)
            inp = h_all[1:]
            if masks and layer < num_layers - 1:
                inp = torch.mul(inp, masks[layer], out=cache.empty(inp.shape, dt, dev))
        ctx.meta = (cell, num_layers, len(saved_all[0]), recorder, nat, h0 is not None)
        flat_saved = [t for s in saved_all for t in s]
        ctx.save_for_backward(*weights, *inputs, *h_alls, *flat_saved, *masks)
        last = final_steps(lens_cpu, T, B)  # where each sequence's final state is
        ctx.lens = (lens_cpu, valid, last)
        ctx.has_masks = bool(masks)
        out = h_alls[-1][1:].transpose(0, 1)
        if not want_state:
            return out
        at = (last.to(dev), torch.arange(B, device=dev))
        h_n = torch.stack([h_all[at] for h_all in h_alls])  # (L, B, H)
        if not cell.cell_state:
            return out, h_n
        c_n = torch.stack([cell.engine.cell_states(saved)[at] for saved in saved_all])
        return out, h_n, c_n

    @staticmethod
    def backward(ctx, grad_out, grad_h_n=None, grad_c_n=None):
        if torch.is_grad_enabled():  # autograd runs a backward in grad mode iff create_graph
            raise RuntimeError(DOUBLE_BACKWARD)
        cell, L, nsaved, recorder, nat, from_h0 = ctx.meta
        tensors = ctx.saved_tensors
        nw = len(cell.parameter_names) * L
        weights = layer_weights(cell, tensors[:nw], L)
        inputs = tensors[nw : nw + L]
        h_alls = tensors[nw + L : nw + 2 * L]
        rest = tensors[nw + 2 * L :]
        saved_all = [rest[i * nsaved : (i + 1) * nsaved] for i in range(L)]
        masks = rest[L * nsaved :]
        lens_cpu, valid, last = ctx.lens
        need_x = ctx.needs_input_grad[8]
        need_h0 = ctx.needs_input_grad[9] or ctx.needs_input_grad[10]
        need_w = any(ctx.needs_input_grad[11:])
        if grad_out is None:  # only the final state reaches the loss
            B, T, H = inputs[0].shape[1], inputs[0].shape[0], h_alls[0].shape[2]
            grad_out = h_alls[0].new_zeros(B, T, H)
        if grad_out.stride(-1) != 1:
            grad_out = grad_out.contiguous()
        stack = _Stack(cell, nat, weights, inputs, h_alls, saved_all, masks, lens_cpu, valid,
                       from_h0)  # fmt: skip
        per_row = recorder is not None and recorder.per_row
        final = FinalGrads(grad_h_n, grad_c_n, last, need_h0)
        out = stack.backward(grad_out, need_w, need_x, recorder is not None, per_row, final)
        if recorder is not None:
            norms_all = torch.stack(out.norms[::-1]).to("cpu", torch.float64)
            # below float64's smallest normal number the product sqrt(sum) * 2**e would be an
            # imprecise subnormal: report 0 there (log10_norms stays exact)
            norms_all.masked_fill_(norms_all < torch.finfo(torch.float64).tiny, 0.0)
            logs = torch.stack(out.logs[::-1]).to("cpu", torch.float64)
            rows = torch.stack(out.row_logs[::-1]) if per_row else None
            recorder._record(norms_all, logs, rows)
            if recorder.probe is not None:
                recorder._record_probe(stack.probe(grad_out, *recorder.probe))
        grads = out.grads
        for k in range(nw):
            if not ctx.needs_input_grad[11 + k]:
                grads[k] = None
        d_h0 = d_c0 = None
        if need_h0:
            d_h0 = torch.stack(out.h0_grads[::-1])  # (L, B, H)
            if grad_h_n is not None:  # a sequence of length 0: its final state is h_0
                empty = (last == 0).to(d_h0.device)
                d_h0 = d_h0 + torch.where(empty[None, :, None], grad_h_n, 0.0)
            if cell.cell_state:  # dL/dc_n reached c_0 through the carry
                d_c0 = torch.stack(out.c0_grads[::-1])
        return (None,) * 8 + (out.x_grad, d_h0, d_c0, *grads)


class _StackGrads:
    """What one backward through the stack gives: per layer (top first) the norms, their log10
    and each sequence's log10 norms (``per_row``), the weight gradients (flat, in the order of
    the cell's parameters), dL/dx, and dL/dh_0 and dL/dc_0 when asked for."""

    def __init__(self, layers: int, per_layer: int) -> None:
        self.grads: list[torch.Tensor | None] = [None] * (per_layer * layers)
        self.norms: list[torch.Tensor] = []
        self.logs: list[torch.Tensor] = []
        self.row_logs: list[torch.Tensor] = []
        self.x_grad: torch.Tensor | None = None
        self.h0_grads: list[torch.Tensor] = []
        self.c0_grads: list[torch.Tensor] = []


class _Stack:
    """The saved forward of a stack, and the backward passes through it: the training one, and
    the lag probe's (:meth:`probe`), which reuses it for chosen (sequence, source) pairs."""

    def __init__(self, cell, nat, weights, inputs, h_alls, saved_all, masks, lens_cpu, valid,
                 from_h0=False):  # fmt: skip
        self.cell, self.nat, self.weights, self.inputs = cell, nat, weights, inputs
        self.h_alls, self.saved_all, self.masks = h_alls, saved_all, masks
        self.lens_cpu, self.valid, self.from_h0 = lens_cpu, valid, from_h0

    def backward(
        self, grad_out, need_w, need_x, want_norms, per_row, final: FinalGrads = NO_FINAL
    ) -> _StackGrads:
        """BPTT from ``grad_out`` (B, T, H), the gradient at the top layer's outputs, and
        ``final``'s gradients of the final state."""
        cell, nat, L = self.cell, self.nat, len(self.h_alls)
        names = cell.parameter_names
        dt = grad_out.dtype
        out = _StackGrads(L, len(names))
        up, up_exp = grad_out, None  # upstream for the top layer: exponent 0
        for layer in range(L - 1, -1, -1):
            if final.h_n is not None:  # the output at a sequence's last step is its final h
                up = add_at_last_step(up, up_exp, final.last, final.h_n[layer])
            if up_exp is None:
                up_ts, up_rs = up.stride(1), up.stride(0)
            w_ih, w_hh = self.weights[layer][0], self.weights[layer][1]
            need_din = layer > 0 or need_x
            args = (self.inputs[layer], self.h_alls[layer], self.saved_all[layer], w_ih, w_hh)
            start = dict(from_h0=self.from_h0, want_h0=final.want_h0,
                         final_c=None if final.c_n is None else final.c_n[layer])  # fmt: skip
            if nat is not None:
                g = layer_backward_native(
                    nat, cell, up, up_ts, up_rs, up_exp, *args, self.lens_cpu, need_w, need_din,
                    want_norms, per_row, **start,
                )  # fmt: skip
            else:
                if up_exp is None:
                    go = up
                    up_bt = lambda t, go=go: go[:, t]  # noqa: E731
                else:
                    up_bt = up.__getitem__
                g = layer_backward_torch(
                    cell, up_bt, up_exp, *args, self.valid, need_w, need_din, want_norms,
                    per_row, **start,
                )  # fmt: skip
            out.norms.append(g.norms)
            if final.want_h0:
                out.h0_grads.append(g.d_h0)
                out.c0_grads.append(g.d_c0)
            out.logs.append(g.log10)
            if per_row:
                out.row_logs.append(g.row_log10.to("cpu", torch.float64))
            if need_w:
                named = {"weight_ih": g.dw_ih, "weight_hh": g.dw_hh, "bias_ih": g.db_ih,
                         "bias_hh": g.db_hh}  # fmt: skip
                n = len(names)
                out.grads[n * layer : n * layer + n] = [named[k] for k in names]
            if layer > 0:
                up = g.d_in
                if self.masks:
                    mask = self.masks[layer - 1]
                    up = torch.mul(up, mask, out=cache.empty(up.shape, dt, up.device))
                up_exp = g.d_in_exp
                if nat is not None:
                    up_ts, up_rs = up.stride(0), up.stride(1)
                else:
                    up_exp = up_exp.double() if up_exp.dtype != torch.float64 else up_exp
            elif need_x:
                dx = g.d_in
                if nat is not None:
                    nat.fns[("scale_rows", dt)](
                        dx.data_ptr(), dx.shape[0] * dx.shape[1], dx.shape[2],
                        g.d_in_exp.data_ptr(),
                    )  # fmt: skip
                else:
                    dx = (dx.double() * torch.exp2(g.d_in_exp)[:, :, None]).to(dt)
                out.x_grad = dx.transpose(0, 1)
        return out

    def probe(self, grad_out, rows, positions) -> torch.Tensor:
        """(L, T, P) float64 log10 ||dl_p/dh_t|| for each pair p: the gradient that sequence
        ``rows[p]``'s output at step ``positions[p]`` alone sends back (``grad_out`` there, zero
        elsewhere), through a copy of that sequence's saved forward. Pairs are rows of one
        backward, which computes no weight gradient and no dL/dx."""
        dev = grad_out.device
        rows_d, pos_d = rows.to(dev), positions.to(dev)
        pairs = torch.arange(len(rows_d), device=dev)
        up = torch.zeros(len(rows_d), *grad_out.shape[1:], dtype=grad_out.dtype, device=dev)
        up[pairs, pos_d] = grad_out[rows_d, pos_d]  # (P, T, H)

        def pick(t: torch.Tensor) -> torch.Tensor:  # (steps, B, ...) -> (steps, P, ...)
            return t.index_select(1, rows_d)

        steps = self.h_alls[0].shape[0] - 1
        copy = _Stack(
            self.cell, self.nat, self.weights,
            [x[:, :1].expand(steps, len(rows_d), x.shape[2]) for x in self.inputs],  # shape only
            [pick(h) for h in self.h_alls],
            [tuple(pick(t) for t in saved) for saved in self.saved_all],
            [pick(m) for m in self.masks],
            None if self.lens_cpu is None else self.lens_cpu[rows.cpu()].contiguous(),
            None if self.valid is None else pick(self.valid),
            self.from_h0,
        )  # fmt: skip
        out = copy.backward(up, need_w=False, need_x=False, want_norms=True, per_row=True)
        return torch.stack(out.row_logs[::-1])


def recurrent(
    cell: str | Cell,
    x: torch.Tensor,
    weights: list[torch.Tensor],
    *,
    num_layers: int,
    hidden_size: int,
    dropout: float = 0.0,
    training: bool = False,
    lengths: torch.Tensor | None = None,
    recorder: GradNormRecorder | None = None,
    h0: torch.Tensor | None = None,
    c0: torch.Tensor | None = None,
    return_state: bool = False,
):
    """Run a stacked recurrent network of a registered cell with engine kernels ('rnn' = tanh,
    'lstm', 'gru'; see :mod:`seqbench.cells`), or a cell variant given as its :class:`Cell`
    (``get_cell('rnn').with_nonlinearity('relu')``), over x (B, T, I) (batch_first) from the
    initial state ``h0``/``c0`` (None: zero); return the top layer's output sequence (B, T, H),
    and with ``return_state`` also the final state, as PyTorch's layers: ``(output, h_n)``, or
    ``(output, (h_n, c_n))`` for a cell with a cell state (``Cell.cell_state``: the LSTM).

    Differentiable w.r.t. ``x``, ``h0``, ``c0`` and every weight via a
    :class:`torch.autograd.Function` whose backward is the hand-written BPTT described in
    :mod:`seqbench.engine`; a loss may read the outputs, the final state or both.

    ``weights`` is exactly ``list(module._flat_weights)`` of an ``nn.RNN``/``nn.LSTM``/``nn.GRU``
    built with ``batch_first=True, bias=True, bidirectional=False``: per layer
    ``[w_ih, w_hh, b_ih, b_hh]`` in PyTorch's gate order (LSTM i, f, g, o; GRU r, z, n with
    ``n = tanh(W_in x + b_in + r * (W_hn h + b_hn))``). A cell with another recurrence takes
    its own parameters per layer (``Cell.parameter_names``: ``[w_ih, w_hh, b_ih]`` with a
    vector ``w_hh`` for a diagonal one, ``[w_ih, b_ih]`` for none), as a
    ``seqbench.model.ReferenceStack`` holds them.

    ``dropout``/``training``: with ``dropout > 0`` and ``training=True``, inverted-dropout masks
    from :func:`dropout_masks` (torch's global RNG) multiply each non-top layer's output
    sequence before it enters the next layer.

    ``lengths`` (B,) int64: for ``t >= lengths[b]`` the output of sequence ``b`` is zero and
    nothing at those positions influences the result or the gradients; its final state is its
    state after step ``lengths[b] - 1`` (the initial state for length 0). Padded inputs may hold
    any finite or non-finite values. Padded positions contribute zero to the norms.

    ``recorder``: if given, each backward stores ``norms[l, t] = ||dL/dh_t^{(l)}||_F`` (float64,
    CPU, shape ``(num_layers, T)``), where ``h_t^{(l)}`` is layer ``l``'s output at step ``t``
    *before* the inter-layer dropout; see :class:`GradNormRecorder`.

    ``h0``/``c0``: (num_layers, B, H), each layer's initial state (as ``nn.LSTM``'s ``(h0,
    c0)``; ``c0`` only for a cell with a cell state, and then with ``h0``). The per-timestep
    norms are those of the window: ``||dL/dh_t||`` for ``t`` in it (a stateful caller that
    detaches the state between windows trains on exactly that, truncated BPTT).

    The returned tensor is a transposed view of a time-major buffer (like ``nn.LSTM``'s own
    ``batch_first`` output on CPU); modifying it in place is refused by autograd. A double
    backward (``create_graph=True`` through it) raises a ``RuntimeError``: the hand-written
    backward's gradients carry no graph.
    """
    spec: Cell | None = cell if isinstance(cell, Cell) else CELLS.get(cell)
    if spec is None or spec.engine is None:
        raise ValueError(f"cell must be one of {engine_cells()}, got {cell!r}")
    if x.dim() != 3:
        raise ValueError(f"x must be (B, T, I), got shape {tuple(x.shape)}")
    names = spec.parameter_names
    if len(weights) != len(names) * num_layers:
        raise ValueError(
            f"expected {len(names) * num_layers} weights ({', '.join(names)} per layer), "
            f"got {len(weights)}; bias=False and bidirectional modules are not supported"
        )
    G = spec.gates * hidden_size
    for layer, (w_ih, w_hh, b_ih, b_hh) in enumerate(layer_weights(spec, weights, num_layers)):
        in_size = x.shape[2] if layer == 0 else hidden_size
        shapes = [(w_ih, (G, in_size)), (b_ih, (G,))]
        if spec.recurrence == "full":
            shapes += [(w_hh, (G, hidden_size)), (b_hh, (G,))]
        elif spec.recurrence == "diagonal":
            shapes.append((w_hh, (spec.engine.diag_blocks * hidden_size,)))
        if any(tuple(w.shape) != shape for w, shape in shapes):
            raise ValueError(f"layer {layer}: weight shapes do not match a {cell} layer")
        if any(w.dtype != x.dtype or w.device != x.device for w, _ in shapes):
            raise ValueError("weights must have the dtype and device of x")
    if lengths is not None and lengths.shape != (x.shape[0],):
        raise ValueError(f"lengths must have shape (B,) = ({x.shape[0]},)")
    if not 0.0 <= dropout <= 1.0:
        raise ValueError(f"dropout must be in [0, 1], got {dropout}")
    if x.shape[1] == 0:
        raise ValueError("sequence length must be >= 1")
    check_state(spec, x, h0, c0, num_layers, hidden_size)
    out = _Recurrent.apply(
        spec, num_layers, hidden_size, float(dropout), bool(training), lengths, recorder,
        bool(return_state), x, h0, c0, *weights,
    )  # fmt: skip
    if not return_state:
        return out
    return (out[0], out[1]) if len(out) == 2 else (out[0], (out[1], out[2]))
