// Register-blocked GEMM on tiles: the one matrix-product mechanism of the CPU kernels that never form a full
// product matrix: knn and topk_scores (through tile_topk.h: score tiles) and info_nce (logit tiles and the two
// gradient products of every tile, csrc/cpu/info_nce.cpp).
//
// What it follows: the Goto/BLIS design (Goto & van de Geijn, "Anatomy of high-performance matrix multiplication",
// TOMS 2008; BLIS's Zen micro-kernels). The B operand is packed into panels of G columns (G = one vector of the
// variant, csrc/common/isa.h: 8 floats or 4 doubles in 256-bit ymm registers, 16 / 8 in 512-bit zmm registers
// with AVX-512), depth-major inside a panel; a micro-kernel streams an R-row A sliver (broadcasts) against three B
// panels (3 vector loads) and keeps an R x 3G block of C in 3R accumulator registers: R = 4 with 256-bit vectors
// (12 + 3 + 1 of the 16 ymm registers), R = 8 with AVX-512 (24 + 3 + 1 of the 32 zmm registers; on the Sapphire
// Rapids VM, in cache: 8 x 3 183 GFLOP/s, 6 x 4 175-193, 4 x 3 150-176, 4 x 4 160, at kc 64-128). Depth is blocked
// by kc so that the three B panels stay in L1 while the A slivers stream from L2.
//
// The A sliver is read through strides (element (r, k) of a sliver at a + r * row_stride + k * depth_stride), so one
// micro-kernel serves A packed like B (pack_rows: the score tiles of knn, topk_scores and the info_nce logits),
// A read in place from a row-major tile (row_stride = ld, depth_stride = 1: dX += dL Y in info_nce), and a tile
// packed transposed (pack_transposed: dY += dL^T X). B is always packed, once per call for the (n, d) inputs
// (pack_rows, pack_columns) and per tile only for dL^T, so no operand is repacked per product as a BLAS call on
// each tile does.
//
// Every element of C is ONE fused multiply-add chain over k in order (kc blocking stores and reloads the
// accumulator without extra rounding), whatever the tile, the position, the thread or the tile size: results are
// bitwise reproducible run to run and across thread counts; s(i, j) = s(j, i) for the score tiles of knn.
//
// Its rates against MKL's sgemm on the same shapes are in benchmarks/results/info_nce-ab-zen4-2026-11-22.txt and
// benchmarks/results/cpu-peak-*.txt. Loads and stores are unaligned (simd.h); packed buffers and tiles come from
// at::empty (64-byte aligned) at offsets of whole panels, so in fact they are aligned.
#pragma once

#include <ATen/ATen.h>
#include <ATen/Parallel.h>

#include <algorithm>
#include <array>
#include <cstdint>

#include "isa.h"
#include "simd.h"

