// seqbench fused BPTT kernels: what every kernel file shares.
//
// The engine (seqbench/engine/native.py) compiles seqbench/engine/csrc/engine.cpp and every
// cell's kernel file (seqbench/cells/<cell>.cpp) as one translation unit and calls the
// exported functions through ctypes. All buffers are contiguous; P is an int64 parameter block.
// seqbench/engine/constants.py reads the SEQBENCH_* numbers and the Bwd slot names below from
// this file, so Python and C++ cannot disagree about them.
#pragma once

#include <cfloat>
#include <climits>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <type_traits>
#include <vector>
#ifdef _OPENMP
#include <omp.h>
#endif

// ---- shared with Python (parsed: one `#define NAME integer` per line) ----
#define SEQBENCH_ABI 7                      // seqbench_abi_version() of a matching library
#define SEQBENCH_NEG -536870912             // -(2**29): "no signal" exponent sentinel
#define SEQBENCH_CUT_F32 60                 // within a sequence, a contribution 2**CUT below
#define SEQBENCH_CUT_F64 200                //   its dominant one is dropped (float32 / float64)
#define SEQBENCH_THREADING_MIN_WORK 32768   // B * columns from which a step is split over threads

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

// Backward parameter block (read by Python in this order: one name per slot, up to BWD_SLOTS).
// B_, H_: batch, hidden; UP (+ UP_TS, UP_RS: time and row strides): the upstream gradient;
// UP_EXP: int32 (T,B), in: the upstream's per-sequence exponents (zeros for the top layer),
// out (overwritten step by step): this layer's per-sequence exponents e[t,b]; REC: the
// recurrent carry (B,H); CC: the LSTM cell carry or 0; ST: int32 (1+B): the step's exponent,
// then each sequence's; ACT, AUX1, AUX2: the cell's saved forward buffers; DG: dG out
// (B, W*H); SQ, MS: per-step sum of squares and exponent M_t out; CS: per-step column sums of
// dG, then of a diagonal weight's gradient (T, (W+DIAG_W)*H) out; LEN: int64 lengths or 0;
// SQROW: H doubles of scratch, 0 = no norms;
// SQB: double (T,B) out, each sequence's sum of squares of dL/dh_t in its own scale
// 2**e[t,b] (0 at padding), or 0 = none (only read when SQROW is set: the lag profile).
enum Bwd { B_ = 0, H_, UP, UP_TS, UP_RS, UP_EXP, REC, CC, ST, ACT, AUX1, AUX2, DG, SQ, MS, CS,
           LEN, SQROW, SQB, BWD_SLOTS };

constexpr int NEG = SEQBENCH_NEG;

template <typename T> struct Num;

template <> struct Num<float> {
  typedef uint32_t U;
  static constexpr U MASK = 0x7fffffffu;
  static constexpr int CUT = SEQBENCH_CUT_F32;
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
  static constexpr int CUT = SEQBENCH_CUT_F64;
  static inline double sigm(double x) { return 1.0 / (1.0 + std::exp(-x)); }
  static inline double tnh(double x) { return std::tanh(x); }
};

template <typename T>
inline typename Num<T>::U maxabs(const T* RS x, i64 n) {
  typedef typename Num<T>::U U;
  U m = 0;
  IVDEP
  for (i64 i = 0; i < n; ++i) {  // vectorised (tests/test_vectorised.py)
    U u;
    std::memcpy(&u, x + i, sizeof(U));
    u &= Num<T>::MASK;
    m = u > m ? u : m;
  }
  return m;
}

// exponent (ilogb) of the value with bits u (sign cleared), offset by base; NEG for zero. Read
// from the exponent field for normal numbers (it runs per sequence and step).
template <typename T>
inline int expo(typename Num<T>::U u, int base) {
  constexpr int MANT = sizeof(T) == 4 ? 23 : 52, BIAS = sizeof(T) == 4 ? 127 : 1023;
  if (u == 0) return NEG;
  const int field = (int)(u >> MANT);
  if (field == 2 * BIAS + 1) return base;  // inf/nan: let them propagate
  if (field > 0) return base + field - BIAS;
  T v;  // subnormal
  std::memcpy(&v, &u, sizeof(T));
  return base + std::ilogb(v);
}

// 2**k exactly; built from its bits where it is a normal double (it runs per sequence and step)
inline double pow2(int k) {
  if (k < -1022 || k > 1023) return std::ldexp(1.0, k);
  const uint64_t bits = (uint64_t)(k + 1023) << 52;
  double v;
  std::memcpy(&v, &bits, sizeof(v));
  return v;
}

