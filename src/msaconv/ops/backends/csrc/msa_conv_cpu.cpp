// Fused CPU kernels of msa_conv2d (forward and backward), on [B, heads, D, H, W] tensors of any strides: the
// channels-first layout, msa_conv2d's default [B, heads, H, W, D] seen through a permutation, or a slice of a
// channels-last map. Rows are read into the kernel's own channels-first buffers (transposed on the way when
// D is not the outer axis), so no layout is copied beforehand; outputs are written channels-first, or in
// [B, heads, H, W, D] order when the caller asks (its own layout).
//
// Design (see msaconv/ops/backends/cpu.py for the Python side):
//   * one task = one output row of one (image, head) plane in the forward, one whole plane in the
//     backward (so the key/value gradients of a plane are summed by one thread in a fixed order:
//     deterministic, no atomics);
//   * rows of k and v are copied once per task into a column-padded buffer [D][Wp] (zeros for
//     'zeros'/'mask', wrapped columns for 'circular'), so every window slot of a query row is one
//     contiguous run of keys: the inner loops are plain vector loads along W;
//   * one query row keeps its (K+M) x W logits in a small buffer (L1/L2) and vectorises along W;
//     the q.k pass keeps up to 8 window slots in registers per load of q, the a.v pass up to 8
//     channels per load of the weights (register blocking);
//   * the forward takes two query rows at a time where rows are wider than a vector: the key / value
//     runs both rows' windows share are loaded once for the two (dot2_slots, axpy2_slots);
//   * what the padded buffer cannot express is fixed afterwards per column: 'mask' sets the logits of
//     outside columns to -inf, 'clamp' recomputes its border columns (where the window slides) with
//     scalar code from the exact index tables.
// Vectors are GCC vector extensions (AVX-512, AVX2 or SSE, whatever -march=native gives); float has a
// vectorised exp, double (used by the tests) calls std::exp.

// Only the headers the kernels use: <torch/extension.h> (all of libtorch's C++ API) alone took half of
// the ~60 s first-use build; these take about a fifth of it.
#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/zeros.h>
#include <c10/util/BFloat16.h>
#include <torch/csrc/utils/pybind.h>

#include <algorithm>
#include <atomic>
#include <cmath>
#include <optional>
#include <cstdint>
#include <cstring>
#include <initializer_list>
#include <limits>
#include <type_traits>
#include <utility>
#include <vector>

// The vector width: the widest the target has, capped at MSA_MAX_VECTOR_BYTES (the build passes
// $MSACONV_VECTOR_BITS / 8, default 32: on Zen 4, which runs a 512-bit op as two 256-bit halves, the 256-bit
// build was faster at every shape measured, up to 2.5x on 8x8 maps, where a row fills half a 512-bit vector).
#ifndef MSA_MAX_VECTOR_BYTES
#define MSA_MAX_VECTOR_BYTES 64
#endif
#if defined(__AVX512F__) && MSA_MAX_VECTOR_BYTES >= 64
#define MSA_VBYTES 64
#elif defined(__AVX__) && MSA_MAX_VECTOR_BYTES >= 32
#define MSA_VBYTES 32
#else
#define MSA_VBYTES 16
#endif

