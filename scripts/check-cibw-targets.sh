#!/usr/bin/env bash
# check-cibw-targets.sh: cibuildwheel (the version .github/workflows/wheels.yml pins, in a tool
# venv at build/tools) must read pyproject.toml's [tool.cibuildwheel] as the 28 targets the
# README promises: CPython 3.11-3.14 x {linux x86_64, aarch64} x {manylinux, musllinux} = 16,
# x macOS {x86_64, arm64} = 8, x Windows AMD64 = 4. Nothing is built; no Docker needed.
set -euo pipefail
cd "$(dirname "$0")/.."
version=$(sed -n 's|.*uses: pypa/cibuildwheel@v\([0-9.]*\).*|\1|p' .github/workflows/wheels.yml)
tools=build/tools
PY=${PY:-.venv/bin/python}
have=$("$tools/bin/python" -m pip show cibuildwheel 2>/dev/null | sed -n 's/^Version: //p' || true)
if [ "$have" != "$version" ]; then
  rm -rf "$tools"
  "$PY" -m venv "$tools"
  "$tools/bin/python" -m pip install -q --disable-pip-version-check "cibuildwheel==$version" \
    >build/tools.log 2>&1 || { cat build/tools.log; exit 1; }
fi
status=0
for spec in linux:16 macos:8 windows:4; do
  platform=${spec%%:*}; want=${spec#*:}
  ids=$("$tools/bin/cibuildwheel" --print-build-identifiers --platform "$platform")
  got=$(echo "$ids" | grep -c .)
  for py in cp311 cp312 cp313 cp314; do
    # (a here-string, not `echo | grep -q`: grep -q stops reading at the first match, and with
    # pipefail the echo's SIGPIPE would fail the check now and then)
    grep -q "^$py-" <<<"$ids" || { echo "check-cibw-targets: no $py on $platform" >&2; status=1; }
  done
  echo "check-cibw-targets: cibuildwheel $version --platform $platform: $got targets (want $want): $(echo $ids)"
  [ "$got" = "$want" ] || status=1
done
exit $status
