"""Build the compiled core (src/cymqtt/_fast/*.pyx) and the load generator's loops
(src/cymqtt/bench/*.pyx).

Every ``.pyx`` in those folders becomes its own extension module (``cymqtt._fast.<name>``,
``cymqtt.bench.<name>``); modules call each other through their ``.pxd``.

Environment:
  CYMQTT_DEBUG=1   line tracing, annotated HTML, ``CYMQTT_DEBUG`` macro, -O0 -g
  CYMQTT_ONLY=a,b  build only those modules (by file name: codec,_wire)
"""
import glob
import os
import sys

from setuptools import Extension, setup

CYTHON_MIN = (3, 0)

try:
    import Cython
    from Cython.Build import cythonize
except ImportError:
    sys.exit("cymqtt: building needs Cython>=3.0,<4: pip install 'Cython>=3.0,<4'")

if tuple(int(p) for p in Cython.__version__.split(".")[:2]) < CYTHON_MIN:
    sys.exit(f"cymqtt: Cython {Cython.__version__} is too old; need >=3.0,<4")

DEBUG = os.environ.get("CYMQTT_DEBUG") == "1"

macros = []
cflags = ["-O2", "-Wall", "-Wno-unused-function", "-Wno-unreachable-code"]
directives = {
    "language_level": 3,
    "boundscheck": False,
    "wraparound": False,
    "cdivision": True,
    "embedsignature": True,
}
if DEBUG:
    macros += [("CYMQTT_DEBUG", "1"), ("CYTHON_TRACE", "1"), ("CYTHON_TRACE_NOGIL", "1")]
    cflags = ["-O0", "-g", "-Wall"]
    directives["linetrace"] = True

# The packages whose .pyx files are compiled: the broker's core, and cymqtt-bench's hot loops.
PACKAGES = ("_fast", "bench")
sources = sorted(src for pkg in PACKAGES
                 for src in glob.glob(os.path.join("src", "cymqtt", pkg, "*.pyx")))
# CYMQTT_ONLY=codec,topics builds just those modules (handy while several people edit _fast/).
only = [m for m in os.environ.get("CYMQTT_ONLY", "").split(",") if m]
if only:
    sources = [s for s in sources if os.path.splitext(os.path.basename(s))[0] in only]
extensions = [
    Extension(
        ".".join(["cymqtt", os.path.basename(os.path.dirname(src)),
                  os.path.splitext(os.path.basename(src))[0]]),
        [src],
        define_macros=macros,
        extra_compile_args=cflags,
    )
    for src in sources
]

setup(
    ext_modules=cythonize(
        extensions,
        compiler_directives=directives,
        annotate=DEBUG,
        include_path=["src"],
    ),
)
