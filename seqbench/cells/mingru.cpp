// minGRU kernels for seqbench's engine; driven by seqbench/cells/mingru.py.
#include "seqbench.h"

namespace {

// fwd P: B, H, act(T,B,2H: the projections x_z, x_h in; keep = 1 - z and h~ out), h_all, len
template <typename T>
void mingru_fwd(const i64* P, i64 t) {
  const i64 B = P[0], H = P[1];
  T* act = (T*)P[2] + t * B * 2 * H;
  const T* hp = (const T*)P[3] + t * B * H;
  T* hn = (T*)P[3] + (t + 1) * B * H;
  const i64* len = (const i64*)P[4];
  const int nth = threads_for(B * 2 * H);
#pragma omp parallel for num_threads(nth) schedule(static) if (nth > 1)
  for (i64 b = 0; b < B; ++b) {
    T* RS a = act + b * 2 * H;
    const T* RS pb = hp + b * H;
    T* RS hb = hn + b * H;
    if (!active(len, b, t)) {
      IVDEP
      for (i64 j = 0; j < 2 * H; ++j) a[j] = 0;
      IVDEP
      for (i64 j = 0; j < H; ++j) hb[j] = 0;
      continue;
    }
    IVDEP
    for (i64 j = 0; j < H; ++j) {  // vectorised (tests/test_vectorised.py)
      const T keep = Num<T>::sigm(-a[j]);  // 1 - sigmoid(x)
      const T cand = a[H + j];
      a[j] = keep;
      hb[j] = cand + keep * (pb[j] - cand);
    }
  }
}

// bwd: ACT = keep, h~ (T,B,2H), AUX1 = h_all. REC out: dh_t * keep_t, the whole carry.
// dG (B,2H) = [dz_pre, dh~].
template <typename T>
struct MinGruBwd {
  static constexpr i64 W = 2;
  static constexpr bool CELL_STATE = false;
  struct Row {
    const T* RS ab;
    const T* RS hp;
    i64 H;
  };
  const T* act;
  const T* hp;
  i64 H;
  MinGruBwd(const i64* P, i64 t)
      : act((const T*)P[ACT] + t * P[B_] * 2 * P[H_]),
        hp((const T*)P[AUX1] + t * P[B_] * P[H_]),
        H(P[H_]) {}
  Row row(i64 b) const { return Row{act + b * 2 * H, hp + b * H, H}; }
  template <typename C>
  void skip(i64, C, T* RS rb) const {
    IVDEP
    for (i64 j = 0; j < H; ++j) rb[j] = 0;
  }
  template <typename C>
  static inline void unit(const Row& r, i64 j, T dh, C, T* RS rb, T* g) {
    const T keep = r.ab[j], cand = r.ab[r.H + j];
    g[0] = dh * (cand - r.hp[j]) * keep * (1 - keep);
    g[1] = dh * (1 - keep);
    rb[j] = dh * keep;
  }
};

}  // namespace

SEQBENCH_EXPORT_CELL(mingru, mingru_fwd, MinGruBwd)
