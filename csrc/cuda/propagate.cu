// torch binding of the CUDA propagation kernels (csrc/cuda/propagate.cuh): argument checks and the Horner chain
// come from csrc/common/propagate_chain.h, the edge segments (built once per call, no host sync) and the step from the
// kernels. Registered for the CUDA dispatch key.
#include <ATen/ATen.h>
#include <algorithm>
#include <ATen/Dispatch.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <torch/library.h>

#include "../common/propagate_chain.h"
#include "propagate.cuh"

namespace mmrec_fast {
namespace {

// at:: scalar type -> the CUDA type the kernel is instantiated for (same layout).
template <typename T> struct CudaType { using type = T; };
template <> struct CudaType<at::Half> { using type = __half; };
template <> struct CudaType<at::BFloat16> { using type = __nv_bfloat16; };

void check_launch(cudaError_t error) {
  TORCH_CHECK(error == cudaSuccess, "propagate (native CUDA): kernel launch failed: ", cudaGetErrorString(error));
}

template <typename A>
const A* ptr_or_null(const at::Tensor& t) {
  return t.defined() ? t.data_ptr<A>() : nullptr;
}

at::Tensor propagate_cuda(const at::Tensor& x, const at::Tensor& rowptr, const at::Tensor& col,
                          const std::optional<at::Tensor>& values, const std::optional<at::Tensor>& left,
                          const std::optional<at::Tensor>& right, const std::optional<at::Tensor>& /*t_rowptr*/,
                          const std::optional<at::Tensor>& /*t_col*/, const std::optional<at::Tensor>& /*t_values*/,
                          at::ArrayRef<double> weights) {
  TORCH_CHECK(x.is_cuda(), "propagate (native CUDA): x must be a CUDA tensor");
  const c10::cuda::CUDAGuard guard(x.device());
  const cudaStream_t stream = c10::cuda::getCurrentCUDAStream();
  // Edge segments (csrc/cuda/propagate.cuh), built on the device once for all steps, on the first step (after
  // propagate_chain has checked the arguments).
  at::Tensor table, seg_row, long_rows, partials;
  cuda::PropagateSegments segments{};
  return propagate_chain(x, rowptr, col, values, left, right, weights, [&](const PropagateStepTensors& t) {
    if (!table.defined()) {
      const int64_t rows = rowptr.size(0) - 1, nnz = col.size(0);
      const at::TensorOptions index = rowptr.options();
      table = at::empty({cuda::kTableColumns, rows}, index);
      check_launch(cuda::launch_count_segments(rowptr.data_ptr<int64_t>(), rows, table.data_ptr<int64_t>(), stream));
      table = table.cumsum(1);
      seg_row = at::empty({cuda::max_segments(rows, nnz)}, index.dtype(at::kInt));
      long_rows = at::empty({std::max<int64_t>(cuda::max_long_rows(nnz), 1)}, index.dtype(at::kInt));
      partials = at::empty({cuda::max_partials(nnz), t.dst.size(1)}, x.options().dtype(accumulate_type(x.scalar_type())));
      segments = {table.data_ptr<int64_t>(), seg_row.data_ptr<int32_t>(), long_rows.data_ptr<int32_t>(), rows, nnz};
      check_launch(cuda::launch_place_segments(rowptr.data_ptr<int64_t>(), segments, stream));
    }
    AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, x.scalar_type(), "propagate_cuda", [&] {
      using T = typename CudaType<scalar_t>::type;
      using A = cuda::acc_t<T>;
      cuda::PropagateStepArgs<T> a;
      a.rowptr = rowptr.data_ptr<int64_t>();
      a.col = col.data_ptr<int32_t>();
      a.values = values.has_value() ? values->data_ptr<A>() : nullptr;
      a.src = reinterpret_cast<const T*>(t.src.data_ptr<scalar_t>());
      a.src_scale = ptr_or_null<A>(t.src_scale);
      a.row_scale = ptr_or_null<A>(t.row_scale);
      a.x = t.x.defined() ? reinterpret_cast<const T*>(t.x.data_ptr<scalar_t>()) : nullptr;
      a.x_scale = ptr_or_null<A>(t.x_scale);
      a.x_coef = static_cast<A>(t.x_coef);
      a.dst = reinterpret_cast<T*>(t.dst.data_ptr<scalar_t>());
      a.partials = partials.data_ptr<A>();
      a.num_rows = t.dst.size(0);
      a.d = t.dst.size(1);
      check_launch(cuda::launch_propagate_step<T>(a, segments, stream));
    });
  });
}

}  // namespace

TORCH_LIBRARY_IMPL(mmrec_fast, CUDA, m) { m.impl("propagate", &propagate_cuda); }

}  // namespace mmrec_fast
