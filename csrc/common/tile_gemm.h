// Register-blocked GEMM on tiles: the one matrix-product mechanism of the CPU kernels that never form a full
// product matrix: knn and topk_scores (through tile_topk.h: score tiles) and info_nce (logit tiles and the two
// gradient products of every tile, csrc/cpu/info_nce.cpp).
//
// What it follows: the Goto/BLIS design (Goto & van de Geijn, "Anatomy of high-performance matrix multiplication",
// TOMS 2008; BLIS's Zen micro-kernels). The B operand is packed into panels of G columns (G = one 256-bit vector:
// 8 floats or 4 doubles), depth-major inside a panel; a micro-kernel streams a 4-row A sliver (broadcasts)
// against three B panels (3 vector loads) and keeps a 4 x 3G block of C in 12 accumulator registers (12 + 3 + 1
// of the 16 ymm registers). Depth is blocked by kc so that the three B panels stay in L1 while the A slivers
// stream from L2.
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
// Its rates against MKL's sgemm on the same shapes are in benchmarks/results/info_nce-ab-zen4-2026-11-22.txt.
// Every pointer handed to the vector loads and stores is 32-byte aligned (packed buffers and tiles come from
// at::empty; their offsets are whole panels).
#pragma once

#include <ATen/ATen.h>
#include <ATen/Parallel.h>

#if defined(__AVX__) || defined(__FMA__)
#include <immintrin.h>
#endif

#include <algorithm>
#include <cstdint>

#include "simd.h"

