// seqbench's time loops in native code: a layer's whole forward and whole backward in one call,
// so that a step costs no Python (at small shapes the per-step calls weighed as much as the
// arithmetic). Included by seqbench.h, after the per-step kernels it drives.
//
// The matrix products are BLAS's sgemm_/dgemm_ (Fortran, column-major, 32-bit ints), the very
// functions torch.mm/torch.addmm call on the CPU: their addresses come from libtorch_cpu (see
// seqbench/engine/native.py), so every product, its arguments and its summation order are
// those of the Python loop in backward_native.py and the cells' forward functions, and on one
// thread the results are the same bits. A row-major C = A @ B is, column-major, C^T = B^T A^T.
#pragma once

namespace {

// Forward plan (read by Python in this order, up to LOOP_SLOTS): steps, batch, hidden, input
// width; the input (T,B,I), W_ih (G,I) and the projection's bias (G); where the projection goes
// (T,B,G contiguous) and its width G; K: steps per projection chunk; h_all (T+1,B,H); W_hh
// (R,H; 0 for a cell without a recurrent matrix: no product); where step t's recurrent product
// goes (base + t * stride, R columns) and the bias copied there first (0 = none); the gemm;
// H0: h_all[0] holds a given initial state (1: step 0 makes the recurrent product too; 0: the
// state starts at zero and step 0 skips it).
enum Loop { L_T = 0, L_B, L_H, L_NIN, L_INP, L_WIH, L_PBIAS, L_POUT, L_PCOLS, L_K, L_HALL,
            L_WHH, L_ROUT, L_RSTRIDE, L_RCOLS, L_RBIAS, L_GEMM, L_H0, LOOP_SLOTS };

// Backward plan: steps; the columns of dG that feed W_hh (count, offset in a row of dG) and
// those that feed W_ih; the input width; W_hh (R,H), W_in (G_in, I: W_ih's rows in dG's
// order); dL/dinput out (T,B,I, rows in their own scale) or 0; whether weight gradients are
// wanted and their accumulators (R,H), (I,G_in: transposed); h_all and the input; whether the
// cell writes its own part of the recurrent carry (GRU; all of it when W_hh is 0, a cell
// without a recurrent matrix); the dropping exponent CUT; the running reference exponent R (in
// and out; NEG: none yet); the gemm's address; H0: h_all[0] is a given initial state, so step
// 0 also makes the recurrent product (the carry into h_0: dL/dh_0) and adds to W_hh's
// gradient; CHUNK: K, the steps whose dG rows are kept for one batch of products, and DGBUF,
// their buffer (K,B,W*H); REXP: int32 (K*B) scratch, each kept row's exponent; NZ: int32 (T)
// out, each step's bwd_step result.
enum BLoop { BL_T = 0, BL_GH, BL_HOFF, BL_GIN, BL_INOFF, BL_NIN, BL_WHH, BL_WIN, BL_DIN,
             BL_NEEDW, BL_ACCHH, BL_ACCIH, BL_HALL, BL_X, BL_CARRY, BL_CUT, BL_R, BL_GEMM,
             BL_H0, BL_CHUNK, BL_DGBUF, BL_REXP, BL_NZ, BLOOP_SLOTS };

typedef void (*sgemm_fn)(const char*, const char*, const int*, const int*, const int*,
                         const float*, const float*, const int*, const float*, const int*,
                         const float*, float*, const int*);
typedef void (*dgemm_fn)(const char*, const char*, const int*, const int*, const int*,
                         const double*, const double*, const int*, const double*, const int*,
                         const double*, double*, const int*);

// C (column-major m x n, ldc) = alpha * op(A) op(B) + beta * C, through BLAS at `fn`
template <typename T>
inline void gemm(i64 fn, char ta, char tb, i64 m, i64 n, i64 k, T alpha, const T* a, i64 lda,
                 const T* b, i64 ldb, T beta, T* c, i64 ldc) {
  const int M = (int)m, N = (int)n, K = (int)k, LA = (int)lda, LB = (int)ldb, LC = (int)ldc;
  if (sizeof(T) == 4)
    ((sgemm_fn)fn)(&ta, &tb, &M, &N, &K, (const float*)&alpha, (const float*)a, &LA,
                   (const float*)b, &LB, (const float*)&beta, (float*)c, &LC);
  else
    ((dgemm_fn)fn)(&ta, &tb, &M, &N, &K, (const double*)&alpha, (const double*)a, &LA,
                   (const double*)b, &LB, (const double*)&beta, (double*)c, &LC);
}

// x[r, :] *= 2**e[r] for r < nt (rows of n elements: one per sequence and step), flushing
// results below the smallest normal number to zero without ever forming a denormal; a row
// with e[r] = NEG becomes zero (its finite entries).
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
    for (i64 i = 0; i < n; ++i) {  // vectorised (tests/test_vectorised.py)
      double v = (double)row[i];
      double av = v < 0 ? -v : v;
      row[i] = av < thr ? (T)0 : (T)(v * w);
    }
  }
}

