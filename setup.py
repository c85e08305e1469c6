"""Build script. Metadata lives in pyproject.toml; this file declares the compiled
extensions: the Cython backend, ``fastconv/kernels/cython/`` (docs/cython.md).

- The Cython modules (``_cpu``, ``im2col``, ``pool``, ``winograd``, ``direct``,
  ``layout``) are compiled with ``-O3`` and OpenMP when the compiler has it (tried on a
  small program first, as scikit-learn does; without it the ``prange`` loops run
  serially, with a warning).
- Their hot loops (``src/fc_impl.h``) are compiled once per instruction set, each into
  its own object linked into the modules: on x86-64 baseline (the compiler's
  defaults), AVX2 + FMA and AVX-512 (F, BW, DQ, VL, 512-bit vectors preferred); one
  portable build elsewhere. The modules choose among them at import by what the CPU
  runs (``_isa.py``). A variant the compiler cannot build is left out, with a warning.
- The compiled modules are also copied beside their sources, as ``build_ext
  --inplace`` does, so the tests, run from the repository root, find them.

Build-time settings (environment variables):

``FASTCONV_NATIVE=1``
    build for this machine alone: one variant, and the modules too, with
    ``-march=native`` (the result may not run on another CPU).
``FASTCONV_CYTHON_BOUNDSCHECK=1``
    compile the Cython modules with ``boundscheck=True`` (a checked build for tests:
    an index out of range raises IndexError instead of reading past the array).
"""
import os
import platform
import shutil
import sys
import tempfile
import textwrap
import warnings
from concurrent.futures import ThreadPoolExecutor

from setuptools import Extension, setup
from setuptools.command.build_ext import build_ext

PKG = os.path.join("fastconv", "kernels", "cython")
SRC = os.path.join(PKG, "src")
MODULES = ("_cpu", "im2col", "pool", "winograd", "direct", "layout")

#: compiler flags of each instruction-set variant of the hot loops (GCC and Clang)
ISA_FLAGS = {
    "baseline": [],
    "avx2": ["-mavx2", "-mfma"],
    "avx512": ["-mavx512f", "-mavx512bw", "-mavx512dq", "-mavx512vl",
               "-mprefer-vector-width=512"],
    "native": ["-march=native"],
}

NATIVE = os.environ.get("FASTCONV_NATIVE", "") == "1"
CHECKED = os.environ.get("FASTCONV_CYTHON_BOUNDSCHECK", "") == "1"


def _x86_64():
    return platform.machine().lower() in ("x86_64", "amd64")


def _warn(message):
    warnings.warn(message, stacklevel=2)
    print(f"fastconv build: WARNING: {message}", file=sys.stderr)


