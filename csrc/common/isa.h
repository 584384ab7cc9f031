// Instruction-set variants of the CPU kernels, and the choice among them at run time.
//
// Every CPU kernel source csrc/cpu/<op>.cpp is compiled into the one extension up to three times:
//   * as itself, for the compiler's baseline (x86-64: SSE2, no -march): the variant that runs on any CPU, and
//     the translation unit that registers the op and dispatches to the variant chosen below;
//   * through csrc/cpu/isa/avx2_<op>.cpp, for x86-64-v3: AVX2 + FMA ("avx2");
//   * through csrc/cpu/isa/avx512_<op>.cpp, for x86-64-v4: AVX-512 F/BW/CD/DQ/VL + AVX2 + FMA ("avx512").
// A wrapper defines MMREC_FAST_ISA_AVX2 or MMREC_FAST_ISA_AVX512 and includes the source. The sources include
// every torch and standard header first and then put their own definitions between MMREC_FAST_ISA_BEGIN and
// MMREC_FAST_ISA_END: there GCC's target pragma sets the instruction set of each function defined, and the
// definitions land in namespace mmrec_fast::<variant>, so the three copies never share a symbol. The inline
// functions of torch and the standard library are defined outside those regions, so every translation unit
// compiles them for the baseline and whichever copy the linker keeps is safe on any CPU. (The scheme is PyTorch's
// CPU_CAPABILITY, aten/src/ATen/native/cpu, with target pragmas in place of per-file compiler flags, which
// torch.utils.cpp_extension cannot give.)
//
// In the kernels MMREC_FAST_HAS_AVX2 (AVX2 + FMA) and MMREC_FAST_HAS_AVX512 say what the variant may use (not the
// compiler's __AVX2__ macros: they say what the build flags allow, which is the baseline).
//
// Which variant runs: the best the CPU supports (cpuid), chosen when the extension loads; MMREC_FAST_CPU_ISA
// (baseline | avx2 | avx512) forces one (mmrec_fast/_native.py reads it and calls set_cpu_isa; asking for a variant
// the CPU lacks is an error, never a silent fallback). Every call of a dispatched op reads the choice once.
#pragma once

#if defined(__x86_64__) || defined(_M_X64)
#include <immintrin.h>
#endif

#include <string>

// The targets are the feature lists of the x86-64-v3 level (AVX2, FMA, BMI1/2, F16C, LZCNT, MOVBE over v2), as
// -march=x86-64-v3 gives, and for avx512 those of x86-64-v4 on top (AVX-512 F/BW/CD/DQ/VL). (GCC's target pragma
// takes no arch=x86-64-v3 that would also define the feature macros.) At run time the CPU is asked for the same
// levels: __builtin_cpu_supports("x86-64-v3" / "x86-64-v4").
#if defined(MMREC_FAST_ISA_AVX512) || defined(MMREC_FAST_ISA_AVX2)
#if !defined(__GNUC__) || defined(__clang__)
#error "the AVX2 / AVX-512 variants need GCC's target pragma; build with MMREC_FAST_CPU_VARIANTS=0 with other compilers"
#endif
#endif

#if defined(MMREC_FAST_ISA_AVX512)
#define MMREC_FAST_ISA_NAMESPACE avx512
// clang-format off
#define MMREC_FAST_ISA_TARGET _Pragma("GCC target(\"popcnt,sse3,ssse3,sse4.1,sse4.2,cx16,sahf,avx,avx2,bmi,bmi2,f16c,fma,lzcnt,movbe,xsave,avx512f,avx512bw,avx512cd,avx512dq,avx512vl\")")
// clang-format on
#define MMREC_FAST_HAS_AVX2 1
#define MMREC_FAST_HAS_AVX512 1
#elif defined(MMREC_FAST_ISA_AVX2)
#define MMREC_FAST_ISA_NAMESPACE avx2
#define MMREC_FAST_ISA_TARGET \
  _Pragma("GCC target(\"popcnt,sse3,ssse3,sse4.1,sse4.2,cx16,sahf,avx,avx2,bmi,bmi2,f16c,fma,lzcnt,movbe,xsave\")")
#define MMREC_FAST_HAS_AVX2 1
#define MMREC_FAST_HAS_AVX512 0
#else
#define MMREC_FAST_ISA_NAMESPACE baseline
#define MMREC_FAST_ISA_TARGET
#define MMREC_FAST_ISA_REGISTERS 1  // this translation unit registers the op and dispatches
// The baseline is what the build flags allow (MMREC_FAST_CPU_ARCH may raise it, e.g. to native).
#if defined(__AVX2__) && defined(__FMA__)
#define MMREC_FAST_HAS_AVX2 1
#else
#define MMREC_FAST_HAS_AVX2 0
#endif
#if defined(__AVX512F__) && defined(__AVX512BW__) && defined(__AVX512DQ__) && defined(__AVX512VL__)
#define MMREC_FAST_HAS_AVX512 1
#else
#define MMREC_FAST_HAS_AVX512 0
#endif
#endif

#define MMREC_FAST_ISA_BEGIN                                                     \
  _Pragma("GCC push_options") MMREC_FAST_ISA_TARGET namespace mmrec_fast {      \
    namespace MMREC_FAST_ISA_NAMESPACE {
#define MMREC_FAST_ISA_END \
  }                        \
  }                        \
  _Pragma("GCC pop_options")

namespace mmrec_fast {
namespace isa {

enum class Isa : int { baseline = 0, avx2 = 1, avx512 = 2 };

// Whether this CPU can run a variant (and it was compiled in).
bool supported(Isa isa);
// The variant the dispatched ops run now; set_active refuses one that is not supported (std::invalid_argument).
Isa active();
void set_active(Isa isa);
const char* name(Isa isa);
// The variant of a name ("baseline", "avx2", "avx512"); std::invalid_argument for any other.
Isa parse(const std::string& name);

}  // namespace isa

// The op's entry point of every variant, F(baseline::f, avx2::f, avx512::f), behind one function pointer with
// f's signature (Dispatch<...>::call) for TORCH_LIBRARY_IMPL.
template <auto Baseline, auto Avx2, auto Avx512>
struct Dispatch;
template <typename R, typename... A, R (*Baseline)(A...), R (*Avx2)(A...), R (*Avx512)(A...)>
struct Dispatch<Baseline, Avx2, Avx512> {
  static R call(A... args) {
    switch (isa::active()) {
      case isa::Isa::avx512: return Avx512(args...);
      case isa::Isa::avx2: return Avx2(args...);
      default: return Baseline(args...);
    }
  }
};

}  // namespace mmrec_fast

// In the registering translation unit: declares avx2::f and avx512::f (defined in the wrappers' translation units,
// with baseline::f's type) and names the dispatching entry point. Without the variants (MMREC_FAST_CPU_VARIANTS=0
// or a CPU that is not x86-64) every slot is the baseline.
#if defined(MMREC_FAST_WITH_CPU_VARIANTS)
#define MMREC_FAST_ISA_VARIANTS(f)  \
  namespace avx2 {                  \
  decltype(baseline::f) f;          \
  }                                 \
  namespace avx512 {                \
  decltype(baseline::f) f;          \
  }
#define MMREC_FAST_ISA_DISPATCH(f) (&Dispatch<&baseline::f, &avx2::f, &avx512::f>::call)
#else
#define MMREC_FAST_ISA_VARIANTS(f)
#define MMREC_FAST_ISA_DISPATCH(f) (&Dispatch<&baseline::f, &baseline::f, &baseline::f>::call)
#endif
