// seqbench engine kernels that belong to no cell: the library's version and threading switch,
// and the rescaling of rows (scale_rows, in loops.h; the input gradient's final scale). The
// cells' kernels are in seqbench/cells/.
#include "seqbench.h"

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
