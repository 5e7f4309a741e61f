"""Hand-written backpropagation through time (BPTT) for tanh-RNN, LSTM and GRU.

:func:`recurrent` runs a stacked recurrent network (same parameters and semantics as
``nn.RNN``/``nn.LSTM``/``nn.GRU`` with ``batch_first=True``, ``bias=True``) and is
differentiable through a :class:`torch.autograd.Function` whose backward is hand-written BPTT.
On every backward it can also deliver, almost for free, the exact per-layer, per-timestep norm
``||dL/dh_t^{(l)}||_F`` (the *total* derivative through the recurrence, the layer above and the
loss) to a :class:`GradNormRecorder`.

How it is fast (CPU)
--------------------
* The input projection of a layer is computed for all steps with a few large matrix products
  (in chunks of about 1 MiB, just ahead of the recurrence, so the kernels find them in cache).
* Per time step the forward pass does one in-place ``addmm_`` (recurrent product) and one call
  of a fused elementwise kernel; the backward pass does one fused kernel call, one matrix
  product for the recurrence and the weight-gradient accumulation (``addmm_``).
* The fused elementwise kernels (gate nonlinearities, cell update, their derivatives, the
  float64 sums of squares for the norms, the bias-gradient column sums) are a small C++ file
  compiled on first use with the system C++ compiler (``$CXX``, else ``c++``/``g++``) and
  loaded with :mod:`ctypes`. No torch headers are involved, so the first build takes 1-3 s;
  the library is cached under ``$SEQBENCH_CACHE_DIR`` or ``~/.cache/seqbench``, keyed by
  source, flags and CPU. When torch runs on GNU OpenMP (libgomp already loaded), the kernels
  are built with ``-fopenmp`` and split large steps (``B * gates * H >= 32768``) over torch's
  own intra-op threads (``torch.get_num_threads()``); ``SEQBENCH_NATIVE_OPENMP=0`` keeps them
  serial. Without a compiler, for CUDA tensors, for dtypes other than float32/float64, or with
  ``SEQBENCH_NATIVE=0``, a pure-torch implementation of the same algorithm is used.
* Vanishing gradients turn float32 values into denormals, on which x86 matrix products are
  10-100x slower. The engine never produces them: the backward signal is carried as
  ``2**e_t * g_t`` with an integer exponent ``e_t`` per step and ``g_t`` renormalised so that
  ``max|g_t|`` is about 1. Scaling by a power of two is exact in binary floating point, so the
  result equals ordinary BPTT up to float rounding; parameter gradients are accumulated with
  the factor ``2**(e_t - R)`` for a running reference exponent ``R``. The engine does *not*
  touch the floating-point environment (no ``torch.set_flush_denormal``).
* Large work buffers are recycled between calls (fresh multi-MiB allocations cost a page fault
  per 4 KiB page on first touch). A buffer is reused only once nothing else references its
  storage; up to ``SEQBENCH_BUFFER_CACHE_MB`` (default 1024) MiB of them are kept;
  :func:`clear_buffer_cache` drops them.

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

from __future__ import annotations

import ctypes
import hashlib
import math
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import warnings

import torch

__all__ = [
    "GradNormRecorder",
    "clear_buffer_cache",
    "dropout_masks",
    "native_available",
    "recurrent",
]

CELLS = ("rnn", "lstm", "gru")
_GATES = {"rnn": 1, "lstm": 4, "gru": 3}
# Contributions smaller than 2**-CUT relative to the dominant one are dropped (see above).
_CUT = {torch.float32: 60, torch.float64: 200}
_NEG = -(2**29)  # "no signal" exponent sentinel; must equal NEG in the C++ source


class GradNormRecorder:
    """Receives per-timestep gradient norms from the engine's backward pass.

    After each backward through :func:`recurrent` (the most recent one wins):

    ``norms``
        float64 CPU tensor of shape ``(num_layers, T)``; ``norms[l, t] = ||dL/dh_t^{(l)}||_F``,
        the Frobenius norm over (batch, hidden) of the total derivative of the loss with respect
        to layer ``l``'s output at step ``t`` (before inter-layer dropout; padded positions count
        as zero). It is computed as ``2**e_t * sqrt(sum(g_t**2))`` with the sum of squares in
        float64 from the engine's power-of-two-rescaled backward signal ``g_t``, so it does not
        underflow where the float32 gradient itself would (it is exact down to float64's range,
        about 1e-308, and 0 below that).
    ``log10_norms``
        only if ``track_log10=True``: float64 ``(num_layers, T)`` with ``log10`` of the same
        quantity, computed as ``e_t*log10(2) + log10(||g_t||)``. It stays finite for arbitrarily
        small norms (e.g. a tanh RNN at T=10000) and is ``-inf`` only where the derivative is
        exactly zero (padding, or no path from the loss). This is not a separate, approximate
        side computation: the whole backward pass, including the parameter gradients, runs on
        the rescaled signal, so the tracked magnitude covers all paths (recurrence, loss terms at
        every step, layers above, dropout, padding). Its only approximation is that at a step,
        terms more than ``2**60`` smaller than the dominant term are dropped (float32 could not
        represent their effect anyway). Tracking costs nothing extra; the flag only controls
        whether the array is stored.
    """

    def __init__(self, track_log10: bool = False) -> None:
        self.track_log10 = track_log10
        self.norms: torch.Tensor | None = None
        self.log10_norms: torch.Tensor | None = None
        self.num_records = 0

    def reset(self) -> None:
        self.norms = None
        self.log10_norms = None
        self.num_records = 0

    def _record(self, norms: torch.Tensor, log10_norms: torch.Tensor) -> None:
        self.norms = norms
        self.log10_norms = log10_norms if self.track_log10 else None
        self.num_records += 1

    def __repr__(self) -> str:
        shape = None if self.norms is None else tuple(self.norms.shape)
        return f"GradNormRecorder(track_log10={self.track_log10}, norms_shape={shape})"


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


# --------------------------------------------------------------------------------------------
# Native (C++) elementwise kernels
# --------------------------------------------------------------------------------------------

_CPP_SOURCE = r"""
// seqbench fused BPTT kernels. Built by seqbench/engine.py, called through ctypes.
// All buffers are contiguous; P is an int64 parameter block (see engine.py for layouts).
#include <cfloat>
#include <climits>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <vector>
#ifdef _OPENMP
#include <omp.h>
#endif

typedef int64_t i64;
#define RS __restrict
#if defined(__clang__)
#define IVDEP _Pragma("clang loop vectorize(assume_safety)")
#elif defined(__GNUC__)
#define IVDEP _Pragma("GCC ivdep")
#else
#define IVDEP
#endif

