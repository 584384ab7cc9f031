// Tile-and-select: the one mechanism behind the CPU kernels of knn (csrc/cpu/knn.cpp) and topk_scores
// (csrc/cpu/topk_scores.cpp). Inner-product scores are computed one (T x T) tile at a time by a register-blocked
// GEMM and reduced at once into a running top-k per row, so no score matrix larger than a tile ever exists.
//
// What it fuses and what it follows:
//  * GEMM: the Goto/BLIS design (Goto & van de Geijn, "Anatomy of high-performance matrix multiplication", TOMS
//    2008; BLIS's Zen micro-kernels): rows are packed once into panels of G rows (G = one 256-bit vector: 8
//    floats or 4 doubles), k-major inside a panel, so that a micro-kernel streams a 4-row A sliver (broadcasts)
//    against three B panels (3 vector loads) and keeps a 4 x 3G block of scores in 12 accumulator registers
//    (12 + 3 + 1 of the 16 ymm registers). Depth is blocked by kc so that the three B panels stay in L1 while
//    the tile's A panels stream from L2. Measured on the 2-core Zen-1 VM: 29-38 GFLOP/s fp32 per core, on par
//    with MKL's sgemm on the same tiles (30-33 GFLOP/s) in the same minutes; an 8 x 8 kernel reached 27-30.
//  * Every score is ONE fused multiply-add chain over k = 0 .. d-1 in order (the kc blocking stores and reloads
//    the accumulator without extra rounding), whatever the tile, the panel position, the thread or the tile
//    size. So s(i, j) is bitwise equal to s(j, i), two identical rows give bitwise identical scores (exact ties,
//    broken by the lower index as the specification says), and results are bitwise reproducible run to run and
//    across thread counts and tile budgets.
//  * Selection: FAISS's "k-selection" idea (Johnson, Douze & Jegou, "Billion-scale similarity search with GPUs",
//    arXiv 1702.08734) on a CPU: each row keeps a binary heap of its k best (value, index) pairs with the worst at
//    the root, and the root value as a threshold; the tile is scanned G scores at a time with one vector compare
//    against the threshold, and only scores that reach it (rare once the heap is full: about k ln(n / k) per
//    row) go through the scalar heap update. The order is (value descending, index ascending), a strict total
//    order, so the selected set does not depend on the order candidates arrive in (which the symmetric schedule
//    of knn relies on). A score of -inf is no candidate (excluded pairs, padding); NaN never passes the compare.
#pragma once

#include <ATen/ATen.h>

#if defined(__AVX__) || defined(__FMA__)
#include <immintrin.h>
#endif

#include <algorithm>
#include <cstdint>
#include <limits>
#include <utility>
#include <vector>

