// LSTM kernels (gates i, f, g, o) for seqbench's engine; driven by seqbench/cells/lstm.py.
#include "seqbench.h"

namespace {

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
    for (i64 j = 0; j < H; ++j) {  // vectorised (tests/test_vectorised.py)
      T i = Num<T>::sigm(gi[j]), f = Num<T>::sigm(gf[j]);
      T g = Num<T>::tnh(gg[j]), o = Num<T>::sigm(go[j]);
      T c = f * cpb[j] + i * g;
      gi[j] = i; gf[j] = f; gg[j] = g; go[j] = o;
      cnb[j] = c;
      hnb[j] = o * Num<T>::tnh(c);
    }
  }
}

// bwd: ACT = activations i f g o (T,B,4H), AUX1 = c_all. REC = dG_{t+1} @ W_hh (B,H),
// CC = dc carry (B,H). dG (B,4H) = [di, df, dg, do].
template <typename T>
struct LstmBwd {
  static constexpr i64 W = 4;
  static constexpr bool CELL_STATE = true;
  struct Row {
    const T* RS ai;
    const T* RS cpb;
    const T* RS cnb;
    T* RS ccb;
    i64 H;
  };
  const T* act;
  const T* cp;
  T* cc;
  i64 B, H;
  LstmBwd(const i64* P, i64 t)
      : act((const T*)P[ACT] + t * P[B_] * 4 * P[H_]),
        cp((const T*)P[AUX1] + t * P[B_] * P[H_]),
        cc((T*)P[CC]),
        B(P[B_]),
        H(P[H_]) {}
  Row row(i64 b) const {
    return Row{act + b * 4 * H, cp + b * H, cp + B * H + b * H, cc + b * H, H};
  }
  template <typename C>
  void skip(i64 b, C bb, T* RS) const {
    T* RS ccb = cc + b * H;
    IVDEP
    for (i64 j = 0; j < H; ++j) ccb[j] = (T)(bb * (C)ccb[j]);
  }
  template <typename C>
  static inline void unit(const Row& r, i64 j, T dh, C bb, T* RS, T* g) {
    const i64 H = r.H;
    T i = r.ai[j], f = r.ai[H + j], gg = r.ai[2 * H + j], o = r.ai[3 * H + j];
    T tc = Num<T>::tnh(r.cnb[j]);
    T dc = (T)(bb * (C)r.ccb[j]) + dh * o * (1 - tc * tc);
    g[0] = dc * gg * i * (1 - i);
    g[1] = dc * r.cpb[j] * f * (1 - f);
    g[2] = dc * i * (1 - gg * gg);
    g[3] = dh * tc * o * (1 - o);
    r.ccb[j] = dc * f;
  }
};

}  // namespace

SEQBENCH_EXPORT_CELL(lstm, lstm_fwd, LstmBwd)