namespace {

constexpr int NEG = -(1 << 29);

template <typename T> struct Num;

template <> struct Num<float> {
  typedef uint32_t U;
  static constexpr U MASK = 0x7fffffffu;
  static constexpr int CUT = 60;
  static inline float ex(float x) {  // Cephes-style expf, ~1 ulp, vectorisable
    x = x < -87.0f ? -87.0f : x;
    x = x > 88.0f ? 88.0f : x;
    float kn = x * 1.44269504088896341f;
    float n = (kn + 12582912.0f) - 12582912.0f;  // round to nearest
    float r = x - n * 0.693359375f;
    r = r + n * 2.12194440e-4f;
    float p = 1.9875691500E-4f;
    p = p * r + 1.3981999507E-3f;
    p = p * r + 8.3334519073E-3f;
    p = p * r + 4.1665795894E-2f;
    p = p * r + 1.6666665459E-1f;
    p = p * r + 5.0000001201E-1f;
    p = p * r * r + r + 1.0f;
    int32_t bits = ((int32_t)n + 127) << 23;
    float s;
    std::memcpy(&s, &bits, 4);
    return p * s;
  }
  static inline float sigm(float x) {
    x = x < -80.0f ? -80.0f : x;  // keeps the result a normal number (>= 1.8e-35)
    return 1.0f / (1.0f + ex(-x));
  }
  static inline float tnh(float x) {
    // rational minimax approximation (as in Eigen), max. rel. error ~3e-7; exact 0 at 0
    const float c = 7.90531110763549805f;  // tanh(c) rounds to 1 in float32
    x = x > c ? c : x;
    x = x < -c ? -c : x;
    float x2 = x * x;
    float p = -2.76076847742355e-16f;
    p = p * x2 + 2.00018790482477e-13f;
    p = p * x2 - 8.60467152213735e-11f;
    p = p * x2 + 5.12229709037114e-08f;
    p = p * x2 + 1.48572235717979e-05f;
    p = p * x2 + 6.37261928875436e-04f;
    p = p * x2 + 4.89352455891786e-03f;
    float q = 1.19825839466702e-06f;
    q = q * x2 + 1.18534705686654e-04f;
    q = q * x2 + 2.26843463243900e-03f;
    q = q * x2 + 4.89352518554385e-03f;
    return x * p / q;
  }
};

template <> struct Num<double> {
  typedef uint64_t U;
  static constexpr U MASK = 0x7fffffffffffffffull;
  static constexpr int CUT = 200;
  static inline double sigm(double x) { return 1.0 / (1.0 + std::exp(-x)); }
  static inline double tnh(double x) { return std::tanh(x); }
};

template <typename T>
inline typename Num<T>::U maxabs(const T* RS x, i64 n) {
  typedef typename Num<T>::U U;
  U m = 0;
  IVDEP
  for (i64 i = 0; i < n; ++i) {
    U u;
    std::memcpy(&u, x + i, sizeof(U));
    u &= Num<T>::MASK;
    m = u > m ? u : m;
  }
  return m;
}

// exponent (ilogb) of the value with bits u, offset by base; NEG for zero
template <typename T>
inline int expo(typename Num<T>::U u, int base) {
  if (u == 0) return NEG;
  T v;
  std::memcpy(&v, &u, sizeof(T));
  if (!std::isfinite(v)) return base;  // let inf/nan propagate
  return base + std::ilogb(v);
}

struct Scale {
  double a, b;
  int m;
};

// signal = 2**sig * u + 2**s * r. New exponent m; the kernel computes a*u + b*r.
template <typename T>
inline Scale choose(int eu, int er, int sig, int s) {
  Scale c;
  int m = eu > er ? eu : er;
  if (m == NEG) m = s;
  c.m = m;
  c.a = (eu == NEG || eu - m < -Num<T>::CUT) ? 0.0 : std::ldexp(1.0, sig - m);
  c.b = (er == NEG || er - m < -Num<T>::CUT) ? 0.0 : std::ldexp(1.0, s - m);
  return c;
}

inline bool active(const i64* len, i64 b, i64 t) { return len == nullptr || t < len[b]; }

// Backward parameter block
enum { B_ = 0, H_, UP, UP_TS, UP_RS, UP_EXP, REC, CC, ST, ACT, AUX1, AUX2, DG, SQ, MS, CS, LEN,
       SQROW };

template <typename T>
inline Scale bwd_scale(const i64* P, i64 t, i64 B, i64 H, bool with_cc) {
  const T* up = (const T*)P[UP] + t * P[UP_TS];
  const i64 urs = P[UP_RS];
  const int* upe = (const int*)P[UP_EXP];
  const i64* len = (const i64*)P[LEN];
  typename Num<T>::U mu = 0, mr;
  for (i64 b = 0; b < B; ++b) {
    if (!active(len, b, t)) continue;
    typename Num<T>::U v = maxabs<T>(up + b * urs, H);
    mu = v > mu ? v : mu;
  }
  mr = maxabs<T>((const T*)P[REC], B * H);
  if (with_cc) {
    typename Num<T>::U v = maxabs<T>((const T*)P[CC], B * H);
    mr = v > mr ? v : mr;
  }
  const int sig = upe ? upe[t] : 0;
  int* st = (int*)P[ST];
  return choose<T>(expo<T>(mu, sig), expo<T>(mr, st[0]), sig, st[0]);
}

template <typename T>
inline int bwd_finish(const i64* P, i64 t, i64 H, const Scale& sc) {
  double ss = 0.0;
  if (P[SQROW]) {
    const double* sqrow = (const double*)P[SQROW];
    for (i64 j = 0; j < H; ++j) ss += sqrow[j];
  }
  ((double*)P[SQ])[t] = ss;
  ((int*)P[MS])[t] = sc.m;
  ((int*)P[ST])[0] = sc.m;
  return (sc.a != 0.0 || sc.b != 0.0) ? 1 : 0;
}

// ---------------------------------------------------------------- threading
// With -fopenmp (only when torch's own libgomp is loaded, so the thread pool is shared), the
// batch rows of one step are split over torch's intra-op threads when there is enough work.
int g_threading = 1;

inline int threads_for(i64 work) {
#ifdef _OPENMP
  if (g_threading && work >= (1 << 15) && !omp_in_parallel()) return omp_get_max_threads();
#else
  (void)work;
#endif
  return 1;
}

// Runs rows(b0, b1, cs_acc, sq_acc) over the batch, each thread accumulating the bias column
// sums (G values of T) and the squared norms per hidden unit (H doubles) into its own
// zero-initialised arrays, which are then summed into cs / sqrow (sqrow may be null).
template <typename T, typename F>
inline void run_rows(i64 B, i64 G, i64 H, T* cs, double* sqrow, F rows) {
  const int nth = threads_for(B * G);
  if (nth <= 1) {
    IVDEP
    for (i64 j = 0; j < G; ++j) cs[j] = 0;
    if (sqrow) {
      IVDEP
      for (i64 j = 0; j < H; ++j) sqrow[j] = 0.0;
    }
    rows((i64)0, B, cs, sqrow);
    return;
  }
  std::vector<T> pcs((size_t)nth * G, (T)0);
  std::vector<double> psq(sqrow ? (size_t)nth * H : 1, 0.0);
#ifdef _OPENMP
#pragma omp parallel num_threads(nth)
  {
    const int id = omp_get_thread_num(), n = omp_get_num_threads();
    rows(B * id / n, B * (id + 1) / n, pcs.data() + (size_t)id * G,
         sqrow ? psq.data() + (size_t)id * H : nullptr);
  }
#endif
  IVDEP
  for (i64 j = 0; j < G; ++j) cs[j] = 0;
  for (int k = 0; k < nth; ++k) {
    const T* RS p = pcs.data() + (size_t)k * G;
    IVDEP
    for (i64 j = 0; j < G; ++j) cs[j] += p[j];
  }
  if (sqrow) {
    IVDEP
    for (i64 j = 0; j < H; ++j) sqrow[j] = 0.0;
    for (int k = 0; k < nth; ++k) {
      const double* RS p = psq.data() + (size_t)k * H;
      IVDEP
      for (i64 j = 0; j < H; ++j) sqrow[j] += p[j];
    }
  }
}

// ---------------------------------------------------------------- LSTM (gates i, f, g, o)
// fwd P: B, H, act(T,B,4H: pre-activations in, activations out), c_all(T+1,B,H),
//        h_all(T+1,B,H), len
template <typename T>
void lstm_fwd(const i64* P, i64 t) {
  const i64 B = P[0], H = P[1];
  T* act = (T*)P[2] + t * B * 4 * H;
  const T* cp = (const T*)P[3] + t * B * H;
  T* cn = (T*)P[3] + (t + 1) * B * H;
  T* hn = (T*)P[4] + (t + 1) * B * H;
  const i64* len = (const i64*)P[5];
  const int nth = threads_for(B * 4 * H);
#pragma omp parallel for num_threads(nth) schedule(static) if (nth > 1)
  for (i64 b = 0; b < B; ++b) {
    T* RS gi = act + b * 4 * H;
    T* RS gf = gi + H;
    T* RS gg = gi + 2 * H;
    T* RS go = gi + 3 * H;
    const T* RS cpb = cp + b * H;
    T* RS cnb = cn + b * H;
    T* RS hnb = hn + b * H;
    if (!active(len, b, t)) {
      IVDEP
      for (i64 j = 0; j < 4 * H; ++j) gi[j] = 0;
      IVDEP
      for (i64 j = 0; j < H; ++j) { cnb[j] = cpb[j]; hnb[j] = 0; }
      continue;
    }
    IVDEP
    for (i64 j = 0; j < H; ++j) {
      T i = Num<T>::sigm(gi[j]), f = Num<T>::sigm(gf[j]);
      T g = Num<T>::tnh(gg[j]), o = Num<T>::sigm(go[j]);
      T c = f * cpb[j] + i * g;
      gi[j] = i; gf[j] = f; gg[j] = g; go[j] = o;
      cnb[j] = c;
      hnb[j] = o * Num<T>::tnh(c);
    }
  }
}

// bwd: AUX1 = c_all. REC = dG_{t+1} @ W_hh (B,H), CC = dc carry (B,H); dG out (B,4H).
// C is the type in which the rescaling a*u + b*r is done (T when a, b are normal numbers of T).
template <typename T, typename C, bool N>
void lstm_bwd_impl(const i64* P, i64 t, const Scale& sc) {
  const i64 B = P[B_], H = P[H_];
  const C a = (C)sc.a, bb = (C)sc.b;
  const T* up = (const T*)P[UP] + t * P[UP_TS];
  const i64 urs = P[UP_RS];
  const T* rec = (const T*)P[REC];
  T* cc = (T*)P[CC];
  const T* act = (const T*)P[ACT] + t * B * 4 * H;
  const T* cp = (const T*)P[AUX1] + t * B * H;
  const T* cn = cp + B * H;
  T* dG = (T*)P[DG];
  const i64* len = (const i64*)P[LEN];
  auto rows = [&](i64 b0, i64 b1, T* RS cs, double* RS sqrow) {
    for (i64 b = b0; b < b1; ++b) {
      T* RS d = dG + b * 4 * H;
      T* RS ccb = cc + b * H;
      if (!active(len, b, t)) {
        IVDEP
        for (i64 j = 0; j < 4 * H; ++j) d[j] = 0;
        IVDEP
        for (i64 j = 0; j < H; ++j) ccb[j] = (T)(bb * (C)ccb[j]);
        continue;
      }
      const T* RS ub = up + b * urs;
      const T* RS rb = rec + b * H;
      const T* RS ai = act + b * 4 * H;
      const T* RS cpb = cp + b * H;
      const T* RS cnb = cn + b * H;
      IVDEP
      for (i64 j = 0; j < H; ++j) {
        T dh = (T)(a * (C)ub[j] + bb * (C)rb[j]);
        T i = ai[j], f = ai[H + j], g = ai[2 * H + j], o = ai[3 * H + j];
        T tc = Num<T>::tnh(cnb[j]);
        T dc = (T)(bb * (C)ccb[j]) + dh * o * (1 - tc * tc);
        T di = dc * g * i * (1 - i);
        T df = dc * cpb[j] * f * (1 - f);
        T dg = dc * i * (1 - g * g);
        T dO = dh * tc * o * (1 - o);
        ccb[j] = dc * f;
        d[j] = di; d[H + j] = df; d[2 * H + j] = dg; d[3 * H + j] = dO;
        cs[j] += di; cs[H + j] += df; cs[2 * H + j] += dg; cs[3 * H + j] += dO;
        if (N) sqrow[j] += (double)dh * (double)dh;
      }
    }
  };
  run_rows<T>(B, 4 * H, H, (T*)P[CS] + t * 4 * H, N ? (double*)P[SQROW] : nullptr, rows);
}

template <typename T>
inline bool fits(double v) {
  return sizeof(T) == 8 || v == 0.0 || (v >= 0x1p-120 && v <= 0x1p120);
}

// N: accumulate the sum of squares for the norms (P[SQROW] != 0)
#define DISPATCH_BWD(impl, with_cc)                                                 \
  const Scale sc = bwd_scale<T>(P, t, P[B_], P[H_], with_cc);                        \
  const bool narrow = fits<T>(sc.a) && fits<T>(sc.b);                                 \
  if (P[SQROW]) {                                                                     \
    if (narrow) impl<T, T, true>(P, t, sc); else impl<T, double, true>(P, t, sc);     \
  } else {                                                                            \
    if (narrow) impl<T, T, false>(P, t, sc); else impl<T, double, false>(P, t, sc);   \
  }                                                                                   \
  return bwd_finish<T>(P, t, P[H_], sc);

template <typename T>
int lstm_bwd(const i64* P, i64 t) { DISPATCH_BWD(lstm_bwd_impl, true) }

// ---------------------------------------------------------------- GRU (gates r, z, n)
// fwd P: B, H, gi(T,B,3H: x-projection + b_ih in, r z n out), gh(B,3H: h@W_hh^T + b_hh),
//        ghn(T,B,H out), h_all(T+1,B,H), len
template <typename T>
void gru_fwd(const i64* P, i64 t) {
  const i64 B = P[0], H = P[1];
  T* gi = (T*)P[2] + t * B * 3 * H;
  const T* gh = (const T*)P[3];
  T* ghn = (T*)P[4] + t * B * H;
  const T* hp = (const T*)P[5] + t * B * H;
  T* hn = (T*)P[5] + (t + 1) * B * H;
  const i64* len = (const i64*)P[6];
  const int nth = threads_for(B * 3 * H);
#pragma omp parallel for num_threads(nth) schedule(static) if (nth > 1)
  for (i64 b = 0; b < B; ++b) {
    T* RS x = gi + b * 3 * H;
    const T* RS y = gh + b * 3 * H;
    T* RS yn = ghn + b * H;
    const T* RS hpb = hp + b * H;
    T* RS hnb = hn + b * H;
    if (!active(len, b, t)) {
      IVDEP
      for (i64 j = 0; j < 3 * H; ++j) x[j] = 0;
      IVDEP
      for (i64 j = 0; j < H; ++j) { yn[j] = 0; hnb[j] = 0; }
      continue;
    }
    IVDEP
    for (i64 j = 0; j < H; ++j) {
      T r = Num<T>::sigm(x[j] + y[j]);
      T z = Num<T>::sigm(x[H + j] + y[H + j]);
      T n = Num<T>::tnh(x[2 * H + j] + r * y[2 * H + j]);
      x[j] = r; x[H + j] = z; x[2 * H + j] = n;
      yn[j] = y[2 * H + j];
      hnb[j] = n + z * (hpb[j] - n);
    }
  }
}

// bwd: ACT = r z n (T,B,3H), AUX1 = ghn (T,B,H), AUX2 = h_all. REC in: carry
// (dh_{t+1} z_{t+1} + dgh_{t+1} @ W_hh), out: dh_t z_t. dG out (B,4H) = [dn_pre, dr, dz, dn_pre*r]
template <typename T, typename C, bool N>
void gru_bwd_impl(const i64* P, i64 t, const Scale& sc) {
  const i64 B = P[B_], H = P[H_];
  const C a = (C)sc.a, bb = (C)sc.b;
  const T* up = (const T*)P[UP] + t * P[UP_TS];
  const i64 urs = P[UP_RS];
  T* rec = (T*)P[REC];
  const T* act = (const T*)P[ACT] + t * B * 3 * H;
  const T* ghn = (const T*)P[AUX1] + t * B * H;
  const T* hp = (const T*)P[AUX2] + t * B * H;
  T* dG = (T*)P[DG];
  const i64* len = (const i64*)P[LEN];
  auto rows = [&](i64 b0, i64 b1, T* RS cs, double* RS sqrow) {
    for (i64 b = b0; b < b1; ++b) {
      T* RS d = dG + b * 4 * H;
      T* RS rb = rec + b * H;
      if (!active(len, b, t)) {
        IVDEP
        for (i64 j = 0; j < 4 * H; ++j) d[j] = 0;
        IVDEP
        for (i64 j = 0; j < H; ++j) rb[j] = 0;
        continue;
      }
      const T* RS ub = up + b * urs;
      const T* RS ab = act + b * 3 * H;
      const T* RS yn = ghn + b * H;
      const T* RS hpb = hp + b * H;
      IVDEP
      for (i64 j = 0; j < H; ++j) {
        T dh = (T)(a * (C)ub[j] + bb * (C)rb[j]);
        T r = ab[j], z = ab[H + j], n = ab[2 * H + j];
        T dnp = dh * (1 - z) * (1 - n * n);
        T dr = dnp * yn[j] * r * (1 - r);
        T dz = dh * (hpb[j] - n) * z * (1 - z);
        T dnr = dnp * r;
        rb[j] = dh * z;
        d[j] = dnp; d[H + j] = dr; d[2 * H + j] = dz; d[3 * H + j] = dnr;
        cs[j] += dnp; cs[H + j] += dr; cs[2 * H + j] += dz; cs[3 * H + j] += dnr;
        if (N) sqrow[j] += (double)dh * (double)dh;
      }
    }
  };
  run_rows<T>(B, 4 * H, H, (T*)P[CS] + t * 4 * H, N ? (double*)P[SQROW] : nullptr, rows);
}

template <typename T>
int gru_bwd(const i64* P, i64 t) { DISPATCH_BWD(gru_bwd_impl, false) }

// ---------------------------------------------------------------- tanh RNN
// fwd P: B, H, h_all(T+1,B,H; slot t+1 holds the pre-activation on entry), len
template <typename T>
void rnn_fwd(const i64* P, i64 t) {
  const i64 B = P[0], H = P[1];
  T* h = (T*)P[2] + (t + 1) * B * H;
  const i64* len = (const i64*)P[3];
  const int nth = threads_for(B * H);
#pragma omp parallel for num_threads(nth) schedule(static) if (nth > 1)
  for (i64 b = 0; b < B; ++b) {
    T* RS hb = h + b * H;
    if (!active(len, b, t)) {
      IVDEP
      for (i64 j = 0; j < H; ++j) hb[j] = 0;
      continue;
    }
    IVDEP
    for (i64 j = 0; j < H; ++j) hb[j] = Num<T>::tnh(hb[j]);
  }
}

// bwd: AUX2 = h_all. REC = dG_{t+1} @ W_hh. dG out (B,H).
template <typename T, typename C, bool N>
void rnn_bwd_impl(const i64* P, i64 t, const Scale& sc) {
  const i64 B = P[B_], H = P[H_];
  const C a = (C)sc.a, bb = (C)sc.b;
  const T* up = (const T*)P[UP] + t * P[UP_TS];
  const i64 urs = P[UP_RS];
  const T* rec = (const T*)P[REC];
  const T* h = (const T*)P[AUX2] + (t + 1) * B * H;
  T* dG = (T*)P[DG];
  const i64* len = (const i64*)P[LEN];
  auto rows = [&](i64 b0, i64 b1, T* RS cs, double* RS sqrow) {
    for (i64 b = b0; b < b1; ++b) {
      T* RS d = dG + b * H;
      if (!active(len, b, t)) {
        IVDEP
        for (i64 j = 0; j < H; ++j) d[j] = 0;
        continue;
      }
      const T* RS ub = up + b * urs;
      const T* RS rb = rec + b * H;
      const T* RS hb = h + b * H;
      IVDEP
      for (i64 j = 0; j < H; ++j) {
        T dh = (T)(a * (C)ub[j] + bb * (C)rb[j]);
        T v = dh * (1 - hb[j] * hb[j]);
        d[j] = v;
        cs[j] += v;
        if (N) sqrow[j] += (double)dh * (double)dh;
      }
    }
  };
  run_rows<T>(B, H, H, (T*)P[CS] + t * H, N ? (double*)P[SQROW] : nullptr, rows);
}

template <typename T>
int rnn_bwd(const i64* P, i64 t) { DISPATCH_BWD(rnn_bwd_impl, false) }

// x[t, :] *= 2**e[t] for t < nt (rows of n elements), flushing results below the smallest
// normal number to zero without ever forming a denormal.
template <typename T>
void scale_rows(T* x, i64 nt, i64 n, const int* e) {
  const double lo = (double)(sizeof(T) == 4 ? FLT_MIN : DBL_MIN);
  for (i64 t = 0; t < nt; ++t) {
    T* RS row = x + t * n;
    const double w = std::ldexp(1.0, e[t]);
    if (w == 1.0) continue;
    const double thr = lo / w;  // |v| < thr  <=>  |v * w| < lo
    IVDEP
    for (i64 i = 0; i < n; ++i) {
      double v = (double)row[i];
      double av = v < 0 ? -v : v;
      row[i] = av < thr ? (T)0 : (T)(v * w);
    }
  }
}

}  // namespace

