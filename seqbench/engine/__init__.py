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
* ``backward_native.py``: per step one fused kernel call, one matrix product for the recurrence
  and the weight-gradient accumulation (``addmm_``). Vanishing gradients would turn float32
  values into denormals, on which x86 matrix products are 10-100x slower; the engine never
  produces them: the backward signal is carried as ``2**e_t * g_t`` with an integer exponent
  per step and ``g_t`` renormalised so that ``max|g_t|`` is about 1. Scaling by a power of two
  is exact, so the result equals ordinary BPTT up to float rounding. The engine does *not*
  touch the floating-point environment (no ``torch.set_flush_denormal``).
* The fused elementwise kernels (gate nonlinearities, cell update, their derivatives, the
  float64 sums of squares for the norms, the bias-gradient column sums) are C++: each cell's
  ``seqbench/cells/<cell>.cpp`` and ``csrc/engine.cpp``, sharing ``csrc/seqbench.h`` (the
  backward loop every cell plugs its equations into, and the constants Python reads:
  ``constants.py``). ``native.py`` compiles them on first use with the system C++ compiler and
  loads them with :mod:`ctypes` (cached under ``$SEQBENCH_CACHE_DIR`` or
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

Numerical contract
------------------
Outputs and gradients match autograd through ``nn.RNN``/``nn.LSTM``/``nn.GRU`` up to float
rounding (in float32 the kernels' sigmoid and tanh are polynomial/rational approximations with
relative error below 3e-7; float64 uses libm). Deliberate deviations, all far below float32
resolution:

* at one time step, a contribution to the backward signal that is more than ``2**60``
  (float64: ``2**200``) times smaller than the dominant one is dropped;
* a time step whose backward signal is more than ``2**60`` (float64: ``2**200``) times smaller
  than the largest one seen is skipped when accumulating weight gradients (this also saves its
  two weight-gradient matrix products);
* the gradient returned for ``x`` is flushed to zero where its magnitude is below the smallest
  normal number of the dtype (float32: 1.2e-38) instead of being returned as a denormal;
* the float32 forward sigmoid clamps its argument at -80 (result >= 1.8e-35).
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
