// The AVX2 + FMA variant of csrc/cpu/topk_scores.cpp (csrc/common/isa.h).
#define MMREC_FAST_ISA_AVX2
#include "../topk_scores.cpp"