#define EXPORT(name, ret)                                                   \
  extern "C" ret name##_f32(const i64* P, i64 t) { return name<float>(P, t); } \
  extern "C" ret name##_f64(const i64* P, i64 t) { return name<double>(P, t); }
EXPORT(lstm_fwd, void)
EXPORT(lstm_bwd, int)
EXPORT(gru_fwd, void)
EXPORT(gru_bwd, int)
EXPORT(rnn_fwd, void)
EXPORT(rnn_bwd, int)
extern "C" void scale_rows_f32(float* x, i64 nt, i64 n, const int* e) {
  scale_rows<float>(x, nt, n, e);
}
extern "C" void scale_rows_f64(double* x, i64 nt, i64 n, const int* e) {
  scale_rows<double>(x, nt, n, e);
}
extern "C" int seqbench_abi_version() { return 1; }
extern "C" int seqbench_set_threading(int on) {
  g_threading = on;
#ifdef _OPENMP
  return 1;
#else
  return 0;
#endif
}
"""

_native_lock = threading.Lock()
_native_state: dict[str, object] = {}


def _cache_dir() -> str:
    env = os.environ.get("SEQBENCH_CACHE_DIR")
    if env:
        return env
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return os.path.join(base, "seqbench")


def _cpu_signature() -> str:
    try:
        with open("/proc/cpuinfo") as fh:
            for line in fh:
                if line.startswith(("flags", "Features")):
                    return line
    except OSError:
        pass
    import platform

    return platform.processor() + platform.machine()


def _libgomp_paths() -> set[str]:
    try:
        with open("/proc/self/maps") as fh:
            return {line.split()[-1] for line in fh if "libgomp" in line}
    except OSError:
        return set()


def _build_native() -> ctypes.CDLL | None:
    if os.environ.get("SEQBENCH_NATIVE", "1") == "0":
        return None
    compiler = shutil.which(os.environ.get("CXX", "c++")) or shutil.which("g++")
    if compiler is None or sys.platform == "win32":
        return None
    base = ["-O3", "-std=c++17", "-fPIC", "-shared"]
    native = ["-march=native", "-mprefer-vector-width=512"]
    flag_sets = [base + native, base + native[:1], base]
    # Share torch's OpenMP thread pool when torch runs on GNU OpenMP (libgomp already loaded);
    # never bring a second OpenMP runtime into the process.
    gomp_before = _libgomp_paths()
    if gomp_before and os.environ.get("SEQBENCH_NATIVE_OPENMP", "1") != "0":
        flag_sets.insert(0, [*base, *native, "-fopenmp"])
    last_err = ""
    for flags in flag_sets:
        key = hashlib.sha256(
            "\0".join([_CPP_SOURCE, compiler, *flags, _cpu_signature()]).encode()
        ).hexdigest()[:16]
        for directory in (_cache_dir(), os.path.join(tempfile.gettempdir(), "seqbench-cache")):
            path = os.path.join(directory, f"bptt_{key}.so")
            try:
                if not os.path.exists(path):
                    os.makedirs(directory, exist_ok=True)
                    src = os.path.join(directory, f"bptt_{key}.{os.getpid()}.cpp")
                    tmp = path + f".{os.getpid()}.tmp"
                    with open(src, "w") as fh:
                        fh.write(_CPP_SOURCE)
                    proc = subprocess.run(
                        [compiler, *flags, src, "-o", tmp],
                        capture_output=True,
                        text=True,
                        timeout=300,
                    )
                    os.unlink(src)
                    if proc.returncode != 0:
                        last_err = proc.stderr[-2000:]
                        break  # try the next flag set
                    os.replace(tmp, path)  # atomic: concurrent builders are harmless
                lib = ctypes.CDLL(path)
                if lib.seqbench_abi_version() != 1:
                    continue
                if "-fopenmp" in flags and _libgomp_paths() != gomp_before:
                    # a second OpenMP runtime got loaded: use the serial build instead
                    break
                return lib
            except (OSError, subprocess.SubprocessError) as exc:
                last_err = repr(exc)
                continue
    warnings.warn(
        f"seqbench.engine: could not build the native kernels, using the pure-torch path "
        f"(slower). Last error: {last_err}",
        RuntimeWarning,
        stacklevel=3,
    )
    return None


class _Native:
    def __init__(self, lib: ctypes.CDLL) -> None:
        self.lib = lib
        lib.seqbench_set_threading.argtypes = [ctypes.c_int]
        lib.seqbench_set_threading.restype = ctypes.c_int
        self.openmp = bool(lib.seqbench_set_threading(1 if _threading_wanted() else 0))
        p = ctypes.POINTER(ctypes.c_int64)
        self.fns: dict[tuple[str, torch.dtype], ctypes._CFuncPtr] = {}
        for dtype, suffix in ((torch.float32, "f32"), (torch.float64, "f64")):
            for name, restype in (
                ("lstm_fwd", None),
                ("lstm_bwd", ctypes.c_int),
                ("gru_fwd", None),
                ("gru_bwd", ctypes.c_int),
                ("rnn_fwd", None),
                ("rnn_bwd", ctypes.c_int),
            ):
                fn = getattr(lib, f"{name}_{suffix}")
                fn.argtypes = [p, ctypes.c_int64]
                fn.restype = restype
                self.fns[(name, dtype)] = fn
            fn = getattr(lib, f"scale_rows_{suffix}")
            fn.argtypes = [ctypes.c_void_p, ctypes.c_int64, ctypes.c_int64, ctypes.c_void_p]
            fn.restype = None
            self.fns[("scale_rows", dtype)] = fn


def _threading_wanted() -> bool:
    return os.environ.get("SEQBENCH_NATIVE_OPENMP", "1") != "0" and bool(_libgomp_paths())


def _native() -> _Native | None:
    with _native_lock:
        if "lib" not in _native_state:
            lib = _build_native()
            _native_state["lib"] = _Native(lib) if lib is not None else None
        return _native_state["lib"]  # type: ignore[return-value]


def native_available() -> bool:
    """True if the compiled elementwise kernels are usable (builds them on first call)."""
    return _native() is not None


def _use_native(x: torch.Tensor) -> _Native | None:
    if x.device.type != "cpu" or x.dtype not in (torch.float32, torch.float64):
        return None
    if os.environ.get("SEQBENCH_NATIVE", "1") == "0":
        return None
    return _native()


def _params(*values: int) -> ctypes.Array:
    return (ctypes.c_int64 * len(values))(*values)


def _ptr(t: torch.Tensor | None) -> int:
    return 0 if t is None else t.data_ptr()


# --------------------------------------------------------------------------------------------
# Buffer cache. Large fresh allocations are mmap'ed by malloc and every page then costs a page
# fault on first touch (3x slower than writing warm memory on the benchmark machine), so the
# big per-call buffers are recycled. A cached buffer is handed out again only when nothing but
# the cache references its storage any more (autograd released its saved tensors, the caller
# dropped the output), which is checked with torch's storage use count; where that private
# API is missing, buffers are simply allocated fresh.
# --------------------------------------------------------------------------------------------

_POOL_MIN_BYTES = 1 << 20


def _storage_use_count(t: torch.Tensor) -> int:
    return torch._C._storage_Use_Count(t.untyped_storage()._cdata)  # type: ignore[attr-defined]


class _BufferCache:
    def __init__(self, max_bytes: int) -> None:
        self.max_bytes = max_bytes
        self._lock = threading.Lock()
        self._entries: list[tuple[tuple, torch.Tensor, int]] = []  # LRU order: (key, buf, base)
        try:
            probe = torch.empty(1)
            _storage_use_count(probe)
            self.enabled = True
        except Exception:  # pragma: no cover - depends on torch internals
            self.enabled = False

    def nbytes(self) -> int:
        return sum(b.numel() * b.element_size() for _, b, _ in self._entries)

    def clear(self) -> None:
        with self._lock:
            self._entries.clear()

    def empty(self, shape: tuple[int, ...], dtype: torch.dtype, device: torch.device):
        numel = math.prod(shape)
        nbytes = numel * dtype.itemsize
        if not self.enabled or device.type != "cpu" or nbytes < _POOL_MIN_BYTES:
            return torch.empty(shape, dtype=dtype, device=device)
        key = (numel, dtype)
        with self._lock:
            for k, (ekey, buf, base) in enumerate(self._entries):
                if ekey == key and _storage_use_count(buf) <= base:
                    self._entries.append(self._entries.pop(k))
                    return buf.view(shape)
            buf = torch.empty(numel, dtype=dtype, device=device)
            base = _storage_use_count(buf)
            total = self.nbytes() + nbytes
            k = 0
            while total > self.max_bytes and k < len(self._entries):
                _, old, old_base = self._entries[k]
                if _storage_use_count(old) <= old_base:  # evict free buffers, oldest first
                    total -= old.numel() * old.element_size()
                    self._entries.pop(k)
                else:
                    k += 1
            if total <= self.max_bytes:
                self._entries.append((key, buf, base))
            return buf.view(shape)


_cache = _BufferCache(int(float(os.environ.get("SEQBENCH_BUFFER_CACHE_MB", "1024")) * 2**20))


def clear_buffer_cache() -> None:
    """Drop the engine's cached work buffers (they are reused across calls to avoid page
    faults; at most ``SEQBENCH_BUFFER_CACHE_MB`` MiB, default 1024, are kept)."""
    _cache.clear()


# --------------------------------------------------------------------------------------------
# Forward, one layer. Returns (h_all (T+1,B,H) with h_all[0] = 0, saved tensors)
# --------------------------------------------------------------------------------------------


def _chunk_steps(T: int, row_bytes: int) -> int:
    """Steps per input-projection chunk: about 1 MiB, so a chunk is still in L2 when the
    per-step kernels read it."""
    return max(1, min(T, (1 << 20) // max(1, row_bytes)))


def _layer_forward(cell, inp, w_ih, w_hh, b_ih, b_hh, lens_cpu, valid, nat):
    T, B, _ = inp.shape
    H = w_hh.shape[1]
    dt, dev = inp.dtype, inp.device
    G = _GATES[cell] * H
    h_all = _cache.empty((T + 1, B, H), dt, dev)
    h_all[0].zero_()
    w_hh_t, w_ih_t = w_hh.t(), w_ih.t()
    bias = b_ih if cell == "gru" else b_ih + b_hh
    # the input projection for all steps; native path: in chunks just ahead of the recurrence
    proj = h_all[1:] if cell == "rnn" else _cache.empty((T, B, G), dt, dev)
    K = _chunk_steps(T, B * G * inp.element_size()) if nat is not None else T

    def project(t: int) -> None:
        if t % K == 0:
            t1 = min(T, t + K)
            torch.addmm(
                bias, inp[t:t1].reshape(-1, inp.shape[2]), w_ih_t, out=proj[t:t1].view(-1, G)
            )

    lp = _ptr(lens_cpu)
    if cell == "lstm":
        act = proj
        c_all = _cache.empty((T + 1, B, H), dt, dev)
        c_all[0].zero_()
        if nat is not None:
            fn = nat.fns[("lstm_fwd", dt)]
            P = _params(B, H, act.data_ptr(), c_all.data_ptr(), h_all.data_ptr(), lp)
            acts, hs = act.unbind(0), h_all.unbind(0)
            for t in range(T):
                project(t)
                if t:
                    acts[t].addmm_(hs[t], w_hh_t)
                fn(P, t)
        else:
            project(0)
            for t in range(T):
                g = act[t]
                if t:
                    g.addmm_(h_all[t], w_hh_t)
                g[:, : 2 * H].sigmoid_()
                g[:, 2 * H : 3 * H].tanh_()
                g[:, 3 * H :].sigmoid_()
                i, f, gg, o = g.chunk(4, 1)
                c = torch.addcmul(f * c_all[t], i, gg, out=c_all[t + 1])
                torch.mul(o, torch.tanh(c), out=h_all[t + 1])
                if valid is not None:
                    h_all[t + 1].mul_(valid[t])
        return h_all, (act, c_all)
    if cell == "gru":
        gi = proj
        ghn = _cache.empty((T, B, H), dt, dev)
        gh = torch.empty(B, 3 * H, dtype=dt, device=dev)
        if nat is not None:
            fn = nat.fns[("gru_fwd", dt)]
            P = _params(B, H, gi.data_ptr(), gh.data_ptr(), ghn.data_ptr(), h_all.data_ptr(), lp)
            hs = h_all.unbind(0)
            for t in range(T):
                project(t)
                if t:
                    torch.addmm(b_hh, hs[t], w_hh_t, out=gh)
                else:
                    gh.copy_(b_hh.expand(B, 3 * H))
                fn(P, t)
        else:
            project(0)
            for t in range(T):
                torch.addmm(b_hh, h_all[t], w_hh_t, out=gh)
                x = gi[t]
                x[:, : 2 * H].add_(gh[:, : 2 * H]).sigmoid_()
                r, z, n = x.chunk(3, 1)
                ghn[t].copy_(gh[:, 2 * H :])
                n.addcmul_(r, ghn[t]).tanh_()
                h = torch.lerp(n, h_all[t], z, out=h_all[t + 1])
                if valid is not None:
                    h.mul_(valid[t])
        return h_all, (gi, ghn)
    # tanh RNN: the pre-activations are written straight into h_all[1:]
    if nat is not None:
        fn = nat.fns[("rnn_fwd", dt)]
        P = _params(B, H, h_all.data_ptr(), lp)
        hs = h_all.unbind(0)
        for t in range(T):
            project(t)
            if t:
                hs[t + 1].addmm_(hs[t], w_hh_t)
            fn(P, t)
    else:
        project(0)
        for t in range(T):
            h = h_all[t + 1]
            if t:
                h.addmm_(h_all[t], w_hh_t)
            h.tanh_()
            if valid is not None:
                h.mul_(valid[t])
    return h_all, ()


# --------------------------------------------------------------------------------------------
# Backward, one layer (native path)
# --------------------------------------------------------------------------------------------


def _ldexp_tensor(x: torch.Tensor, e: int, dtype: torch.dtype) -> torch.Tensor:
    """x * 2**e computed in float64, returned as dtype."""
    if e == 0:
        return x.to(dtype)
    if e > 1023:
        scale = math.inf
    elif e < -1074:
        scale = 0.0
    else:
        scale = math.ldexp(1.0, e)
    return (x.double() * scale).to(dtype)


class _LayerGrads:
    __slots__ = ("d_in", "d_in_exp", "db_hh", "db_ih", "dw_hh", "dw_ih", "log10", "norms")


def _layer_backward_native(
    nat, cell, up, up_ts, up_rs, up_exp, inp, h_all, saved, w_ih, w_hh, lens_cpu,
    need_wgrad, need_din, want_norms,
):  # fmt: skip
    T, B, n_in = inp.shape
    H = w_hh.shape[1]
    dt, dev = inp.dtype, inp.device
    G = {"rnn": H, "lstm": 4 * H, "gru": 4 * H}[cell]
    GI = {"rnn": H, "lstm": 4 * H, "gru": 3 * H}[cell]  # rows of w_ih
    cut = _CUT[dt]
    dGs = torch.empty(B, G, dtype=dt, device=dev)
    rec = torch.zeros(B, H, dtype=dt, device=dev)
    cc = torch.zeros(B, H, dtype=dt, device=dev) if cell == "lstm" else None
    st = torch.zeros(2, dtype=torch.int32)
    sq = torch.empty(T, dtype=torch.float64)
    ms = torch.empty(T, dtype=torch.int32)
    cs = torch.empty(T, G, dtype=dt)  # per-step column sums of dG (bias gradients)
    sqrow = torch.empty(H, dtype=torch.float64)
    ms_c = (ctypes.c_int * T).from_address(ms.data_ptr())
    if cell == "lstm":
        act, aux1, aux2 = saved[0], saved[1], None
    elif cell == "gru":
        act, aux1, aux2 = saved[0], saved[1], h_all
    else:
        act, aux1, aux2 = None, None, h_all
    P = _params(
        B, H, up.data_ptr(), up_ts, up_rs, _ptr(up_exp), rec.data_ptr(), _ptr(cc), st.data_ptr(),
        _ptr(act), _ptr(aux1), _ptr(aux2), dGs.data_ptr(), sq.data_ptr(), ms.data_ptr(),
        cs.data_ptr(), _ptr(lens_cpu), sqrow.data_ptr() if want_norms else 0,
    )  # fmt: skip
    fn = nat.fns[(f"{cell}_bwd", dt)]
    if cell == "gru":
        # dG columns: [dn_pre, dr, dz, dn_pre*r]; input part (n, r, z order) and hidden part
        dg_in, dg_h = dGs[:, : 3 * H], dGs[:, H:]
        w_in = torch.cat([w_ih[2 * H :], w_ih[: 2 * H]])  # rows n, r, z
    else:
        dg_in = dg_h = dGs
        w_in = w_ih
    acc_hh = torch.zeros(G if cell != "gru" else 3 * H, H, dtype=dt, device=dev)
    acc_ih = torch.zeros(GI, n_in, dtype=dt, device=dev)
    d_in = _cache.empty((T, B, n_in), dt, dev) if need_din else None
    dg_h_t, dg_in_t = dg_h.t(), dg_in.t()
    hs, xs = h_all.unbind(0), inp.unbind(0)
    d_ins = d_in.unbind(0) if d_in is not None else None
    R = None
    for t in range(T - 1, -1, -1):
        nz = fn(P, t)
        if not nz:  # no signal at or after this step (e.g. padding): everything is zero
            if cell != "gru":
                rec.zero_()
            if d_ins is not None:
                d_ins[t].zero_()
            continue
        if t:
            if cell == "gru":
                rec.addmm_(dg_h, w_hh)
            else:
                torch.mm(dGs, w_hh, out=rec)
        if d_ins is not None:
            torch.mm(dg_in, w_in, out=d_ins[t])
        if need_wgrad:
            m = ms_c[t]
            if R is None:
                R = m
            elif m > R + 30:
                acc_hh.mul_(math.ldexp(1.0, R - m))
                acc_ih.mul_(math.ldexp(1.0, R - m))
                R = m
            d = m - R
            if d >= -cut:
                alpha = math.ldexp(1.0, d)
                if t:
                    acc_hh.addmm_(dg_h_t, hs[t], alpha=alpha)
                acc_ih.addmm_(dg_in_t, xs[t], alpha=alpha)
    out = _LayerGrads()
    ms64 = ms.double()
    out.norms = sq.sqrt() * torch.exp2(ms64)
    out.log10 = 0.5 * torch.log10(sq) + ms64 * math.log10(2.0)
    out.d_in, out.d_in_exp = d_in, ms
    out.dw_hh = out.dw_ih = out.db_hh = out.db_ih = None
    if need_wgrad:
        R = 0 if R is None else R
        out.dw_hh = _ldexp_tensor(acc_hh, R, dt)
        dw_ih = _ldexp_tensor(acc_ih, R, dt)
        colsum = (cs.double() * torch.exp2(ms64)[:, None]).sum(0)
        if cell == "gru":
            dw_ih = torch.cat([dw_ih[H:], dw_ih[:H]])  # n, r, z -> r, z, n
            out.db_ih = torch.cat([colsum[H : 3 * H], colsum[:H]]).to(dt)
            out.db_hh = colsum[H:].to(dt)
        else:
            out.db_ih = out.db_hh = colsum.to(dt)
        out.dw_ih = dw_ih
    return out


# --------------------------------------------------------------------------------------------
# Backward, one layer (pure torch path; same algorithm, no host synchronisation per step)
# --------------------------------------------------------------------------------------------


def _layer_backward_torch(
    cell, up_bt, up_exp, inp, h_all, saved, w_ih, w_hh, valid, need_wgrad, need_din, want_norms,
):  # fmt: skip
    """up_bt(t) -> (B,H) upstream at step t; up_exp: (T,) float64 exponents or None."""
    T, B, n_in = inp.shape
    H = w_hh.shape[1]
    dt, dev = inp.dtype, inp.device
    G = H if cell == "rnn" else 4 * H
    cut = float(_CUT.get(dt, 60))
    neg = torch.tensor(float(_NEG), dtype=torch.float64, device=dev)
    zero64 = torch.zeros((), dtype=torch.float64, device=dev)
    dG = torch.zeros(T, B, G, dtype=dt, device=dev)
    rec = torch.zeros(B, H, dtype=dt, device=dev)
    cc = torch.zeros(B, H, dtype=dt, device=dev) if cell == "lstm" else None
    s = zero64.clone()
    sq = torch.zeros(T, dtype=torch.float64, device=dev)
    ms = torch.zeros(T, dtype=torch.float64, device=dev)
    nzs = torch.zeros(T, dtype=torch.bool, device=dev)

    def expo(t: torch.Tensor, base: torch.Tensor) -> torch.Tensor:
        mx = t.abs().amax().double()
        ok = mx > 0
        e = torch.frexp(torch.where(torch.isfinite(mx), mx, 1.0))[1].double() - 1.0
        return torch.where(ok, base + e, neg)

    for t in range(T - 1, -1, -1):
        u = up_bt(t)
        if valid is not None:
            u = torch.where(valid[t] > 0, u, 0.0)
        sig = up_exp[t] if up_exp is not None else zero64
        eu = expo(u, sig)
        er = expo(rec if cc is None else torch.stack([rec, cc]), s)
        m = torch.maximum(eu, er)
        nz = m > neg
        m = torch.where(nz, m, s)
        a = torch.where((eu == neg) | (eu - m < -cut), 0.0, torch.exp2(sig - m))
        b = torch.where((er == neg) | (er - m < -cut), 0.0, torch.exp2(s - m))
        dh = (u.double() * a + rec.double() * b).to(dt)
        if want_norms:
            sq[t] = dh.double().square().sum()
        ms[t] = m
        nzs[t] = nz
        s = m
        d = dG[t]
        if cell == "lstm":
            act, c_all = saved
            i, f, g, o = act[t].chunk(4, 1)
            tc = torch.tanh(c_all[t + 1])
            dc = (cc.double() * b).to(dt) + dh * o * (1 - tc * tc)
            di, df, dgg, do = d.chunk(4, 1)
            torch.mul(dc * g, i * (1 - i), out=di)
            torch.mul(dc * c_all[t], f * (1 - f), out=df)
            torch.mul(dc * i, 1 - g * g, out=dgg)
            torch.mul(dh * tc, o * (1 - o), out=do)
            cc = dc * f
            if t:
                rec = d @ w_hh
        elif cell == "gru":
            act, ghn = saved
            r, z, n = act[t].chunk(3, 1)
            dnp, dr, dz, dnr = d.chunk(4, 1)
            torch.mul(dh * (1 - z), 1 - n * n, out=dnp)
            torch.mul(dnp * ghn[t], r * (1 - r), out=dr)
            torch.mul(dh * (h_all[t] - n), z * (1 - z), out=dz)
            torch.mul(dnp, r, out=dnr)
            rec = dh * z + d[:, H:] @ w_hh
        else:
            torch.mul(dh, 1 - h_all[t + 1].square(), out=d)
            if t:
                rec = d @ w_hh
    out = _LayerGrads()
    out.norms = (sq.sqrt() * torch.exp2(ms)).cpu()
    out.log10 = (0.5 * torch.log10(sq) + ms * math.log10(2.0)).cpu()
    if cell == "gru":
        dg_in, dg_h = dG[..., : 3 * H], dG[..., H:]
        w_in = torch.cat([w_ih[2 * H :], w_ih[: 2 * H]])
    else:
        dg_in = dg_h = dG
        w_in = w_ih
    out.d_in = dg_in @ w_in if need_din else None  # normalised rows; true = row * 2**ms
    out.d_in_exp = ms
    out.dw_hh = out.dw_ih = out.db_hh = out.db_ih = None
    if need_wgrad:
        big = torch.where(nzs, ms, neg).amax()
        wts = torch.where(nzs & (ms - big >= -cut), torch.exp2(ms - big), 0.0)
        rel_h = dg_h * wts.to(dt)[:, None, None]
        rel_i = dg_in * wts.to(dt)[:, None, None]
        scale = torch.exp2(torch.clamp(big, -1100.0, 1100.0))
        dw_hh = rel_h[1:].reshape(-1, rel_h.shape[-1]).t() @ h_all[1:T].reshape(-1, H)
        dw_ih = rel_i.reshape(-1, rel_i.shape[-1]).t() @ inp.reshape(-1, n_in)
        out.dw_hh = (dw_hh.double() * scale).to(dt)
        dw_ih = (dw_ih.double() * scale).to(dt)
        colsum = (dG.double().sum(1) * torch.exp2(ms)[:, None]).sum(0)
        if cell == "gru":
            dw_ih = torch.cat([dw_ih[H:], dw_ih[:H]])
            out.db_ih = torch.cat([colsum[H : 3 * H], colsum[:H]]).to(dt)
            out.db_hh = colsum[H:].to(dt)
        else:
            out.db_ih = out.db_hh = colsum.to(dt)
        out.dw_ih = dw_ih
    return out


# --------------------------------------------------------------------------------------------
# autograd.Function
# --------------------------------------------------------------------------------------------


class _Recurrent(torch.autograd.Function):
    @staticmethod
    def forward(ctx, cell, num_layers, hidden_size, dropout, training, lengths, recorder, x,
                *weights):  # fmt: skip
        B, T, _ = x.shape
        dt, dev = x.dtype, x.device
        nat = _use_native(x)
        valid = lens_cpu = None
        if lengths is not None:
            lens_cpu = lengths.to(device="cpu", dtype=torch.int64).clamp(0, T).contiguous()
            steps = torch.arange(T, device=dev)[:, None]
            valid_b = steps < lens_cpu.to(dev)[None, :]  # (T, B) bool
            valid = valid_b.to(dt)[..., None]  # (T, B, 1)
        inp = _cache.empty((T, B, x.shape[2]), dt, dev).copy_(x.transpose(0, 1))
        if valid is not None:
            inp.masked_fill_(~valid_b[..., None], 0.0)
        masks = []
        if training and dropout > 0 and num_layers > 1:
            masks = dropout_masks(num_layers, T, B, hidden_size, dropout, dtype=dt, device=dev)
        inputs, h_alls, saved_all = [], [], []
        for layer in range(num_layers):
            w_ih, w_hh, b_ih, b_hh = weights[4 * layer : 4 * layer + 4]
            h_all, saved = _layer_forward(cell, inp, w_ih, w_hh, b_ih, b_hh, lens_cpu, valid, nat)
            inputs.append(inp)
            h_alls.append(h_all)
            saved_all.append(saved)
            inp = h_all[1:]
            if masks and layer < num_layers - 1:
                inp = torch.mul(inp, masks[layer], out=_cache.empty(inp.shape, dt, dev))
        ctx.meta = (cell, num_layers, len(saved_all[0]), recorder, nat is not None)
        flat_saved = [t for s in saved_all for t in s]
        ctx.save_for_backward(*weights, *inputs, *h_alls, *flat_saved, *masks)
        ctx.lens = (lens_cpu, valid)
        ctx.has_masks = bool(masks)
        return h_alls[-1][1:].transpose(0, 1)

    @staticmethod
    def backward(ctx, grad_out):
        cell, L, nsaved, recorder, use_nat = ctx.meta
        tensors = ctx.saved_tensors
        weights = tensors[: 4 * L]
        inputs = tensors[4 * L : 5 * L]
        h_alls = tensors[5 * L : 6 * L]
        rest = tensors[6 * L :]
        saved_all = [rest[i * nsaved : (i + 1) * nsaved] for i in range(L)]
        masks = rest[L * nsaved :]
        lens_cpu, valid = ctx.lens
        need_x = ctx.needs_input_grad[7]
        need_w = any(ctx.needs_input_grad[8:])
        nat = _native() if use_nat else None
        dt = grad_out.dtype
        grads: list[torch.Tensor | None] = [None] * (4 * L)
        norms, logs = [], []
        # upstream for the top layer: grad_out (B, T, H), exponent 0
        if grad_out.stride(-1) != 1:
            grad_out = grad_out.contiguous()
        up, up_exp = grad_out, None
        up_ts, up_rs = grad_out.stride(1), grad_out.stride(0)
        x_grad = None
        want_norms = recorder is not None
        for layer in range(L - 1, -1, -1):
            w_ih, w_hh = weights[4 * layer], weights[4 * layer + 1]
            need_din = layer > 0 or need_x
            if nat is not None:
                g = _layer_backward_native(
                    nat, cell, up, up_ts, up_rs, up_exp, inputs[layer], h_alls[layer],
                    saved_all[layer], w_ih, w_hh, lens_cpu, need_w, need_din, want_norms,
                )  # fmt: skip
            else:
                if up_exp is None:
                    go = up
                    up_bt = lambda t, go=go: go[:, t]  # noqa: E731
                else:
                    up_bt = up.__getitem__
                g = _layer_backward_torch(
                    cell, up_bt, up_exp, inputs[layer], h_alls[layer], saved_all[layer], w_ih,
                    w_hh, valid, need_w, need_din, want_norms,
                )  # fmt: skip
            norms.append(g.norms)
            logs.append(g.log10)
            if need_w:
                grads[4 * layer : 4 * layer + 4] = [g.dw_ih, g.dw_hh, g.db_ih, g.db_hh]
            if layer > 0:
                up = g.d_in
                if ctx.has_masks:
                    up = torch.mul(up, masks[layer - 1], out=_cache.empty(up.shape, dt, up.device))
                up_exp = g.d_in_exp
                if nat is not None:
                    up_ts, up_rs = up.stride(0), up.stride(1)
                else:
                    up_exp = up_exp.double() if up_exp.dtype != torch.float64 else up_exp
            elif need_x:
                dx = g.d_in
                if nat is not None:
                    nat.fns[("scale_rows", dt)](
                        dx.data_ptr(), dx.shape[0], dx[0].numel(), g.d_in_exp.data_ptr()
                    )
                else:
                    dx = (dx.double() * torch.exp2(g.d_in_exp)[:, None, None]).to(dt)
                x_grad = dx.transpose(0, 1)
        if recorder is not None:
            recorder._record(
                torch.stack(norms[::-1]).to("cpu", torch.float64),
                torch.stack(logs[::-1]).to("cpu", torch.float64),
            )
        for k in range(4 * L):
            if not ctx.needs_input_grad[8 + k]:
                grads[k] = None
        return (None, None, None, None, None, None, None, x_grad, *grads)


def recurrent(
    cell: str,
    x: torch.Tensor,
    weights: list[torch.Tensor],
    *,
    num_layers: int,
    hidden_size: int,
    dropout: float = 0.0,
    training: bool = False,
    lengths: torch.Tensor | None = None,
    recorder: GradNormRecorder | None = None,
) -> torch.Tensor:
    """Run a stacked RNN ('rnn' = tanh, 'lstm', 'gru') over x (B, T, I) (batch_first) with zero
    initial state; return the top layer's output sequence (B, T, H).

    Differentiable w.r.t. ``x`` and every weight via a :class:`torch.autograd.Function` whose
    backward is the hand-written BPTT described in the module docstring.

    ``weights`` is exactly ``list(module._flat_weights)`` of an ``nn.RNN``/``nn.LSTM``/``nn.GRU``
    built with ``batch_first=True, bias=True, bidirectional=False``: per layer
    ``[w_ih, w_hh, b_ih, b_hh]`` in PyTorch's gate order (LSTM i, f, g, o; GRU r, z, n with
    ``n = tanh(W_in x + b_in + r * (W_hn h + b_hn))``).

    ``dropout``/``training``: with ``dropout > 0`` and ``training=True``, inverted-dropout masks
    from :func:`dropout_masks` (torch's global RNG) multiply each non-top layer's output
    sequence before it enters the next layer.

    ``lengths`` (B,) int64: for ``t >= lengths[b]`` the output of sequence ``b`` is zero and
    nothing at those positions influences the result or the gradients (the carried state is not
    observable since no final state is returned); padded inputs may hold any finite or
    non-finite values. Padded positions contribute zero to the norms.

    ``recorder``: if given, each backward stores ``norms[l, t] = ||dL/dh_t^{(l)}||_F`` (float64,
    CPU, shape ``(num_layers, T)``), where ``h_t^{(l)}`` is layer ``l``'s output at step ``t``
    *before* the inter-layer dropout; see :class:`GradNormRecorder`.

    The returned tensor is a transposed view of a time-major buffer (like ``nn.LSTM``'s own
    ``batch_first`` output on CPU); modifying it in place is refused by autograd.
    """
    if cell not in CELLS:
        raise ValueError(f"cell must be one of {CELLS}, got {cell!r}")
    if x.dim() != 3:
        raise ValueError(f"x must be (B, T, I), got shape {tuple(x.shape)}")
    if len(weights) != 4 * num_layers:
        raise ValueError(
            f"expected {4 * num_layers} weights (w_ih, w_hh, b_ih, b_hh per layer), "
            f"got {len(weights)}; bias=False and bidirectional modules are not supported"
        )
    G = _GATES[cell] * hidden_size
    for layer in range(num_layers):
        w_ih, w_hh, b_ih, b_hh = weights[4 * layer : 4 * layer + 4]
        in_size = x.shape[2] if layer == 0 else hidden_size
        if (
            tuple(w_ih.shape) != (G, in_size)
            or tuple(w_hh.shape) != (G, hidden_size)
            or tuple(b_ih.shape) != (G,)
            or tuple(b_hh.shape) != (G,)
        ):
            raise ValueError(f"layer {layer}: weight shapes do not match a {cell} layer")
        if any(w.dtype != x.dtype or w.device != x.device for w in (w_ih, w_hh, b_ih, b_hh)):
            raise ValueError("weights must have the dtype and device of x")
    if lengths is not None and lengths.shape != (x.shape[0],):
        raise ValueError(f"lengths must have shape (B,) = ({x.shape[0]},)")
    if not 0.0 <= dropout <= 1.0:
        raise ValueError(f"dropout must be in [0, 1], got {dropout}")
    if x.shape[1] == 0:
        raise ValueError("sequence length must be >= 1")
    return _Recurrent.apply(
        cell, num_layers, hidden_size, float(dropout), bool(training), lengths, recorder, x,
        *weights,
    )  # fmt: skip
