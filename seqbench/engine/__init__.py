"""Hand-written backpropagation through time (BPTT) for the cells of :mod:`seqbench.cells`.

:func:`recurrent` runs a stacked recurrent network (same parameters and semantics as
the cell's fused PyTorch layer, e.g. ``nn.LSTM``, with ``batch_first=True``, ``bias=True``) and is
differentiable through a :class:`torch.autograd.Function` whose backward is hand-written BPTT.
On every backward it can also deliver, almost for free, the exact per-layer, per-timestep norm
``||dL/dh_t^{(l)}||_F`` (the *total* derivative through the recurrence, the layer above and the
loss) to a :class:`GradNormRecorder`.

How it is fast (CPU)
--------------------
* ``forward.py``: the input projection of a layer is computed for all steps with a few large
  matrix products (in chunks of about 1 MiB, just ahead of the recurrence, so the kernels find
  them in cache). Per time step the forward pass does one in-place ``addmm_`` (recurrent
  product) and one call of the cell's fused elementwise kernel.
* ``backward_native.py``: per step one fused kernel call and one matrix product for the
  recurrence; the gate gradients of about 2,048 rows of steps are kept, and each such chunk makes
  one product per weight gradient (and one for the input gradient). Vanishing gradients would turn
  float32 values into denormals, on which x86 matrix products are 10-100x slower; the engine never
  produces them: the backward signal of sequence ``b`` is carried as ``2**e[t,b] * g[t,b]`` with
  an integer exponent per sequence and step and ``g`` renormalised so that its largest entry is
  about 1 (rows of the matrix products stay rows, so each keeps its own exponent). Scaling by a
  power of two is exact, so the result equals ordinary BPTT up to float rounding. The exponents
  are found in the same pass over the rows that finds the step's maximum, and sequences within
  ``2**CUT`` of the largest share its exponent, so such a batch runs the same arithmetic as with
  one exponent per step. The engine does *not* touch the floating-point environment (no
  ``torch.set_flush_denormal``).
* The fused elementwise kernels (gate nonlinearities, cell update, their derivatives, the
  float64 sums of squares for the norms, the bias-gradient column sums) are C++: each cell's
  ``seqbench/cells/<cell>.cpp`` and ``csrc/engine.cpp``, sharing ``csrc/seqbench.h`` (the
  backward loop every cell plugs its equations into, and the constants Python reads:
  ``constants.py``). ``native.py`` compiles them on first use with the system C++ compiler
  (with ``-fno-trapping-math``, so that GCC vectorises the clamped sigmoid and tanh; it changes
  no result) and loads them with :mod:`ctypes` (cached under ``$SEQBENCH_CACHE_DIR`` or
  ``~/.cache/seqbench``). When torch runs on GNU OpenMP, steps with ``B * columns >=
  THREADING_MIN_WORK`` are split over torch's own intra-op threads
  (``torch.get_num_threads()``); ``SEQBENCH_NATIVE_OPENMP=0`` keeps them serial. Without a
  compiler (one warning says why), for CUDA tensors, for dtypes other than float32/float64, or
  with ``SEQBENCH_NATIVE=0``, ``backward_torch.py`` and the cells' pure-torch equations run the
  same algorithm.
* ``buffers.py``: large work buffers are recycled between calls (fresh multi-MiB allocations
  cost a page fault per 4 KiB page on first touch). A buffer is reused only once nothing else
  references its storage; up to ``SEQBENCH_BUFFER_CACHE_MB`` (default 1024) MiB of them are
  kept; :func:`clear_buffer_cache` drops them.
* ``states.py``: an initial state ``h0``/``c0`` and the final state (stateful truncated BPTT):
  the gradient of the final state enters where it was read (the upstream of each sequence's
  last real step, the cell-state carry), the gradients of ``h0``/``c0`` are the carries after
  step 0, exact like every other input's.

Numerical contract
------------------
Outputs and gradients match autograd through ``nn.RNN``/``nn.LSTM``/``nn.GRU`` up to float
rounding (in float32 the kernels' sigmoid and tanh are polynomial/rational approximations with
relative error below 3e-7; float64 uses libm). Deliberate deviations, all far below float32
resolution (``CUT`` = 60 in float32, 200 in float64; ``csrc/seqbench.h``):

* "dominant" is decided per sequence: at one time step, of a sequence's two contributions to
  its backward signal (the upstream gradient of that step, the carry from the step after), one
  more than ``2**CUT`` times smaller than the other is dropped. Another sequence's signal, however
  large, never removes a sequence's gradient (its rows of ``dL/dx`` and of ``dL/dh_t``);
* in the weight and bias gradients, at one time step, a sequence whose signal is more than
  ``2**CUT`` times smaller than the largest sequence's is left out, and a time step whose signal
  is more than ``2**CUT`` times smaller than the largest one seen is skipped (this also saves its
  two weight-gradient matrix products);
* the gradient returned for ``x`` is flushed to zero where its magnitude is below the smallest
  normal number of the dtype (float32: 1.2e-38) instead of being returned as a denormal;
* the recorded norms (``GradNormRecorder.norms``) are exact down to float64's smallest normal
  number (2.2e-308) and 0 below it, never an imprecise subnormal; ``log10_norms`` is exact at any
  size (a sequence more than ``2**CUT`` below the largest enters both with its own scale);
* the float32 forward sigmoid clamps its argument at -80 (result >= 1.8e-35).

Not supported, refused with a message that names ``model.engine=fused`` (PyTorch's own
layers): a double backward (``create_graph=True``, e.g. a gradient penalty: the hand-written
backward's gradients carry no graph, so the penalty would silently vanish).

Initial and final states: :func:`recurrent` takes ``h0``/``c0`` and returns the final state
(``return_state=True``) as PyTorch's layers do, the same on every path; a loss may read the
final state, and the gradients of ``h0``/``c0`` are exact. The per-timestep norms are those of
the window (``||dL/dh_t||`` for its steps): with the state detached between windows, as
stateful training does, that is what truncated BPTT trains on.
"""

from seqbench.engine.buffers import clear_buffer_cache
from seqbench.engine.constants import CUT, NEG, THREADING_MIN_WORK
from seqbench.engine.function import dropout_masks, engine_cells, recurrent
from seqbench.engine.native import native_available
from seqbench.engine.recorder import GradNormRecorder

__all__ = [
    "CUT",
    "NEG",
    "THREADING_MIN_WORK",
    "GradNormRecorder",
    "clear_buffer_cache",
    "dropout_masks",
    "engine_cells",
    "native_available",
    "recurrent",
]
