// CUDA kernel of one propagation step (device code and launcher; plain CUDA, no torch headers, so that it
// compiles with nvcc alone: csrc/cuda/nvcc_check.cu).
//
//   dst_i = row_scale_i * sum_e (W_ie * src_scale_{col_e}) src_{col_e} + x_coef * x_scale_i * x_i
//
// csrc/propagate_chain.h chains these steps into the fused multi-layer propagation (Horner form, two buffers).
// What it follows: the CSR row split of pytorch_sparse / pyg-lib (one warp per row: no atomics, each row summed
// in CSR order, deterministic) with GE-SpMM's techniques (Huang et al., SC'20): one warp covers all columns of
// its row (COLS lanes-contiguous columns per lane, so a gathered row is read as one coalesced segment), and the
// row's edge indices and weights are loaded 32 at a time, coalesced, then broadcast with __shfl_sync
// ("coalesced row caching" in registers). Rows are visited in the order given by `order` (decreasing degree),
// so hub rows start first instead of forming a tail. fp16 / bf16 / fp32 inputs accumulate in fp32, fp64 in fp64.
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

template <typename T>
struct PropagateStepArgs {
  const int64_t* order;          // (num_rows,) rows in visiting order
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
  int64_t num_rows;
  int64_t d;
};

constexpr int kWarpSize = 32;
constexpr int kWarpsPerBlock = 8;

// One warp per row; lane l owns columns c0 + l * COLS + [0, COLS) of each 32 * COLS wide column block.
template <typename T, int COLS>
__global__ void __launch_bounds__(kWarpSize * kWarpsPerBlock)
propagate_step_kernel(const PropagateStepArgs<T> a) {
  using A = acc_t<T>;
  const int64_t slot = static_cast<int64_t>(blockIdx.x) * kWarpsPerBlock + threadIdx.x / kWarpSize;
  if (slot >= a.num_rows) return;  // whole warps exit together: slot is uniform across the warp
  const int lane = threadIdx.x % kWarpSize;
  const int64_t row = a.order[slot];
  const int64_t e_begin = a.rowptr[row], e_end = a.rowptr[row + 1];
  const A row_scale = a.row_scale ? a.row_scale[row] : A(1);
  const A x_factor = a.x ? a.x_coef * (a.x_scale ? a.x_scale[row] : A(1)) : A(0);

  for (int64_t c0 = 0; c0 < a.d; c0 += kWarpSize * COLS) {
    const int64_t my_col = c0 + static_cast<int64_t>(lane) * COLS;
    A acc[COLS];
#pragma unroll
    for (int c = 0; c < COLS; ++c) acc[c] = A(0);

    for (int64_t e0 = e_begin; e0 < e_end; e0 += kWarpSize) {
      // Coalesced load of up to 32 edges: their source rows and weights, kept in registers.
      const int64_t e = e0 + lane;
      int32_t src_row = 0;
      A weight = A(0);
      if (e < e_end) {
        src_row = a.col[e];
        weight = (a.values ? a.values[e] : A(1)) * (a.src_scale ? a.src_scale[src_row] : A(1));
      }
      const int count = static_cast<int>(e_end - e0 < kWarpSize ? e_end - e0 : kWarpSize);
      for (int k = 0; k < count; ++k) {
        const int64_t j = __shfl_sync(0xffffffffu, src_row, k);
        const A w = __shfl_sync(0xffffffffu, weight, k);
        const T* src = a.src + j * a.d;
#pragma unroll
        for (int c = 0; c < COLS; ++c) {
          if (my_col + c < a.d) acc[c] += w * to_acc(src[my_col + c]);
        }
      }
    }

#pragma unroll
    for (int c = 0; c < COLS; ++c) {
      const int64_t column = my_col + c;
      if (column < a.d) {
        A value = row_scale * acc[c];
        if (a.x) value += x_factor * to_acc(a.x[row * a.d + column]);
        a.dst[row * a.d + column] = from_acc<T>(value);
      }
    }
  }
}

// Launches one step on `stream`; returns the launch error (cudaSuccess when fine).
template <typename T>
cudaError_t launch_propagate_step(const PropagateStepArgs<T>& args, cudaStream_t stream) {
  if (args.num_rows == 0 || args.d == 0) return cudaSuccess;
  const unsigned blocks = static_cast<unsigned>((args.num_rows + kWarpsPerBlock - 1) / kWarpsPerBlock);
  const unsigned threads = kWarpSize * kWarpsPerBlock;
  if (args.d <= kWarpSize) {
    propagate_step_kernel<T, 1><<<blocks, threads, 0, stream>>>(args);
  } else if (args.d <= 2 * kWarpSize) {
    propagate_step_kernel<T, 2><<<blocks, threads, 0, stream>>>(args);
  } else {
    propagate_step_kernel<T, 4><<<blocks, threads, 0, stream>>>(args);
  }
  return cudaGetLastError();
}

}  // namespace cuda
}  // namespace mmrec_fast
