#!/usr/bin/env bash
# Install one cymqtt wheel into a fresh venv with no compiler reachable and test it there.
#
#   scripts/test-installed-wheel.sh PYTHON WHEEL [scripts/test_wheel.py args, e.g. --full]
#
# PYTHON makes the venv (the wheel's own CPython). PATH then holds only the venv and links to
# the system's tools minus compilers and linkers (cc, gcc, g++, clang, ld, as), and pip may take
# wheels only (--only-binary=:all:): uvloop and the test tools come from PyPI as wheels, and
# nothing can be compiled. Then scripts/test_wheel.py runs from outside the checkout (the _fast
# tests, or the whole suite with --full; the installed `cymqtt` serving a
# mosquitto_pub/mosquitto_sub round trip) and mypy's stubtest checks the .pyi stubs against the
# installed compiled modules.
set -euo pipefail
[ $# -ge 2 ] || { echo "usage: $0 PYTHON WHEEL [test_wheel.py args]" >&2; exit 2; }
python=$1; whl=$(realpath "$2"); shift 2
cd "$(dirname "$0")/.."
tag=$(basename "$whl" | cut -d- -f3)
out=build/installed-$tag
rm -rf "$out" && mkdir -p "$out"

# A PATH with every tool of /usr/local/bin, /usr/bin and /bin but the compilers and linkers.
nocc="$out/bin-nocc"
mkdir -p "$nocc"
for dir in /usr/local/bin /usr/bin /bin; do
  for tool in "$dir"/*; do
    name=$(basename "$tool")
    case "$name" in
      cc|c++|cpp|gcc|g++|gcc-*|g++-*|cpp-*|*-gcc|*-gcc-*|*-g++|*-g++-*|clang*|tcc|ld|ld.*|*-ld|*-ld.*|as|*-as|zig) continue ;;
    esac
    [ -e "$nocc/$name" ] || ln -s "$tool" "$nocc/$name"
  done
done
"$python" -m venv "$out/venv"
venv=$(cd "$out/venv" && pwd)
export PATH="$venv/bin:$(cd "$nocc" && pwd)"
unset PYTHONPATH VIRTUAL_ENV
for c in cc gcc c++ g++ clang; do
  if command -v "$c" >/dev/null; then echo "test-installed-wheel: $c still on PATH" >&2; exit 1; fi
done
"$venv/bin/python" -m pip install -q --disable-pip-version-check --only-binary=:all: \
  "$whl" pytest pytest-timeout pytest-xdist hypothesis paho-mqtt trustme mypy >"$out/install.log" 2>&1 \
  || { cat "$out/install.log"; exit 1; }
echo "test-installed-wheel: $(basename "$whl") in $venv ($("$venv/bin/python" -V)), no compiler on PATH"
"$venv/bin/python" scripts/test_wheel.py --project . "$@"
(cd "$out" && "$venv/bin/python" -m mypy.stubtest --allowlist ../../scripts/stubtest-allowlist.txt \
   cymqtt._fast.buffer cymqtt._fast.codec cymqtt._fast.consts cymqtt._fast.inflight \
   cymqtt._fast.topics cymqtt.net._stream)
