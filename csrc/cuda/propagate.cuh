// CUDA kernels of one propagation step (device code and launchers; plain CUDA, no torch headers, so that it
// compiles with nvcc alone: tests/fixtures/nvcc_check.cu).
//
//   dst_i = row_scale_i * sum_e (W_ie * src_scale_{col_e}) src_{col_e} + x_coef * x_scale_i * x_i
//
// csrc/common/propagate_chain.h chains these steps into the fused multi-layer propagation (Horner form, two buffers).
//
// Work split: edge segments of at most kSegmentEdges edges of one row, one warp per segment (the CSR row split
// of pytorch_sparse / pyg-lib, with long rows cut into pieces as in merge-based SpMM, Merrill & Garland SC'16, so a
// power-law hub of 40k edges is spread over hundreds of warps instead of stalling one). A row of one segment is
// summed and written by its warp; a long row's warps write their partial sums to a scratch buffer and a second
// kernel adds them in segment order and applies the epilogue. No atomics, fixed order: deterministic.
// Within a segment (GE-SpMM, Huang et al. SC'20): the warp covers all columns of its row, each lane COLS
// contiguous ones (one vector load when aligned), so a gathered source row is one coalesced read; edge indices
// and weights are loaded 32 at a time, coalesced, and broadcast with __shfl_sync; four gathers are in flight per
// lane. fp16 / bf16 / fp32 inputs accumulate in fp32, fp64 in fp64.
//
// Segments are built once per propagation (all steps share them) from rowptr, without a host sync:
//   count_segments_kernel: per row (segments, partial slots, is long) -> a (3, rows) int64 table;
//   the caller scans the table (inclusive, along rows);
//   place_segments_kernel: segment -> row, long-row rank -> row.
// Grids are sized by host-side bounds (rows + nnz / kSegmentEdges segments, nnz / (kSegmentEdges + 1) long rows);
// warps past the true totals (the scan's last row) exit.
#pragma once

#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>
#include <stdint.h>

