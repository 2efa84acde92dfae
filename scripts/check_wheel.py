#!/usr/bin/env python3
"""Check the files in cymqtt wheels (and sdists) against the checkout: a missing or stray file
fails here, before anything is installed.

    python scripts/check_wheel.py wheels/*.whl wheels/*.tar.gz
    python scripts/check_wheel.py --installed      # the cymqtt this interpreter has installed

A wheel must hold every Python module of src/cymqtt, one compiled extension per .pyx (for the
wheel's own Python), a .pyi stub for each _fast module, cymqtt/py.typed, the dashboard's files
(cymqtt/http/static/) and the LICENSE, and no .c/.pyx/.pxd/.pxi, nor Cython's annotated .html
beside them. An sdist must hold every file `git ls-files` lists under src/, tests/
(node_modules aside) plus LICENSE, MANIFEST.in, pyproject.toml and setup.py, and no generated C.
Pure stdlib, so it runs in any venv (cibuildwheel's, CI's fresh one).
"""
from __future__ import annotations

import fnmatch
import os
import re
import subprocess
import sys
import tarfile
import zipfile

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
FAST_STUBS = ("buffer", "codec", "consts", "inflight", "topics")
SOURCE_ONLY = ("*.c", "*.cpp", "*.pyx", "*.pxd", "*.pxi", "*.o")
# Where Cython writes its annotated .html (beside the .pyx); the dashboard's .html is shipped.
CYTHON_DIRS = ("cymqtt/_fast/", "cymqtt/net/", "cymqtt/bench/")
STATIC = "src/cymqtt/http/static/"


def project_files(*tops: str) -> list[str]:
    """Files of the checkout under `tops`: git's list when there is one (untracked build outputs
    left aside), else a walk."""
    try:
        out = subprocess.run(["git", "-C", ROOT, "ls-files", "--", *tops], capture_output=True,
                             text=True, check=True).stdout.split()
        if out:
            return [f for f in out if os.path.exists(os.path.join(ROOT, f))]
    except (OSError, subprocess.CalledProcessError):
        pass
    out = []
    for top in tops:
        for dirpath, dirnames, filenames in os.walk(os.path.join(ROOT, top)):
            dirnames[:] = [d for d in dirnames if d not in ("__pycache__", "node_modules")]
            out += [os.path.relpath(os.path.join(dirpath, f), ROOT).replace(os.sep, "/")
                    for f in filenames if not f.endswith((".c", ".so", ".pyd", ".html", ".pyc"))]
    return out


def check_wheel(path: str) -> list[str]:
    names = set(zipfile.ZipFile(path).namelist())
    m = re.match(r"cymqtt-([^-]+)-(cp\d+)-(cp\d+t?|abi3)-(.+)\.whl$", os.path.basename(path))
    if not m:
        return [f"not a CPython-specific cymqtt wheel name: {os.path.basename(path)}"]
    version, pytag, _, plat = m.groups()
    return check_names(names, version, pytag, plat.startswith("win"))


def check_installed() -> list[str]:
    """The same checks on the cymqtt distribution installed in this interpreter (its RECORD)."""
    from importlib.metadata import distribution
    dist = distribution("cymqtt")
    names = {str(f).replace(os.sep, "/") for f in dist.files or ()}
    pytag = f"cp{sys.version_info[0]}{sys.version_info[1]}"
    return check_names(names, dist.version, pytag, sys.platform == "win32")


def check_names(names: set[str], version: str, pytag: str, windows: bool) -> list[str]:
    errors = []
    py = [f for f in project_files("src/cymqtt") if f.endswith(".py")]
    want = {f[len("src/"):] for f in py}
    want |= {f"cymqtt/_fast/{m}.pyi" for m in FAST_STUBS} | {"cymqtt/py.typed"}
    want.add("cymqtt/net/_stream.pyi")
    want |= {f[len("src/"):] for f in project_files(STATIC)}
    want.add(f"cymqtt-{version}.dist-info/licenses/LICENSE")
    for f in sorted(want - names):
        errors.append(f"missing {f}")
    # cpython-311-x86_64-linux-gnu.so, cpython-311-darwin.so, cp311-win_amd64.pyd
    ext, abi = (".pyd", pytag) if windows else (".so", "cpython-" + pytag[2:])
    files = project_files("src/cymqtt")
    # Every .pyx, and every .py with a .pxd beside it (the shell's compiled modules).
    compiled = [f for f in files if f.endswith(".pyx")] + [
        f[:-len(".pxd")] + ".py" for f in files
        if f.endswith(".pxd") and f[:-len(".pxd")] + ".py" in files]
    for pyx in compiled:
        mod = pyx[len("src/"):-len(os.path.splitext(pyx)[1])]
        built = [n for n in names if n.startswith(mod + ".") and n.endswith(ext)]
        if len(built) != 1:
            errors.append(f"missing compiled module {mod}.*{ext} (from {pyx})")
        elif abi not in built[0]:
            errors.append(f"{built[0]}: compiled for another Python than {pytag}")
    for n in sorted(names):
        if any(fnmatch.fnmatch(n, pat) for pat in SOURCE_ONLY) or (
                n.endswith(".html") and n.startswith(CYTHON_DIRS)):
            errors.append(f"source file in the wheel: {n}")
    return errors


def check_sdist(path: str) -> list[str]:
    with tarfile.open(path) as tf:
        top, names = None, set()
        for n in tf.getnames():
            top, _, rest = n.partition("/")
            names.add(rest)
    want = {f for f in project_files("src", "tests") if not f.startswith("tests/js/node_modules/")}
    want |= {"LICENSE", "MANIFEST.in", "pyproject.toml", "setup.py", "README.md", "PKG-INFO"}
    errors = [f"missing {f}" for f in sorted(want - names)]
    errors += [f"generated file in the sdist: {n}" for n in sorted(names)
               if fnmatch.fnmatch(n, "*.c") or n.endswith((".so", ".pyd", ".o"))
               or (n.endswith(".html") and n.startswith(tuple("src/" + d for d in CYTHON_DIRS)))]
    return errors


def main(paths: list[str]) -> int:
    if not paths:
        sys.exit("usage: check_wheel.py WHEEL_OR_SDIST... | --installed")
    bad = 0
    for p in paths:
        if p == "--installed":
            errors = check_installed()
            p = f"cymqtt installed in {sys.prefix}/"
        else:
            errors = check_wheel(p) if p.endswith(".whl") else check_sdist(p)
        print(f"{os.path.basename(p) or p}: {'ok' if not errors else f'{len(errors)} problem(s)'}")
        for e in errors:
            print(f"  {e}")
        bad += bool(errors)
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
