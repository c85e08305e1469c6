# cython: language_level=3, boundscheck=False, wraparound=False, cdivision=True
"""What this build of the hot loops holds, and what the CPU runs: the facts ``_isa``
chooses from (src/fc_kernels.h, src/fc_cpu.h)."""
from ._hot cimport FC_BUILT, fc_cpu_runs


def built():
    """The instruction-set variants in this build, narrowest first: ``('baseline',
    'avx2', 'avx512')`` on x86-64, ``('baseline',)`` elsewhere, ``('native',)`` when
    built with ``FASTCONV_NATIVE=1``."""
    return tuple((<bytes>FC_BUILT).decode("ascii").split(","))


def runs(name):
    """Whether this CPU (and OS) runs variant ``name``."""
    return bool(fc_cpu_runs(name.encode("ascii")))