namespace mmrec_fast {
namespace cuda {

template <typename T> struct Accumulate { using type = float; };
template <> struct Accumulate<double> { using type = double; };
template <typename T> using acc_t = typename Accumulate<T>::type;

__device__ __forceinline__ float to_acc(float v) { return v; }
__device__ __forceinline__ double to_acc(double v) { return v; }
__device__ __forceinline__ float to_acc(__half v) { return __half2float(v); }
__device__ __forceinline__ float to_acc(__nv_bfloat16 v) { return __bfloat162float(v); }

template <typename T> __device__ __forceinline__ T from_acc(acc_t<T> v);
template <> __device__ __forceinline__ float from_acc<float>(float v) { return v; }
template <> __device__ __forceinline__ double from_acc<double>(double v) { return v; }
template <> __device__ __forceinline__ __half from_acc<__half>(float v) { return __float2half_rn(v); }
template <> __device__ __forceinline__ __nv_bfloat16 from_acc<__nv_bfloat16>(float v) { return __float2bfloat16_rn(v); }

constexpr int kWarpSize = 32;
constexpr int kWarpsPerBlock = 8;
constexpr int64_t kSegmentEdges = 128;  // edges per warp: hubs are split, short rows take one warp each

// Rows of the (3, rows) segment table built by count_segments_kernel (and scanned along rows by the caller: the
// innermost dimension, which torch scans in parallel; a scan over the outer dimension of a (rows, 3) table runs
// one thread per column and cost milliseconds).
constexpr int kSegments = 0, kPartials = 1, kLong = 2, kTableColumns = 3;

__host__ __device__ __forceinline__ int64_t segments_of(int64_t degree) {
  return degree <= kSegmentEdges ? 1 : (degree + kSegmentEdges - 1) / kSegmentEdges;
}

// Host-side bounds of the tables (no sync needed): every row has >= 1 segment and a long row > kSegmentEdges edges.
inline int64_t max_segments(int64_t rows, int64_t nnz) { return rows + nnz / kSegmentEdges; }
inline int64_t max_long_rows(int64_t nnz) { return nnz / (kSegmentEdges + 1); }
inline int64_t max_partials(int64_t nnz) { return max_long_rows(nnz) + nnz / kSegmentEdges; }

struct PropagateSegments {
  const int64_t* table;  // (3, rows) inclusive scans over rows of (segments, partial slots, is long)
  int32_t* seg_row;      // (max_segments,) row of each segment
  int32_t* long_rows;    // (max_long_rows,) rows with more than one segment, by row index
  int64_t rows;
  int64_t nnz;
};

template <typename T>
struct PropagateStepArgs {
  const int64_t* rowptr;         // (num_rows + 1,)
  const int32_t* col;            // (nnz,)
  const acc_t<T>* values;        // (nnz,) or nullptr: binary W
  const T* src;                  // (n, d)
  const acc_t<T>* src_scale;     // (n,) or nullptr
  const acc_t<T>* row_scale;     // (num_rows,) or nullptr
  const T* x;                    // (num_rows, d) or nullptr
  const acc_t<T>* x_scale;       // (num_rows,) or nullptr
  acc_t<T> x_coef;
  T* dst;                        // (num_rows, d)
  acc_t<T>* partials;            // (max_partials, d) scratch for the long rows' segment sums
  int64_t num_rows;
  int64_t d;
};

__global__ void count_segments_kernel(const int64_t* rowptr, int64_t rows, int64_t* table) {
  const int64_t r = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (r >= rows) return;
  const int64_t segments = segments_of(rowptr[r + 1] - rowptr[r]);
  table[kSegments * rows + r] = segments;
  table[kPartials * rows + r] = segments > 1 ? segments : 0;
  table[kLong * rows + r] = segments > 1 ? 1 : 0;
}

__global__ void place_segments_kernel(const int64_t* rowptr, PropagateSegments s) {
  const int64_t r = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (r >= s.rows) return;
  const int64_t segments = s.table[kSegments * s.rows + r] - (r ? s.table[kSegments * s.rows + (r - 1)] : 0);
  const int64_t first = s.table[kSegments * s.rows + r] - segments;
  for (int64_t i = 0; i < segments; ++i) s.seg_row[first + i] = static_cast<int32_t>(r);
  if (segments > 1) s.long_rows[s.table[kLong * s.rows + r] - 1] = static_cast<int32_t>(r);
}

// COLS contiguous columns of one source row, from `p` (ALIGNED: one vector load of COLS elements).
template <typename T, int COLS, bool ALIGNED>
__device__ __forceinline__ void gather_add(acc_t<T> (&acc)[COLS], const T* p, acc_t<T> w, int valid) {
  if constexpr (ALIGNED && COLS == 2 && sizeof(T) == 4) {
    const float2 v = *reinterpret_cast<const float2*>(p);
    acc[0] += w * v.x;
    acc[1] += w * v.y;
  } else if constexpr (ALIGNED && COLS == 4 && sizeof(T) == 4) {
    const float4 v = *reinterpret_cast<const float4*>(p);
    acc[0] += w * v.x;
    acc[1] += w * v.y;
    acc[2] += w * v.z;
    acc[3] += w * v.w;
  } else {
#pragma unroll
    for (int c = 0; c < COLS; ++c) {
      if (ALIGNED || c < valid) acc[c] += w * to_acc(p[c]);
    }
  }
}

// The epilogue of a finished row's column: dst = row_scale * sum + x_coef * x_scale * x.
template <typename T>
__device__ __forceinline__ void write_output(const PropagateStepArgs<T>& a, int64_t row, int64_t column,
                                             acc_t<T> sum) {
  using A = acc_t<T>;
  A value = (a.row_scale ? a.row_scale[row] : A(1)) * sum;
  if (a.x) value += a.x_coef * (a.x_scale ? a.x_scale[row] : A(1)) * to_acc(a.x[row * a.d + column]);
  a.dst[row * a.d + column] = from_acc<T>(value);
}

// Warp per segment. ALIGNED: d % COLS == 0 and src rows aligned for a COLS-wide vector load.
template <typename T, int COLS, bool ALIGNED>
__global__ void __launch_bounds__(kWarpSize * kWarpsPerBlock)
propagate_segments_kernel(const PropagateStepArgs<T> a, const PropagateSegments s) {
  using A = acc_t<T>;
  const int64_t segment = static_cast<int64_t>(blockIdx.x) * kWarpsPerBlock + threadIdx.x / kWarpSize;
  if (segment >= s.table[kSegments * s.rows + (s.rows - 1)]) return;  // uniform across the warp
  const int lane = threadIdx.x % kWarpSize;
  const int64_t row = s.seg_row[segment];
  const int64_t row_begin = a.rowptr[row], row_end = a.rowptr[row + 1];
  const int64_t segments = segments_of(row_end - row_begin);
  const int64_t index = segment - (s.table[kSegments * s.rows + row] - segments);  // within the row
  const int64_t e_begin = row_begin + index * kSegmentEdges;
  const int64_t e_end = segments == 1 ? row_end : (e_begin + kSegmentEdges < row_end ? e_begin + kSegmentEdges : row_end);
  A* partial = nullptr;
  if (segments > 1) {
    const int64_t slot = s.table[kPartials * s.rows + row] - segments + index;
    partial = a.partials + slot * a.d;
  }

  for (int64_t c0 = 0; c0 < a.d; c0 += kWarpSize * COLS) {
    const int64_t my_col = c0 + static_cast<int64_t>(lane) * COLS;
    const int valid = static_cast<int>(a.d - my_col < COLS ? a.d - my_col : COLS);  // may be <= 0
    A acc[COLS];
#pragma unroll
    for (int c = 0; c < COLS; ++c) acc[c] = A(0);

    for (int64_t e0 = e_begin; e0 < e_end; e0 += kWarpSize) {
      // Coalesced load of up to 32 edges: their source rows and weights (0 past the segment), in registers.
      const int64_t e = e0 + lane;
      int32_t src_row = 0;
      A weight = A(0);
      if (e < e_end) {
        src_row = a.col[e];
        weight = (a.values ? a.values[e] : A(1)) * (a.src_scale ? a.src_scale[src_row] : A(1));
      }
      const int count = static_cast<int>(e_end - e0 < kWarpSize ? e_end - e0 : kWarpSize);
      const int padded = (count + 3) & ~3;  // edges past count have weight 0 and source row 0
#pragma unroll 4
      for (int k = 0; k < padded; ++k) {
        const int64_t j = __shfl_sync(0xffffffffu, src_row, k);
        const A w = __shfl_sync(0xffffffffu, weight, k);
        if (valid > 0) gather_add<T, COLS, ALIGNED>(acc, a.src + j * a.d + my_col, w, valid);
      }
    }

#pragma unroll
    for (int c = 0; c < COLS; ++c) {
      const int64_t column = my_col + c;
      if (c < valid) {
        if (partial) {
          partial[column] = acc[c];
        } else {
          write_output(a, row, column, acc[c]);
        }
      }
    }
  }
}

// Warp per long row: its segments' partial sums added in segment order, then the epilogue.
template <typename T>
__global__ void __launch_bounds__(kWarpSize * kWarpsPerBlock)
finish_long_rows_kernel(const PropagateStepArgs<T> a, const PropagateSegments s) {
  using A = acc_t<T>;
  const int64_t slot = static_cast<int64_t>(blockIdx.x) * kWarpsPerBlock + threadIdx.x / kWarpSize;
  if (slot >= s.table[kLong * s.rows + (s.rows - 1)]) return;
  const int lane = threadIdx.x % kWarpSize;
  const int64_t row = s.long_rows[slot];
  const int64_t segments = segments_of(a.rowptr[row + 1] - a.rowptr[row]);
  const A* partial = a.partials + (s.table[kPartials * s.rows + row] - segments) * a.d;
  for (int64_t column = lane; column < a.d; column += kWarpSize) {
    A sum = A(0);
    for (int64_t i = 0; i < segments; ++i) sum += partial[i * a.d + column];
    write_output(a, row, column, sum);
  }
}

inline unsigned blocks_for(int64_t items, int64_t per_block) {
  return static_cast<unsigned>((items + per_block - 1) / per_block);
}

// Step 1 of the segment build: the (3, rows) table, to be scanned along rows by the caller.
inline cudaError_t launch_count_segments(const int64_t* rowptr, int64_t rows, int64_t* table, cudaStream_t stream) {
  if (rows == 0) return cudaSuccess;
  count_segments_kernel<<<blocks_for(rows, 256), 256, 0, stream>>>(rowptr, rows, table);
  return cudaGetLastError();
}

// Step 2 (after the scan): segment -> row and long-row rank -> row.
inline cudaError_t launch_place_segments(const int64_t* rowptr, const PropagateSegments& s, cudaStream_t stream) {
  if (s.rows == 0) return cudaSuccess;
  place_segments_kernel<<<blocks_for(s.rows, 256), 256, 0, stream>>>(rowptr, s);
  return cudaGetLastError();
}

template <typename T, int COLS>
cudaError_t launch_with_cols(const PropagateStepArgs<T>& args, const PropagateSegments& s, cudaStream_t stream) {
  const unsigned blocks = blocks_for(max_segments(s.rows, s.nnz), kWarpsPerBlock);
  const unsigned threads = kWarpSize * kWarpsPerBlock;
  const bool aligned = args.d % COLS == 0 && reinterpret_cast<uintptr_t>(args.src) % (COLS * sizeof(T)) == 0;
  if (aligned) {
    propagate_segments_kernel<T, COLS, true><<<blocks, threads, 0, stream>>>(args, s);
  } else {
    propagate_segments_kernel<T, COLS, false><<<blocks, threads, 0, stream>>>(args, s);
  }
  return cudaGetLastError();
}

// Launches one step on `stream` (segments built by the two launches above); returns the launch error.
template <typename T>
cudaError_t launch_propagate_step(const PropagateStepArgs<T>& args, const PropagateSegments& s, cudaStream_t stream) {
  if (args.num_rows == 0 || args.d == 0) return cudaSuccess;
  cudaError_t error;
  if (args.d <= kWarpSize) {
    error = launch_with_cols<T, 1>(args, s, stream);
  } else if (args.d <= 2 * kWarpSize) {
    error = launch_with_cols<T, 2>(args, s, stream);
  } else {
    error = launch_with_cols<T, 4>(args, s, stream);
  }
  if (error != cudaSuccess || max_long_rows(s.nnz) == 0) return error;
  finish_long_rows_kernel<T><<<blocks_for(max_long_rows(s.nnz), kWarpsPerBlock), kWarpSize * kWarpsPerBlock, 0,
                               stream>>>(args, s);
  return cudaGetLastError();
}

}  // namespace cuda
}  // namespace mmrec_fast
