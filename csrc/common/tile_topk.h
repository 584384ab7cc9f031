// Tile-and-select: the one mechanism behind the CPU kernels of knn (csrc/cpu/knn.cpp) and topk_scores
// (csrc/cpu/topk_scores.cpp). Inner-product scores are computed one (T x T) tile at a time by a register-blocked
// GEMM and reduced at once into a running top-k per row, so no score matrix larger than a tile ever exists.
//
// What it fuses and what it follows:
//  * GEMM: tile_gemm.h (Goto/BLIS packing and a 4 x 3G register-blocked micro-kernel). Measured on the 2-core
//    Zen-1 VM: 29-38 GFLOP/s fp32 per core, on par with MKL's sgemm on the same tiles (30-33 GFLOP/s) in the same
//    minutes; an 8 x 8 kernel reached 27-30.
//  * Every score is ONE fused multiply-add chain over k = 0 .. d-1 in order (the kc blocking stores and reloads
//    the accumulator without extra rounding), whatever the tile, the panel position, the thread or the tile
//    size. So s(i, j) is bitwise equal to s(j, i), two identical rows give bitwise identical scores (exact ties,
//    broken by the lower index as the specification says), and results are bitwise reproducible run to run and
//    across thread counts and tile budgets.
//  * Selection: a threshold filter in front of an exact per-row top-k (FAISS's CPU result handlers do the same in
//    front of their heaps; Johnson, Douze & Jegou, "Billion-scale similarity search with GPUs", arXiv 1702.08734,
//    for the k-selection problem): the tile is scanned G scores at a time with one vector compare against each
//    row's current k-th best value, and only scores that reach it (about k (1 + ln(n / k)) per row over a scan
//    in random order) are offered to the row's sorted top-k (RowTopK below), up to two vectors of them at once
//    (offer_batch: their ranks are counted independently, so the offers do not wait on each other). The order
//    is (value descending, index ascending), a strict total order, so the selected set does not depend on the
//    order candidates arrive in (which the symmetric schedule of knn relies on). A score of -inf is no candidate
//    (excluded pairs, padding); NaN never passes the compare.
#pragma once

#include <ATen/ATen.h>

#include <algorithm>
#include <cstring>
#include <cstdint>
#include <limits>
#include <utility>
#include <vector>

#include "isa.h"
#include "tile_gemm.h"

