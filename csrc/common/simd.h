// The vector types of the CPU kernels, defined once per instruction-set variant (csrc/common/isa.h). GCC vector
// extensions: the compiler lowers the 256-bit ones to ymm registers in the avx2 and avx512 variants, to pairs of
// SSE registers in the baseline; the Wide ones (the GEMM's, tile_gemm.h) are 512-bit (zmm) in the avx512 variant.
//
// All are declared with element alignment and may_alias: loads and stores through them are unaligned (as fast as
// aligned ones on data that happens to be aligned) and may alias the scalar arrays, so rows at any float / double
// address can be streamed. (Each is spelled out as a typedef: GCC drops vector attributes on dependent types in
// alias templates.)
#pragma once

#include <cstdint>

#include "isa.h"

MMREC_FAST_ISA_BEGIN
namespace simd {

typedef float Float8 __attribute__((vector_size(32), aligned(4), may_alias));
typedef double Double4 __attribute__((vector_size(32), aligned(8), may_alias));
typedef int32_t Int8 __attribute__((vector_size(32)));
typedef int64_t Long4 __attribute__((vector_size(32)));

// Vec<T>: the 256-bit vector of T (float or double).
template <typename T> struct VecOf;
template <> struct VecOf<float> { using type = Float8; };
template <> struct VecOf<double> { using type = Double4; };
template <typename T>
using Vec = typename VecOf<T>::type;
static_assert(sizeof(Vec<float>) == 32 && sizeof(Vec<double>) == 32, "256-bit vectors");

// The widest vectors of the variant, at element alignment (the GEMM's packed panels, accumulators and tiles):
// 64 bytes with AVX-512, 32 otherwise. WideVec<T>: the one of T.
#if MMREC_FAST_HAS_AVX512
#define MMREC_FAST_WIDE_BYTES 64
#else
#define MMREC_FAST_WIDE_BYTES 32
#endif
constexpr int64_t kWideBytes = MMREC_FAST_WIDE_BYTES;
typedef float WideFloat __attribute__((vector_size(MMREC_FAST_WIDE_BYTES), aligned(4), may_alias));
typedef double WideDouble __attribute__((vector_size(MMREC_FAST_WIDE_BYTES), aligned(8), may_alias));
#undef MMREC_FAST_WIDE_BYTES
template <typename T> struct WideOf;
template <> struct WideOf<float> { using type = WideFloat; };
template <> struct WideOf<double> { using type = WideDouble; };
template <typename T>
using WideVec = typename WideOf<T>::type;

// a * b + c on 256-bit vectors, fused (one rounding) where the variant has FMA.
inline Float8 multiply_add(Float8 a, Float8 b, Float8 c) {
#if MMREC_FAST_HAS_AVX2
  return (Float8)_mm256_fmadd_ps((__m256)a, (__m256)b, (__m256)c);
#else
  return a * b + c;
#endif
}
inline Double4 multiply_add(Double4 a, Double4 b, Double4 c) {
#if MMREC_FAST_HAS_AVX2
  return (Double4)_mm256_fmadd_pd((__m256d)a, (__m256d)b, (__m256d)c);
#else
  return a * b + c;
#endif
}

}  // namespace simd
MMREC_FAST_ISA_END