namespace mmrec_fast {
namespace tile_gemm {

// The aligned 256-bit vectors of simd.h (packed panels and accumulators are 32-byte aligned).
typedef simd::AlignedFloat8 Float8;
typedef simd::AlignedDouble4 Double4;
template <typename T>
using Vec = simd::AlignedVec<T>;

// Columns per packed panel: one vector.
template <typename T>
constexpr int64_t kGroup = 32 / sizeof(T);
// Rows of the A sliver of the micro-kernel, and B panels per micro-kernel call.
constexpr int64_t kMicroRows = 4;
constexpr int kMicroPanels = 3;
// Depth block kc: the three B panels of a micro-kernel call take kc x 96 bytes (G x sizeof(T) = 32 bytes a row
// of a panel, whatever T), 24 KiB of the 32 KiB L1 at kc = 256. (Measured flat from kc = 96 to 512 at d = 384
// and 4096 on the Zen-1 VM.)
constexpr int64_t kDepthBlock = 256;
// Rows block mc: the A slivers of kRowsBlock rows (kc x kRowsBlock values, 128 KiB at kc = 256 in float32) are
// read once per group of three B panels, from L2.
constexpr int64_t kRowsBlock = 128;

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

template <typename T>
inline Vec<T> load(const T* p) { return *reinterpret_cast<const Vec<T>*>(p); }
template <typename T>
inline void store(T* p, Vec<T> v) { *reinterpret_cast<Vec<T>*>(p) = v; }

inline int64_t round_up(int64_t n, int64_t m) {
  return (n + m - 1) / m * m;
}

// ---- packing -----------------------------------------------------------------------------------------------

// The matrix M (rows x depth), M(r, k) = x[r * row_stride + k * depth_stride], -> ceil(rows / G) panels of
// (depth, G): panel g holds rows gG .. gG + G - 1 of M, element (k, l) at g * depth * G + k * G + l; rows past
// `rows` are zeros. Returned as a tensor so that its memory is visible to torch's profiler like every other
// allocation of the op.
template <typename T>
at::Tensor pack_panels(const T* x, int64_t row_stride, int64_t depth_stride, int64_t rows, int64_t depth) {
  constexpr int64_t G = kGroup<T>;
  const int64_t panels = (rows + G - 1) / G;
  const auto dtype = c10::CppTypeToScalarType<T>::value;
  at::Tensor packed = at::empty({std::max<int64_t>(panels * depth * G, 1)}, at::CPU(dtype));
  T* out = packed.data_ptr<T>();
  at::parallel_for(0, panels, 1, [&](int64_t g_begin, int64_t g_end) {
    for (int64_t g = g_begin; g < g_end; ++g) {
      for (int64_t k = 0; k < depth; ++k) {
        T* dst = out + (g * depth + k) * G;
        for (int64_t l = 0; l < G; ++l) {
          const int64_t r = g * G + l;
          dst[l] = r < rows ? x[r * row_stride + k * depth_stride] : T(0);
        }
      }
    }
  });
  return packed;
}

// Rows (n, d) row-major -> ceil(n / G) panels of (d, G): panel g holds rows gG .. gG + G - 1, element (k, l) at
// g * d * G + k * G + l. The B operand of x_I y_J^T products (a panel = G of the rows y_j, depth = the d features)
// and, read in 4-row slivers, their A operand.
template <typename T>
at::Tensor pack_rows(const T* x, int64_t n, int64_t d) {
  return pack_panels(x, d, 1, n, d);
}

// Rows (n, d) row-major -> ceil(d / G) panels of (n, G): panel v holds columns vG .. vG + G - 1, element (i, l) at
// v * n * G + i * G + l. The B operand of products M x with x as the right factor (depth = the n rows, a panel = G
// features); rows i0 .. of it start at + i0 * G, panel stride n * G.
template <typename T>
at::Tensor pack_columns(const T* x, int64_t n, int64_t d) {
  return pack_panels(x, 1, d, d, n);
}

// A tile M (rows x cols, leading dimension ld) -> its transpose in 4-row slivers, the A operand of M^T x products:
// sliver s holds columns 4s .. 4s + 3 of M, element (k, r) (= scale_k M[k][4s + r]) at out + s * 4 * rows + k * 4 + r;
// columns past cols are zeros. out holds round_up(cols, 4) * rows values. scale (per row of M) may be null.
template <typename T>
void pack_transposed(const T* M, int64_t ld, int64_t rows, int64_t cols, const T* scale, T* out) {
  for (int64_t c0 = 0; c0 < cols; c0 += kMicroRows) {
    T* sliver = out + c0 * rows;
    const int64_t width = std::min<int64_t>(kMicroRows, cols - c0);
    for (int64_t k = 0; k < rows; ++k) {
      const T* src = M + k * ld + c0;
      const T f = scale ? scale[k] : T(1);
      T* dst = sliver + k * kMicroRows;
      if (width == kMicroRows) {  // the common case, branch-free: one 128-bit multiply
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
      const Vec<T> s = broadcast(a + k * depth_stride + r * row_stride);
#pragma GCC unroll 3
      for (int v = 0; v < PANELS; ++v) acc[r][v] = multiply_add(s, bv[v], acc[r][v]);
    }
  }
#pragma GCC unroll 4
  for (int r = 0; r < kMicroRows; ++r)
#pragma GCC unroll 3
    for (int v = 0; v < PANELS; ++v) store(c + r * ldc + v * G, acc[r][v]);
}

// Where the 4-row A sliver starting at row r begins, and its strides.
struct Sliver {
  const void* base;
  int64_t row_stride, depth_stride;
};

// C (+)= A B for r < rows (a multiple of 4), columns < panels G, depth `depth` blocked by kc; A's sliver of rows
// r .. r + 3 from sliver(r), B packed: panel v's element (k, l) at b + v * panel_stride + k * G + l.
template <typename T, typename SliverOf>
void gemm(SliverOf sliver, int64_t rows, const T* b, int64_t panel_stride, int64_t panels, int64_t depth, T* C,
          int64_t ldc, bool accumulate) {
  constexpr int64_t G = kGroup<T>;
  const int64_t depth_steps = std::max<int64_t>((depth + kDepthBlock - 1) / kDepthBlock, 1);  // depth 0: zeros
  for (int64_t step = 0; step < depth_steps; ++step) {
    const int64_t p0 = step * kDepthBlock;
    const int64_t kc = std::min(kDepthBlock, depth - p0);
    const bool acc = accumulate || step > 0;
    for (int64_t r0 = 0; r0 < rows; r0 += kRowsBlock) {
      const int64_t r1 = std::min(rows, r0 + kRowsBlock);
      for (int64_t v0 = 0; v0 < panels; v0 += kMicroPanels) {
        const T* bb = b + v0 * panel_stride + p0 * G;
        const int64_t np = std::min<int64_t>(kMicroPanels, panels - v0);
        for (int64_t r = r0; r < r1; r += kMicroRows) {
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
// packed rows (pack_rows) of depth d. a_row0 must be a multiple of 4 and the tile's rows are computed 4 at a time
// (rows past a_rows within the last 4 are computed too: C needs round_up(a_rows, 4) rows).
template <typename T>
void gemm_tile(const T* packed_a, int64_t a_row0, int64_t a_rows, const T* packed_b, int64_t b_panel0,
               int64_t b_panels, int64_t d, T* C, int64_t ldc) {
  constexpr int64_t G = kGroup<T>;
  const int64_t panel_stride = d * G;
  const auto sliver = [&](int64_t r) {
    const int64_t row = a_row0 + r;
    return Sliver{packed_a + (row / G) * panel_stride + row % G, 1, G};
  };
  gemm<T>(sliver, round_up(a_rows, kMicroRows), packed_b + b_panel0 * panel_stride, panel_stride, b_panels, d, C,
          ldc, false);
}

// C (+)= M X: M a row-major tile (rows x depth, leading dimension ld, rows readable up to a multiple of 4), X
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
}  // namespace mmrec_fast
