"""Which instruction-set variant of the Cython backend's hot loops runs.

The build holds the loops once per instruction set (``_cpu.built()``: baseline x86-64,
AVX2 + FMA, AVX-512; one portable build elsewhere; ``native`` alone when built with
``FASTCONV_NATIVE=1``). At import the widest one this CPU runs is chosen, or the one
``FASTCONV_ISA`` names (``baseline``, ``avx2``, ``avx512``), for tests and comparisons;
a name the build lacks or the CPU cannot run is ignored with a warning. Read once per
process: every Cython module takes the table of :data:`ISA`.
"""
import os
import warnings

from . import _cpu

#: the variants in this build, narrowest first
BUILT = _cpu.built()
#: the variants this CPU runs
SUPPORTED = tuple(name for name in BUILT if _cpu.runs(name))


def _choose():
    best = SUPPORTED[-1]
    wanted = os.environ.get("FASTCONV_ISA", "").strip().lower()
    if not wanted:
        return best
    if wanted not in BUILT:
        warnings.warn(f"fastconv: FASTCONV_ISA={wanted!r} is not in this build "
                      f"({', '.join(BUILT)}); using {best!r}", RuntimeWarning, stacklevel=3)
        return best
    if wanted not in SUPPORTED:
        warnings.warn(f"fastconv: FASTCONV_ISA={wanted!r}: this CPU does not run it "
                      f"(it runs {', '.join(SUPPORTED)}); using {best!r}",
                      RuntimeWarning, stacklevel=3)
        return best
    return wanted


#: the variant the Cython kernels run
ISA = _choose()
