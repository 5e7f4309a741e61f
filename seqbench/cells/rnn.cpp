// Vanilla-RNN kernels (tanh and ReLU) for seqbench's engine; driven by seqbench/cells/rnn.py.
#include "seqbench.h"

namespace {

// fwd P: B, H, h_all(T+1,B,H; slot t+1 holds the pre-activation on entry), len, relu (0/1)
template <typename T, bool RELU>
void rnn_fwd_rows(const i64* P, i64 t) {
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
    if constexpr (RELU) {
      IVDEP  // `x < 0 ? 0 : x` keeps a NaN a NaN (as torch.relu), so divergence stays visible
      for (i64 j = 0; j < H; ++j) {  // vectorised (tests/test_vectorised.py)
        hb[j] = hb[j] < 0 ? (T)0 : hb[j];
      }
    } else {
      IVDEP
      for (i64 j = 0; j < H; ++j) {  // vectorised (tests/test_vectorised.py)
        hb[j] = Num<T>::tnh(hb[j]);
      }
    }
  }
}

template <typename T>
void rnn_fwd(const i64* P, i64 t) {
  if (P[4]) rnn_fwd_rows<T, true>(P, t);
  else rnn_fwd_rows<T, false>(P, t);
}

// bwd: h_all in AUX2 (tanh) or AUX1 (ReLU). REC = dG_{t+1} @ W_hh. dG (B,H) = dL/d(pre-activation):
// tanh: dh (1 - h^2); ReLU: dh where h_t > 0 (torch's rule: 0 at 0).
template <typename T, bool RELU>
struct VanillaBwd {
  static constexpr i64 W = 1;
  static constexpr bool CELL_STATE = false;
  struct Row {
    const T* RS hb;
  };
  const T* h;
  i64 H;
  VanillaBwd(const i64* P, i64 t)
      : h((const T*)P[RELU ? AUX1 : AUX2] + (t + 1) * P[B_] * P[H_]), H(P[H_]) {}
  Row row(i64 b) const { return Row{h + b * H}; }
  template <typename C>
  void skip(i64, C, T* RS) const {}
  template <typename C>
  static inline void unit(const Row& r, i64 j, T dh, C, T* RS, T* g) {
    if constexpr (RELU) g[0] = r.hb[j] > 0 ? dh : (T)0;
    else g[0] = dh * (1 - r.hb[j] * r.hb[j]);
  }
};
template <typename T>
using RnnBwd = VanillaBwd<T, false>;
template <typename T>
using ReluBwd = VanillaBwd<T, true>;

// One exported backward per dtype: the slot holding h says which derivative (tanh: AUX2).
template <typename T>
int rnn_bwd(const i64* P, i64 t) {
  return P[AUX1] ? bwd_step<T, ReluBwd>(P, t) : bwd_step<T, RnnBwd>(P, t);
}

}  // namespace

extern "C" void rnn_fwd_f32(const i64* P, i64 t) { rnn_fwd<float>(P, t); }
extern "C" void rnn_fwd_f64(const i64* P, i64 t) { rnn_fwd<double>(P, t); }
extern "C" int rnn_bwd_f32(const i64* P, i64 t) { return rnn_bwd<float>(P, t); }
extern "C" int rnn_bwd_f64(const i64* P, i64 t) { return rnn_bwd<double>(P, t); }
// the whole layer's loops (loops.h); the backward picks its derivative as rnn_bwd does
extern "C" void rnn_fwd_loop_f32(const i64* P, const i64* L) {
  fwd_loop<float, rnn_fwd<float>>(P, L);
}
extern "C" void rnn_fwd_loop_f64(const i64* P, const i64* L) {
  fwd_loop<double, rnn_fwd<double>>(P, L);
}
extern "C" void rnn_bwd_loop_f32(const i64* P, i64* L) {
  P[AUX1] ? bwd_loop<float, ReluBwd>(P, L) : bwd_loop<float, RnnBwd>(P, L);
}
extern "C" void rnn_bwd_loop_f64(const i64* P, i64* L) {
  P[AUX1] ? bwd_loop<double, ReluBwd>(P, L) : bwd_loop<double, RnnBwd>(P, L);
}
