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
//  * Selection: a threshold filter in front of an exact per-row top-k (FAISS's CPU result handlers do the same in
//    front of their heaps; Johnson, Douze & Jegou, "Billion-scale similarity search with GPUs", arXiv 1702.08734,
//    for the k-selection problem): the tile is scanned G scores at a time with one vector compare against each
//    row's current k-th best value, and only scores that reach it (about k (1 + ln(n / k)) per row over a scan
//    in random order) are offered to the row's sorted top-k (RowTopK below). The order is (value descending,
//    index ascending), a strict total order, so the selected set does not depend on the order candidates arrive
//    in (which the symmetric schedule of knn relies on). A score of -inf is no candidate (excluded pairs,
//    padding); NaN never passes the compare.
#pragma once

#include <ATen/ATen.h>

#if defined(__AVX__) || defined(__FMA__)
#include <immintrin.h>
#endif

#include <algorithm>
#include <cstring>
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

// How many of the pairs (values[t], index[t]), t < stride (a multiple of G), rank before (v, j) in the order
// (value descending, index ascending): one vector pass, no branches.
inline int32_t rank_before(const float* values, const int32_t* index, int64_t stride, float v, int32_t j) {
  int32_t rank = 0;
#if defined(__AVX2__)
  const __m256 vv = _mm256_set1_ps(v);
  const __m256i jj = _mm256_set1_epi32(j);
  for (int64_t t = 0; t < stride; t += 8) {
    const __m256 x = _mm256_loadu_ps(values + t);
    const __m256i id = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(index + t));
    const __m256 before = _mm256_or_ps(_mm256_cmp_ps(x, vv, _CMP_GT_OQ),
                                       _mm256_and_ps(_mm256_cmp_ps(x, vv, _CMP_EQ_OQ),
                                                     _mm256_castsi256_ps(_mm256_cmpgt_epi32(jj, id))));
    rank += __builtin_popcount(_mm256_movemask_ps(before));
  }
#else
  for (int64_t t = 0; t < stride; ++t) rank += (values[t] > v) | ((values[t] == v) & (index[t] < j));
#endif
  return rank;
}

inline int32_t rank_before(const double* values, const int32_t* index, int64_t stride, double v, int32_t j) {
  int32_t rank = 0;
#if defined(__AVX2__)
  const __m256d vv = _mm256_set1_pd(v);
  const __m128i jj = _mm_set1_epi32(j);
  for (int64_t t = 0; t < stride; t += 4) {
    const __m256d x = _mm256_loadu_pd(values + t);
    const __m128i id = _mm_loadu_si128(reinterpret_cast<const __m128i*>(index + t));
    const __m256d lower_index = _mm256_castsi256_pd(_mm256_cvtepi32_epi64(_mm_cmpgt_epi32(jj, id)));
    const __m256d before = _mm256_or_pd(_mm256_cmp_pd(x, vv, _CMP_GT_OQ),
                                        _mm256_and_pd(_mm256_cmp_pd(x, vv, _CMP_EQ_OQ), lower_index));
    rank += __builtin_popcount(_mm256_movemask_pd(before));
  }
#else
  for (int64_t t = 0; t < stride; ++t) rank += (values[t] > v) | ((values[t] == v) & (index[t] < j));
#endif
  return rank;
}

// For each of n rows, its best k (value, index) pairs so far, sorted by (value descending, index ascending) in two
// arrays (values T, index int32) of stride round_up(k, G); empty slots and padding hold (-inf, INT32_MAX), which
// rank after every candidate. An offer counts the kept pairs that rank before it (one branch-free pass of vector
// compares, rank_before) and shifts the worse ones down by one. threshold[row] is always the k-th kept value (-inf
// until k are kept), so the vector filter passes the fewest scores, about k (1 + ln(n / k)) a row over a whole
// scan, and the rows come out already sorted. Measured against the alternatives on 19,445 x 7,050 scores, d = 64,
// one thread, CPU seconds including the 0.53 s GEMM (ranges over 3 interleaved runs on the shared VM):
//     k          10           50           200
//     sorted     0.53-0.60    0.80-0.87    2.08-2.27   (this)
//     heap       0.60         0.97-0.99    2.34        (binary heap, worst at the root, O(log k) sift)
//     buffer     0.64-0.68    0.95-0.97    1.50-1.71   (append + nth_element when 2k full: ScaNN's
//                                                       TopNAmortizedConstant; its stale threshold passes ~30% more)
// so the sorted rows win at the k the models use (10 for kNN graphs, 50 for evaluation); an offer costs O(k),
// which starts to show in the hundreds.
// threshold has round_up(n, G) + G entries, +inf past n, so that it can be read a vector at a time at tile edges.
// The order (value descending, index ascending) is strict and total and the threshold only rises, so the final
// rows are the top k of everything offered, whatever the order the candidates arrived in.
template <typename T>
struct RowTopK {
  at::Tensor values_storage, index_storage, threshold_storage;
  T* values;
  int32_t* index;
  T* threshold;
  int64_t k, stride;