namespace {

enum Border { ZEROS = 0, MASK = 1, CLAMP = 2, CIRCULAR = 3 };

template <typename T> struct Vec;
template <> struct Vec<float> {
  typedef float type __attribute__((vector_size(MSA_VBYTES)));
  typedef int32_t itype __attribute__((vector_size(MSA_VBYTES)));
  static constexpr int L = MSA_VBYTES / 4;
};
template <> struct Vec<double> {
  typedef double type __attribute__((vector_size(MSA_VBYTES)));
  typedef int64_t itype __attribute__((vector_size(MSA_VBYTES)));
  static constexpr int L = MSA_VBYTES / 8;
};

template <typename T> inline typename Vec<T>::type vload(const T* p) {
  typename Vec<T>::type v;
  std::memcpy(&v, p, sizeof(v));
  return v;
}
template <typename T> inline void vstore(T* p, typename Vec<T>::type v) { std::memcpy(p, &v, sizeof(v)); }
template <typename T> inline typename Vec<T>::type vbroadcast(T s) {
  typename Vec<T>::type v = {};
  return v + s;
}
// load L elements p[0], p[s], p[2s], ... (UNIT: s == 1, a plain vector load)
template <typename T, bool UNIT> inline typename Vec<T>::type vload_s(const T* p, int64_t s) {
  if (UNIT) return vload<T>(p);
  typename Vec<T>::type v;
  for (int l = 0; l < Vec<T>::L; ++l) v[l] = p[l * s];
  return v;
}
template <typename T, bool UNIT> inline void vstore_s(T* p, int64_t s, typename Vec<T>::type v) {
  if (UNIT) {
    vstore<T>(p, v);
    return;
  }
  for (int l = 0; l < Vec<T>::L; ++l) p[l * s] = v[l];
}

// exp for a float vector: x = n*ln2 + r, |r| <= ln2/2, degree-7 Taylor for exp(r), 2^n into the
// exponent bits. exp(x) for x < -87.3 (including -inf) is exactly 0, as the reference's.
inline Vec<float>::type vexp(Vec<float>::type x) {
  typedef Vec<float>::type V;
  typedef Vec<float>::itype VI;
  const V lo = vbroadcast<float>(-87.3f);
  // x <= 0 here (logit minus its row maximum); below lo (or -inf) the result is set to 0 at the end
  VI under = x < lo;
  const V xc = x;
  const V magic = vbroadcast<float>(12582912.0f);  // 1.5 * 2^23: round to nearest
  V t = xc * 1.44269504088896341f + magic;
  V n = t - magic;
  V r = xc - n * 0.693359375f;
  r = r - n * -2.12194440e-4f;
  V p = vbroadcast<float>(1.0f / 5040.0f);
  p = p * r + (1.0f / 720.0f);
  p = p * r + (1.0f / 120.0f);
  p = p * r + (1.0f / 24.0f);
  p = p * r + (1.0f / 6.0f);
  p = p * r + 0.5f;
  p = p * r + 1.0f;
  p = p * r + 1.0f;
  VI ni = __builtin_convertvector(n, VI);
  VI bits = (VI)p + (ni << 23);
  V res = (V)bits;
  return under ? vbroadcast<float>(0.0f) : res;
}
inline Vec<double>::type vexp(Vec<double>::type x) {
  for (int l = 0; l < Vec<double>::L; ++l) x[l] = std::exp(x[l]);
  return x;
}

// ---------------------------------------------------------------------------------------------
// Window index tables of one axis (the rules of msaconv/ops/shapes.py).
struct Axis {
  int L = 0, Lout = 0, k = 0, d = 0, s = 0, pl = 0, pr = 0;
  std::vector<int> idx;   // [k][Lout]: input position read by slot j of output o, -1 = outside
  std::vector<int> off;   // [k]: the plain offset: position = o*s + off[j] away from the border
  std::vector<int> exc;   // output positions where some slot is not the plain offset (or outside)
};

Axis make_axis(int L, int k, int d, int s, int border) {
  Axis A;
  A.L = L; A.k = k; A.d = d; A.s = s;
  A.Lout = (L - 1) / s + 1;
  A.off.resize(k);
  if (border == CLAMP) {
    A.pl = ((k - 1) / 2) * d;
    A.pr = (k - 1 - (k - 1) / 2) * d;
    for (int j = 0; j < k; ++j) A.off[j] = (j - (k - 1) / 2) * d;
  } else {
    A.pl = d * (k - 1) / 2;
    A.pr = d * (k - 1) - A.pl;
    for (int j = 0; j < k; ++j) A.off[j] = j * d - A.pl;
  }
  A.idx.assign((size_t)k * A.Lout, -1);
  for (int o = 0; o < A.Lout; ++o) {
    const int y = o * s;
    bool exc = false;
    for (int j = 0; j < k; ++j) {
      int p;
      if (border == CLAMP) {
        const int r = y % d, g = y / d, Lg = (L - r + d - 1) / d;
        const int start = std::min(std::max(g - (k - 1) / 2, 0), Lg - k);
        p = (start + j) * d + r;
      } else {
        p = y + A.off[j];
        if (border == CIRCULAR) p = ((p % L) + L) % L;
        else if (p < 0 || p >= L) p = -1;
      }
      A.idx[(size_t)j * A.Lout + o] = p;
      if (p < 0 || p != y + A.off[j]) exc = true;
    }
    if (exc) A.exc.push_back(o);
  }
  return A;
}

// ---------------------------------------------------------------------------------------------
// Register-blocked vector passes over one query row. Buffers of a row are [rows][WoV] with WoV the
// output width rounded up to whole vectors; a "slot pointer" points at column 0 of the window slot's
// run in a padded key/value row buffer [D][Wp].

// The loop of both register-blocked passes: for each vector of columns x of a row WoV wide, NB accumulator
// vectors set to zero, then body(x, xo, acc), xo being the column's offset in a padded row read with
// stride sw (x when UNIT). NB is a template argument so that the accumulators stay in registers; this
// helper, remainder_block and the lambdas passed to them are always inlined: the passes compile to the
// loops they would be written out by hand.
template <typename T, bool UNIT, int NB, typename Body>
__attribute__((always_inline)) inline void vector_columns(int WoV, int64_t sw, Body&& body) {
  for (int x = 0; x < WoV; x += Vec<T>::L) {
    typename Vec<T>::type acc[NB];
    for (int n = 0; n < NB; ++n) acc[n] = vbroadcast<T>(0);
    body(x, UNIT ? (int64_t)x : (int64_t)x * sw, acc);
  }
}

// block(std::integral_constant<int, n>()) for the n in [1, 7] left after the whole blocks of a pass (none
// for n = 0): the block size of the remainder as a template argument
template <typename Block>
__attribute__((always_inline)) inline void remainder_block(int n, Block&& block) {
  switch (n) {
    case 7: block(std::integral_constant<int, 7>()); break;
    case 6: block(std::integral_constant<int, 6>()); break;
    case 5: block(std::integral_constant<int, 5>()); break;
    case 4: block(std::integral_constant<int, 4>()); break;
    case 3: block(std::integral_constant<int, 3>()); break;
    case 2: block(std::integral_constant<int, 2>()); break;
    case 1: block(std::integral_constant<int, 1>()); break;
    default: break;
  }
}

// outs[n][x] = mul * sum_d X[d*xs + x] * P_n[d*Wp + x*sw]
template <typename T, bool UNIT, int NB>
inline void dot_block(const T* X, int64_t xs, int D, int WoV, const T* const* P, int64_t Wp, int64_t sw,
                      T* const* outs, T mul) {
  typedef typename Vec<T>::type V;
  vector_columns<T, UNIT, NB>(WoV, sw, [&](int x, int64_t xo, V* acc) __attribute__((always_inline)) {
    for (int d = 0; d < D; ++d) {
      const V xv = vload<T>(X + (int64_t)d * xs + x);
      const int64_t row = (int64_t)d * Wp + xo;
      for (int n = 0; n < NB; ++n) acc[n] += xv * vload_s<T, UNIT>(P[n] + row, sw);
    }
    for (int n = 0; n < NB; ++n) vstore<T>(outs[n] + x, acc[n] * mul);
  });
}

template <typename T, bool UNIT>
void dot_slots(const T* X, int64_t xs, int D, int WoV, const T* const* P, int64_t Wp, int64_t sw, T* const* outs,
               int count, T mul) {
  int n = 0;
  auto block = [&](auto NB) __attribute__((always_inline)) {
    dot_block<T, UNIT, decltype(NB)::value>(X, xs, D, WoV, P + n, Wp, sw, outs + n, mul);
  };
  // blocks of 7 or 8 slots (7x7 windows: 7 blocks of 7, never a block of 1)
  const int nb = count % 8 == 0 || count % 8 > 4 ? 8 : 7;
  for (; n + nb <= count; n += nb) {
    if (nb == 8) block(std::integral_constant<int, 8>());
    else block(std::integral_constant<int, 7>());
  }
  remainder_block(count - n, block);
}

// One vector of columns x of the a.v pass, channels [d0, d0+DB), accumulated into acc (which may already hold
// other slots' sums) and stored: O[d*os + x] = inv[x] * (acc + sum_n A_n[x] * P_n[d*Wp + x*sw]
// + sum_m E_m[x] * ev[m*D + d]) (inv == nullptr: no scaling; M extra rows E_m with per-channel weights ev)
template <typename T, bool UNIT, int DB>
__attribute__((always_inline)) inline void axpy_columns(typename Vec<T>::type* acc, int x, int64_t xo, T* O,
                                                        int64_t os, int d0, int D, const T* const* A,
                                                        const T* const* P, int count, int64_t Wp, int64_t sw,
                                                        const T* const* E, const T* ev, int M, const T* inv) {
  typedef typename Vec<T>::type V;
  for (int n = 0; n < count; ++n) {
    const V av = vload<T>(A[n] + x);
    const T* p = P[n] + (int64_t)d0 * Wp + xo;
    for (int b = 0; b < DB; ++b) acc[b] += av * vload_s<T, UNIT>(p + (int64_t)b * Wp, sw);
  }
  for (int m = 0; m < M; ++m) {
    const V av = vload<T>(E[m] + x);
    for (int b = 0; b < DB; ++b) acc[b] += av * ev[(int64_t)m * D + d0 + b];
  }
  if (inv) {
    const V iv = vload<T>(inv + x);
    for (int b = 0; b < DB; ++b) acc[b] *= iv;
  }
  for (int b = 0; b < DB; ++b) vstore<T>(O + (int64_t)(d0 + b) * os + x, acc[b]);
}

template <typename T, bool UNIT, int DB>
inline void axpy_block(T* O, int64_t os, int d0, int D, int WoV, const T* const* A, const T* const* P, int count,
                       int64_t Wp, int64_t sw, const T* const* E, const T* ev, int M, const T* inv) {
  typedef typename Vec<T>::type V;
  vector_columns<T, UNIT, DB>(WoV, sw, [&](int x, int64_t xo, V* acc) __attribute__((always_inline)) {
    axpy_columns<T, UNIT, DB>(acc, x, xo, O, os, d0, D, A, P, count, Wp, sw, E, ev, M, inv);
  });
}

template <typename T, bool UNIT>
void axpy_slots(T* O, int64_t os, int D, int WoV, const T* const* A, const T* const* P, int count, int64_t Wp,
                int64_t sw, const T* const* E, const T* ev, int M, const T* inv) {
  int d = 0;
  auto block = [&](auto DB) __attribute__((always_inline)) {
    axpy_block<T, UNIT, decltype(DB)::value>(O, os, d, D, WoV, A, P, count, Wp, sw, E, ev, M, inv);
  };
  for (; d + 8 <= D; d += 8) block(std::integral_constant<int, 8>());
  remainder_block(D - d, block);
}

// ---------------------------------------------------------------------------------------------
// The same two passes for two query rows at once (the forward's rows yo and yo + 1). Most window slots of
// the two rows read the same padded key / value run (row r is window row i of yo and i - 1 of yo + 1 at stride
// 1): each vector loaded from such a run feeds both rows' accumulators, one load for two FMAs where the
// single-row passes load once per FMA (0.87-0.92x the forward's time at 56x56, k=7:
// benchmarks/op/probes/row_pairs_avx512.md). Blocks are as large as the vector registers allow: 32 of them with
// AVX-512 (also for 256-bit vectors), 16 otherwise.
// v stays in a register: without this GCC folds the load into both FMAs that use it (a memory operand each),
// which loads every vector twice and undoes the pairing (perf showed it: the pairs ran 2-30% slower)
template <typename V> __attribute__((always_inline)) inline void keep_in_register(V& v) {
#if defined(__x86_64__) || defined(__i386__)
  __asm__("" : "+v"(v));
#elif defined(__aarch64__)
  __asm__("" : "+w"(v));
#else
  (void)v;
#endif
}

#if defined(__AVX512F__)
constexpr int PAIR_BLOCK = 8;
#else
constexpr int PAIR_BLOCK = 4;
#endif

// outs0[n][x] = mul * sum_d X0[d*xs0 + x] * P_n[d*Wp + x*sw], outs1 likewise with X1
template <typename T, bool UNIT, int NB>
inline void dot2_block(const T* X0, int64_t xs0, const T* X1, int64_t xs1, int D, int WoV, const T* const* P,
                       int64_t Wp, int64_t sw, T* const* outs0, T* const* outs1, T mul) {
  typedef typename Vec<T>::type V;
  vector_columns<T, UNIT, 2 * NB>(WoV, sw, [&](int x, int64_t xo, V* acc) __attribute__((always_inline)) {
    for (int d = 0; d < D; ++d) {
      const V x0 = vload<T>(X0 + (int64_t)d * xs0 + x);
      const V x1 = vload<T>(X1 + (int64_t)d * xs1 + x);
      const int64_t row = (int64_t)d * Wp + xo;
      for (int n = 0; n < NB; ++n) {
        V p = vload_s<T, UNIT>(P[n] + row, sw);
        keep_in_register(p);
        acc[n] += x0 * p;
        acc[NB + n] += x1 * p;
      }
    }
    for (int n = 0; n < NB; ++n) {
      vstore<T>(outs0[n] + x, acc[n] * mul);
      vstore<T>(outs1[n] + x, acc[NB + n] * mul);
    }
  });
}

template <typename T, bool UNIT>
void dot2_slots(const T* X0, int64_t xs0, const T* X1, int64_t xs1, int D, int WoV, const T* const* P, int64_t Wp,
                int64_t sw, T* const* outs0, T* const* outs1, int count, T mul) {
  int n = 0;
  auto block = [&](auto NB) __attribute__((always_inline)) {
    dot2_block<T, UNIT, decltype(NB)::value>(X0, xs0, X1, xs1, D, WoV, P + n, Wp, sw, outs0 + n, outs1 + n, mul);
  };
  // blocks of PAIR_BLOCK or one less (7x7 windows share 6 rows of 7 slots: 6 blocks of 7)
  const int nb = count % PAIR_BLOCK == 0 || count % PAIR_BLOCK > PAIR_BLOCK / 2 ? PAIR_BLOCK : PAIR_BLOCK - 1;
  for (; n + nb <= count; n += nb) {
    if (nb == PAIR_BLOCK) block(std::integral_constant<int, PAIR_BLOCK>());
    else block(std::integral_constant<int, PAIR_BLOCK - 1>());
  }
  remainder_block(count - n, block);
}

// The slots of one row of a pair: weights A_n (logits rows), padded value runs P_n, count; the extra rows E_m,
// 1/sum per column inv (nullptr: no scaling), and where the row's output goes (O, channel stride os).
template <typename T>
struct PairRow {
  const T* const* A; const T* const* P; int count;
  const T* const* E; const T* inv; T* O; int64_t os;
};

// axpy_block for the two rows of a pair: the slots both rows read (weights A0 / A1 on the runs P), then each
// row's own slots and extra rows
template <typename T, bool UNIT, int DB>
inline void axpy2_block(int d0, int D, int WoV, const T* const* A0, const T* const* A1, const T* const* P, int count,
                        const PairRow<T>& r0, const PairRow<T>& r1, int64_t Wp, int64_t sw, const T* ev, int M) {
  typedef typename Vec<T>::type V;
  vector_columns<T, UNIT, 2 * DB>(WoV, sw, [&](int x, int64_t xo, V* acc) __attribute__((always_inline)) {
    for (int n = 0; n < count; ++n) {
      const V a0 = vload<T>(A0[n] + x), a1 = vload<T>(A1[n] + x);
      const T* p = P[n] + (int64_t)d0 * Wp + xo;
      for (int b = 0; b < DB; ++b) {
        V pv = vload_s<T, UNIT>(p + (int64_t)b * Wp, sw);
        keep_in_register(pv);
        acc[b] += a0 * pv;
        acc[DB + b] += a1 * pv;
      }
    }
    const PairRow<T>* rows[2] = {&r0, &r1};
    for (int h = 0; h < 2; ++h) {
      const PairRow<T>& r = *rows[h];
      axpy_columns<T, UNIT, DB>(acc + h * DB, x, xo, r.O, r.os, d0, D, r.A, r.P, r.count, Wp, sw, r.E, ev, M, r.inv);
    }
  });
}

template <typename T, bool UNIT>
void axpy2_slots(int D, int WoV, const T* const* A0, const T* const* A1, const T* const* P, int count,
                 const PairRow<T>& r0, const PairRow<T>& r1, int64_t Wp, int64_t sw, const T* ev, int M) {
  int d = 0;
  auto block = [&](auto DB) __attribute__((always_inline)) {
    axpy2_block<T, UNIT, decltype(DB)::value>(d, D, WoV, A0, A1, P, count, r0, r1, Wp, sw, ev, M);
  };
  for (; d + PAIR_BLOCK <= D; d += PAIR_BLOCK) block(std::integral_constant<int, PAIR_BLOCK>());
  remainder_block(D - d, block);
}

// P_n[d*Wp + x*sw] += G_n[x] * X[d][x]   (the transposed pass: key / value gradients)
template <typename T, bool UNIT, int NB>
inline void scatter_block(T* const* P, const T* const* G, const T* X, int64_t xs, int D, int WoV, int64_t Wp, int64_t sw) {
  typedef typename Vec<T>::type V;
  constexpr int L = Vec<T>::L;
  for (int x = 0; x < WoV; x += L) {
    V g[NB];
    for (int n = 0; n < NB; ++n) g[n] = vload<T>(G[n] + x);
    const int64_t xo = UNIT ? x : (int64_t)x * sw;
    for (int d = 0; d < D; ++d) {
      const V xv = vload<T>(X + (int64_t)d * xs + x);
      const int64_t row = (int64_t)d * Wp + xo;
      for (int n = 0; n < NB; ++n) {
        T* p = P[n] + row;
        vstore_s<T, UNIT>(p, sw, vload_s<T, UNIT>(p, sw) + g[n] * xv);
      }
    }
  }
}

template <typename T, bool UNIT>
void scatter_slots(T* const* P, const T* const* G, const T* X, int64_t xs, int count, int D, int WoV, int64_t Wp, int64_t sw) {
  int n = 0;
  for (; n + 4 <= count; n += 4) scatter_block<T, UNIT, 4>(P + n, G + n, X, xs, D, WoV, Wp, sw);
  switch (count - n) {
    case 3: scatter_block<T, UNIT, 3>(P + n, G + n, X, xs, D, WoV, Wp, sw); break;
    case 2: scatter_block<T, UNIT, 2>(P + n, G + n, X, xs, D, WoV, Wp, sw); break;
    case 1: scatter_block<T, UNIT, 1>(P + n, G + n, X, xs, D, WoV, Wp, sw); break;
    default: break;
  }
}

// The same sums as scatter, written as gathers (stride 1 only): for each key column c,
// dst[d][c] += sum_e G_e[c - off_e] * X[d][c - off_e]. Each output vector is read and written once,
// instead of once per slot (overlapping read-modify-writes stall on store-to-load forwarding).
// gp[e] points so that gp[e][c] = G_e[c - off_e]; X + xoff[e] + c = &X[0][c - off_e].
template <typename T, int DB>
inline void gather_block(T* dst, int d0, int64_t c0, int64_t c1, const T* const* gp, const int64_t* xoff, int cnt,
                         const T* X, int64_t QW, int64_t Wp) {
  typedef typename Vec<T>::type V;
  constexpr int L = Vec<T>::L;
  for (int64_t c = c0; c < c1; c += L) {
    V acc[DB];
    for (int b = 0; b < DB; ++b) acc[b] = vbroadcast<T>(0);
    for (int e = 0; e < cnt; ++e) {
      const V gv = vload<T>(gp[e] + c);
      const T* xp = X + xoff[e] + c + (int64_t)d0 * QW;
      for (int b = 0; b < DB; ++b) acc[b] += gv * vload<T>(xp + (int64_t)b * QW);
    }
    for (int b = 0; b < DB; ++b) {
      T* o = dst + (int64_t)(d0 + b) * Wp + c;
      vstore<T>(o, vload<T>(o) + acc[b]);
    }
  }
}

template <typename T>
void gather_slots(T* dst, int D, int64_t c0, int64_t c1, const T* const* gp, const int64_t* xoff, int cnt, const T* X,
                  int64_t QW, int64_t Wp) {
  if (cnt == 0) return;
  int d = 0;
  for (; d + 8 <= D; d += 8) gather_block<T, 8>(dst, d, c0, c1, gp, xoff, cnt, X, QW, Wp);
  switch (D - d) {
    case 7: gather_block<T, 7>(dst, d, c0, c1, gp, xoff, cnt, X, QW, Wp); break;
    case 6: gather_block<T, 6>(dst, d, c0, c1, gp, xoff, cnt, X, QW, Wp); break;
    case 5: gather_block<T, 5>(dst, d, c0, c1, gp, xoff, cnt, X, QW, Wp); break;
    case 4: gather_block<T, 4>(dst, d, c0, c1, gp, xoff, cnt, X, QW, Wp); break;
    case 3: gather_block<T, 3>(dst, d, c0, c1, gp, xoff, cnt, X, QW, Wp); break;
    case 2: gather_block<T, 2>(dst, d, c0, c1, gp, xoff, cnt, X, QW, Wp); break;
    case 1: gather_block<T, 1>(dst, d, c0, c1, gp, xoff, cnt, X, QW, Wp); break;
    default: break;
  }
}

// ---------------------------------------------------------------------------------------------
// Where the elements of one (image, head) plane of a [B, heads, D, H, W] tensor lie: element (d, r, c) at
// d * cs + r * rs + c * es from the plane's start.
struct Strides {
  int64_t cs, rs, es;
};

inline Strides strides_of(const at::Tensor& t) { return {t.stride(2), t.stride(3), t.stride(4)}; }

// ---------------------------------------------------------------------------------------------
struct Geometry {
  int64_t B, h, D, H, W, Ho, Wo, M, kh, kw, K, sh, sw;
  int border;
  int WoV;
  int64_t Wp;
  Axis R, C;
};

template <typename T>
Geometry make_geometry(const at::Tensor& q, int64_t M, int64_t kh, int64_t kw, int64_t dh, int64_t dw,
                       int64_t sh, int64_t sw, int64_t border) {
  Geometry g;
  g.B = q.size(0); g.h = q.size(1); g.D = q.size(2); g.H = q.size(3); g.W = q.size(4);
  g.M = M; g.kh = kh; g.kw = kw; g.K = kh * kw; g.sh = sh; g.sw = sw; g.border = (int)border;
  g.R = make_axis((int)g.H, (int)kh, (int)dh, (int)sh, (int)border);
  g.C = make_axis((int)g.W, (int)kw, (int)dw, (int)sw, (int)border);
  g.Ho = g.R.Lout; g.Wo = g.C.Lout;
  constexpr int L = Vec<T>::L;
  g.WoV = (int)((g.Wo + L - 1) / L * L);
  const int64_t need = (int64_t)(g.WoV - 1) * sw + g.C.pl + g.C.pr + 1;
  g.Wp = std::max<int64_t>(g.C.pl + g.W + g.C.pr, need);
  g.Wp = (g.Wp + L - 1) / L * L;
  return g;
}

// dst[0:n] = src[0:n] with inline vector moves: the rows here are short (a few vectors), where a call
// to memcpy per channel row costs more than the copy itself.
template <typename T>
inline void copy_row(T* dst, const T* src, int64_t n) {
  constexpr int L = Vec<T>::L;
  int64_t c = 0;
  for (; c + L <= n; c += L) vstore<T>(dst + c, vload<T>(src + c));
  for (; c < n; ++c) dst[c] = src[c];
}

// ---------------------------------------------------------------------------------------------
// Storage types. The tensors the kernels read and write hold either the compute type T (float, double) or
// bfloat16 (autocast's dtype on CPUs), computed in float: rows are converted while they move into and out of
// the kernels' buffers, so no converted copy of a tensor is ever made. Single elements convert with
// c10::BFloat16's own rules (float -> bfloat16 rounds to nearest even, a NaN becomes 0x7FC0); the vector
// converters below follow the same rules.
using bf16 = c10::BFloat16;
template <typename S> using IsBf16 = std::is_same<S, bf16>;

typedef uint16_t VecBf16 __attribute__((vector_size(MSA_VBYTES / 2)));
typedef uint32_t VecU32 __attribute__((vector_size(MSA_VBYTES)));
inline Vec<float>::type vload_bf16(const bf16* p) {
  VecBf16 h;
  std::memcpy(&h, p, sizeof(h));
  const VecU32 u = __builtin_convertvector(h, VecU32) << 16;
  Vec<float>::type f;
  std::memcpy(&f, &u, sizeof(f));
  return f;
}
inline void vstore_bf16(bf16* p, Vec<float>::type f) {
  VecU32 u;
  std::memcpy(&u, &f, sizeof(u));
  const VecU32 rounded = (u + 0x7fffu + ((u >> 16) & 1u)) >> 16;
  const VecU32 nan = VecU32{} + 0x7FC0u;
  const VecBf16 h = __builtin_convertvector((u & 0x7fffffffu) > 0x7f800000u ? nan : rounded, VecBf16);
  std::memcpy(p, &h, sizeof(h));
}

// dst[0:n] = src[0:n], converted from type S to type D (copy_row when they are the same)
template <typename D, typename S>
inline void convert_row(D* dst, const S* src, int64_t n) {
  if constexpr (std::is_same<D, S>::value) {
    copy_row<D>(dst, src, n);
  } else {
    constexpr int L = Vec<float>::L;
    int64_t c = 0;
    if constexpr (IsBf16<S>::value)
      for (; c + L <= n; c += L) vstore<float>(dst + c, vload_bf16(src + c));
    else
      for (; c + L <= n; c += L) vstore_bf16(dst + c, vload<float>(src + c));
    for (; c < n; ++c) dst[c] = static_cast<D>(src[c]);
  }
}

// p itself where the storage type is the compute type (a row read or written in place), else nullptr
template <typename T, typename S> inline const T* in_place(const S* p) {
  if constexpr (std::is_same<T, S>::value) return p;
  else return nullptr;
}
template <typename T, typename S> inline T* in_place(S* p) {
  if constexpr (std::is_same<T, S>::value) return p;
  else return nullptr;
}

// a per-thread buffer of at least n elements (the row converters' staging area; it stays in L1)
template <typename T> inline T* staging(size_t n) {
  thread_local std::vector<T> buf;
  if (buf.size() < n) buf.resize(n);
  return buf.data();
}

// the cache lines of columns [c0, c1) of a row whose D channels are inner (cs == 1): a run of D per column,
// column c at src + c * es
template <typename T>
inline void prefetch_columns(const T* src, int64_t es, int64_t D, int64_t c0, int64_t c1) {
  constexpr int64_t line = 64 / sizeof(T);
  for (int64_t c = c0; c < c1; ++c)
    for (int64_t d = 0; d < D; d += line) __builtin_prefetch(src + c * es + d);
}

// Columns ahead that load_row asks for while it transposes a row with D inner: its runs of D lie a pixel
// apart (and, for a slice of a channels-last qkv map, with gaps between them), which the hardware
// prefetcher does not follow.
constexpr int64_t PREFETCH_COLUMNS = 4;

// 8x8 float transpose in registers (256-bit vectors): out[j][i] = in[i][j]. Three rounds of shuffles, which
// GCC lowers to vunpck{l,h}ps / vshufps / vperm2f128.
#if MSA_VBYTES == 32
typedef float v8f __attribute__((vector_size(32)));
typedef int32_t v8i __attribute__((vector_size(32)));
inline void transpose8(v8f r[8]) {
  const v8i lo = {0, 8, 1, 9, 4, 12, 5, 13}, hi = {2, 10, 3, 11, 6, 14, 7, 15};
  const v8i s44 = {0, 1, 8, 9, 4, 5, 12, 13}, sEE = {2, 3, 10, 11, 6, 7, 14, 15};
  const v8i p20 = {0, 1, 2, 3, 8, 9, 10, 11}, p31 = {4, 5, 6, 7, 12, 13, 14, 15};
  v8f t[8], u[8];
  for (int i = 0; i < 8; i += 2) {
    t[i] = __builtin_shuffle(r[i], r[i + 1], lo);
    t[i + 1] = __builtin_shuffle(r[i], r[i + 1], hi);
  }
  for (int i = 0; i < 8; i += 4) {
    u[i] = __builtin_shuffle(t[i], t[i + 2], s44);
    u[i + 1] = __builtin_shuffle(t[i], t[i + 2], sEE);
    u[i + 2] = __builtin_shuffle(t[i + 1], t[i + 3], s44);
    u[i + 3] = __builtin_shuffle(t[i + 1], t[i + 3], sEE);
  }
  for (int j = 0; j < 4; ++j) {
    r[j] = __builtin_shuffle(u[j], u[j + 4], p20);
    r[j + 4] = __builtin_shuffle(u[j], u[j + 4], p31);
  }
}
#endif

// dst[j * ds + i] = src[i * ss + j] for i < rows, j < cols: whole 8x8 float blocks through registers where the
// build has 256-bit vectors, the rest element by element. It moves rows with D inner (cs == 1) into and out of
// the kernel's channels-first buffers. PREFETCH: src is such a row in a tensor, its rows (pixels) a column
// stride apart (with gaps for a slice of a channels-last qkv map), which the hardware prefetcher does not
// follow: the rows PREFETCH_COLUMNS ahead are asked for.
template <typename T, bool PREFETCH>
inline void transpose(T* dst, int64_t ds, const T* src, int64_t ss, int64_t rows, int64_t cols) {
  if (PREFETCH) prefetch_columns<T>(src, ss, cols, 0, std::min(rows, PREFETCH_COLUMNS));
  int64_t i0 = 0;
#if MSA_VBYTES == 32
  if constexpr (std::is_same<T, float>::value) {
    const int64_t c8 = cols / 8 * 8;
    for (; i0 + 8 <= rows; i0 += 8) {
      if (PREFETCH)
        prefetch_columns<T>(src, ss, cols, std::min(rows, i0 + PREFETCH_COLUMNS), std::min(rows, i0 + 8 + PREFETCH_COLUMNS));
      for (int64_t j0 = 0; j0 < c8; j0 += 8) {
        v8f r[8];
        for (int i = 0; i < 8; ++i) std::memcpy(&r[i], src + (i0 + i) * ss + j0, sizeof(v8f));
        transpose8(r);
        for (int j = 0; j < 8; ++j) std::memcpy(dst + (j0 + j) * ds + i0, &r[j], sizeof(v8f));
      }
      for (int64_t i = i0; i < i0 + 8; ++i)
        for (int64_t j = c8; j < cols; ++j) dst[j * ds + i] = src[i * ss + j];
    }
  }
#endif
  for (int64_t i = i0; i < rows; ++i) {
    if (PREFETCH && i + PREFETCH_COLUMNS < rows) prefetch_columns<T>(src, ss, cols, i + PREFETCH_COLUMNS, i + PREFETCH_COLUMNS + 1);
    for (int64_t j = 0; j < cols; ++j) dst[j * ds + i] = src[i * ss + j];
  }
}

// n columns x D channels of a row at src (column stride st.es, channel stride st.cs) -> dst[d * ds + c]. A row
// of the channels-first layout is D runs of n; where D is the inner axis (es > 1, cs == 1: [.., W, D] memory)
// it is n runs of D, read in memory order and transposed into the buffer, which stays in L1.
// A bfloat16 row with D inner is converted run by run into a staging block [n][D] first, then transposed.
template <typename T, typename S>
inline void load_row(T* dst, int64_t ds, const S* src, const Strides& st, int64_t D, int64_t n) {
  if (st.es == 1) {
    for (int64_t d = 0; d < D; ++d) convert_row<T, S>(dst + d * ds, src + d * st.cs, n);
  } else if (st.cs == 1) {
    if constexpr (std::is_same<T, S>::value) {
      transpose<T, true>(dst, ds, src, st.es, n, D);
    } else {
      T* tmp = staging<T>((size_t)(n * D));
      prefetch_columns<S>(src, st.es, D, 0, std::min(n, PREFETCH_COLUMNS));
      for (int64_t c = 0; c < n; ++c) {
        if (c + PREFETCH_COLUMNS < n) prefetch_columns<S>(src, st.es, D, c + PREFETCH_COLUMNS, c + PREFETCH_COLUMNS + 1);
        convert_row<T, S>(tmp + c * D, src + c * st.es, D);
      }
      transpose<T, false>(dst, ds, tmp, D, n, D);
    }
  } else {
    for (int64_t d = 0; d < D; ++d)
      for (int64_t c = 0; c < n; ++c) dst[d * ds + c] = static_cast<T>(src[d * st.cs + c * st.es]);
  }
}

// the inverse: src[d * ss + c] -> n columns x D channels of a row at dst
template <typename T, typename S>
inline void store_row(S* dst, const Strides& st, const T* src, int64_t ss, int64_t D, int64_t n) {
  if (st.es == 1) {
    for (int64_t d = 0; d < D; ++d) convert_row<S, T>(dst + d * st.cs, src + d * ss, n);
  } else if (st.cs == 1) {
    if constexpr (std::is_same<T, S>::value) {
      transpose<T, false>(dst, st.es, src, ss, D, n);
    } else {
      T* tmp = staging<T>((size_t)(n * D));
      transpose<T, false>(tmp, D, src, ss, D, n);
      for (int64_t c = 0; c < n; ++c) convert_row<S, T>(dst + c * st.es, tmp + c * D, D);
    }
  } else {
    for (int64_t d = 0; d < D; ++d)
      for (int64_t c = 0; c < n; ++c) dst[d * st.cs + c * st.es] = static_cast<S>(src[d * ss + c]);
  }
}

// The D runs of one channels-first plane row lie a plane-channel apart, too many streams for the hardware
// prefetcher: pad_row also asks for the row PREFETCH_ROWS further down (a later task's), so it arrives from
// memory while this task computes. A row with D inner is one run (when the columns are dense), which the
// hardware prefetcher follows by itself.
constexpr int64_t PREFETCH_ROWS = 2;

template <typename S>
inline void prefetch_row(const S* plane, const Strides& st, int64_t r, const Geometry& g) {
  if (r >= g.H) return;
  if (st.es != 1) {
    if (st.cs == 1) prefetch_columns<S>(plane + r * st.rs, st.es, g.D, 0, g.W);
    return;
  }
  constexpr int64_t line = 64 / sizeof(S);
  for (int64_t d = 0; d < g.D; ++d)
    for (int64_t c = 0; c < g.W; c += line) __builtin_prefetch(plane + d * st.cs + r * st.rs + c);
}

// one row r of a plane -> padded [D][Wp] buffer. The buffers are zero-initialised and, except for
// 'circular', only their interior columns [pl, pl + W) are ever written, so the zero margins need no refill.
template <typename T, typename S>
inline void pad_row(T* dst, const S* plane, const Strides& st, int64_t r, const Geometry& g) {
  const int64_t W = g.W, Wp = g.Wp, pl = g.C.pl;
  prefetch_row<S>(plane, st, r + PREFETCH_ROWS, g);
  if (g.border == CIRCULAR) {
    for (int64_t d = 0; d < g.D; ++d) {
      const S* src = plane + d * st.cs + r * st.rs;
      T* o = dst + d * Wp;
      for (int64_t c = 0; c < Wp; ++c) o[c] = static_cast<T>(src[((((c - pl) % W) + W) % W) * st.es]);
    }
  } else {
    load_row<T, S>(dst + pl, Wp, plane + r * st.rs, st, g.D, W);
  }
}

// every row of a plane -> padded [H][D][Wp] buffers, reading the plane in memory order (not 'circular')
template <typename T, typename S>
inline void pad_plane(T* dst, const S* plane, const Strides& st, const Geometry& g) {
  const int64_t W = g.W, Wp = g.Wp, pl = g.C.pl, rowsz = g.D * Wp;
  if (st.es != 1) {  // rows are the outer axis in memory: row by row, asking for the next row's first columns
    for (int64_t r = 0; r < g.H; ++r) {
      if (r + 1 < g.H && st.cs == 1) prefetch_columns<S>(plane + (r + 1) * st.rs, st.es, g.D, 0, std::min(W, PREFETCH_COLUMNS));
      load_row<T, S>(dst + r * rowsz + pl, Wp, plane + r * st.rs, st, g.D, W);
    }
    return;
  }
  for (int64_t d = 0; d < g.D; ++d)
    for (int64_t r = 0; r < g.H; ++r) convert_row<T, S>(dst + r * rowsz + d * Wp + pl, plane + d * st.cs + r * st.rs, W);
}

// Per-thread scratch for one query row.
template <typename T>
struct RowScratch {
  std::vector<T> qbuf, obuf, logits, lse, aux, aux2;
  std::vector<const T*> kptr, vptr;
  std::vector<T*> lptr;
  std::vector<int> slot;  // window slot n of each valid entry
  int64_t ls;  // row stride of the logits buffer (rows may carry zero margins for the gather passes)
  T* L0;       // row 0 of the logits
  RowScratch(const Geometry& g, int64_t row_stride = 0, int64_t margin = 0) {
    const size_t WoV = g.WoV, KM = g.K + g.M;
    ls = row_stride ? row_stride : WoV;
    qbuf.assign(g.D * WoV, T(0));
    obuf.assign(g.D * WoV, T(0));
    logits.assign(KM * ls + margin, T(0));
    L0 = logits.data() + margin;
    lse.assign(WoV, T(0));
    aux.assign(KM * WoV, T(0));
    aux2.assign(KM * std::max<size_t>(1, g.C.exc.size()), T(0));
    kptr.resize(g.K); vptr.resize(g.K); lptr.resize(g.K);
    slot.resize(g.K);
  }
};

// row y of a plane at columns x*sw into buf[d * bs + x], x < Wo (the tail is left as it is)
template <typename T, typename S>
inline void gather_row(T* buf, int64_t bs, const S* plane, const Strides& st, int64_t y, const Geometry& g) {
  const Strides sst = {st.cs, st.rs, st.es * g.sw};  // every sw-th column
  load_row<T, S>(buf, bs, plane + y * st.rs, sst, g.D, g.Wo);
}

// The valid slots of query row yo: pointers into the padded k / v rows (via rowptr(r)), and logits
// rows; outside rows get their constant logit. Returns the number of valid slots.
template <typename T, typename RowPtr>
int collect_slots(int64_t yo, const Geometry& g, RowScratch<T>& s, RowPtr rowptr, T outside) {
  int cnt = 0;
  const int WoV = g.WoV;
  for (int64_t i = 0; i < g.kh; ++i) {
    const int r = g.R.idx[(size_t)i * g.Ho + yo];
    for (int64_t j = 0; j < g.kw; ++j) {
      const int64_t n = i * g.kw + j;
      T* lrow = s.L0 + n * s.ls;
      if (r < 0) {
        std::fill(lrow, lrow + WoV, outside);
        continue;
      }
      const std::pair<const T*, const T*> kv = rowptr(r);
      const int64_t o = g.C.off[j] + g.C.pl;
      s.kptr[cnt] = kv.first + o;
      s.vptr[cnt] = kv.second + o;
      s.lptr[cnt] = lrow;
      s.slot[cnt] = (int)n;
      ++cnt;
    }
  }
  return cnt;
}

// rows[m*rs + x] = mul * sum_d X[d*xs + x] * E[m*D + d]: the logits (or value-gradient dots) of the M extra
// tokens (IPM 'grid'), one vector row each
template <typename T>
inline void extra_rows(T* rows, int64_t rs, const T* X, int64_t xs, const T* E, int64_t M, int64_t D, int WoV, T mul) {
  typedef typename Vec<T>::type V;
  constexpr int L = Vec<T>::L;
  for (int64_t m = 0; m < M; ++m)
    for (int x = 0; x < WoV; x += L) {
      V acc = vbroadcast<T>(0);
      for (int64_t d = 0; d < D; ++d) acc += vload<T>(X + d * xs + x) * E[m * D + d];
      vstore<T>(rows + m * rs + x, acc * mul);
    }
}

// The clamp border's columns, out of the vector pass: out[n*os + xo] = mul * sum_d X[d*xs + xo] * P_r[d*Wp + c]
// for every window slot n = (i, j) of query row yo, P_r = rowof(r) the padded row of window row i, c its column
template <typename T, typename RowOf>
inline void clamp_columns(T* out, int64_t os, const T* X, int64_t xs, const Geometry& g, int64_t yo, RowOf rowof, T mul) {
  for (int xo : g.C.exc)
    for (int64_t i = 0; i < g.kh; ++i) {
      const T* pr = rowof(g.R.idx[(size_t)i * g.Ho + yo]);
      for (int64_t j = 0; j < g.kw; ++j) {
        const int64_t c = g.C.idx[(size_t)j * g.Wo + xo] + g.C.pl;
        T acc = 0;
        for (int64_t d = 0; d < g.D; ++d) acc += X[d * xs + xo] * pr[d * g.Wp + c];
        out[(i * g.kw + j) * os + xo] = acc * mul;
      }
    }
}

// the logits of one query row after the vector pass: its extra rows and the border fix-ups. rowptr(r) gives
// the padded k row (first) and v row (second).
template <typename T, typename RowPtr>
__attribute__((always_inline)) inline void finish_logits(int64_t yo, const Geometry& g, RowScratch<T>& s, const T* X, int64_t xs, const T* ek, T scale,
                   RowPtr rowptr) {
  extra_rows<T>(s.L0 + g.K * s.ls, s.ls, X, xs, ek, g.M, g.D, g.WoV, scale);
  if (g.border == MASK) {
    const T ninf = -std::numeric_limits<T>::infinity();
    for (int xo : g.C.exc)
      for (int64_t j = 0; j < g.kw; ++j)
        if (g.C.idx[(size_t)j * g.Wo + xo] < 0)
          for (int64_t i = 0; i < g.kh; ++i) s.L0[(i * g.kw + j) * s.ls + xo] = ninf;
  } else if (g.border == CLAMP) {
    clamp_columns<T>(s.L0, s.ls, X, xs, g, yo, [&](int r) { return rowptr(r).first; }, scale);
  }
}

// logits of one query row: vector pass + extras + border fix-ups
template <typename T, bool UNIT, typename RowPtr>
void row_logits(int64_t yo, const Geometry& g, RowScratch<T>& s, int cnt, const T* X, int64_t xs, const T* ek, T scale,
                RowPtr rowptr) {
  dot_slots<T, UNIT>(X, xs, (int)g.D, g.WoV, s.kptr.data(), g.Wp, g.sw, s.lptr.data(), cnt, scale);
  finish_logits<T>(yo, g, s, X, xs, ek, scale, rowptr);
}

// The valid slots of two query rows (a pair of the forward) split into the runs both rows read and each row's
// own. collect_slots lists a row's slots window row by window row, kw of them per valid window row, and slot j
// of every window row sits at the same column offset: two window rows read the same runs when their first
// slots point at the same padded row.
template <typename T>
struct PairSlots {
  std::vector<const T*> k, v;   // the shared runs ...
  std::vector<T*> l0, l1;       // ... and their logits rows in row 0 and row 1
  std::vector<const T*> ok[2], ov[2];  // each row's own runs and logits rows
  std::vector<T*> ol[2];
  std::vector<char> used;
  int shared = 0, own[2] = {0, 0};
  explicit PairSlots(const Geometry& g) : k(g.K), v(g.K), l0(g.K), l1(g.K), used(g.kh) {
    for (int h = 0; h < 2; ++h) { ok[h].resize(g.K); ov[h].resize(g.K); ol[h].resize(g.K); }
  }
  void add_own(int h, const RowScratch<T>& s, int c) {
    ok[h][own[h]] = s.kptr[c]; ov[h][own[h]] = s.vptr[c]; ol[h][own[h]] = s.lptr[c]; ++own[h];
  }
  void match(const Geometry& g, const RowScratch<T>& s0, int cnt0, const RowScratch<T>& s1, int cnt1) {
    const int kw = (int)g.kw, n0 = cnt0 / kw, n1 = cnt1 / kw;
    shared = own[0] = own[1] = 0;
    std::fill(used.begin(), used.end(), 0);
    for (int a = 0; a < n0; ++a) {
      int b = 0;
      while (b < n1 && (used[b] || s1.kptr[b * kw] != s0.kptr[a * kw])) ++b;
      for (int j = 0; j < kw; ++j) {
        if (b == n1) { add_own(0, s0, a * kw + j); continue; }
        k[shared] = s0.kptr[a * kw + j]; v[shared] = s0.vptr[a * kw + j];
        l0[shared] = s0.lptr[a * kw + j]; l1[shared] = s1.lptr[b * kw + j]; ++shared;
      }
      if (b < n1) used[b] = 1;
    }
    for (int b = 0; b < n1; ++b)
      if (!used[b])
        for (int j = 0; j < kw; ++j) add_own(1, s1, b * kw + j);
  }
};

// softmax over the K+M slots of one forward row, vectorised along the row: logits become exp(l - max); the
// 1/sum goes to s.aux (applied to the output: fewer multiplies than normalising K+M weights), the
// log-sum-exp to s.lse
template <typename T>
__attribute__((always_inline)) inline void softmax_row(const Geometry& g, RowScratch<T>& s) {
  typedef typename Vec<T>::type V;
  constexpr int L = Vec<T>::L;
  const int64_t KM = g.K + g.M, WoV = g.WoV;
  const V ninf = vbroadcast<T>(-std::numeric_limits<T>::infinity());
  T* lg = s.L0;  // row stride WoV in the forward
  T* inv = s.aux.data();
  for (int x = 0; x < WoV; x += L) {
    V mx = ninf;
    for (int64_t n = 0; n < KM; ++n) {
      V l = vload<T>(lg + n * WoV + x);
      mx = l > mx ? l : mx;
    }
    mx = mx == ninf ? vbroadcast<T>(0) : mx;
    V sum = vbroadcast<T>(0);
    for (int64_t n = 0; n < KM; ++n) {
      V e = vexp(vload<T>(lg + n * WoV + x) - mx);
      vstore<T>(lg + n * WoV + x, e);
      sum += e;
    }
    for (int l = 0; l < L; ++l) {
      const T sl = sum[l];
      inv[x + l] = sl > 0 ? T(1) / sl : T(0);
      s.lse[x + l] = sl > 0 ? mx[l] + std::log(sl) : std::numeric_limits<T>::infinity();
    }
  }
}

// 'clamp' border columns of a forward row, out of the vector pass: take their weights out of the logits
// (into s.aux2) before it ...
template <typename T>
void clamp_hold(const Geometry& g, RowScratch<T>& s) {
  const size_t nexc = g.C.exc.size();
  for (size_t e = 0; e < nexc; ++e)
    for (int64_t n = 0; n < g.K; ++n) {
      T& a = s.L0[n * g.WoV + g.C.exc[e]];
      s.aux2[n * nexc + e] = a;
      a = 0;
    }
}

// ... and add them, scalar, after it
template <typename T, typename RowPtr>
void clamp_add(int64_t yo, const Geometry& g, const RowScratch<T>& s, T* O, int64_t os, RowPtr rowptr) {
  const size_t nexc = g.C.exc.size();
  const T* inv = s.aux.data();
  for (size_t e = 0; e < nexc; ++e) {
    const int xo = g.C.exc[e];
    for (int64_t i = 0; i < g.kh; ++i) {
      const T* vr = rowptr(g.R.idx[(size_t)i * g.Ho + yo]).second;
      for (int64_t j = 0; j < g.kw; ++j) {
        const T a = s.aux2[(i * g.kw + j) * nexc + e] * inv[xo];
        const int64_t c = g.C.idx[(size_t)j * g.Wo + xo] + g.C.pl;
        for (int64_t d = 0; d < g.D; ++d) O[d * os + xo] += a * vr[d * g.Wp + c];
      }
    }
  }
}

// ---------------------------------------------------------------------------------------------
// T: the compute type; S: the storage type of q, k, v and out (T, or bf16 with T float). lse and the extra
// keys / values are T.
template <typename T, typename S, bool UNIT>
void forward_impl(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v, const T* ek_all, const T* ev_all,
                  const Geometry& g, T scale, at::Tensor& out, at::Tensor& lse) {
  constexpr int L = Vec<T>::L;
  const S* qd = q.const_data_ptr<S>();
  const S* kd = k.const_data_ptr<S>();
  const S* vd = v.const_data_ptr<S>();
  S* od = out.mutable_data_ptr<S>();
  T* ld = lse.data_ptr<T>();
  const int64_t qsb = q.stride(0), qsh = q.stride(1), ksb = k.stride(0), ksh = k.stride(1), vsb = v.stride(0), vsh = v.stride(1);
  const int64_t osb = out.stride(0), osh = out.stride(1);
  const Strides qst = strides_of(q), kst = strides_of(k), vst = strides_of(v), ost = strides_of(out);
  const int64_t planes = g.B * g.h;
  const int64_t tasks = planes * g.Ho;
  const int WoV = g.WoV;
  const int64_t rowsz = g.D * g.Wp;

  // rows are whole vectors of unit-stride columns in the compute type: read q and write out in place
  const bool direct = std::is_same<T, S>::value && UNIT && g.Wo % L == 0 && qst.es == 1 && ost.es == 1;
  // Tasks are handed out in chunks from a shared counter (dynamic scheduling: on a shared machine a thread
  // that gets descheduled does not hold up the others). Tasks write disjoint outputs, so which thread
  // runs one never changes the result.
  // A chunk is a whole plane when there are planes enough to keep every thread busy (then no two threads pad
  // the same key rows: the window's rows above and below a chunk), else 8 rows.
  const int64_t nthreads_max = std::max<int64_t>(1, at::get_num_threads());
  const int64_t chunk = planes >= 4 * nthreads_max ? g.Ho : std::max<int64_t>(1, std::min<int64_t>(8, g.Ho));
  // Small planes are padded whole, in one pass over contiguous memory (row by row, each padded row gathers D
  // short runs a plane-row apart and waits on memory), when the chunk is the plane and its padded k and v fit
  // in half of a 512 KiB L2.
  const bool whole_plane = chunk == g.Ho && g.border != CIRCULAR && 2 * g.H * rowsz * (int64_t)sizeof(T) <= (256 << 10);
  // Larger maps keep only the padded rows a query row reads, in a ring (row r in slot r % ring): the buffer stays
  // in L2 instead of streaming a whole padded plane through it. A row reads key rows from a range of
  // (kh - 1) * dh + 1 rows with 'zeros' and 'mask'; 'clamp' shifts windows at the border and 'circular' wraps
  // them around the map, so these keep every row.
  // A task takes two rows of a plane at once when its chunk has them and a row is more than one vector wide
  // (see dot2_slots; on maps of one vector per row, 8x8 and smaller, the pairing measured 0-8% slower): the
  // ring then holds the key rows of both, (kh - 1) * dh + 1 + sh of them.
  const bool pairs = WoV > L;
  const int64_t span = (g.kh - 1) * g.R.d + 1 + (pairs ? g.sh : 0);
  const bool plain_rows = g.border == ZEROS || g.border == MASK;
  const int64_t ring = whole_plane || !plain_rows || span >= g.H ? g.H : span;
  std::atomic<int64_t> next{0};
  const int64_t nthreads = std::max<int64_t>(1, std::min<int64_t>(nthreads_max, (tasks + chunk - 1) / chunk));
  at::parallel_for(0, nthreads, 1, [&](int64_t tb, int64_t te) {
   for (int64_t tt = tb; tt < te; ++tt) {
    // the second row's scratch and the shared slots only where rows are paired
    std::optional<RowScratch<T>> pair_row;
    std::optional<PairSlots<T>> pair_slots;
    if (pairs) { pair_row.emplace(g); pair_slots.emplace(g); }
    RowScratch<T> s0(g);
    RowScratch<T>* sc[2] = {&s0, pairs ? &*pair_row : nullptr};
    PairSlots<T>* ps = pairs ? &*pair_slots : nullptr;
    std::vector<const T*> ext[2] = {std::vector<const T*>(std::max<int64_t>(g.M, 1)),
                                    std::vector<const T*>(std::max<int64_t>(g.M, 1))};
    std::vector<T> kpad((size_t)ring * rowsz), vpad((size_t)ring * rowsz);
    std::vector<int64_t> stamp(ring, -1);  // which (plane, row) each slot of the ring holds: p * H + r
    for (int64_t t0 = next.fetch_add(chunk); t0 < tasks; t0 = next.fetch_add(chunk)) {
    const int64_t tend = std::min(t0 + chunk, tasks);
    for (int64_t t = t0; t < tend;) {
      const int64_t p = t / g.Ho, yo = t % g.Ho;
      const int rows = pairs && t + 1 < tend && yo + 1 < g.Ho ? 2 : 1;
      const int64_t b = p / g.h, hh = p % g.h;
      const S* qp = qd + b * qsb + hh * qsh;
      const S* kp = kd + b * ksb + hh * ksh;
      const S* vp = vd + b * vsb + hh * vsh;
      const T* ek = ek_all ? ek_all + p * g.M * g.D : nullptr;
      const T* ev = ev_all ? ev_all + p * g.M * g.D : nullptr;
      if (whole_plane && stamp[0] != p * g.H) {  // a chunk is the whole plane: pad every row, reading k and v in order
        pad_plane<T, S>(kpad.data(), kp, kst, g);
        pad_plane<T, S>(vpad.data(), vp, vst, g);
        for (int64_t r = 0; r < g.H; ++r) stamp[r] = p * g.H + r;
      }
      auto rowptr = [&](int r) {
        const int64_t slot = r % ring;
        T* kr = kpad.data() + slot * rowsz;
        T* vr = vpad.data() + slot * rowsz;
        if (stamp[slot] != p * g.H + r) {
          pad_row<T, S>(kr, kp, kst, r, g);
          pad_row<T, S>(vr, vp, vst, r, g);
          stamp[slot] = p * g.H + r;
        }
        return std::pair<const T*, const T*>(kr, vr);
      };
      // q rows: read in place when rows are whole vectors, else gathered into a padded buffer
      const T* X[2];
      int64_t xs[2];
      int cnt[2];
      const T outside = g.border == MASK ? -std::numeric_limits<T>::infinity() : T(0);
      for (int h = 0; h < rows; ++h) {
        X[h] = in_place<T>(qp + (yo + h) * g.sh * qst.rs);
        xs[h] = qst.cs;
        if (!direct) {
          gather_row<T, S>(sc[h]->qbuf.data(), WoV, qp, qst, (yo + h) * g.sh, g);
          X[h] = sc[h]->qbuf.data();
          xs[h] = WoV;
        }
        cnt[h] = collect_slots<T>(yo + h, g, *sc[h], rowptr, outside);
      }
      if (rows == 2) {
        ps->match(g, s0, cnt[0], *sc[1], cnt[1]);
        dot2_slots<T, UNIT>(X[0], xs[0], X[1], xs[1], (int)g.D, WoV, ps->k.data(), g.Wp, g.sw, ps->l0.data(),
                            ps->l1.data(), ps->shared, scale);
        for (int h = 0; h < 2; ++h)
          dot_slots<T, UNIT>(X[h], xs[h], (int)g.D, WoV, ps->ok[h].data(), g.Wp, g.sw, ps->ol[h].data(), ps->own[h], scale);
      } else {
        dot_slots<T, UNIT>(X[0], xs[0], (int)g.D, WoV, s0.kptr.data(), g.Wp, g.sw, s0.lptr.data(), cnt[0], scale);
      }

      // softmax, then out = (e . v + e_extra . v_extra) / sum, written in place when rows are whole vectors
      S* orow[2];
      PairRow<T> pr[2];
      for (int h = 0; h < rows; ++h) {
        RowScratch<T>& s = *sc[h];
        finish_logits<T>(yo + h, g, s, X[h], xs[h], ek, scale, rowptr);
        softmax_row<T>(g, s);
        if (g.border == CLAMP) clamp_hold<T>(g, s);
        for (int64_t m = 0; m < g.M; ++m) ext[h][m] = s.L0 + (g.K + m) * WoV;
        orow[h] = od + b * osb + hh * osh + (yo + h) * ost.rs;
        T* O = direct ? in_place<T>(orow[h]) : s.obuf.data();
        const int64_t os = direct ? ost.cs : WoV;
        if (rows == 2) pr[h] = {ps->ol[h].data(), ps->ov[h].data(), ps->own[h], ext[h].data(), s.aux.data(), O, os};
        else pr[h] = {s0.lptr.data(), s0.vptr.data(), cnt[0], ext[0].data(), s0.aux.data(), O, os};
      }
      if (rows == 2)
        axpy2_slots<T, UNIT>((int)g.D, WoV, ps->l0.data(), ps->l1.data(), ps->v.data(), ps->shared, pr[0], pr[1], g.Wp,
                             g.sw, ev, (int)g.M);
      else
        axpy_slots<T, UNIT>(pr[0].O, pr[0].os, (int)g.D, WoV, pr[0].A, pr[0].P, pr[0].count, g.Wp, g.sw, pr[0].E, ev,
                            (int)g.M, pr[0].inv);
      for (int h = 0; h < rows; ++h) {
        RowScratch<T>& s = *sc[h];
        if (g.border == CLAMP) clamp_add<T>(yo + h, g, s, pr[h].O, pr[h].os, rowptr);
        if (!direct) store_row<T, S>(orow[h], ost, s.obuf.data(), WoV, g.D, g.Wo);  // write the row
        copy_row<T>(ld + (p * g.Ho + yo + h) * g.Wo, s.lse.data(), g.Wo);
      }
      t += rows;
    }
    }
   }
  });
}

// T, S: as in the forward; dout, out, dq, dk and dv are S too
template <typename T, typename S, bool UNIT>
void backward_impl(const at::Tensor& dout, const at::Tensor& q, const at::Tensor& k, const at::Tensor& v,
                   const T* ek_all, const T* ev_all, const at::Tensor& out, const at::Tensor& lse,
                   const Geometry& g, T scale, at::Tensor& dq, at::Tensor& dk, at::Tensor& dv, T* dek_all, T* dev_all) {
  typedef typename Vec<T>::type V;
  constexpr int L = Vec<T>::L;
  const S* qd = q.const_data_ptr<S>();
  const S* kd = k.const_data_ptr<S>();
  const S* vd = v.const_data_ptr<S>();
  const S* od = out.const_data_ptr<S>();
  const T* ld = lse.data_ptr<T>();
  const S* gd = dout.const_data_ptr<S>();
  S* dqd = dq.mutable_data_ptr<S>();
  S* dkd = dk.mutable_data_ptr<S>();
  S* dvd = dv.mutable_data_ptr<S>();
  const int64_t qsb = q.stride(0), qsh = q.stride(1), ksb = k.stride(0), ksh = k.stride(1), vsb = v.stride(0), vsh = v.stride(1);
  const Strides qst = strides_of(q), kst = strides_of(k), vst = strides_of(v), ost = strides_of(out), gst = strides_of(dout);
  const Strides dqst = strides_of(dq), dkst = strides_of(dk), dvst = strides_of(dv);
  const int64_t planes = g.B * g.h;
  const int WoV = g.WoV;
  const int64_t rowsz = g.D * g.Wp;
  const int64_t KM = g.K + g.M;
  // Row buffers have stride QW = ML + Wp with the data at [ML, ML + WoV) and zero margins, so that the
  // stride-1 key/value gradient passes can read them shifted by any window offset (see gather_block).
  const int64_t ML = g.C.pl + g.C.pr, QW = ML + g.Wp;
  const int64_t c0 = g.border == CIRCULAR ? 0 : g.C.pl, c1 = g.border == CIRCULAR ? g.Wp : g.C.pl + WoV;
  const size_t nexc = g.border == CLAMP ? g.C.exc.size() : 0;

  std::atomic<int64_t> next{0};  // dynamic scheduling of planes, as in the forward
  const int64_t nthreads = std::max<int64_t>(1, std::min<int64_t>(at::get_num_threads(), planes));
  at::parallel_for(0, nthreads, 1, [&](int64_t tb, int64_t te) {
   for (int64_t tt = tb; tt < te; ++tt) {
    RowScratch<T> s(g, QW, ML);  // logits / weights rows, margined
    std::vector<T> kpad((size_t)g.H * rowsz), vpad((size_t)g.H * rowsz);
    std::vector<T> dkpad((size_t)g.H * rowsz), dvpad((size_t)g.H * rowsz);
    std::vector<T> qrow(g.D * QW + ML, T(0)), grow(g.D * QW + ML, T(0));  // q and dout rows, margined
    std::vector<T> dAbuf(KM * QW + ML, T(0)), dqbuf(g.D * WoV, T(0)), delta(WoV, T(0));
    T* const Q = qrow.data() + ML;
    T* const G = grow.data() + ML;
    T* const dA = dAbuf.data() + ML;
    std::vector<T*> dkptr(g.K), dvptr(g.K), dAptr(g.K);
    std::vector<const T*> dLc(g.K), ac(g.K), dLext(std::max<int64_t>(g.M, 1));
    std::vector<T> exc_a(g.K * std::max<size_t>(nexc, 1)), exc_dl(g.K * std::max<size_t>(nexc, 1));
    std::vector<const T*> gdl(g.K), gaa(g.K);
    std::vector<int64_t> xoff(g.K);
    for (int64_t p = next.fetch_add(1); p < planes; p = next.fetch_add(1)) {
      const int64_t b = p / g.h, hh = p % g.h;
      const S* qp = qd + b * qsb + hh * qsh;
      const S* kp = kd + b * ksb + hh * ksh;
      const S* vp = vd + b * vsb + hh * vsh;
      const S* op = od + b * out.stride(0) + hh * out.stride(1);
      const S* gp = gd + b * dout.stride(0) + hh * dout.stride(1);
      const T* ek = ek_all ? ek_all + p * g.M * g.D : nullptr;
      const T* ev = ev_all ? ev_all + p * g.M * g.D : nullptr;
      T* dek = dek_all ? dek_all + p * g.M * g.D : nullptr;
      T* dev = dev_all ? dev_all + p * g.M * g.D : nullptr;
      for (int64_t r = 0; r < g.H; ++r) {
        pad_row<T, S>(kpad.data() + r * rowsz, kp, kst, r, g);
        pad_row<T, S>(vpad.data() + r * rowsz, vp, vst, r, g);
      }
      std::fill(dkpad.begin(), dkpad.end(), T(0));
      std::fill(dvpad.begin(), dvpad.end(), T(0));
      auto rowptr = [&](int r) {
        return std::pair<const T*, const T*>(kpad.data() + r * rowsz, vpad.data() + r * rowsz);
      };
      S* dqp = dqd + b * dq.stride(0) + hh * dq.stride(1);  // dq is a fresh tensor of zeros
      for (int64_t yo = 0; yo < g.Ho; ++yo) {
        // q row (strided gather when sw > 1) and dout row into the margined buffers; tails stay zero
        gather_row<T, S>(Q, QW, qp, qst, yo * g.sh, g);
        load_row<T, S>(G, QW, gp + yo * gst.rs, gst, g.D, g.Wo);
        // delta = <dout, out> per query: dout from its row buffer, out straight from the tensor
        std::fill(delta.begin(), delta.end(), T(0));
        for (int64_t d = 0; d < g.D; ++d) {
          const T* gr = G + d * QW;
          const S* orow = op + d * ost.cs + yo * ost.rs;
          for (int64_t x = 0; x < g.Wo; ++x) delta[x] += gr[x] * static_cast<T>(orow[x * ost.es]);
        }
        const T outside = g.border == MASK ? -std::numeric_limits<T>::infinity() : T(0);
        const int cnt = collect_slots<T>(yo, g, s, rowptr, outside);
        row_logits<T, UNIT>(yo, g, s, cnt, Q, QW, ek, scale, rowptr);
        // a = exp(logit - lse); tail lanes get lse = +inf, hence a = 0
        for (int x = 0; x < WoV; ++x) s.lse[x] = x < g.Wo ? ld[(p * g.Ho + yo) * g.Wo + x] : std::numeric_limits<T>::infinity();
        T* lg = s.L0;
        for (int x = 0; x < WoV; x += L) {
          const V m = vload<T>(s.lse.data() + x);
          for (int64_t n = 0; n < KM; ++n) vstore<T>(lg + n * QW + x, vexp(vload<T>(lg + n * QW + x) - m));
        }
        // dA = dout . v  (outside rows: zero values or zero weight -> 0)
        for (int64_t n = 0; n < KM; ++n) std::fill(dA + n * QW, dA + n * QW + WoV, T(0));
        for (int c = 0; c < cnt; ++c) dAptr[c] = dA + (int64_t)s.slot[c] * QW;
        dot_slots<T, UNIT>(G, QW, (int)g.D, WoV, s.vptr.data(), g.Wp, g.sw, dAptr.data(), cnt, T(1));
        extra_rows<T>(dA + g.K * QW, QW, G, QW, ev, g.M, g.D, WoV, T(1));
        if (nexc) clamp_columns<T>(dA, QW, G, QW, g, yo, [&](int r) { return rowptr(r).second; }, T(1));
        // dlogit = a * (dA - delta) * scale, stored over dA
        for (int64_t n = 0; n < KM; ++n)
          for (int x = 0; x < WoV; x += L) {
            const V a = vload<T>(lg + n * QW + x);
            vstore<T>(dA + n * QW + x, a * (vload<T>(dA + n * QW + x) - vload<T>(delta.data() + x)) * scale);
          }
        if (g.border == ZEROS)  // an outside slot is a constant logit 0: no gradient flows through it
          for (int xo : g.C.exc)
            for (int64_t j = 0; j < g.kw; ++j)
              if (g.C.idx[(size_t)j * g.Wo + xo] < 0)
                for (int64_t i = 0; i < g.kh; ++i) dA[(i * g.kw + j) * QW + xo] = 0;
        // clamp border columns leave the vector passes and are done in scalar code
        for (size_t e = 0; e < nexc; ++e)
          for (int64_t n = 0; n < g.K; ++n) {
            const int64_t at = n * QW + g.C.exc[e];
            exc_a[n * nexc + e] = lg[at];
            exc_dl[n * nexc + e] = dA[at];
            lg[at] = 0;
            dA[at] = 0;
          }
        // dq = dlogit . k (+ extra keys)
        for (int c = 0; c < cnt; ++c) {
          dLc[c] = dA + (int64_t)s.slot[c] * QW;
          ac[c] = lg + (int64_t)s.slot[c] * QW;
          const int64_t koff = s.kptr[c] - kpad.data();
          dkptr[c] = dkpad.data() + koff;
          dvptr[c] = dvpad.data() + koff;
        }
        for (int64_t m = 0; m < g.M; ++m) dLext[m] = dA + (g.K + m) * QW;
        axpy_slots<T, UNIT>(dqbuf.data(), WoV, (int)g.D, WoV, dLc.data(), s.kptr.data(), cnt, g.Wp, g.sw, dLext.data(), ek,
                            (int)g.M, nullptr);
        // dk += dlogit q, dv += a dout
        if (UNIT) {
          for (int c = 0; c < cnt; ++c) {
            const int64_t offp = g.C.off[s.slot[c] % g.kw] + g.C.pl;
            gdl[c] = dLc[c] - offp;
            gaa[c] = ac[c] - offp;
            xoff[c] = -offp;
          }
          for (int c = 0; c < cnt;) {  // entries of one kernel row are consecutive
            int e = c;
            const int64_t i = s.slot[c] / g.kw;
            while (e < cnt && s.slot[e] / g.kw == i) ++e;
            const int r = g.R.idx[(size_t)i * g.Ho + yo];
            gather_slots<T>(dkpad.data() + r * rowsz, (int)g.D, c0, c1, gdl.data() + c, xoff.data() + c, e - c, Q, QW, g.Wp);
            gather_slots<T>(dvpad.data() + r * rowsz, (int)g.D, c0, c1, gaa.data() + c, xoff.data() + c, e - c, G, QW, g.Wp);
            c = e;
          }
        } else {
          scatter_slots<T, UNIT>(dkptr.data(), dLc.data(), Q, QW, cnt, (int)g.D, WoV, g.Wp, g.sw);
          scatter_slots<T, UNIT>(dvptr.data(), ac.data(), G, QW, cnt, (int)g.D, WoV, g.Wp, g.sw);
        }
        for (int64_t m = 0; m < g.M; ++m) {
          const T* dl = dA + (g.K + m) * QW;
          const T* a = lg + (g.K + m) * QW;
          for (int64_t d = 0; d < g.D; ++d) {
            const T* qr = Q + d * QW;
            const T* gr = G + d * QW;
            T sk = 0, sv = 0;
            for (int x = 0; x < g.Wo; ++x) {
              sk += dl[x] * qr[x];
              sv += a[x] * gr[x];
            }
            dek[m * g.D + d] += sk;
            dev[m * g.D + d] += sv;
          }
        }
        for (size_t e = 0; e < nexc; ++e) {
          const int xo = g.C.exc[e];
          for (int64_t i = 0; i < g.kh; ++i) {
            const int r = g.R.idx[(size_t)i * g.Ho + yo];
            const T* kr = kpad.data() + r * rowsz;
            T* dkr = dkpad.data() + r * rowsz;
            T* dvr = dvpad.data() + r * rowsz;
            for (int64_t j = 0; j < g.kw; ++j) {
              const int64_t c = g.C.idx[(size_t)j * g.Wo + xo] + g.C.pl;
              const T a = exc_a[(i * g.kw + j) * nexc + e], dl = exc_dl[(i * g.kw + j) * nexc + e];
              for (int64_t d = 0; d < g.D; ++d) {
                dqbuf[d * WoV + xo] += dl * kr[d * g.Wp + c];
                dkr[d * g.Wp + c] += dl * Q[d * QW + xo];
                dvr[d * g.Wp + c] += a * G[d * QW + xo];
              }
            }
          }
        }
        const Strides dqs = {dqst.cs, dqst.rs, dqst.es * g.sw};  // every sw-th column
        store_row<T, S>(dqp + yo * g.sh * dqst.rs, dqs, dqbuf.data(), WoV, g.D, g.Wo);
      }
      // fold the padded key / value gradients back into the plane
      S* dkp = dkd + b * dk.stride(0) + hh * dk.stride(1);
      S* dvp = dvd + b * dv.stride(0) + hh * dv.stride(1);
      const int64_t W = g.W, pl = g.C.pl;
      std::vector<T> fold_k(g.border == CIRCULAR ? g.D * W : 0), fold_v(fold_k.size());
      for (int64_t r = 0; r < g.H; ++r) {
        const T* sk = dkpad.data() + r * rowsz;
        const T* sv = dvpad.data() + r * rowsz;
        if (g.border != CIRCULAR) {
          store_row<T, S>(dkp + r * dkst.rs, dkst, sk + pl, g.Wp, g.D, W);
          store_row<T, S>(dvp + r * dvst.rs, dvst, sv + pl, g.Wp, g.D, W);
          continue;
        }
        // 'circular': padded columns wrap around onto the row's W columns, summed in T, then stored
        std::fill(fold_k.begin(), fold_k.end(), T(0));
        std::fill(fold_v.begin(), fold_v.end(), T(0));
        for (int64_t d = 0; d < g.D; ++d)
          for (int64_t c = 0; c < g.Wp; ++c) {
            const int64_t x = (((c - pl) % W) + W) % W;
            fold_k[d * W + x] += sk[d * g.Wp + c];
            fold_v[d * W + x] += sv[d * g.Wp + c];
          }
        store_row<T, S>(dkp + r * dkst.rs, dkst, fold_k.data(), W, g.D, W);
        store_row<T, S>(dvp + r * dvst.rs, dvst, fold_v.data(), W, g.D, W);
      }
    }
   }
  });
}

void check_plane(const at::Tensor& t, const char* name) {
  TORCH_CHECK(t.dim() == 5, "msaconv cpu kernel: ", name, " must be 5-D [B, heads, D, H, W] (any strides)");
}

// a new [B, h, D, H, W] tensor, laid out channels-first, or as [B, h, H, W, D] (bhwd) seen through a permutation
at::Tensor new_planes(at::IntArrayRef sizes, const at::TensorOptions& opt, bool bhwd, bool zero) {
  if (!bhwd) return zero ? at::zeros(sizes, opt) : at::empty(sizes, opt);
  const std::vector<int64_t> hwd = {sizes[0], sizes[1], sizes[3], sizes[4], sizes[2]};
  return (zero ? at::zeros(hwd, opt) : at::empty(hwd, opt)).permute({0, 1, 4, 2, 3});
}

at::Tensor opt_contig(const c10::optional<at::Tensor>& t) {
  return t.has_value() && t->defined() && t->numel() > 0 ? t->contiguous() : at::Tensor();
}

// The storage type of a call: every tensor of q, k, v (and dout, out) has q's dtype; float and double compute in
// it, bfloat16 in float. The extra keys / values and lse are in the compute type.
void check_storage(const at::Tensor& q, std::initializer_list<std::pair<const at::Tensor*, const char*>> others) {
  for (const auto& [t, name] : others)
    TORCH_CHECK(t->scalar_type() == q.scalar_type(), "msaconv cpu kernel: ", name, " has dtype ", t->scalar_type(),
                ", q has ", q.scalar_type(), "; pass every tensor in one dtype");
}

template <typename T, typename S>
void forward_typed(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v, const at::Tensor& ek,
                   const at::Tensor& ev, int64_t M, int64_t kh, int64_t kw, int64_t dh, int64_t dw, int64_t sh,
                   int64_t sw, int64_t border, double scale, bool bhwd_out, at::Tensor& out, at::Tensor& lse) {
  const Geometry g = make_geometry<T>(q, M, kh, kw, dh, dw, sh, sw, border);
  out = new_planes({g.B, g.h, g.D, g.Ho, g.Wo}, q.options(), bhwd_out, false);
  lse = at::empty({g.B, g.h, g.Ho, g.Wo}, q.options().dtype(c10::CppTypeToScalarType<T>::value));
  const T* ekp = M ? ek.data_ptr<T>() : nullptr;
  const T* evp = M ? ev.data_ptr<T>() : nullptr;
  if (sw == 1) forward_impl<T, S, true>(q, k, v, ekp, evp, g, (T)scale, out, lse);
  else forward_impl<T, S, false>(q, k, v, ekp, evp, g, (T)scale, out, lse);
}

template <typename T, typename S>
void backward_typed(const at::Tensor& dout, const at::Tensor& q, const at::Tensor& k, const at::Tensor& v,
                    const at::Tensor& ek, const at::Tensor& ev, const at::Tensor& out, const at::Tensor& lse, int64_t M,
                    int64_t kh, int64_t kw, int64_t dh, int64_t dw, int64_t sh, int64_t sw, int64_t border,
                    double scale, at::Tensor& dq, at::Tensor& dk, at::Tensor& dv, at::Tensor& dek, at::Tensor& dev) {
  const Geometry g = make_geometry<T>(q, M, kh, kw, dh, dw, sh, sw, border);
  const T* ekp = M ? ek.data_ptr<T>() : nullptr;
  const T* evp = M ? ev.data_ptr<T>() : nullptr;
  T* dekp = M ? dek.data_ptr<T>() : nullptr;
  T* devp = M ? dev.data_ptr<T>() : nullptr;
  if (sw == 1) backward_impl<T, S, true>(dout, q, k, v, ekp, evp, out, lse, g, (T)scale, dq, dk, dv, dekp, devp);
  else backward_impl<T, S, false>(dout, q, k, v, ekp, evp, out, lse, g, (T)scale, dq, dk, dv, dekp, devp);
}

}  // namespace