MMREC_FAST_ISA_BEGIN
namespace tile_topk {

using namespace tile_gemm;

// Bit l set where v[l] >= t[l] (ordered compare: false for NaN).
inline int at_least_mask(FloatV v, FloatV t) {
#if MMREC_FAST_HAS_AVX512
  return static_cast<int>(_mm512_cmp_ps_mask((__m512)v, (__m512)t, _CMP_GE_OQ));
#elif MMREC_FAST_HAS_AVX2
  return _mm256_movemask_ps(_mm256_cmp_ps((__m256)v, (__m256)t, _CMP_GE_OQ));
#else
  int mask = 0;
  for (int l = 0; l < kGroup<float>; ++l) mask |= (v[l] >= t[l]) << l;
  return mask;
#endif
}
inline int at_least_mask(DoubleV v, DoubleV t) {
#if MMREC_FAST_HAS_AVX512
  return static_cast<int>(_mm512_cmp_pd_mask((__m512d)v, (__m512d)t, _CMP_GE_OQ));
#elif MMREC_FAST_HAS_AVX2
  return _mm256_movemask_pd(_mm256_cmp_pd((__m256d)v, (__m256d)t, _CMP_GE_OQ));
#else
  int mask = 0;
  for (int l = 0; l < kGroup<double>; ++l) mask |= (v[l] >= t[l]) << l;
  return mask;
#endif
}

// ---- running top-k -----------------------------------------------------------------------------------------

// How many of the pairs (values[t], index[t]), t < stride (a multiple of G), rank before (v, j) in the order
// (value descending, index ascending): one vector pass, no branches.
inline int32_t rank_before(const float* values, const int32_t* index, int64_t stride, float v, int32_t j) {
  int32_t rank = 0;
#if MMREC_FAST_HAS_AVX512  // stride is a multiple of 16 here (G)
  const __m512 vv = _mm512_set1_ps(v);
  const __m512i jj = _mm512_set1_epi32(j);
  for (int64_t t = 0; t < stride; t += 16) {
    const __m512 x = _mm512_loadu_ps(values + t);
    const __m512i id = _mm512_loadu_si512(index + t);
    const __mmask16 before = _mm512_cmp_ps_mask(x, vv, _CMP_GT_OQ) |
                             (_mm512_cmp_ps_mask(x, vv, _CMP_EQ_OQ) & _mm512_cmpgt_epi32_mask(jj, id));
    rank += __builtin_popcount(before);
  }
#elif MMREC_FAST_HAS_AVX2
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
#if MMREC_FAST_HAS_AVX512  // stride is a multiple of 8 here (G)
  const __m512d vv = _mm512_set1_pd(v);
  const __m256i jj = _mm256_set1_epi32(j);
  for (int64_t t = 0; t < stride; t += 8) {
    const __m512d x = _mm512_loadu_pd(values + t);
    const __m256i id = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(index + t));
    const __mmask8 before = _mm512_cmp_pd_mask(x, vv, _CMP_GT_OQ) |
                            (_mm512_cmp_pd_mask(x, vv, _CMP_EQ_OQ) & _mm256_cmpgt_epi32_mask(jj, id));
    rank += __builtin_popcount(before);
  }
#elif MMREC_FAST_HAS_AVX2
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

// Slots rank .. k - 2 of a sorted row (values, index) moved one slot up (slot k - 1's pair drops out), then (v, j)
// written at slot rank. With AVX-512, a vector of slots at a time from the last down: each vector's new contents
// are its old ones shifted up by one lane with the top lane of the vector below coming in (valignd / valignq),
// stored to the lanes that move; otherwise two memmoves.
template <typename T>
inline void insert_at(T* values, int32_t* index, int64_t k, int32_t rank, T v, int32_t j) {
#if MMREC_FAST_HAS_AVX512
  constexpr int64_t G = kGroup<T>;
  for (int64_t t = (k - 1) / G * G; t >= (rank + 1) / G * G; t -= G) {
    const int64_t low = std::max<int64_t>(rank + 1 - t, 0), high = std::min<int64_t>(k - 1 - t, G - 1);
    if (low > high) continue;
    const uint32_t lanes = ((2u << high) - 1) & ~((1u << low) - 1);  // the lanes l with rank < t + l < k
    const T* below = t > 0 ? values + t - G : values + t;  // (t = 0: lane 0 never moves, any vector will do)
    const int32_t* below_index = t > 0 ? index + t - G : index + t;
    if constexpr (sizeof(T) == 4) {
      const __m512i shifted = _mm512_alignr_epi32(_mm512_loadu_si512(values + t), _mm512_loadu_si512(below), 15);
      _mm512_mask_storeu_epi32(values + t, static_cast<__mmask16>(lanes), shifted);
      const __m512i shifted_index = _mm512_alignr_epi32(_mm512_loadu_si512(index + t), _mm512_loadu_si512(below_index), 15);
      _mm512_mask_storeu_epi32(index + t, static_cast<__mmask16>(lanes), shifted_index);
    } else {
      const __m512i shifted = _mm512_alignr_epi64(_mm512_loadu_si512(values + t), _mm512_loadu_si512(below), 7);
      _mm512_mask_storeu_epi64(values + t, static_cast<__mmask8>(lanes), shifted);
      const __m256i shifted_index =
          _mm256_alignr_epi32(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(index + t)),
                              _mm256_loadu_si256(reinterpret_cast<const __m256i*>(below_index)), 7);
      _mm256_mask_storeu_epi32(index + t, static_cast<__mmask8>(lanes), shifted_index);
    }
  }
#else
  std::memmove(values + rank + 1, values + rank, (k - 1 - rank) * sizeof(T));
  std::memmove(index + rank + 1, index + rank, (k - 1 - rank) * sizeof(int32_t));
#endif
  values[rank] = v;
  index[rank] = j;
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
    insert_at(row_values, row_index, k, rank, v, j);
    threshold[row] = row_values[k - 1];
  }