// The backward signal of sequence b at step t is carried as 2**e[t,b] * g[t,b] with g's
// largest entry about 1. "Dominant" is decided per sequence: within a sequence, a contribution
// (upstream or carry) more than 2**CUT below the larger one is dropped. A sequence within
// 2**CUT of the step's largest (M) shares M as its exponent; one further below keeps its own
// exponent, so its gradient survives, and is left out of the step's weight-gradient, bias and
// norm sums where it is below 2**-CUT of the dominant sequence (the norm adds it rescaled).
struct Scale {
  const double* ra;  // per-sequence scales: a_b = ra[b] (upstream), b_b = ra[B + b] (carry)
  int m;        // the step's exponent M (weights, bias sums, norms)
  bool nz;      // some sequence still carries a signal
  bool narrow;  // every per-sequence scale is a normal number of T (no double needed)
  bool sep;     // some sequence keeps its own exponent
};

inline bool active(const i64* len, i64 b, i64 t) { return len == nullptr || t < len[b]; }

template <typename T>
inline bool fits(double v) {
  return sizeof(T) == 8 || v == 0.0 || (v >= 0x1p-120 && v <= 0x1p120);
}

// Per sequence b: the exponents of its upstream (eu) and carry (er), its own dominant one, then
// its exponent e[t,b] and its scales a_b (upstream), b_b (carry) in Scale::ra; the kernel
// computes a_b*u + b_b*r. One pass over the rows reads what a per-block maximum reads.
template <typename T>
inline Scale bwd_scale(const i64* P, i64 t, i64 B, i64 H, bool with_cc) {
  const T* up = (const T*)P[UP] + t * P[UP_TS];
  const i64 urs = P[UP_RS];
  int* eb = (int*)P[UP_EXP] + t * B;  // in: the upstream's exponents; out: e[t, b]
  const i64* len = (const i64*)P[LEN];
  const T* rec = (const T*)P[REC];
  const T* cc = (const T*)P[CC];
  int* st = (int*)P[ST];
  static thread_local std::vector<double> scratch;
  if ((i64)scratch.size() < 2 * B) scratch.resize(2 * B);
  double* ra = scratch.data();
  double* rb = ra + B;
  constexpr int CUT = Num<T>::CUT;
  int M = NEG;
  for (i64 b = 0; b < B; ++b) {
    typename Num<T>::U mu = active(len, b, t) ? maxabs<T>(up + b * urs, H) : 0;
    typename Num<T>::U mr = maxabs<T>(rec + b * H, H);
    if (with_cc) {
      typename Num<T>::U v = maxabs<T>(cc + b * H, H);
      mr = v > mr ? v : mr;
    }
    const int eu = expo<T>(mu, eb[b]), er = expo<T>(mr, st[1 + b]);
    ra[b] = eu;  // exponents, exact in a double, until the scales replace them below
    rb[b] = er;
    const int own = eu > er ? eu : er;
    M = own > M ? own : M;
  }
  Scale sc;
  sc.ra = ra;
  sc.nz = false;
  sc.narrow = true;
  sc.sep = false;
  sc.m = M == NEG ? st[0] : M;
  for (i64 b = 0; b < B; ++b) {
    const int eu = (int)ra[b], er = (int)rb[b];
    const int own = eu > er ? eu : er;
    const bool sep = own != NEG && own < sc.m - CUT;
    const int e = sep ? own : sc.m;
    const int sig = eb[b];
    const double a = (eu == NEG || eu - own < -CUT) ? 0.0 : pow2(sig - e);
    const double c = (er == NEG || er - own < -CUT) ? 0.0 : pow2(st[1 + b] - e);
    ra[b] = a;
    rb[b] = c;
    eb[b] = e;
    st[1 + b] = e;
    sc.nz = sc.nz || a != 0.0 || c != 0.0;
    sc.narrow = sc.narrow && fits<T>(a) && fits<T>(c);
    sc.sep = sc.sep || sep;
  }
  return sc;
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
  return sc.nz ? (sc.sep ? 2 : 1) : 0;
}

// ---------------------------------------------------------------- threading
// With -fopenmp (only when torch's own libgomp is loaded, so the thread pool is shared), the
// batch rows of one step are split over torch's intra-op threads when there is enough work.
int g_threading = 1;

