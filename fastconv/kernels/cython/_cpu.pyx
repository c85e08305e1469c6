# cython: language_level=3, boundscheck=False, wraparound=False, cdivision=True
"""What this build of the hot loops holds, and what the CPU runs: the facts ``_isa``
chooses from (src/fc_kernels.h, src/fc_cpu.h)."""
from ._hot cimport FC_BUILT, fc_cpu_runs

import numpy as np


def built():
    """The instruction-set variants in this build, narrowest first: ``('baseline',
    'avx2', 'avx512')`` on x86-64, ``('baseline',)`` elsewhere, ``('native',)`` when
    built with ``FASTCONV_NATIVE=1``."""
    return tuple((<bytes>FC_BUILT).decode("ascii").split(","))


def runs(name):
    """Whether this CPU (and OS) runs variant ``name``."""
    return bool(fc_cpu_runs(name.encode("ascii")))


def boundscheck_on():
    """Whether this build was compiled with ``boundscheck=True`` (setup.py's checked
    build, ``FASTCONV_CYTHON_BOUNDSCHECK=1``, which turns it on in every module's
    directive line at once): indexes one past the end of a one-element view of a
    two-element array, which raises IndexError only when checks are on."""
    cdef double[::1] view = np.zeros(2)[:1]
    cdef Py_ssize_t i = 1
    cdef double value
    try:
        value = view[i]
    except IndexError:
        return True
    return value != value        # False (0.0); the read keeps the index from being elided
