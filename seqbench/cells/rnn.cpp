// tanh-RNN kernels for seqbench's engine; driven by seqbench/cells/rnn.py.
#include "seqbench.h"

namespace {

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

// bwd: AUX2 = h_all. REC = dG_{t+1} @ W_hh. dG (B,H) = dL/d(pre-activation).
template <typename T>
struct RnnBwd {
  static constexpr i64 W = 1;
  static constexpr bool CELL_STATE = false;
  struct Row {
    const T* RS hb;
  };
  const T* h;
  i64 H;
  RnnBwd(const i64* P, i64 t) : h((const T*)P[AUX2] + (t + 1) * P[B_] * P[H_]), H(P[H_]) {}
  Row row(i64 b) const { return Row{h + b * H}; }
  template <typename C>
  void skip(i64, C, T* RS) const {}
  template <typename C>
  static inline void unit(const Row& r, i64 j, T dh, C, T* RS, T* g) {
    g[0] = dh * (1 - r.hb[j] * r.hb[j]);
  }
};

}  // namespace

SEQBENCH_EXPORT_CELL(rnn, rnn_fwd, RnnBwd)
