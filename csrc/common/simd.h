// The 256-bit vector types of the CPU kernels, defined once. GCC/Clang vector extensions: the compiler lowers them
// to AVX2 with -march=x86-64-v3, to pairs of SSE registers otherwise.
//
// Two alignments of the same vectors. Float8 / Double4 are for rows at any float / double address (the rows the
// propagation and InfoNCE kernels stream): declared with element alignment and may_alias, so loads and stores
// through them are unaligned and may alias the scalar arrays. AlignedFloat8 / AlignedDouble4 are for the packed
// panels and accumulators of tile_gemm.h, which are 32-byte aligned. (Each is spelled out as a typedef: GCC drops
// vector attributes on dependent types in alias templates.)
#pragma once

#include <cstdint>

namespace mmrec_fast {
namespace simd {

typedef float Float8 __attribute__((vector_size(32), aligned(4), may_alias));
typedef double Double4 __attribute__((vector_size(32), aligned(8), may_alias));
typedef float AlignedFloat8 __attribute__((vector_size(32), aligned(32)));
typedef double AlignedDouble4 __attribute__((vector_size(32), aligned(32)));
typedef int32_t Int8 __attribute__((vector_size(32)));
typedef int64_t Long4 __attribute__((vector_size(32)));

// Vec<T>: the unaligned vector of T (float or double); AlignedVec<T>: the aligned one.
template <typename T> struct VecOf;
template <> struct VecOf<float> { using type = Float8; using aligned = AlignedFloat8; };
template <> struct VecOf<double> { using type = Double4; using aligned = AlignedDouble4; };
template <typename T>
using Vec = typename VecOf<T>::type;
template <typename T>
using AlignedVec = typename VecOf<T>::aligned;
static_assert(sizeof(Vec<float>) == 32 && sizeof(Vec<double>) == 32, "256-bit vectors");
static_assert(sizeof(AlignedVec<float>) == 32 && sizeof(AlignedVec<double>) == 32, "256-bit vectors");

}  // namespace simd
}  // namespace mmrec_fast