  RowTopK(int64_t n, int64_t k_) : k(k_), stride((k_ + kGroup<T> - 1) / kGroup<T> * kGroup<T>) {
    constexpr int64_t G = kGroup<T>;
    const auto dtype = c10::CppTypeToScalarType<T>::value;
    values_storage = at::full({std::max<int64_t>(n * stride, 1)}, -std::numeric_limits<T>::infinity(), at::CPU(dtype));
    index_storage =
        at::full({std::max<int64_t>(n * stride, 1)}, std::numeric_limits<int32_t>::max(), at::CPU(at::kInt));
    const int64_t padded = (n + G - 1) / G * G + G;
    threshold_storage = at::full({padded}, std::numeric_limits<T>::infinity(), at::CPU(dtype));
    threshold_storage.narrow(0, 0, n).fill_(-std::numeric_limits<T>::infinity());
    values = values_storage.data_ptr<T>();
    index = index_storage.data_ptr<int32_t>();
    threshold = threshold_storage.data_ptr<T>();
  }

  // Offer candidate (v, j) to row `row` (callers offer only v >= threshold[row]; -inf is no candidate).
  inline void offer(int64_t row, T v, int32_t j) {
    if (v == -std::numeric_limits<T>::infinity()) return;
    T* row_values = values + row * stride;
    int32_t* row_index = index + row * stride;
    const int32_t rank = rank_before(row_values, row_index, stride, v, j);
    if (rank >= k) return;
    std::memmove(row_values + rank + 1, row_values + rank, (k - 1 - rank) * sizeof(T));
    std::memmove(row_index + rank + 1, row_index + rank, (k - 1 - rank) * sizeof(int32_t));
    row_values[rank] = v;
    row_index[rank] = j;
    threshold[row] = row_values[k - 1];
  }

  // Rows [row_begin, row_end) into out_values (n, k) of T and out_index (n, k) int64 (already in order); slots
  // without a candidate get (-inf, -1).
  void finish(int64_t row_begin, int64_t row_end, T* out_values, int64_t* out_index) const {
    for (int64_t row = row_begin; row < row_end; ++row) {
      for (int64_t t = 0; t < k; ++t) {
        const T v = values[row * stride + t];
        const bool empty = v == -std::numeric_limits<T>::infinity();
        out_values[row * k + t] = v;
        out_index[row * k + t] = empty ? -1 : index[row * stride + t];
      }
    }
  }
};

// Scan a score tile into the running top-k. Rows r < rows of C (ldc columns) are global rows row0 + r; columns c < cols
// are global indices col0 + c (cols a multiple of G; scores of columns past the valid ones must be -inf).
// Every score is offered to its row; with COLUMNS, also to row col0 + c as candidate row0 + r (the symmetric
// case: the tile's transpose is the tile of the mirrored block pair).
template <typename T, bool COLUMNS>
void select_tile(const T* C, int64_t ldc, int64_t rows, int64_t cols, int64_t row0, int64_t col0, RowTopK<T>& top) {
  constexpr int64_t G = kGroup<T>;
  for (int64_t r = 0; r < rows; ++r) {
    const int64_t i = row0 + r;
    const T* c_row = C + r * ldc;
    Vec<T> row_threshold = splat(top.threshold[i]);
    for (int64_t c = 0; c < cols; c += G) {
      const Vec<T> v = load(c_row + c);
      int row_mask = at_least_mask(v, row_threshold);
      int col_mask = COLUMNS ? at_least_mask(v, load(top.threshold + col0 + c)) : 0;
      while (row_mask) {
        const int l = __builtin_ctz(row_mask);
        row_mask &= row_mask - 1;
        top.offer(i, c_row[c + l], static_cast<int32_t>(col0 + c + l));
      }
      row_threshold = splat(top.threshold[i]);
      while (col_mask) {
        const int l = __builtin_ctz(col_mask);
        col_mask &= col_mask - 1;
        top.offer(col0 + c + l, c_row[c + l], static_cast<int32_t>(i));
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
// of a panel, whatever T), 24 KiB of the 32 KiB L1 at kc = 256. (Measured flat from kc = 96 to 512 at d = 384
// and 4096 on the Zen-1 VM.)
constexpr int64_t kDepthBlock = 256;

}  // namespace tile_topk
}  // namespace mmrec_fast
