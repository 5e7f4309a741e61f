// IndRNN kernels for seqbench's engine; driven by seqbench/cells/indrnn.py.
#include "seqbench.h"

namespace {

// fwd P: B, H, h_all(T+1,B,H; slot t+1 holds the input projection on entry), len, u(H)
template <typename T>
void indrnn_fwd(const i64* P, i64 t) {
  const i64 B = P[0], H = P[1];
  const T* hp = (const T*)P[2] + t * B * H;
  T* hn = (T*)P[2] + (t + 1) * B * H;
  const i64* len = (const i64*)P[3];
  const T* RS u = (const T*)P[4];
  const int nth = threads_for(B * H);
#pragma omp parallel for num_threads(nth) schedule(static) if (nth > 1)
  for (i64 b = 0; b < B; ++b) {
    T* RS hb = hn + b * H;
    const T* RS pb = hp + b * H;
    if (!active(len, b, t)) {
      IVDEP
      for (i64 j = 0; j < H; ++j) hb[j] = 0;
      continue;
    }
    IVDEP  // `x < 0 ? 0 : x` keeps a NaN a NaN (as torch.relu)
    for (i64 j = 0; j < H; ++j) {  // vectorised (tests/test_vectorised.py)
      const T x = hb[j] + u[j] * pb[j];
      hb[j] = x < 0 ? (T)0 : x;
    }
  }
}

// bwd: AUX1 = h_all, AUX2 = u. REC in: the carry dL/dh_t's recurrent part; out: dpre_t * u.
// dG (B,H) = dpre = dh where h_t > 0; DIAG_W: u's gradient, dpre * h_{t-1}, summed per step.
template <typename T>
struct IndRnnBwd {
  static constexpr i64 W = 1;
  static constexpr bool CELL_STATE = false;
  static constexpr i64 DIAG_W = 1;
  struct Row {
    const T* RS hn;
    const T* RS hp;
    const T* RS u;
  };
  const T* hn;
  const T* hp;
  const T* u;
  i64 H;
  IndRnnBwd(const i64* P, i64 t)
      : hn((const T*)P[AUX1] + (t + 1) * P[B_] * P[H_]),
        hp((const T*)P[AUX1] + t * P[B_] * P[H_]),
        u((const T*)P[AUX2]),
        H(P[H_]) {}
  Row row(i64 b) const { return Row{hn + b * H, hp + b * H, u}; }
  template <typename C>
  void skip(i64, C, T* RS rb) const {
    IVDEP
    for (i64 j = 0; j < H; ++j) rb[j] = 0;
  }
  template <typename C>
  static inline void unit(const Row& r, i64 j, T dh, C, T* RS rb, T* g) {
    g[0] = r.hn[j] > 0 ? dh : (T)0;
    rb[j] = g[0] * r.u[j];
  }
  static inline void wdiag(const Row& r, i64 j, const T* g, T* dw) { dw[0] = g[0] * r.hp[j]; }
};

}  // namespace

SEQBENCH_EXPORT_CELL(indrnn, indrnn_fwd, IndRnnBwd)