namespace mmrec_fast {
namespace tile_topk {

// GCC/Clang vectors of 256 bits (AVX2 with -march=x86-64-v3, pairs of SSE registers otherwise).
typedef float Float8 __attribute__((vector_size(32), aligned(32)));
typedef double Double4 __attribute__((vector_size(32), aligned(32)));
template <typename T> struct VecOf;
template <> struct VecOf<float> { using type = Float8; };
template <> struct VecOf<double> { using type = Double4; };
template <typename T>
using Vec = typename VecOf<T>::type;

// Rows per packed panel: one vector.
template <typename T>
constexpr int64_t kGroup = 32 / sizeof(T);
// Rows of the A sliver of the micro-kernel, and B panels per micro-kernel call.
constexpr int64_t kMicroRows = 4;
constexpr int kMicroPanels = 3;

inline Float8 broadcast(const float* p) { const float x = *p; return Float8{x, x, x, x, x, x, x, x}; }
inline Double4 broadcast(const double* p) { const double x = *p; return Double4{x, x, x, x}; }
inline Float8 splat(float x) { return Float8{x, x, x, x, x, x, x, x}; }
inline Double4 splat(double x) { return Double4{x, x, x, x}; }

// a * b + c, fused (one rounding) where the CPU has FMA.
inline Float8 multiply_add(Float8 a, Float8 b, Float8 c) {
#if defined(__FMA__)
  return (Float8)_mm256_fmadd_ps((__m256)a, (__m256)b, (__m256)c);
#else
  return a * b + c;
#endif
}
inline Double4 multiply_add(Double4 a, Double4 b, Double4 c) {
#if defined(__FMA__)
  return (Double4)_mm256_fmadd_pd((__m256d)a, (__m256d)b, (__m256d)c);
#else
  return a * b + c;
#endif
}

// Bit l set where v[l] >= t[l] (ordered compare: false for NaN).
inline int at_least_mask(Float8 v, Float8 t) {
#if defined(__AVX__)
  return _mm256_movemask_ps(_mm256_cmp_ps((__m256)v, (__m256)t, _CMP_GE_OQ));
#else
  int mask = 0;
  for (int l = 0; l < 8; ++l) mask |= (v[l] >= t[l]) << l;
  return mask;
#endif
}
inline int at_least_mask(Double4 v, Double4 t) {
#if defined(__AVX__)
  return _mm256_movemask_pd(_mm256_cmp_pd((__m256d)v, (__m256d)t, _CMP_GE_OQ));
#else
  int mask = 0;
  for (int l = 0; l < 4; ++l) mask |= (v[l] >= t[l]) << l;
  return mask;
#endif
}

template <typename T>
inline Vec<T> load(const T* p) { return *reinterpret_cast<const Vec<T>*>(p); }
template <typename T>
inline void store(T* p, Vec<T> v) { *reinterpret_cast<Vec<T>*>(p) = v; }

// ---- packing -----------------------------------------------------------------------------------------------

// Rows (n, d) row-major -> ceil(n / G) panels of (d, G): panel g holds rows gG .. gG + G - 1, element (k, l) at
// g * d * G + k * G + l; rows past n are zeros. Returned as a tensor so that its memory is visible to torch's
// profiler like every other allocation of the op.
template <typename T>
at::Tensor pack_rows(const T* x, int64_t n, int64_t d) {
  constexpr int64_t G = kGroup<T>;
  const int64_t groups = (n + G - 1) / G;
  at::Tensor packed = at::empty({std::max<int64_t>(groups * d * G, 1)}, at::CPU(c10::CppTypeToScalarType<T>::value));
  T* out = packed.data_ptr<T>();
  at::parallel_for(0, groups, 1, [&](int64_t g_begin, int64_t g_end) {
    for (int64_t g = g_begin; g < g_end; ++g) {
      T* panel = out + g * d * G;
      for (int64_t l = 0; l < G; ++l) {
        const int64_t row = g * G + l;
        if (row < n) {
          const T* src = x + row * d;
          for (int64_t k = 0; k < d; ++k) panel[k * G + l] = src[k];
        } else {
          for (int64_t k = 0; k < d; ++k) panel[k * G + l] = T(0);
        }
      }
    }
  });
  return packed;
}

// ---- GEMM tile ---------------------------------------------------------------------------------------------

// C[r][v G + l] (+)= sum_{k < kc} a[k G + r] * b[v panel_stride + k G + l], r < 4, v < PANELS, l < G.
template <typename T, int PANELS>
__attribute__((always_inline)) inline void micro_kernel(const T* a, const T* b, int64_t panel_stride, int64_t kc,
                                                        T* c, int64_t ldc, bool accumulate) {
  constexpr int64_t G = kGroup<T>;
  Vec<T> acc[kMicroRows][PANELS];
#pragma GCC unroll 4
  for (int r = 0; r < kMicroRows; ++r)
#pragma GCC unroll 3
    for (int v = 0; v < PANELS; ++v) acc[r][v] = accumulate ? load(c + r * ldc + v * G) : Vec<T>{};
  for (int64_t k = 0; k < kc; ++k) {
    Vec<T> bv[PANELS];
#pragma GCC unroll 3
    for (int v = 0; v < PANELS; ++v) bv[v] = load(b + v * panel_stride + k * G);
#pragma GCC unroll 4
    for (int r = 0; r < kMicroRows; ++r) {
      const Vec<T> s = broadcast(a + k * G + r);
#pragma GCC unroll 3
      for (int v = 0; v < PANELS; ++v) acc[r][v] = multiply_add(s, bv[v], acc[r][v]);
    }
  }
#pragma GCC unroll 4
  for (int r = 0; r < kMicroRows; ++r)
#pragma GCC unroll 3
    for (int v = 0; v < PANELS; ++v) store(c + r * ldc + v * G, acc[r][v]);
}

// Scores of a tile: C[r][c] = <a_row(a_row0 + r), b_row(b_panel0 G + c)> for r < a_rows, c < b_panels G, from
// packed rows (pack_rows) of depth d, blocked by kc. a_row0 must be a multiple of 4 and the tile's rows are
// computed 4 at a time (rows past a_rows within the last 4 are computed too: C needs round_up(a_rows, 4) rows).
template <typename T>
void gemm_tile(const T* packed_a, int64_t a_row0, int64_t a_rows, const T* packed_b, int64_t b_panel0,
               int64_t b_panels, int64_t d, int64_t kc, T* C, int64_t ldc) {
  constexpr int64_t G = kGroup<T>;
  const int64_t panel_stride = d * G;
  const int64_t depth_steps = std::max<int64_t>((d + kc - 1) / kc, 1);  // d = 0: one step of depth 0 (zeros)
  for (int64_t step = 0; step < depth_steps; ++step) {
    const int64_t p0 = step * kc;
    const int64_t depth = std::min(kc, d - p0);
    const bool accumulate = step > 0;
    for (int64_t v0 = 0; v0 < b_panels; v0 += kMicroPanels) {
      const T* b = packed_b + (b_panel0 + v0) * panel_stride + p0 * G;
      const int64_t panels = std::min<int64_t>(kMicroPanels, b_panels - v0);
      for (int64_t r = 0; r < a_rows; r += kMicroRows) {
        const int64_t row = a_row0 + r;
        const T* a = packed_a + (row / G) * panel_stride + p0 * G + row % G;
        T* c = C + r * ldc + v0 * G;
        if (panels == 3) micro_kernel<T, 3>(a, b, panel_stride, depth, c, ldc, accumulate);
        else if (panels == 2) micro_kernel<T, 2>(a, b, panel_stride, depth, c, ldc, accumulate);
        else micro_kernel<T, 1>(a, b, panel_stride, depth, c, ldc, accumulate);
      }
    }
  }
}

// ---- running top-k -----------------------------------------------------------------------------------------

// For each of n rows, the k best (value, index) pairs seen so far as a binary heap with the worst at the root;
// empty slots hold (-inf, INT32_MAX), worse than any candidate. threshold[row] mirrors the root's value; it has
// round_up(n, G) + G entries, the ones past n +inf, so that it can be read a vector at a time at tile edges.
template <typename T>
struct RowHeaps {
  at::Tensor values_storage, index_storage, threshold_storage;
  T* values;
  int32_t* index;
  T* threshold;
  int64_t k;

