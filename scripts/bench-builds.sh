#!/usr/bin/env bash
# bench-builds.sh: what the release build (the wheel) gains over the development build
# (`make build`), on the same interpreter and the same Python sources.
#
#   dev      .venv: the in-place `make build` (-O2, with the interpreter's -g)
#   release  the wheel of `make testinstalled`, installed in build/installed-cp3XX/venv
#            (-O3 -g0, stripped, initializedcheck off)
#
# Runs benchmarks/bench_broker_path.py (the per-message broker path) and bench_codec.py (the
# compiled codec alone) ROUNDS times (default 2), alternating the builds so that load from
# other users of the machine falls on both; each build runs from a copy of benchmarks/ and
# tests/ outside the checkout, so each imports only its own cymqtt. Prints, per benchmark,
# the fastest timed round of each benchmark over all runs (the figure other load moves least),
# and release/dev.
set -euo pipefail
cd "$(dirname "$0")/.."
rounds=${ROUNDS:-2}
dev=.venv/bin/python
tag=cp$(.venv/bin/python -c 'import sys; print("%d%d" % sys.version_info[:2])')
rel=build/installed-$tag/venv/bin/python
[ -x "$rel" ] || { echo "bench-builds: run make testinstalled first (no $rel)" >&2; exit 1; }
"$rel" -m pip install -q --disable-pip-version-check --only-binary=:all: pytest-benchmark \
  >/dev/null 2>&1
out=build/bench-builds
rm -rf "$out" && mkdir -p "$out"
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
cp -r benchmarks tests "$work/"
for r in $(seq "$rounds"); do
  for b in dev release; do
    py=$dev; [ $b = release ] && py=$rel
    py="$(cd "$(dirname "$py")" && pwd)/$(basename "$py")"   # absolute, venv kept (no realpath)
    (cd "$work" && env -u PYTHONPATH "$py" -m pytest -q -p no:cacheprovider --rootdir "$work" \
       -o python_files='bench_*.py' benchmarks/bench_broker_path.py benchmarks/bench_codec.py \
       --benchmark-only --benchmark-json="$OLDPWD/$out/$b-$r.json" >"$OLDPWD/$out/$b-$r.log" 2>&1) \
       || { cat "$out/$b-$r.log"; exit 1; }
    "$py" -c 'import cymqtt, sys; print(f"bench-builds: round '"$r"' '"$b"': cymqtt from {cymqtt.__file__}")' 
  done
done
.venv/bin/python - "$out" "$rounds" <<'PY'
import json, sys
out, rounds = sys.argv[1], int(sys.argv[2])
best = {}
for b in ("dev", "release"):
    for r in range(1, rounds + 1):
        for bench in json.load(open(f"{out}/{b}-{r}.json"))["benchmarks"]:
            key = (bench["fullname"].split("::")[-1], b)
            # the fastest timed round of all runs: the figure least moved by other load
            best[key] = min(best.get(key, 1e9), bench["stats"]["min"])
names = sorted({k[0] for k in best})
print(f"{'benchmark (min of all rounds)':<52} {'dev (ms)':>10} {'release (ms)':>13} {'release/dev':>12}")
for n in names:
    d, r = best[(n, "dev")], best[(n, "release")]
    print(f"{n:<52} {d * 1e3:>10.3f} {r * 1e3:>13.3f} {r / d:>12.3f}")
PY
