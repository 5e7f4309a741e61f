// seqbench engine kernels that belong to no cell: the library's version and threading switch,
// and the final rescaling of the input gradient. The cells' kernels are in seqbench/cells/.
#include "seqbench.h"

namespace {

// x[r, :] *= 2**e[r] for r < nt (rows of n elements: one per sequence and step), flushing
// results below the smallest normal number to zero without ever forming a denormal.
template <typename T>
void scale_rows(T* x, i64 nt, i64 n, const int* e) {
  const double lo = (double)(sizeof(T) == 4 ? FLT_MIN : DBL_MIN);
  int last = 0;
  double w = 1.0, thr = lo;  // |v| < thr  <=>  |v * w| < lo
  for (i64 t = 0; t < nt; ++t) {
    T* RS row = x + t * n;
    if (e[t] != last) {  // consecutive rows mostly share their exponent
      last = e[t];
      w = std::ldexp(1.0, last);
      thr = lo / w;
    }
    if (w == 1.0) continue;
    IVDEP
    for (i64 i = 0; i < n; ++i) {
      double v = (double)row[i];
      double av = v < 0 ? -v : v;
      row[i] = av < thr ? (T)0 : (T)(v * w);
    }
  }
}

}  // namespace

extern "C" void scale_rows_f32(float* x, i64 nt, i64 n, const int* e) {
  scale_rows<float>(x, nt, n, e);
}
extern "C" void scale_rows_f64(double* x, i64 nt, i64 n, const int* e) {
  scale_rows<double>(x, nt, n, e);
}
extern "C" int seqbench_abi_version() { return SEQBENCH_ABI; }
extern "C" int seqbench_set_threading(int on) {
  g_threading = on;
#ifdef _OPENMP
  return 1;
#else
  return 0;
#endif
}
// The number of threads a step with this much work (B * columns) runs on, from this thread.
extern "C" int seqbench_threads_for(i64 work) { return threads_for(work); }
