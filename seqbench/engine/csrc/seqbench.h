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
#include <vector>
#ifdef _OPENMP
#include <omp.h>
#endif

// ---- shared with Python (parsed: one `#define NAME integer` per line) ----
#define SEQBENCH_ABI 1                      // seqbench_abi_version() of a matching library
#define SEQBENCH_NEG -536870912             // -(2**29): "no signal" exponent sentinel
#define SEQBENCH_CUT_F32 60                 // a contribution 2**CUT below the dominant one
#define SEQBENCH_CUT_F64 200                //   is dropped (float32 / float64)
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
// B_, H_: batch, hidden; UP (+ UP_TS, UP_RS: time and row strides, UP_EXP: per-step exponents
// or 0): the upstream gradient; REC: the recurrent carry (B,H); CC: the LSTM cell carry or 0;
// ST: int32 running exponent; ACT, AUX1, AUX2: the cell's saved forward buffers; DG: dG out
// (B, W*H); SQ, MS: per-step sum of squares and exponent out; CS: per-step column sums of dG
// (T, W*H) out; LEN: int64 lengths or 0; SQROW: H doubles of scratch, 0 = no norms.
enum Bwd { B_ = 0, H_, UP, UP_TS, UP_RS, UP_EXP, REC, CC, ST, ACT, AUX1, AUX2, DG, SQ, MS, CS,
           LEN, SQROW, BWD_SLOTS };

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
  if (g_threading && work >= SEQBENCH_THREADING_MIN_WORK && !omp_in_parallel())
    return omp_get_max_threads();
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

// ---------------------------------------------------------------- the backward step of a cell
// Every cell's backward kernel is this loop; the cell supplies only its equations, as a struct
// Cell<T> with
//   W             columns of dG per hidden unit (dG is (B, W*H));
//   CELL_STATE    whether the cell carries a second state in CC (its scale joins REC's);
//   Cell(P, t)    the step's pointers into its saved buffers;
//   skip<C>(b, bb, rec_row)       a padded row: carry what must be carried;
//   unit<C>(b, j, dh, bb, rec_row, g)  unit j of row b: the W values of dG from dL/dh_t = dh.
// C is the type in which the rescaling a*u + b*r is done (T when a, b are normal numbers of T).
template <typename T, typename C, bool N, typename Cell>
void bwd_rows(const i64* P, i64 t, const Scale& sc) {
  constexpr i64 W = Cell::W;
  const i64 B = P[B_], H = P[H_];
  const C a = (C)sc.a, bb = (C)sc.b;
  const T* up = (const T*)P[UP] + t * P[UP_TS];
  const i64 urs = P[UP_RS];
  T* rec = (T*)P[REC];
  T* dG = (T*)P[DG];
  const i64* len = (const i64*)P[LEN];
  const Cell cell(P, t);
  auto rows = [&](i64 b0, i64 b1, T* RS cs, double* RS sqrow) {
    for (i64 b = b0; b < b1; ++b) {
      T* RS d = dG + b * W * H;
      T* RS rb = rec + b * H;
      if (!active(len, b, t)) {
        IVDEP
        for (i64 j = 0; j < W * H; ++j) d[j] = 0;
        cell.template skip<C>(b, bb, rb);
        continue;
      }
      const T* RS ub = up + b * urs;
      const typename Cell::Row row = cell.row(b);
      IVDEP
      for (i64 j = 0; j < H; ++j) {
        T dh = (T)(a * (C)ub[j] + bb * (C)rb[j]);
        T g[W];
        Cell::template unit<C>(row, j, dh, bb, rb, g);
        for (i64 k = 0; k < W; ++k) d[k * H + j] = g[k];
        for (i64 k = 0; k < W; ++k) cs[k * H + j] += g[k];
        if (N) sqrow[j] += (double)dh * (double)dh;
      }
    }
  };
  run_rows<T>(B, W * H, H, (T*)P[CS] + t * W * H, N ? (double*)P[SQROW] : nullptr, rows);
}

template <typename T>
inline bool fits(double v) {
  return sizeof(T) == 8 || v == 0.0 || (v >= 0x1p-120 && v <= 0x1p120);
}

// One backward step of Cell: choose the scale, run the rows (N: accumulate the sum of squares
// for the norms, P[SQROW] != 0), record. Returns 0 when no signal is left at or after step t.
template <typename T, template <typename> class Cell>
int bwd_step(const i64* P, i64 t) {
  const Scale sc = bwd_scale<T>(P, t, P[B_], P[H_], Cell<T>::CELL_STATE);
  const bool narrow = fits<T>(sc.a) && fits<T>(sc.b);
  if (P[SQROW]) {
    if (narrow) bwd_rows<T, T, true, Cell<T>>(P, t, sc);
    else bwd_rows<T, double, true, Cell<T>>(P, t, sc);
  } else {
    if (narrow) bwd_rows<T, T, false, Cell<T>>(P, t, sc);
    else bwd_rows<T, double, false, Cell<T>>(P, t, sc);
  }
  return bwd_finish<T>(P, t, P[H_], sc);
}

}  // namespace

// Exports <name>_fwd_f32/_f64(P, t) from the forward template fwd<T> and <name>_bwd_f32/_f64
// from the backward equations Cell<T>: what seqbench/engine/native.py looks up for a cell.
#define SEQBENCH_EXPORT_CELL(name, fwd, Cell)                                               \
  extern "C" void name##_fwd_f32(const i64* P, i64 t) { fwd<float>(P, t); }                 \
  extern "C" void name##_fwd_f64(const i64* P, i64 t) { fwd<double>(P, t); }                \
  extern "C" int name##_bwd_f32(const i64* P, i64 t) { return bwd_step<float, Cell>(P, t); } \
  extern "C" int name##_bwd_f64(const i64* P, i64 t) { return bwd_step<double, Cell>(P, t); }
