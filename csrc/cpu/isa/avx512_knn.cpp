// The AVX-512 (F/BW/DQ/VL) + AVX2 + FMA variant of csrc/cpu/knn.cpp (csrc/common/isa.h).
#define MMREC_FAST_ISA_AVX512
#include "../knn.cpp"
