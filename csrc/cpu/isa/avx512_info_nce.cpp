// The AVX-512 (x86-64-v4: F/BW/CD/DQ/VL) + AVX2 + FMA variant of csrc/cpu/info_nce.cpp (csrc/common/isa.h).
#define MMREC_FAST_ISA_AVX512
#include "../info_nce.cpp"