  RowHeaps(int64_t n, int64_t k_) : k(k_) {
    constexpr int64_t G = kGroup<T>;
    const auto dtype = c10::CppTypeToScalarType<T>::value;
    values_storage = at::full({std::max<int64_t>(n * k, 1)}, -std::numeric_limits<T>::infinity(), at::CPU(dtype));
    index_storage = at::full({std::max<int64_t>(n * k, 1)}, std::numeric_limits<int32_t>::max(), at::CPU(at::kInt));
    const int64_t padded = (n + G - 1) / G * G + G;
    threshold_storage = at::full({padded}, std::numeric_limits<T>::infinity(), at::CPU(dtype));
    threshold_storage.narrow(0, 0, n).fill_(-std::numeric_limits<T>::infinity());
    values = values_storage.data_ptr<T>();
    index = index_storage.data_ptr<int32_t>();
    threshold = threshold_storage.data_ptr<T>();
  }

  static inline bool worse(T av, int32_t ai, T bv, int32_t bi) { return av < bv || (av == bv && ai > bi); }

  // Offer candidate (v, j) to row `row`: it replaces the worst kept pair if it is better.
  inline void offer(int64_t row, T v, int32_t j) {
    if (v == -std::numeric_limits<T>::infinity()) return;
    T* hv = values + row * k;
    int32_t* hj = index + row * k;
    if (!worse(hv[0], hj[0], v, j)) return;
    int64_t pos = 0;
    while (true) {  // sift the new pair down from the root
      int64_t child = 2 * pos + 1;
      if (child >= k) break;
      if (child + 1 < k && worse(hv[child + 1], hj[child + 1], hv[child], hj[child])) ++child;
      if (!worse(hv[child], hj[child], v, j)) break;
      hv[pos] = hv[child];
      hj[pos] = hj[child];
      pos = child;
    }
    hv[pos] = v;
    hj[pos] = j;
    threshold[row] = hv[0];
  }

