// GRU kernels (gates r, z, n) for seqbench's engine; driven by seqbench/cells/gru.py.
#include "seqbench.h"

namespace {

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
    for (i64 j = 0; j < H; ++j) {  // vectorised (tests/test_vectorised.py)
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
// (dh_{t+1} z_{t+1} + dgh_{t+1} @ W_hh), out: dh_t z_t. dG (B,4H) = [dn_pre, dr, dz, dn_pre*r]
template <typename T>
struct GruBwd {
  static constexpr i64 W = 4;
  static constexpr bool CELL_STATE = false;
  struct Row {
    const T* RS ab;
    const T* RS yn;
    const T* RS hpb;
    i64 H;
  };
  const T* act;
  const T* ghn;
  const T* hp;
  i64 H;
  GruBwd(const i64* P, i64 t)
      : act((const T*)P[ACT] + t * P[B_] * 3 * P[H_]),
        ghn((const T*)P[AUX1] + t * P[B_] * P[H_]),
        hp((const T*)P[AUX2] + t * P[B_] * P[H_]),
        H(P[H_]) {}
  Row row(i64 b) const { return Row{act + b * 3 * H, ghn + b * H, hp + b * H, H}; }
  template <typename C>
  void skip(i64, C, T* RS rb) const {
    IVDEP
    for (i64 j = 0; j < H; ++j) rb[j] = 0;
  }
  template <typename C>
  static inline void unit(const Row& w, i64 j, T dh, C, T* RS rb, T* g) {
    const i64 H = w.H;
    T r = w.ab[j], z = w.ab[H + j], n = w.ab[2 * H + j];
    T dnp = dh * (1 - z) * (1 - n * n);
    g[0] = dnp;
    g[1] = dnp * w.yn[j] * r * (1 - r);
    g[2] = dh * (w.hpb[j] - n) * z * (1 - z);
    g[3] = dnp * r;
    rb[j] = dh * z;
  }
};

}  // namespace

SEQBENCH_EXPORT_CELL(gru, gru_fwd, GruBwd)