#if MMREC_FAST_HAS_AVX512  // (compress and expand; see select_tile)
  // The most candidates offer_batch takes: two vectors (topk_scores 19,445 x 7,050, k 50, d 64, 1 thread, the
  // Emerald Rapids VM, best of 3 interleaved runs: 249 ms with one vector, 231 ms with two).
  static constexpr int kBatch = 2 * kGroup<T>;
  // Working space of offer_batch (one per thread): a merged row and which of its slots the batch took.
  struct Scratch {
    std::vector<T> values;
    std::vector<int32_t> index;
    std::vector<uint32_t> taken;
    explicit Scratch(int64_t stride) : values(stride), index(stride), taken(stride / kGroup<T>) {}
  };

  // Offer b <= kBatch candidates (values cv, indices cj: distinct, none -inf) to row `row` at once: the same result as
  // b offers, without their chain of dependent steps (each offer's rank waits for the previous insertion). Each
  // candidate's slot in the merged row is the number of kept pairs and of batch pairs that rank before it (two
  // rank_before passes, independent across the candidates); the kept pairs fill the other slots below k in order
  // (one expand-load a vector).
  inline void offer_batch(int64_t row, const T* cv, const int32_t* cj, int b, Scratch& scratch) {
    constexpr int64_t G = kGroup<T>;
    T* row_values = values + row * stride;
    int32_t* row_index = index + row * stride;
    alignas(64) T batch_values[kBatch];
    alignas(64) int32_t batch_index[kBatch];
    for (int l = 0; l < kBatch; ++l) {  // padded as empty slots, which rank after every candidate
      batch_values[l] = l < b ? cv[l] : -std::numeric_limits<T>::infinity();
      batch_index[l] = l < b ? cj[l] : std::numeric_limits<int32_t>::max();
    }
    T* out_values = scratch.values.data();
    int32_t* out_index = scratch.index.data();
    uint32_t* taken = scratch.taken.data();
    std::fill(taken, taken + stride / G, 0u);
    bool any = false;
    for (int q = 0; q < b; ++q) {
      const int32_t slot = rank_before(row_values, row_index, stride, cv[q], cj[q]) +
                           rank_before(batch_values, batch_index, kBatch, cv[q], cj[q]);
      if (slot >= k) continue;
      out_values[slot] = cv[q];
      out_index[slot] = cj[q];
      taken[slot / G] |= 1u << (slot % G);
      any = true;
    }
    if (!any) return;
    int64_t next = 0;  // the next kept pair to place
    for (int64_t t = 0; t < k; t += G) {
      const uint32_t lanes = ((1u << std::min<int64_t>(G, k - t)) - 1) & ~taken[t / G];  // slots < k not taken
      if constexpr (sizeof(T) == 4) {
        _mm512_storeu_ps(out_values + t, _mm512_mask_expandloadu_ps(_mm512_loadu_ps(out_values + t),
                                                                   static_cast<__mmask16>(lanes), row_values + next));
        _mm512_storeu_si512(out_index + t,
                            _mm512_mask_expandloadu_epi32(_mm512_loadu_si512(out_index + t),
                                                          static_cast<__mmask16>(lanes), row_index + next));
      } else {
        _mm512_storeu_pd(out_values + t, _mm512_mask_expandloadu_pd(_mm512_loadu_pd(out_values + t),
                                                                   static_cast<__mmask8>(lanes), row_values + next));
        _mm256_storeu_si256(reinterpret_cast<__m256i*>(out_index + t),
                            _mm256_mask_expandloadu_epi32(
                                _mm256_loadu_si256(reinterpret_cast<const __m256i*>(out_index + t)),
                                static_cast<__mmask8>(lanes), row_index + next));
      }
      next += __builtin_popcount(lanes);
    }
    std::copy(out_values, out_values + k, row_values);
    std::copy(out_index, out_index + k, row_index);
    threshold[row] = row_values[k - 1];
  }
#endif

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

#if MMREC_FAST_HAS_AVX512
// The pairs (v[c], j_c), c < n, whose value reaches `threshold` (and is no -inf), appended in order to (values,
// index), which have room for n + G entries; returns how many. j_c = index_in[c], or col0 + c without index_in.
// v (and index_in) are read a whole vector at a time (up to n rounded up to G). One vector compare per G values,
// the passing lanes compressed into place, no branch on the outcome (skipping the vectors without candidates,
// most of them, mispredicted more than it saved).
template <typename T>
inline int64_t gather_candidates(const T* v, int64_t n, const int32_t* index_in, int64_t col0, T threshold, T* values,
                                 int32_t* index) {
  constexpr int64_t G = kGroup<T>;
  const Vec<T> t = splat(std::max(threshold, std::numeric_limits<T>::lowest()));  // -inf is no candidate
  int64_t count = 0;
  for (int64_t c = 0; c < n; c += G) {
    const Vec<T> x = load(v + c);
    int mask = at_least_mask(x, t);
    if (c + G > n) mask &= (1 << (n - c)) - 1;
    const __m512i j = index_in != nullptr
                          ? _mm512_loadu_si512(index_in + c)
                          : _mm512_add_epi32(_mm512_set1_epi32(static_cast<int32_t>(col0 + c)),
                                             _mm512_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15));
    if constexpr (sizeof(T) == 4) {
      _mm512_storeu_ps(values + count, _mm512_maskz_compress_ps(static_cast<__mmask16>(mask), (__m512)x));
      _mm512_storeu_si512(index + count, _mm512_maskz_compress_epi32(static_cast<__mmask16>(mask), j));
    } else {
      _mm512_storeu_pd(values + count, _mm512_maskz_compress_pd(static_cast<__mmask8>(mask), (__m512d)x));
      _mm256_storeu_si256(reinterpret_cast<__m256i*>(index + count),
                          _mm256_maskz_compress_epi32(static_cast<__mmask8>(mask), _mm512_castsi512_si256(j)));
    }
    count += __builtin_popcount(mask);
  }
  return count;
}
#endif

