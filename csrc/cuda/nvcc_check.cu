// Compile check of the CUDA device code with plain nvcc (no torch): instantiates every kernel the extension
// builds, for every dtype, so a machine without a CUDA build of torch (CI) still catches device-code errors.
// Not part of the extension. Run by tests/test_nvcc_compile.py.
#include "propagate.cuh"

namespace mmrec_fast {
namespace cuda {
template cudaError_t launch_propagate_step<float>(const PropagateStepArgs<float>&, const PropagateSegments&, cudaStream_t);
template cudaError_t launch_propagate_step<double>(const PropagateStepArgs<double>&, const PropagateSegments&, cudaStream_t);
template cudaError_t launch_propagate_step<__half>(const PropagateStepArgs<__half>&, const PropagateSegments&, cudaStream_t);
template cudaError_t launch_propagate_step<__nv_bfloat16>(const PropagateStepArgs<__nv_bfloat16>&, const PropagateSegments&, cudaStream_t);
}  // namespace cuda
}  // namespace mmrec_fast