inline int threads_for(i64 work) {
#ifdef _OPENMP
  if (g_threading && work >= SEQBENCH_THREADING_MIN_WORK && !omp_in_parallel())
    return omp_get_max_threads();
#else
  (void)work;
#endif
  return 1;
}

// dst[j] = the sum over k < nth of parts[k * n + j], added in thread order.
template <typename A>
inline void sum_parts(A* RS dst, const A* RS parts, int nth, i64 n) {
  IVDEP
  for (i64 j = 0; j < n; ++j) dst[j] = 0;
  for (int k = 0; k < nth; ++k) {
    const A* RS p = parts + (size_t)k * n;
    IVDEP
    for (i64 j = 0; j < n; ++j) dst[j] += p[j];
  }
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
  sum_parts(cs, pcs.data(), nth, G);
  if (sqrow) sum_parts(sqrow, psq.data(), nth, H);
}

// A cell with a diagonal recurrent weight (IndRNN) declares DIAG_W (its blocks of weight_hh) and
// wdiag<C>(row, j, g, dw): unit j's contributions to those weights' gradients from its dG g; the
// loop sums them per step after the W*H bias columns of CS. Other cells declare nothing.
template <typename C, typename = void>
struct DiagW {
  static constexpr i64 value = 0;
};
template <typename C>
struct DiagW<C, std::void_t<decltype(C::DIAG_W)>> {
  static constexpr i64 value = C::DIAG_W;
};

// ---------------------------------------------------------------- the backward step of a cell
// Every cell's backward kernel is this loop; the cell supplies only its equations, as a struct
// Cell<T> with
//   W             columns of dG per hidden unit (dG is (B, W*H));
//   CELL_STATE    whether the cell carries a second state in CC (its scale joins REC's);
//   Cell(P, t)    the step's pointers into its saved buffers;
//   skip<C>(b, bb, rec_row)       a padded row: carry what must be carried;
//   unit<C>(b, j, dh, bb, rec_row, g)  unit j of row b: the W values of dG from dL/dh_t = dh.
// bb is row b's carry scale (each sequence has its own, see bwd_scale).
// C is the type in which the rescaling a*u + b*r is done (T when a, b are normal numbers of T).
// The scales are per sequence (bwd_scale); a sequence below the step's exponent (its own
// exponent e[t,b] != M) still gets its dG, but stays out of the bias sums (CS) and enters the
// norm's sum of squares rescaled by 2**(2*(e[t,b]-M)).
template <typename T, typename C, bool N, bool Q, typename Cell>
void bwd_rows(const i64* P, i64 t, const Scale& sc) {
  constexpr i64 W = Cell::W;
  constexpr i64 DW = DiagW<Cell>::value;
  const i64 B = P[B_], H = P[H_];
  const double* ra = sc.ra;
  const double* rbs = ra + B;
  const int* eb = (const int*)P[UP_EXP] + t * B;
  const T* up = (const T*)P[UP] + t * P[UP_TS];
  const i64 urs = P[UP_RS];
  T* rec = (T*)P[REC];
  T* dG = (T*)P[DG];
  double* sqb = Q ? (double*)P[SQB] + t * B : nullptr;
  const i64* len = (const i64*)P[LEN];
  const Cell cell(P, t);
  auto rows = [&](i64 b0, i64 b1, T* RS cs, double* RS sqrow) {
    // Q: each row's squares, summed after the row (a sum inside the loop would stop GCC from
    // vectorising it without -ffast-math)
    std::vector<double> rowsq(Q ? H : 0);
    double* RS rq = rowsq.data();
    for (i64 b = b0; b < b1; ++b) {
      T* RS d = dG + b * W * H;
      T* RS rb = rec + b * H;
      const C a = (C)ra[b], bb = (C)rbs[b];
      if (!active(len, b, t)) {
        IVDEP
        for (i64 j = 0; j < W * H; ++j) d[j] = 0;
        cell.template skip<C>(b, bb, rb);
        if (Q) sqb[b] = 0.0;
        continue;
      }
      const T* RS ub = up + b * urs;
      const typename Cell::Row row = cell.row(b);
      if (eb[b] == sc.m) {
        IVDEP
        for (i64 j = 0; j < H; ++j) {  // vectorised (tests/test_vectorised.py)
          T dh = (T)(a * (C)ub[j] + bb * (C)rb[j]);
          T g[W];
          Cell::template unit<C>(row, j, dh, bb, rb, g);
          for (i64 k = 0; k < W; ++k) d[k * H + j] = g[k];
          for (i64 k = 0; k < W; ++k) cs[k * H + j] += g[k];
          if constexpr (DW > 0) {
            T dw[DW > 0 ? DW : 1];
            Cell::wdiag(row, j, g, dw);
            for (i64 k = 0; k < DW; ++k) cs[(W + k) * H + j] += dw[k];
          }
          if (N) sqrow[j] += (double)dh * (double)dh;
          if (Q) rq[j] = (double)dh * (double)dh;
        }
      } else {
        const double w2 = pow2(2 * (eb[b] - sc.m));
        IVDEP
        for (i64 j = 0; j < H; ++j) {  // vectorised (tests/test_vectorised.py)
          T dh = (T)(a * (C)ub[j] + bb * (C)rb[j]);
          T g[W];
          Cell::template unit<C>(row, j, dh, bb, rb, g);
          for (i64 k = 0; k < W; ++k) d[k * H + j] = g[k];
          if (N) sqrow[j] += w2 * ((double)dh * (double)dh);
          if (Q) rq[j] = (double)dh * (double)dh;
        }
      }
      if (Q) {
        double s = 0.0;
        for (i64 j = 0; j < H; ++j) s += rq[j];
        sqb[b] = s;
      }
    }
  };
  run_rows<T>(B, (W + DW) * H, H, (T*)P[CS] + t * (W + DW) * H, N ? (double*)P[SQROW] : nullptr,
              rows);
}

