/* The hot loops for AVX-512 at 512-bit width: -mavx512f -mavx512bw -mavx512dq -mavx512vl -mprefer-vector-width=512 (flags set in setup.py). */
#define FC_ISA avx512
#include "fc_isa.h"
