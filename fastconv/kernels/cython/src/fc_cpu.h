/* What the CPU runs, for choosing among the built variants (fc_kernels.h): the
 * compiler's own CPU detection (GCC and Clang's __builtin_cpu_supports, which also
 * checks that the OS saves the AVX and AVX-512 registers). */
#ifndef FASTCONV_CPU_H
#define FASTCONV_CPU_H

#include <string.h>
#include "fc_kernels.h"

/* 1 when this CPU runs variant `name`: baseline and native always (native is built for
 * the build machine), avx2 with AVX2 and FMA, avx512 with AVX-512 F, BW, DQ and VL. */
static inline int fc_cpu_runs(const char *name)
{
    if (strcmp(name, "baseline") == 0 || strcmp(name, "native") == 0) return 1;
#if (defined(__x86_64__) || defined(__i386__)) && (defined(__GNUC__) || defined(__clang__))
    __builtin_cpu_init();
    if (strcmp(name, "avx2") == 0)
        return __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
    if (strcmp(name, "avx512") == 0)
        return __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw")
            && __builtin_cpu_supports("avx512dq") && __builtin_cpu_supports("avx512vl");
#endif
    return 0;
}

#endif
