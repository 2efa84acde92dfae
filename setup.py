"""Build the compiled core (src/cymqtt/_fast/*.pyx) and the load generator's loops
(src/cymqtt/bench/*.pyx).

Every ``.pyx`` in those folders becomes its own extension module (``cymqtt._fast.<name>``,
``cymqtt.bench.<name>``); modules call each other through their ``.pxd``.

The shell's hot modules are compiled too, from their Python source: every ``.py`` under
src/cymqtt with a ``.pxd`` beside it (message, session, router, context, metrics,
protocol/client, protocol/publish, store/journal). The ``.pxd`` makes their classes extension
types with C fields and their per-message methods ``cpdef``; the ``.py`` stays the source of
truth, is shipped, and runs unchanged as plain Python where nothing was compiled.

Three build modes (CYMQTT_BUILD=dev|release|debug):
  dev      what ``make build`` compiles in place: -O2, C next to the .pyx
  release  what a wheel ships (the default for ``bdist_wheel``: pip install, python -m build,
           cibuildwheel): -O3, no debug info, stripped at link time (Linux), extra Cython
           speed directives; its C and objects live in build/release/, apart from dev's
  debug    CYMQTT_DEBUG=1: line tracing, annotated HTML, ``CYMQTT_DEBUG`` macro, -O0 -g;
           C and objects in build/debug/
Environment:
  CYMQTT_ONLY=a,b  build only those modules (by file name: codec,_wire)
  CYMQTT_NO_EXTENSIONS=1  build none (make's editable install; make build compiles in place)
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

HERE = os.path.dirname(os.path.abspath(__file__))
MSVC = sys.platform == "win32"

if os.environ.get("CYMQTT_DEBUG") == "1":
    MODE = "debug"
else:
    MODE = os.environ.get("CYMQTT_BUILD") or ("release" if "bdist_wheel" in sys.argv else "dev")
if MODE not in ("dev", "release", "debug"):
    sys.exit(f"cymqtt: CYMQTT_BUILD={MODE!r}; use dev, release or debug")

macros = []
link_args = []
cflags = ["/O2"] if MSVC else ["-O2", "-Wall", "-Wno-unused-function", "-Wno-unreachable-code"]
directives = {
    "language_level": 3,
    "boundscheck": False,
    "wraparound": False,
    "cdivision": True,
    "embedsignature": True,
}
if MODE == "release":
    if not MSVC:
        # -O3 over -O2; -g0 overrides the interpreter's own -g (debug info was 3/4 of the .so).
        cflags = ["-O3", "-g0", "-Wall", "-Wno-unused-function", "-Wno-unreachable-code"]
        if sys.platform.startswith("linux"):
            link_args = ["-s"]
    directives.update({
        "initializedcheck": False,   # no memoryview "is it initialised" test per access
        "linetrace": False,
        "profile": False,
        "emit_code_comments": False,  # smaller C, same machine code
    })
elif MODE == "debug":
    macros += [("CYMQTT_DEBUG", "1"), ("CYTHON_TRACE", "1"), ("CYTHON_TRACE_NOGIL", "1")]
    cflags = ["/Od", "/Zi"] if MSVC else ["-O0", "-g", "-Wall"]
    directives["linetrace"] = True

# The packages whose .pyx files are compiled: the broker's core, its own transport (net/_stream),
# and cymqtt-bench's hot loops.
# Paths are relative to this file, which is where pip and build run it from (a checkout or an
# unpacked sdist: MANIFEST.in puts the .pyx, .pxd and .pxi files there).
PACKAGES = ("_fast", "net", "bench")
os.chdir(HERE)
sources = sorted(src for pkg in PACKAGES
                 for src in glob.glob(os.path.join("src", "cymqtt", pkg, "*.pyx")))
if not sources:
    sys.exit("cymqtt: no .pyx sources under src/cymqtt/{_fast,net,bench}: an incomplete checkout or sdist")
# CYMQTT_ONLY=codec,topics builds just those modules (handy while several people edit _fast/).
only = [m for m in os.environ.get("CYMQTT_ONLY", "").split(",") if m]
if only:
    sources = [s for s in sources if os.path.splitext(os.path.basename(s))[0] in only]
# The shell's hot modules, compiled from their Python source: each .py with a .pxd beside it
# (the .pxd makes its classes extension types with C fields and its hot methods cpdef). They
# stay plain Python to read, and run as Python where nothing was compiled.
shell = sorted(os.path.splitext(pxd)[0] + ".py"
               for pxd in glob.glob(os.path.join("src", "cymqtt", "**", "*.pxd"), recursive=True)
               if os.path.exists(os.path.splitext(pxd)[0] + ".py"))
if only:
    shell = [s for s in shell if os.path.splitext(os.path.basename(s))[0] in only]


def _extension(src):
    return Extension(
        ".".join(os.path.splitext(os.path.relpath(src, "src"))[0].split(os.sep)),
        [src],
        define_macros=macros,
        extra_compile_args=cflags,
        extra_link_args=link_args,
    )


extensions = [_extension(src) for src in sources]
shell_extensions = [_extension(src) for src in shell]

# Release and debug builds keep their generated C and objects in build/<mode>/, so switching
# modes never reuses a .c or .so cythonized with other directives (cythonize and build_ext only
# compare timestamps), and a wheel rebuilt for CI reuses its own objects.
# Extensions compile in parallel, one per core, also where nobody passes -j (pip wheel,
# python -m build, cibuildwheel): the shell's modules made a serial release build twice as long.
options = {"build_ext": {"parallel": os.cpu_count() or 1}}
cython_dir = None
if MODE != "dev":
    cython_dir = os.path.join("build", MODE, "cython")
    options["build"] = {"build_base": os.path.join("build", MODE)}

# Annotations in the shell's modules are for readers and mypy; their C types come from the
# .pxd files only, so compiling changes no behaviour.
shell_directives = dict(directives, annotation_typing=False, boundscheck=True,
                        wraparound=True, cdivision=False)


# Cython translates the modules in parallel too where processes fork (Linux); elsewhere its
# process pool would re-run this file in each worker.
NTHREADS = (os.cpu_count() or 1) if sys.platform.startswith("linux") else 0


def _cythonize(exts, compiler_directives):
    return cythonize(exts, compiler_directives=compiler_directives, annotate=MODE == "debug",
                     include_path=["src"], build_dir=cython_dir, quiet=True, nthreads=NTHREADS)


# CYMQTT_NO_EXTENSIONS=1 compiles nothing: make's editable install (pip install -e), which
# `make build` follows by compiling every module in place (else both would compile it all).
if os.environ.get("CYMQTT_NO_EXTENSIONS") == "1":
    ext_modules = []
else:
    ext_modules = _cythonize(extensions, directives) + _cythonize(shell_extensions,
                                                                  shell_directives)
setup(ext_modules=ext_modules, options=options)