class BuildExt(build_ext):
    """build_ext that probes OpenMP and the instruction sets, compiles the per-ISA
    objects once, and links them into every module that takes the table."""

    def run(self):
        super().run()
        if not self.inplace:
            # also beside their sources (as --inplace does): tests run from the
            # repository root import the source tree (``python -m pytest`` puts the
            # current directory first on sys.path), which then has them too
            self.copy_extensions_to_source()

    def finalize_options(self):
        super().finalize_options()
        if self.parallel is None:                   # the modules compile side by side
            self.parallel = min(4, os.cpu_count() or 1)

    def _try_compile(self, code, flags, link=False):
        """Whether ``code`` compiles (and links) with ``flags``."""
        tmp = tempfile.mkdtemp(prefix="fastconv-probe-")
        try:
            src = os.path.join(tmp, "probe.c")
            with open(src, "w") as f:
                f.write(textwrap.dedent(code))
            objects = self.compiler.compile([src], output_dir=tmp, extra_postargs=flags)
            if link:
                self.compiler.link_executable(objects, "probe", output_dir=tmp,
                                              extra_postargs=flags)
            return True
        except Exception:                           # CompileError, LinkError
            return False
        finally:
            shutil.rmtree(tmp, ignore_errors=True)

    def _openmp_flags(self):
        flags = ["/openmp"] if self.compiler.compiler_type == "msvc" else ["-fopenmp"]
        ok = self._try_compile("""
            #include <omp.h>
            int main(void) {
                int n = 0;
                #pragma omp parallel
                n = omp_get_num_threads();
                return n > 0 ? 0 : 1;
            }
            """, flags, link=True)
        if not ok:
            _warn("the C compiler has no OpenMP (-fopenmp did not compile and link a test "
                  "program): the Cython kernels will run on one thread")
            return []
        return flags

    def _variants(self):
        """The instruction-set variants to build, narrowest first."""
        unix = self.compiler.compiler_type != "msvc"
        if NATIVE:
            return ["native"] if unix else ["baseline"]
        if not (unix and _x86_64()):
            return ["baseline"]
        built = ["baseline"]
        for name in ("avx2", "avx512"):
            if self._try_compile("int main(void) { return 0; }\n", ISA_FLAGS[name]):
                built.append(name)
            else:
                _warn(f"the C compiler does not take {' '.join(ISA_FLAGS[name])}: the "
                      f"{name} variant of the hot loops is not built")
        return built

    def build_extensions(self):
        unix = self.compiler.compiler_type != "msvc"
        openmp = self._openmp_flags()
        variants = self._variants()
        opt = ["-O3", "-g0"] if unix else ["/O2"]
        if NATIVE and unix:
            opt.append("-march=native")
        macros = [("FC_NATIVE", "1")] if variants == ["native"] else [
            (f"FC_HAVE_{name.upper()}", "1") for name in variants if name != "baseline"]

        def compile_variant(name):
            flags = ISA_FLAGS[name] if unix else []
            if unix:
                flags = flags + ["-O3", "-g0", "-fvisibility=hidden"]
            return self.compiler.compile(
                [os.path.join(SRC, f"isa_{name}.c")],
                output_dir=os.path.join(self.build_temp, "fastconv-isa"),
                macros=macros, include_dirs=[SRC], extra_postargs=flags)

        # the variants compile side by side (each is one large object: most of the build)
        with ThreadPoolExecutor(self.parallel or 1) as pool:
            objects = [o for objs in pool.map(compile_variant, variants) for o in objs]
        print(f"fastconv build: hot loops for {', '.join(variants)}; OpenMP "
              f"{'on' if openmp else 'off'}; boundscheck {'on' if CHECKED else 'off'}",
              file=sys.stderr)
        for ext in self.extensions:
            ext.define_macros = list(ext.define_macros or []) + macros
            ext.extra_compile_args = list(ext.extra_compile_args or []) + opt + openmp
            ext.extra_link_args = list(ext.extra_link_args or []) + openmp
            if not ext.name.endswith(("._cpu", ".layout")):     # no hot loops
                ext.extra_objects = list(ext.extra_objects or []) + objects
        super().build_extensions()


def _checked_sources():
    """A copy of the Cython sources with ``boundscheck=True`` in each module's directive
    line (the line a module's own directives are read from, which
    ``compiler_directives`` cannot override), under build/checked/."""
    root = os.path.join("build", "checked")
    dst = os.path.join(root, PKG)
    shutil.rmtree(root, ignore_errors=True)
    shutil.copytree(PKG, dst, ignore=shutil.ignore_patterns("*.c", "*.so", "*.pyd",
                                                            "__pycache__"))
    for d in (os.path.join(root, "fastconv"), os.path.join(root, "fastconv", "kernels")):
        open(os.path.join(d, "__init__.py"), "a").close()
    for name in MODULES:
        path = os.path.join(dst, f"{name}.pyx")
        with open(path) as f:
            text = f.read()
        with open(path, "w") as f:
            f.write(text.replace("boundscheck=False", "boundscheck=True", 1))
    return dst


def _extensions():
    from Cython.Build import cythonize

    base = _checked_sources() if CHECKED else PKG
    exts = [Extension(f"fastconv.kernels.cython.{name}", [os.path.join(base, f"{name}.pyx")],
                      include_dirs=[os.path.abspath(SRC)],
                      depends=[os.path.join(SRC, f) for f in os.listdir(SRC)])
            for name in MODULES]
    return cythonize(exts, build_dir=os.path.join("build", "cython"), quiet=True,
                     compiler_directives={"language_level": 3})


setup(ext_modules=_extensions(), cmdclass={"build_ext": BuildExt})
