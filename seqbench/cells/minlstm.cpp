// minLSTM kernels for seqbench's engine; driven by seqbench/cells/minlstm.py.
#include "seqbench.h"

namespace {

// fwd P: B, H, proj(T,B,3H: x_f, x_i, x_h), act(T,B,4H out: f', i', h~, f), h_all, len
template <typename T>
void minlstm_fwd(const i64* P, i64 t) {
  const i64 B = P[0], H = P[1];
  const T* proj = (const T*)P[2] + t * B * 3 * H;
  T* act = (T*)P[3] + t * B * 4 * H;
  const T* hp = (const T*)P[4] + t * B * H;
  T* hn = (T*)P[4] + (t + 1) * B * H;
  const i64* len = (const i64*)P[5];
  const int nth = threads_for(B * 3 * H);
#pragma omp parallel for num_threads(nth) schedule(static) if (nth > 1)
  for (i64 b = 0; b < B; ++b) {
    const T* RS x = proj + b * 3 * H;
    T* RS a = act + b * 4 * H;
    const T* RS pb = hp + b * H;
    T* RS hb = hn + b * H;
    if (!active(len, b, t)) {
      IVDEP
      for (i64 j = 0; j < 4 * H; ++j) a[j] = 0;
      IVDEP
      for (i64 j = 0; j < H; ++j) hb[j] = 0;
      continue;
    }
    IVDEP
    for (i64 j = 0; j < H; ++j) {  // vectorised (tests/test_vectorised.py)
      const T f = Num<T>::sigm(x[j]), i = Num<T>::sigm(x[H + j]), cand = x[2 * H + j];
      const T kept = f / (f + i), written = i / (f + i);
      a[j] = kept;
      a[H + j] = written;
      a[2 * H + j] = cand;
      a[3 * H + j] = f;
      hb[j] = kept * pb[j] + written * cand;
    }
  }
}

// bwd: ACT = f', i', h~, f (T,B,4H), AUX1 = h_all. REC out: dh_t * f'_t, the whole carry.
// dG (B,3H) = [df_pre, di_pre, dh~]: with s = f + i, df'/df_pre = f' i' (1 - f) and
// di'/df_pre = -f' i' (1 - f), and the same for i.
template <typename T>
struct MinLstmBwd {
  static constexpr i64 W = 3;
  static constexpr bool CELL_STATE = false;
  struct Row {
    const T* RS ab;
    const T* RS hp;
    i64 H;
  };
  const T* act;
  const T* hp;
  i64 H;
  MinLstmBwd(const i64* P, i64 t)
      : act((const T*)P[ACT] + t * P[B_] * 4 * P[H_]),
        hp((const T*)P[AUX1] + t * P[B_] * P[H_]),
        H(P[H_]) {}
  Row row(i64 b) const { return Row{act + b * 4 * H, hp + b * H, H}; }
  template <typename C>
  void skip(i64, C, T* RS rb) const {
    IVDEP
    for (i64 j = 0; j < H; ++j) rb[j] = 0;
  }
  template <typename C>
  static inline void unit(const Row& r, i64 j, T dh, C, T* RS rb, T* g) {
    const i64 H = r.H;
    const T kept = r.ab[j], written = r.ab[H + j], cand = r.ab[2 * H + j], f = r.ab[3 * H + j];
    const T i = f / kept - f;
    const T dk = dh * r.hp[j], dw = dh * cand, both = kept * written;
    g[0] = both * (1 - f) * (dk - dw);
    g[1] = both * (1 - i) * (dw - dk);
    g[2] = dh * written;
    rb[j] = dh * kept;
  }
};

}  // namespace

SEQBENCH_EXPORT_CELL(minlstm, minlstm_fwd, MinLstmBwd)
