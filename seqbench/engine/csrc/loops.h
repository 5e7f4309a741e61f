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
// wanted and their accumulators (R,H), (G_in,I); h_all and the input; whether the cell writes
// its own part of the recurrent carry (GRU; all of it when W_hh is 0, a cell without a
// recurrent matrix); the dropping exponent CUT; the running reference exponent R (in and out;
// NEG: none yet); the gemm's address; H0: h_all[0] is a given initial state, so step 0 also
// makes the recurrent product (the carry into h_0: dL/dh_0) and adds to W_hh's gradient.
enum BLoop { BL_T = 0, BL_GH, BL_HOFF, BL_GIN, BL_INOFF, BL_NIN, BL_WHH, BL_WIN, BL_DIN,
             BL_NEEDW, BL_ACCHH, BL_ACCIH, BL_HALL, BL_X, BL_CARRY, BL_CUT, BL_R, BL_GEMM,
             BL_H0, BLOOP_SLOTS };

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

// A layer's backward: per step the cell's kernel (bwd_step), the recurrent and input products
// and the weight-gradient accumulation with the power-of-two factors, exactly as
// layer_backward_native's Python loop (see its docstring and seqbench.h's Scale).
template <typename T, template <typename> class Cell>
void bwd_loop(const i64* P, i64* BL) {
  constexpr i64 W = Cell<T>::W;
  const i64 steps = BL[BL_T], B = P[B_], H = P[H_], n_in = BL[BL_NIN];
  const i64 gh = BL[BL_GH], gin = BL[BL_GIN], g = BL[BL_GEMM], ld = W * H;
  T* dG = (T*)P[DG];
  T* rec = (T*)P[REC];
  const T* dgh = dG + BL[BL_HOFF];
  T* dgin = dG + BL[BL_INOFF];
  const int* ms = (const int*)P[MS];
  const int* eb = (const int*)P[UP_EXP];
  T* din = (T*)BL[BL_DIN];
  T* acc_hh = (T*)BL[BL_ACCHH];
  T* acc_ih = (T*)BL[BL_ACCIH];
  const T* hall = (const T*)BL[BL_HALL];
  const T* x = (const T*)BL[BL_X];
  const bool carry = BL[BL_CARRY] != 0, needw = BL[BL_NEEDW] != 0, h0 = BL[BL_H0] != 0;
  const int cut = (int)BL[BL_CUT];
  i64 R = BL[BL_R];
  for (i64 t = steps - 1; t >= 0; --t) {
    const int nz = bwd_step<T, Cell>(P, t);
    if (!nz) {  // no signal at or after this step (e.g. padding): everything is zero
      if (!carry) std::memset(rec, 0, B * H * sizeof(T));
      if (din) std::memset(din + t * B * n_in, 0, B * n_in * sizeof(T));
      continue;
    }
    const bool product = BL[BL_WHH] != 0;  // a recurrent matrix (else the kernel did the carry)
    if ((t || h0) && product)
      gemm<T>(g, 'N', 'N', H, B, gh, (T)1, (const T*)BL[BL_WHH], H, dgh, ld, (T)(carry ? 1 : 0),
              rec, H);
    if (din)
      gemm<T>(g, 'N', 'N', n_in, B, gin, (T)1, (const T*)BL[BL_WIN], n_in, dgin, ld, (T)0,
              din + t * B * n_in, n_in);
    if (!needw) continue;
    const int m = ms[t];
    if (R == NEG) {
      R = m;
    } else if (m > R + 30) {  // rescale the accumulators to the larger reference
      const T s = (T)std::ldexp(1.0, (int)(R - m));
      for (i64 i = 0; i < gh * H; ++i) acc_hh[i] *= s;
      for (i64 i = 0; i < gin * n_in; ++i) acc_ih[i] *= s;
      R = m;
    }
    const i64 d = m - R;
    if (d < -cut) continue;
    if (nz == 2)  // sequences far below the step's exponent: out of the weight gradients
      for (i64 b = 0; b < B; ++b)
        if (eb[t * B + b] != m) std::memset(dG + b * ld, 0, ld * sizeof(T));
    const T alpha = (T)std::ldexp(1.0, (int)d);
    if ((t || h0) && product)
      gemm<T>(g, 'N', 'T', H, gh, B, alpha, hall + t * B * H, H, dgh, ld, (T)1, acc_hh, H);
    gemm<T>(g, 'N', 'T', n_in, gin, B, alpha, x + t * B * n_in, n_in, dgin, ld, (T)1, acc_ih,
            n_in);
  }
  BL[BL_R] = R;
}

}  // namespace