  // Rows [row_begin, row_end) sorted into out_values (n, k) of T and out_index (n, k) int64, descending value,
  // ascending index among equal values; slots without a candidate get (-inf, -1).
  void finish(int64_t row_begin, int64_t row_end, T* out_values, int64_t* out_index) const {
    std::vector<std::pair<T, int32_t>> row_pairs(k);
    for (int64_t row = row_begin; row < row_end; ++row) {
      for (int64_t t = 0; t < k; ++t) row_pairs[t] = {values[row * k + t], index[row * k + t]};
      std::sort(row_pairs.begin(), row_pairs.end(), [](const auto& a, const auto& b) {
        return worse(b.first, b.second, a.first, a.second);
      });
      for (int64_t t = 0; t < k; ++t) {
        const bool empty = row_pairs[t].first == -std::numeric_limits<T>::infinity();
        out_values[row * k + t] = row_pairs[t].first;
        out_index[row * k + t] = empty ? -1 : row_pairs[t].second;
      }
    }
  }
};

// Scan a score tile into the heaps. Rows r < rows of C (ldc columns) are global rows row0 + r; columns c < cols
// are global indices col0 + c (cols a multiple of G; scores of columns past the valid ones must be -inf).
// Every score is offered to its row; with COLUMNS, also to row col0 + c as candidate row0 + r (the symmetric
// case: the tile's transpose is the tile of the mirrored block pair).
template <typename T, bool COLUMNS>
void select_tile(const T* C, int64_t ldc, int64_t rows, int64_t cols, int64_t row0, int64_t col0, RowHeaps<T>& heaps) {
  constexpr int64_t G = kGroup<T>;
  for (int64_t r = 0; r < rows; ++r) {
    const int64_t i = row0 + r;
    const T* c_row = C + r * ldc;
    Vec<T> row_threshold = splat(heaps.threshold[i]);
    for (int64_t c = 0; c < cols; c += G) {
      const Vec<T> v = load(c_row + c);
      int row_mask = at_least_mask(v, row_threshold);
      int col_mask = COLUMNS ? at_least_mask(v, load(heaps.threshold + col0 + c)) : 0;
      while (row_mask) {
        const int l = __builtin_ctz(row_mask);
        row_mask &= row_mask - 1;
        heaps.offer(i, c_row[c + l], static_cast<int32_t>(col0 + c + l));
      }
      row_threshold = splat(heaps.threshold[i]);
      while (col_mask) {
        const int l = __builtin_ctz(col_mask);
        col_mask &= col_mask - 1;
        heaps.offer(col0 + c + l, c_row[c + l], static_cast<int32_t>(i));
      }
    }
  }
}

// Scores of columns [valid, cols) of a tile (the padding rows of the last panel) set to -inf: no candidates.
template <typename T>
void mask_columns_from(T* C, int64_t ldc, int64_t rows, int64_t valid, int64_t cols) {
  for (int64_t r = 0; r < rows; ++r)
    for (int64_t c = valid; c < cols; ++c) C[r * ldc + c] = -std::numeric_limits<T>::infinity();
}

// Tile edge (a multiple of 8 rows, so of G for both float and double) for a score-tile budget in bytes.
template <typename T>
int64_t tile_edge(int64_t tile_bytes) {
  int64_t edge = 8;
  while ((edge + 8) * (edge + 8) * static_cast<int64_t>(sizeof(T)) <= tile_bytes) edge += 8;
  return edge;
}

// Depth block kc: the three B panels of a micro-kernel call take kc x 96 bytes (G x sizeof(T) = 32 bytes a row
// of a panel, whatever T), 24 KiB of the 32 KiB L1 at kc = 256.
constexpr int64_t kDepthBlock = 256;

}  // namespace tile_topk
}  // namespace mmrec_fast
