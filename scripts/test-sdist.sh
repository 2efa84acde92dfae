#!/usr/bin/env bash
# test-sdist.sh PYTHON SDIST: install the sdist into a fresh venv (compiler needed: it builds
# the extensions, with pip's build isolation, so from the declared build requirements only),
# then test the installed package from outside the checkout (scripts/test_wheel.py: file list,
# _fast tests, smoke test). The wheels job of .github/workflows/wheels.yml covers the rest.
set -euo pipefail
[ $# -ge 2 ] || { echo "usage: $0 PYTHON SDIST [test_wheel.py args]" >&2; exit 2; }
python=$1; sdist=$(realpath "$2"); shift 2
cd "$(dirname "$0")/.."
out=build/sdist-venv
rm -rf "$out"
"$python" -m venv "$out"
"$out/bin/python" -m pip install -q --disable-pip-version-check "$sdist" \
  pytest pytest-timeout hypothesis paho-mqtt trustme >build/sdist-install.log 2>&1 \
  || { cat build/sdist-install.log; exit 1; }
(cd "$out" && bin/python -c "import cymqtt, cymqtt._fast; print('test-sdist: imports', cymqtt.__file__)")
"$out/bin/python" scripts/test_wheel.py --project . "$@"
