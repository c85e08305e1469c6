"""What this machine is: its vector registers and caches, read once.

The kernels' register blocks follow :func:`vector_registers` (``fastconv.kernels.layouts``);
benchmark records carry both (``fastconv.bench.machine_info``). Where the operating
system does not give a cache size (no ``/sys``, another OS), the sizes of the CPU most
rules were measured on stand in: :data:`REFERENCE`.
"""
import functools
import os

#: the cache sizes of the CPU most rules were first measured on (AMD Zen 5: 48 KiB L1d
#: and 1 MiB L2 per core, 32 MiB L3 per 8-core complex), used where a size is unknown
REFERENCE = {"l1d": 48 * 2**10, "l2": 2**20, "l3": 32 * 2**20}

_SYSFS = "/sys/devices/system/cpu/cpu0/cache"


def _size(text):
    """``'512K'`` -> 524288 (sysfs's cache sizes)."""
    text = text.strip().upper()
    scale = {"K": 2**10, "M": 2**20, "G": 2**30}.get(text[-1:], 1)
    return int(text.rstrip("KMG")) * scale


@functools.lru_cache(maxsize=None)
def caches():
    """``{"l1d", "l2", "l3"}``: bytes of each data cache level that one core sees (the
    L3 of its complex); :data:`REFERENCE`'s size for a level the OS does not report."""
    found = {}
    try:
        for entry in sorted(os.listdir(_SYSFS)):
            path = os.path.join(_SYSFS, entry)
            if not entry.startswith("index"):
                continue
            with open(os.path.join(path, "level")) as f:
                level = int(f.read())
            with open(os.path.join(path, "type")) as f:
                kind = f.read().strip()
            with open(os.path.join(path, "size")) as f:
                size = _size(f.read())
            if kind == "Instruction":
                continue
            name = "l1d" if level == 1 else f"l{level}"
            if name in REFERENCE and size > 0:
                found[name] = size
    except (OSError, ValueError):
        pass
    return {name: found.get(name, ref) for name, ref in REFERENCE.items()}


@functools.lru_cache(maxsize=None)
def vector_registers():
    """Vector registers the kernels can keep values in: 32 with AVX-512 (zmm0-31), 16
    otherwise (ymm0-15 with AVX2, xmm0-15 before it; NEON has 32, but no kernel's blocks
    are tuned there). ``FASTCONV_VECTOR_REGISTERS=16|32`` overrides it, e.g. to check the
    AVX2 blocks on an AVX-512 CPU."""
    forced = os.environ.get("FASTCONV_VECTOR_REGISTERS")
    if forced:
        if forced not in ("16", "32"):
            raise ValueError(f"FASTCONV_VECTOR_REGISTERS={forced!r}: expected 16 or 32")
        return int(forced)
    return 32 if _cpu_features().get("AVX512F") else 16


@functools.lru_cache(maxsize=None)
def float32_lanes():
    """float32 lanes of the widest vector the CPU has: 16 with AVX-512, 8 with AVX2 (4
    before it). What the FMA probe (``fastconv.bench.fma_peak``) fills each chain with,
    so its accumulators fit :func:`vector_registers`."""
    feats = _cpu_features()
    return 16 if feats.get("AVX512F") else 8 if feats.get("AVX") else 4


def _cpu_features():
    """NumPy's run-time CPU feature table: ``{"AVX2": True, ...}``."""
    try:
        from numpy._core._multiarray_umath import __cpu_features__ as feats
    except ImportError:                                          # NumPy < 2
        from numpy.core._multiarray_umath import __cpu_features__ as feats
    return feats