MMREC_FAST_ISA_BEGIN
namespace tile_gemm {

// The widest vectors of the variant (simd.h): 512-bit with AVX-512, 256-bit otherwise.
typedef simd::WideFloat FloatV;
typedef simd::WideDouble DoubleV;
template <typename T>
using Vec = simd::WideVec<T>;

// Columns per packed panel: one vector (G = 16 floats / 8 doubles with AVX-512, 8 / 4 otherwise).
template <typename T>
constexpr int64_t kGroup = simd::kWideBytes / sizeof(T);
// Rows R of the A sliver of the micro-kernel (a divisor of G: a sliver never straddles two panels), and B panels
// per micro-kernel call.
constexpr int64_t kMicroRows = simd::kWideBytes == 64 ? 8 : 4;
constexpr int kMicroPanels = 3;
static_assert(kGroup<double> % kMicroRows == 0, "a sliver of R rows within one panel");
// Depth block kc: the three B panels of a micro-kernel call take kc x 3 x (G x sizeof(T)) bytes, 24 KiB of the
// L1 (32 KiB on Zen 1 to 4, 48 KiB on Golden Cove) at kc = 256 with 256-bit panels, kc = 128 with 512-bit ones.
// (Measured flat from kc = 96 to 512 at d = 384 and 4096 on the Zen-1 VM; with AVX-512 on the Sapphire Rapids VM
// 8 x 3 ran 183 GFLOP/s at kc 64-128, 174 at 192.)
constexpr int64_t kDepthBlock = 256 * 32 / simd::kWideBytes;
// Rows block mc: the A slivers of kRowsBlock rows (kc x kRowsBlock values) are read once per group of three B
// panels, from L2.
constexpr int64_t kRowsBlock = 128;

inline FloatV splat(float x) {
#if MMREC_FAST_HAS_AVX512
  return (FloatV)_mm512_set1_ps(x);
#elif MMREC_FAST_HAS_AVX2
  return (FloatV)_mm256_set1_ps(x);
#else
  return FloatV{x, x, x, x, x, x, x, x};
#endif
}
inline DoubleV splat(double x) {
#if MMREC_FAST_HAS_AVX512
  return (DoubleV)_mm512_set1_pd(x);
#elif MMREC_FAST_HAS_AVX2
  return (DoubleV)_mm256_set1_pd(x);
#else
  return DoubleV{x, x, x, x};
#endif
}
inline FloatV broadcast(const float* p) { return splat(*p); }
inline DoubleV broadcast(const double* p) { return splat(*p); }

// a * b + c, fused (one rounding) where the variant has FMA.
inline FloatV multiply_add(FloatV a, FloatV b, FloatV c) {
#if MMREC_FAST_HAS_AVX512
  return (FloatV)_mm512_fmadd_ps((__m512)a, (__m512)b, (__m512)c);
#else
  return simd::multiply_add(a, b, c);
#endif
}
inline DoubleV multiply_add(DoubleV a, DoubleV b, DoubleV c) {
#if MMREC_FAST_HAS_AVX512
  return (DoubleV)_mm512_fmadd_pd((__m512d)a, (__m512d)b, (__m512d)c);
#else
  return simd::multiply_add(a, b, c);
#endif
}

template <typename T>
inline Vec<T> load(const T* p) { return *reinterpret_cast<const Vec<T>*>(p); }
template <typename T>
inline void store(T* p, Vec<T> v) { *reinterpret_cast<Vec<T>*>(p) = v; }

inline int64_t round_up(int64_t n, int64_t m) {
  return (n + m - 1) / m * m;
}

// ---- packing -----------------------------------------------------------------------------------------------

// G rows (row r at x + r * row_stride, `depth` consecutive values) -> one (depth, G) panel at out, element (k, l)
// at k * G + l, row l divided by divisors[l] (0 where it is not > 0) when divisors is given. A G x G block at a
// time: G contiguous row pieces into a local block (vector loads and divisions), then written out transposed, so
// no load is strided (7,050 x 4,096 floats, 1 thread, Sapphire Rapids VM: 75 ms element by element, 47-54 ms
// so, about the memory traffic of the copy).
template <typename T>
void pack_whole_panel(const T* x, int64_t row_stride, int64_t depth, const T* divisors, T* out) {
  constexpr int64_t G = kGroup<T>;
  T block[G][G];
  for (int64_t k0 = 0; k0 < depth; k0 += G) {
    const int64_t width = std::min(G, depth - k0);
    for (int64_t l = 0; l < G; ++l) {
      const T* src = x + l * row_stride + k0;
      const T divisor = divisors ? divisors[l] : T(1);
      if (divisors && !(divisor > T(0))) {
        for (int64_t k = 0; k < G; ++k) block[l][k] = T(0);
      } else if (width == G) {  // a constant trip count, so the loop becomes one vector load (and division)
        for (int64_t k = 0; k < G; ++k) block[l][k] = divisors ? src[k] / divisor : src[k];
      } else {
        for (int64_t k = 0; k < width; ++k) block[l][k] = divisors ? src[k] / divisor : src[k];
      }
    }
    for (int64_t k = 0; k < width; ++k)
      for (int64_t l = 0; l < G; ++l) out[(k0 + k) * G + l] = block[l][k];
  }
}

// The matrix M (rows x depth), M(r, k) = x[r * row_stride + k * depth_stride], -> ceil(rows / G) panels of
// (depth, G): panel g holds rows gG .. gG + G - 1 of M, element (k, l) at g * depth * G + k * G + l; rows past
// `rows` are zeros. With divisors (per row of M), M(r, k) / divisors[r] is packed instead (0 where the divisor
// is not > 0): the rows of M normalised on the way. Returned as a tensor so that its memory is visible to torch's
// profiler like every other allocation of the op.
template <typename T>
at::Tensor pack_panels(const T* x, int64_t row_stride, int64_t depth_stride, int64_t rows, int64_t depth,
                       const T* divisors = nullptr) {
  constexpr int64_t G = kGroup<T>;
  const int64_t panels = (rows + G - 1) / G;
  const auto dtype = c10::CppTypeToScalarType<T>::value;
  at::Tensor packed = at::empty({std::max<int64_t>(panels * depth * G, 1)}, at::CPU(dtype));
  T* out = packed.data_ptr<T>();
  at::parallel_for(0, panels, 1, [&](int64_t g_begin, int64_t g_end) {
    for (int64_t g = g_begin; g < g_end; ++g) {
      if (depth_stride == 1 && (g + 1) * G <= rows) {  // a whole panel of rows stored along the depth
        pack_whole_panel(x + g * G * row_stride, row_stride, depth, divisors ? divisors + g * G : nullptr,
                         out + g * depth * G);
        continue;
      }
      for (int64_t k = 0; k < depth; ++k) {
        T* dst = out + (g * depth + k) * G;
        for (int64_t l = 0; l < G; ++l) {
          const int64_t r = g * G + l;
          const T value = r < rows ? x[r * row_stride + k * depth_stride] : T(0);
          dst[l] = divisors == nullptr ? value : (r < rows && divisors[r] > T(0) ? value / divisors[r] : T(0));
        }
      }
    }
  });
  return packed;
}

// Rows (n, d) row-major -> ceil(n / G) panels of (d, G): panel g holds rows gG .. gG + G - 1, element (k, l) at
// g * d * G + k * G + l. The B operand of x_I y_J^T products (a panel = G of the rows y_j, depth = the d features)
// and, read in R-row slivers, their A operand. divisors: as in pack_panels.
template <typename T>
at::Tensor pack_rows(const T* x, int64_t n, int64_t d, const T* divisors = nullptr) {
  return pack_panels(x, d, 1, n, d, divisors);
}

// Rows (n, d) row-major -> ceil(d / G) panels of (n, G): panel v holds columns vG .. vG + G - 1, element (i, l) at
// v * n * G + i * G + l. The B operand of products M x with x as the right factor (depth = the n rows, a panel = G
// features); rows i0 .. of it start at + i0 * G, panel stride n * G.
template <typename T>
at::Tensor pack_columns(const T* x, int64_t n, int64_t d) {
  return pack_panels(x, 1, d, d, n);
}

// A tile M (rows x cols, leading dimension ld) -> its transpose in R-row slivers (R = kMicroRows), the A operand of
// M^T x products: sliver s holds columns Rs .. Rs + R - 1 of M, element (k, r) (= scale_k M[k][Rs + r]) at
// out + s * R * rows + k * R + r; columns past cols are zeros. out holds round_up(cols, R) * rows values. scale (per
// row of M) may be null.
template <typename T>
void pack_transposed(const T* M, int64_t ld, int64_t rows, int64_t cols, const T* scale, T* out) {
  for (int64_t c0 = 0; c0 < cols; c0 += kMicroRows) {
    T* sliver = out + c0 * rows;
    const int64_t width = std::min<int64_t>(kMicroRows, cols - c0);
    for (int64_t k = 0; k < rows; ++k) {
      const T* src = M + k * ld + c0;
      const T f = scale ? scale[k] : T(1);
      T* dst = sliver + k * kMicroRows;
      if (width == kMicroRows) {  // the common case, branch-free: one vector multiply
        for (int64_t r = 0; r < kMicroRows; ++r) dst[r] = f * src[r];
      } else {
        for (int64_t r = 0; r < kMicroRows; ++r) dst[r] = r < width ? f * src[r] : T(0);
      }
    }
  }
}

// ---- GEMM --------------------------------------------------------------------------------------------------

// C[r][v G + l] (+)= sum_{k < kc} a[r row_stride + k depth_stride] * b[v panel_stride + k G + l], r < 4,
// v < PANELS, l < G.
template <typename T, int PANELS>
__attribute__((always_inline)) inline void micro_kernel(const T* a, int64_t row_stride, int64_t depth_stride,
                                                        const T* b, int64_t panel_stride, int64_t kc, T* c,
                                                        int64_t ldc, bool accumulate) {
  constexpr int64_t G = kGroup<T>;
  Vec<T> acc[kMicroRows][PANELS];
#pragma GCC unroll 8
  for (int r = 0; r < kMicroRows; ++r)
#pragma GCC unroll 3
    for (int v = 0; v < PANELS; ++v) acc[r][v] = accumulate ? load(c + r * ldc + v * G) : Vec<T>{};
  for (int64_t k = 0; k < kc; ++k) {
    Vec<T> bv[PANELS];
#pragma GCC unroll 3
    for (int v = 0; v < PANELS; ++v) bv[v] = load(b + v * panel_stride + k * G);
#pragma GCC unroll 8
    for (int r = 0; r < kMicroRows; ++r) {
      const Vec<T> s = broadcast(a + k * depth_stride + r * row_stride);
#pragma GCC unroll 3
      for (int v = 0; v < PANELS; ++v) acc[r][v] = multiply_add(s, bv[v], acc[r][v]);
    }
  }
#pragma GCC unroll 8
  for (int r = 0; r < kMicroRows; ++r)
#pragma GCC unroll 3
    for (int v = 0; v < PANELS; ++v) store(c + r * ldc + v * G, acc[r][v]);
}

// B panels of the next micro-kernel call when `left` remain: three at a time, and four left as two and two, not
// three and one: a one-panel call keeps R accumulators only, too few chains to cover the FMA latency (AVX2, Zen 3
// VM, 1 thread, 256 x 128 x 128 tiles in cache, 16 panels: 78-88 -> 92-94 GFLOP/s). The calls per row sliver, and
// so the prefetch schedule of gemm, are the same: ceil(panels / 3). Which panels a call takes never changes a
// value of C (each is one FMA chain over k either way).
inline int64_t panels_per_call(int64_t left) {
  return left == 4 ? 2 : std::min<int64_t>(kMicroPanels, left);
}

// Where the R-row A sliver starting at row r begins, and its strides.
struct Sliver {
  const void* base;
  int64_t row_stride, depth_stride;
};

// Cache lines to bring into L2 before they are read: `panels` runs of `lines` consecutive 64-byte lines, the first
// at base, one every panel_stride bytes.
struct Lines {
  const char* base = nullptr;
  int64_t panel_stride = 0, panels = 0, lines = 0;
  int64_t count() const { return panels * lines; }
  const char* line(int64_t i) const { return base + (i / lines) * panel_stride + (i % lines) * 64; }
};
// What the depth step after `step` will read (gemm's ahead): the A and B lines, or none.
struct NothingAhead {
  std::array<Lines, 2> operator()(int64_t) const { return {}; }
};

// C (+)= A B for r < rows (a multiple of R), columns < panels G, depth `depth` blocked by kc; A's sliver of rows
// r .. r + R - 1 from sliver(r), B packed: panel v's element (k, l) at b + v * panel_stride + k * G + l. With
// upper, only the R x (3 G) blocks that hold some C[r][c] with c >= r are computed (every C[r][c], c >= r, is;
// the others are left as they were): the upper triangle of a symmetric product, about half its work.
// ahead(step) -> the Lines the step after `step` will read (the next depth block, or the next tile's first): they
// are prefetched into L2 a few lines before each micro-kernel call of `step`, so that the operands of a tile
// larger than L2 arrive from memory while the current block computes. (Measured on the Sapphire Rapids VM, 1
// thread, gemm_tile alone on 416 x 416 tiles of 7,050 x 4,096 rows: 152 -> 156-160 GFLOP/s; the hardware
// prefetchers stop at every 4 KiB page of the 8 KiB slices of each panel.)
template <typename T, typename SliverOf, typename AheadOf = NothingAhead>
void gemm(SliverOf sliver, int64_t rows, const T* b, int64_t panel_stride, int64_t panels, int64_t depth, T* C,
          int64_t ldc, bool accumulate, bool upper = false, AheadOf ahead = {}) {
  constexpr int64_t G = kGroup<T>;
  const int64_t depth_steps = std::max<int64_t>((depth + kDepthBlock - 1) / kDepthBlock, 1);  // depth 0: zeros
  const int64_t calls = (rows / kMicroRows) * ((panels + kMicroPanels - 1) / kMicroPanels);  // per step, at most
  for (int64_t step = 0; step < depth_steps; ++step) {
    const int64_t p0 = step * kDepthBlock;
    const int64_t kc = std::min(kDepthBlock, depth - p0);
    const bool acc = accumulate || step > 0;
    const std::array<Lines, 2> next = ahead(step);
    const int64_t first = next[0].count(), next_lines = first + next[1].count();
    const int64_t per_call = calls > 0 ? (next_lines + calls - 1) / calls : 0;
    int64_t cursor = 0;
    const auto prefetch_some = [&] {
      for (const int64_t end = std::min(next_lines, cursor + per_call); cursor < end; ++cursor) {
        const char* line = cursor < first ? next[0].line(cursor) : next[1].line(cursor - first);
        __builtin_prefetch(line, 0, 2);  // prefetcht1: into L2
      }
    };
    for (int64_t r0 = 0; r0 < rows; r0 += kRowsBlock) {
      const int64_t r1 = std::min(rows, r0 + kRowsBlock);
      for (int64_t v0 = 0, np = 0; v0 < panels; v0 += np) {
        np = panels_per_call(panels - v0);
        const T* bb = b + v0 * panel_stride + p0 * G;
        for (int64_t r = r0; r < r1; r += kMicroRows) {
          if (upper && (v0 + np) * G <= r) break;  // this and the later slivers lie below the diagonal
          prefetch_some();
          const Sliver s = sliver(r);
          const T* a = static_cast<const T*>(s.base) + p0 * s.depth_stride;
          T* c = C + r * ldc + v0 * G;
          if (np == 3) micro_kernel<T, 3>(a, s.row_stride, s.depth_stride, bb, panel_stride, kc, c, ldc, acc);
          else if (np == 2) micro_kernel<T, 2>(a, s.row_stride, s.depth_stride, bb, panel_stride, kc, c, ldc, acc);
          else micro_kernel<T, 1>(a, s.row_stride, s.depth_stride, bb, panel_stride, kc, c, ldc, acc);
        }
      }
    }
  }
}

// Scores of a tile: C[r][c] = <a_row(a_row0 + r), b_row(b_panel0 G + c)> for r < a_rows, c < b_panels G, from
// packed rows (pack_rows) of depth d. a_row0 must be a multiple of R and the tile's rows are computed R at a time
// (rows past a_rows within the last R are computed too: C needs round_up(a_rows, R) rows). upper: as in gemm,
// only the scores with c >= r are sure to be computed (a diagonal tile of a symmetric product). next_tile: the
// operands of the tile the caller computes next, whose first depth block is prefetched during the last one here.
template <typename T>
struct TileOperands {  // gemm_tile's operands: rows a_row0 .. + a_rows of packed_a, panels b_panel0 .. of packed_b
  const T* packed_a;
  int64_t a_row0, a_rows;
  const T* packed_b;
  int64_t b_panel0, b_panels;
};
template <typename T>
void gemm_tile(const T* packed_a, int64_t a_row0, int64_t a_rows, const T* packed_b, int64_t b_panel0,
               int64_t b_panels, int64_t d, T* C, int64_t ldc, bool upper = false,
               const TileOperands<T>* next_tile = nullptr) {
  constexpr int64_t G = kGroup<T>;
  const int64_t panel_stride = d * G;
  const auto sliver = [&](int64_t r) {
    const int64_t row = a_row0 + r;
    return Sliver{packed_a + (row / G) * panel_stride + row % G, 1, G};
  };
  // the A and B panels of depth block p0 of a tile (packed rows: panel g's block at g * d G + p0 G, kc G values)
  const auto block_lines = [&](const TileOperands<T>& t, int64_t p0) -> std::array<Lines, 2> {
    const int64_t kc = std::min(kDepthBlock, d - p0);
    const int64_t lines = (kc * G * static_cast<int64_t>(sizeof(T)) + 63) / 64;
    const int64_t stride = panel_stride * sizeof(T);
    const int64_t a_panel0 = t.a_row0 / G, a_panels = (t.a_row0 + t.a_rows + G - 1) / G - a_panel0;
    return {Lines{reinterpret_cast<const char*>(t.packed_a + a_panel0 * panel_stride + p0 * G), stride, a_panels,
                  lines},
            Lines{reinterpret_cast<const char*>(t.packed_b + t.b_panel0 * panel_stride + p0 * G), stride, t.b_panels,
                  lines}};
  };
  const TileOperands<T> tile{packed_a, a_row0, a_rows, packed_b, b_panel0, b_panels};
  const auto ahead = [&](int64_t step) -> std::array<Lines, 2> {
    const int64_t p0 = (step + 1) * kDepthBlock;
    if (p0 < d) return block_lines(tile, p0);
    return next_tile != nullptr && d > 0 ? block_lines(*next_tile, 0) : std::array<Lines, 2>{};
  };
  gemm<T>(sliver, round_up(a_rows, kMicroRows), packed_b + b_panel0 * panel_stride, panel_stride, b_panels, d, C,
          ldc, false, upper, ahead);
}

// C (+)= M X: M a row-major tile (rows x depth, leading dimension ld, rows readable up to a multiple of R), X
// packed by pack_columns (b: its row 0 of the depth, panel stride n G).
template <typename T>
void gemm_rows(const T* M, int64_t ld, int64_t rows, int64_t depth, const T* b, int64_t panel_stride, int64_t panels,
               T* C, int64_t ldc, bool accumulate) {
  const auto sliver = [&](int64_t r) { return Sliver{M + r * ld, ld, 1}; };
  gemm<T>(sliver, round_up(rows, kMicroRows), b, panel_stride, panels, depth, C, ldc, accumulate);
}

// C (+)= M^T X: M^T from pack_transposed (rows = M's columns, depth = M's rows), X packed by pack_columns.
template <typename T>
void gemm_transposed(const T* packed_mt, int64_t rows, int64_t depth, const T* b, int64_t panel_stride,
                     int64_t panels, T* C, int64_t ldc, bool accumulate) {
  const auto sliver = [&](int64_t r) { return Sliver{packed_mt + r * depth, 1, kMicroRows}; };
  gemm<T>(sliver, round_up(rows, kMicroRows), b, panel_stride, panels, depth, C, ldc, accumulate);
}

}  // namespace tile_gemm
MMREC_FAST_ISA_END