// Scan a score tile into the running top-k. Rows r < rows of C (ldc columns) are global rows row0 + r; columns c < cols
// are global indices col0 + c (cols a multiple of G; scores of columns past the valid ones must be -inf).
// Every score is offered to its row; with COLUMNS, also to row col0 + c as candidate row0 + r (the symmetric
// case: the tile's transpose is the tile of the mirrored block pair).
// Offered from inside the scan, one by one, every vector's compare and branch waits on the previous offer's
// insertion: about 30 ns an offer on the Emerald Rapids VM, whatever k. So with AVX-512, rows only (topk_scores,
// knn's diagonal tiles): a row's scores are first filtered against its threshold as it was when the row's scan
// began (gather_candidates), then taken kBatch at a time, filtered again against the current threshold and offered
// together (offer_batch; a lone survivor by offer, for which the batch's bookkeeping costs more than it saves).
// topk_scores (19,445 x 7,050, k 50, 1 thread, best of 3 interleaved runs) went from 321 to 231 ms at d 64 and
// from 867 to 777 ms at d 384. Without compress / expand (AVX2), the same batches were slower: k 10, 276 ->
// 286-360 ms; k 50, 447 -> 464-503 ms. So the avx2 and baseline variants, and the symmetric tiles, offer from
// inside the scan.
template <typename T, bool COLUMNS>
void select_tile(const T* C, int64_t ldc, int64_t rows, int64_t cols, int64_t row0, int64_t col0, RowTopK<T>& top) {
  constexpr int64_t G = kGroup<T>;
#if MMREC_FAST_HAS_AVX512
  if constexpr (!COLUMNS) {
    constexpr int64_t kBatch = RowTopK<T>::kBatch;
    std::vector<T> candidate_values(cols + G);
    std::vector<int32_t> candidate_index(cols + G);
    typename RowTopK<T>::Scratch scratch(top.stride);
    for (int64_t r = 0; r < rows; ++r) {
      const int64_t i = row0 + r;
      const int64_t count = gather_candidates(C + r * ldc, cols, static_cast<const int32_t*>(nullptr), col0,
                                              top.threshold[i], candidate_values.data(), candidate_index.data());
      for (int64_t t0 = 0; t0 < count; t0 += kBatch) {
        T batch_values[kBatch + G];
        int32_t batch_index[kBatch + G];
        const int b = static_cast<int>(gather_candidates(candidate_values.data() + t0, std::min(count - t0, kBatch),
                                                         candidate_index.data() + t0, 0, top.threshold[i],
                                                         batch_values, batch_index));
        if (b == 1) top.offer(i, batch_values[0], batch_index[0]);
        else if (b > 1) top.offer_batch(i, batch_values, batch_index, b, scratch);
      }
    }
    return;
  }
#endif
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

// The default score-tile budget per thread (knn, topk_scores; the ops' tile_bytes overrides): 256 KiB (T = 256 in
// float32) with 256-bit vectors, so that the tile and the streamed A panels share a 512 KiB L2 (Zen 1); 729 KiB
// (T = 432, nine micro-kernel column groups) with AVX-512, whose CPUs have 1-2 MiB of L2 a core. Measured on the
// Sapphire Rapids VM, knn (7,050 x 4,096), 1 thread: 1.43 s at 256 KiB, 1.32 s at 729 KiB; topk_scores
// (19,445 x 7,050, d 64): 55.6 -> 58.5 GFLOP/s. Results do not depend on it (bitwise).
constexpr int64_t kDefaultTileBytes = simd::kWideBytes == 64 ? 432 * 432 * 4 : 256 * 1024;

// Tile edges are multiples of kEdgeMultiple (G of float, a multiple of G of double): tiles start on whole panels.
constexpr int64_t kEdgeMultiple = kGroup<float>;

// Tile edge (a multiple of kEdgeMultiple) for a score-tile budget in bytes.
template <typename T>
int64_t tile_edge(int64_t tile_bytes) {
  constexpr int64_t step = kEdgeMultiple;
  int64_t edge = step;
  while ((edge + step) * (edge + step) * static_cast<int64_t>(sizeof(T)) <= tile_bytes) edge += step;
  return edge;
}

}  // namespace tile_topk
MMREC_FAST_ISA_END