// rows x cols of `bias` repeated, as torch.addmm copies its 1-d bias before the product
template <typename T>
inline void fill_rows(T* RS out, const T* RS bias, i64 rows, i64 cols) {
  for (i64 r = 0; r < rows; ++r) std::memcpy(out + r * cols, bias, cols * sizeof(T));
}

// out = in @ W^T (+ out): row-major (rows, n) x (cols, n)^T, as torch.addmm(out, in, W.t())
template <typename T>
inline void times_wt(i64 g, const T* in, const T* w, i64 rows, i64 n, i64 cols, T* out) {
  gemm<T>(g, 'T', 'N', cols, rows, n, (T)1, w, n, in, n, (T)1, out, cols);
}

// A layer's forward: per chunk of K steps the input projection, per step the recurrent
// product and the cell's kernel fwd(P, t), as the cells' Python loops do them.
template <typename T, void (*Fwd)(const i64*, i64)>
void fwd_loop(const i64* P, const i64* L) {
  const i64 steps = L[L_T], B = L[L_B], H = L[L_H], n_in = L[L_NIN], G = L[L_PCOLS];
  const i64 K = L[L_K], R = L[L_RCOLS], g = L[L_GEMM];
  const T* inp = (const T*)L[L_INP];
  const T* hall = (const T*)L[L_HALL];
  const T* pbias = (const T*)L[L_PBIAS];
  const T* rbias = (const T*)L[L_RBIAS];
  for (i64 t = 0; t < steps; ++t) {
    if (t % K == 0) {
      const i64 rows = ((t + K < steps ? t + K : steps) - t) * B;
      T* out = (T*)L[L_POUT] + t * B * G;
      fill_rows(out, pbias, rows, G);
      times_wt(g, inp + t * B * n_in, (const T*)L[L_WIH], rows, n_in, G, out);
    }
    T* rout = (T*)L[L_ROUT] + t * L[L_RSTRIDE];
    if (rbias) fill_rows(rout, rbias, B, R);
    if ((t || L[L_H0]) && L[L_WHH])
      times_wt(g, hall + t * B * H, (const T*)L[L_WHH], B, H, R, rout);
    Fwd(P, t);
  }
}

