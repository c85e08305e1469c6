/* The hot loops for baseline x86-64 (SSE2), or the portable build elsewhere: the compiler's defaults (flags set in setup.py). */
#define FC_ISA baseline
#include "fc_isa.h"
