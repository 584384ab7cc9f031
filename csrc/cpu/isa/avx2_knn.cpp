// The AVX2 + FMA (x86-64-v3) variant of csrc/cpu/knn.cpp (csrc/common/isa.h).
#define MMREC_FAST_ISA_AVX2
#include "../knn.cpp"
