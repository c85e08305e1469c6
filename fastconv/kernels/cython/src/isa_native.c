/* The hot loops for the build machine alone (FASTCONV_NATIVE=1): -march=native (flags set in setup.py). */
#define FC_ISA native
#include "fc_isa.h"