// One backward step of Cell: choose the scales, run the rows (N: accumulate the sum of squares
// for the norms, P[SQROW] != 0; Q: also each sequence's own, P[SQB] != 0), record. Returns 0
// when no signal is left at or after step t,
// 2 when some sequence keeps its own exponent (its dG rows must stay out of the weight
// gradients: the caller zeroes them after the recurrent and input products), else 1.
template <typename T, template <typename> class Cell>
int bwd_step(const i64* P, i64 t) {
  const Scale sc = bwd_scale<T>(P, t, P[B_], P[H_], Cell<T>::CELL_STATE);
  if (P[SQROW] && P[SQB]) {
    if (sc.narrow) bwd_rows<T, T, true, true, Cell<T>>(P, t, sc);
    else bwd_rows<T, double, true, true, Cell<T>>(P, t, sc);
  } else if (P[SQROW]) {
    if (sc.narrow) bwd_rows<T, T, true, false, Cell<T>>(P, t, sc);
    else bwd_rows<T, double, true, false, Cell<T>>(P, t, sc);
  } else {
    if (sc.narrow) bwd_rows<T, T, false, false, Cell<T>>(P, t, sc);
    else bwd_rows<T, double, false, false, Cell<T>>(P, t, sc);
  }
  return bwd_finish<T>(P, t, P[H_], sc);
}

}  // namespace

#include "loops.h"

// Exports <name>_fwd_f32/_f64(P, t) from the forward template fwd<T> and <name>_bwd_f32/_f64
// from the backward equations Cell<T>, one step each, and <name>_fwd_loop_* / _bwd_loop_*,
// a layer's whole forward or backward (loops.h): what seqbench/engine/native.py looks up.
#define SEQBENCH_EXPORT_CELL(name, fwd, Cell)                                               \
  extern "C" void name##_fwd_f32(const i64* P, i64 t) { fwd<float>(P, t); }                 \
  extern "C" void name##_fwd_f64(const i64* P, i64 t) { fwd<double>(P, t); }                \
  extern "C" int name##_bwd_f32(const i64* P, i64 t) { return bwd_step<float, Cell>(P, t); } \
  extern "C" int name##_bwd_f64(const i64* P, i64 t) { return bwd_step<double, Cell>(P, t); } \
  extern "C" void name##_fwd_loop_f32(const i64* P, const i64* L) {                         \
    fwd_loop<float, fwd<float>>(P, L);                                                      \
  }                                                                                         \
  extern "C" void name##_fwd_loop_f64(const i64* P, const i64* L) {                         \
    fwd_loop<double, fwd<double>>(P, L);                                                    \
  }                                                                                         \
  extern "C" void name##_bwd_loop_f32(const i64* P, i64* L) { bwd_loop<float, Cell>(P, L); } \
  extern "C" void name##_bwd_loop_f64(const i64* P, i64* L) { bwd_loop<double, Cell>(P, L); }