// The weight-gradient and input-gradient products of one chunk of steps [t0, t1), whose dG
// rows are in BL[BL_DGBUF]: one product each over its (t1 - t0) * B rows instead of one per
// step. Each kept row is first scaled by 2**(M_t - R) (exact) for the running reference
// exponent R, which moves up (rescaling the accumulators) when a chunk's largest M_t is more
// than 2**30 above it; a step more than 2**CUT below R, and a sequence below its step's
// exponent (e[t,b] != M_t), stay out, and the products skip the chunk's steps before its
// first and after its last kept one (vanishing gradients skip most of a long sequence's).
// Exactly as layer_backward_native's Python loop.
template <typename T>
void bwd_chunk(const i64* P, i64* BL, i64 t0, i64 t1, i64 ld) {
  const i64 B = P[B_], H = P[H_], n_in = BL[BL_NIN], rows = (t1 - t0) * B;
  const i64 gh = BL[BL_GH], gin = BL[BL_GIN], g = BL[BL_GEMM];
  T* dG = (T*)BL[BL_DGBUF];
  T* din = (T*)BL[BL_DIN];
  if (din)
    gemm<T>(g, 'N', 'N', n_in, rows, gin, (T)1, (const T*)BL[BL_WIN], n_in, dG + BL[BL_INOFF],
            ld, (T)0, din + t0 * B * n_in, n_in);
  if (!BL[BL_NEEDW]) return;
  const int* ms = (const int*)P[MS];
  const int* eb = (const int*)P[UP_EXP];
  const int* nz = (const int*)BL[BL_NZ];
  int top = NEG;
  for (i64 t = t0; t < t1; ++t)
    if (nz[t] && ms[t] > top) top = ms[t];
  if (top == NEG) return;  // no signal in these steps: their rows are zero
  T* acc_hh = (T*)BL[BL_ACCHH];
  T* acc_ih = (T*)BL[BL_ACCIH];
  i64 R = BL[BL_R];
  if (R == NEG) {
    R = top;
  } else if (top > R + 30) {  // rescale the accumulators to the larger reference
    const T s = (T)std::ldexp(1.0, (int)(R - top));
    for (i64 i = 0; i < gh * H; ++i) acc_hh[i] *= s;
    for (i64 i = 0; i < gin * n_in; ++i) acc_ih[i] *= s;
    R = top;
  }
  BL[BL_R] = R;
  const int cut = (int)BL[BL_CUT];
  int* rexp = (int*)BL[BL_REXP];
  i64 lo = t1, hi = t0;  // the kept steps lie in [lo, hi): only their rows enter the products
  for (i64 t = t0; t < t1; ++t) {
    const i64 d = ms[t] - R;
    const bool kept = nz[t] && d >= -cut;
    if (kept) {
      lo = t < lo ? t : lo;
      hi = t + 1;
    }
    for (i64 b = 0; b < B; ++b)
      rexp[(t - t0) * B + b] = kept && eb[t * B + b] == ms[t] ? (int)d : NEG;
  }
  if (lo >= hi) return;
  const i64 n = (hi - lo) * B;
  T* rows_lo = dG + (lo - t0) * B * ld;
  scale_rows<T>(rows_lo, n, ld, rexp + (lo - t0) * B);
  const i64 skip = (lo == 0 && !BL[BL_H0]) ? B : 0;  // from a zero state, h_0 adds nothing
  if (BL[BL_WHH] && n > skip)
    gemm<T>(g, 'N', 'T', H, gh, n - skip, (T)1, (const T*)BL[BL_HALL] + (lo * B + skip) * H, H,
            rows_lo + BL[BL_HOFF] + skip * ld, ld, (T)1, acc_hh, H);
  // W_ih's gradient accumulates transposed, (I, G_in): with a narrow input (I = 1 or 2) the
  // product into (G_in, I) took 10-20x as long in MKL
  gemm<T>(g, 'N', 'T', gin, n_in, n, (T)1, rows_lo + BL[BL_INOFF], ld,
          (const T*)BL[BL_X] + lo * B * n_in, n_in, (T)1, acc_ih, gin);
}

// A layer's backward: per step the cell's kernel (bwd_step, writing its dG rows into the
// chunk buffer) and the recurrent product; per chunk of steps the weight-gradient and input
// products (bwd_chunk), exactly as layer_backward_native's Python loop.
template <typename T, template <typename> class Cell>
void bwd_loop(const i64* P0, i64* BL) {
  constexpr i64 W = Cell<T>::W;
  i64 P[BWD_SLOTS];
  std::memcpy(P, P0, sizeof(P));
  const i64 steps = BL[BL_T], B = P[B_], H = P[H_], K = BL[BL_CHUNK];
  const i64 gh = BL[BL_GH], g = BL[BL_GEMM], ld = W * H;
  T* rec = (T*)P[REC];
  T* buf = (T*)BL[BL_DGBUF];
  int* nzs = (int*)BL[BL_NZ];
  const bool carry = BL[BL_CARRY] != 0, h0 = BL[BL_H0] != 0;
  const bool product = BL[BL_WHH] != 0;  // a recurrent matrix (else the kernel did the carry)
  i64 t1 = steps;
  for (i64 t = steps - 1; t >= 0; --t) {
    const i64 t0 = t - t % K;
    T* dG = buf + (t - t0) * B * ld;
    P[DG] = (i64)dG;
    const int nz = bwd_step<T, Cell>(P, t);
    nzs[t] = nz;
    if (!nz) {  // no signal at or after this step (e.g. padding): everything is zero
      if (!carry) std::memset(rec, 0, B * H * sizeof(T));
      std::memset(dG, 0, B * ld * sizeof(T));
    } else if ((t || h0) && product) {
      gemm<T>(g, 'N', 'N', H, B, gh, (T)1, (const T*)BL[BL_WHH], H, dG + BL[BL_HOFF], ld,
              (T)(carry ? 1 : 0), rec, H);
    }
    if (t == t0) {
      bwd_chunk<T>(P, BL, t0, t1, ld);
      t1 = t0;
    }
  }
}

}  // namespace
