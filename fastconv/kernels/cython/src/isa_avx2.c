/* The hot loops for AVX2 + FMA: -mavx2 -mfma (flags set in setup.py). */
#define FC_ISA avx2
#include "fc_isa.h"