std::vector<at::Tensor> msa_forward(at::Tensor q, at::Tensor k, at::Tensor v, c10::optional<at::Tensor> extra_k,
                                    c10::optional<at::Tensor> extra_v, int64_t kh, int64_t kw, int64_t dh, int64_t dw,
                                    int64_t sh, int64_t sw, int64_t border, double scale, bool bhwd_out) {
  check_plane(q, "q"); check_plane(k, "k"); check_plane(v, "v");
  check_storage(q, {{&k, "k"}, {&v, "v"}});
  at::Tensor ek = opt_contig(extra_k), ev = opt_contig(extra_v);
  const int64_t M = ek.defined() ? ek.size(2) : 0;
  at::Tensor out, lse;
  if (q.scalar_type() == at::kBFloat16) {
    forward_typed<float, bf16>(q, k, v, ek, ev, M, kh, kw, dh, dw, sh, sw, border, scale, bhwd_out, out, lse);
  } else {
    AT_DISPATCH_FLOATING_TYPES(q.scalar_type(), "msa_forward", [&] {
      forward_typed<scalar_t, scalar_t>(q, k, v, ek, ev, M, kh, kw, dh, dw, sh, sw, border, scale, bhwd_out, out, lse);
    });
  }
  return {out, lse};
}

std::vector<at::Tensor> msa_backward(at::Tensor dout, at::Tensor q, at::Tensor k, at::Tensor v,
                                     c10::optional<at::Tensor> extra_k, c10::optional<at::Tensor> extra_v,
                                     at::Tensor out, at::Tensor lse, int64_t kh, int64_t kw, int64_t dh, int64_t dw,
                                     int64_t sh, int64_t sw, int64_t border, double scale, bool bhwd_out) {
  check_plane(q, "q"); check_plane(k, "k"); check_plane(v, "v"); check_plane(dout, "dout"); check_plane(out, "out");
  check_storage(q, {{&k, "k"}, {&v, "v"}, {&dout, "dout"}, {&out, "out"}});
  lse = lse.contiguous();
  at::Tensor ek = opt_contig(extra_k), ev = opt_contig(extra_v);
  const int64_t M = ek.defined() ? ek.size(2) : 0;
  at::Tensor dq = new_planes(q.sizes(), q.options(), bhwd_out, true);
  at::Tensor dk = new_planes(k.sizes(), k.options(), bhwd_out, false);
  at::Tensor dv = new_planes(v.sizes(), v.options(), bhwd_out, false);
  at::Tensor dek, dev;
  if (M) {
    dek = at::zeros(ek.sizes(), ek.options());
    dev = at::zeros(ev.sizes(), ev.options());
  }
  if (q.scalar_type() == at::kBFloat16) {
    backward_typed<float, bf16>(dout, q, k, v, ek, ev, out, lse, M, kh, kw, dh, dw, sh, sw, border, scale, dq, dk, dv,
                                dek, dev);
  } else {
    AT_DISPATCH_FLOATING_TYPES(q.scalar_type(), "msa_backward", [&] {
      backward_typed<scalar_t, scalar_t>(dout, q, k, v, ek, ev, out, lse, M, kh, kw, dh, dw, sh, sw, border, scale,
                                         dq, dk, dv, dek, dev);
    });
  }
  return {dq, dk, dv, dek, dev};
}

std::string build_info() {
  std::string s = "vector bytes " + std::to_string(MSA_VBYTES);
#if MSA_VBYTES == 64
  s += " (AVX-512)";
#elif MSA_VBYTES == 32 && defined(__AVX512F__)
  s += " (256-bit vectors on an AVX-512 target)";
#elif MSA_VBYTES == 32 && defined(__AVX2__)
  s += " (AVX2)";
#endif
  return s;
}

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.def("forward", &msa_forward, "msa_conv2d forward ([B, heads, D, H, W] of any strides; bhwd_out: outputs in bhwd order)");
  m.def("backward", &msa_backward, "msa_conv2d backward (as the forward)");
  m.def("build_info", &build_info, "vector width the kernels were built for");
}
