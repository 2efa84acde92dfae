# cymqtt developer commands. Each target creates .venv when missing.
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.cymqtt-deps

.PHONY: run test testinstalled wheel bench microbench build venv tools clean debug

run: build
	$(PY) -m cymqtt $(ARGS)

# The whole suite on the asyncio loop, then the broker tests again on uvloop (what `cymqtt` runs):
# the tests whose brokers run in the test process on the loop --loop picks (the others are
# marked loop_independent). TEST_JOBS pytest-xdist workers, each taking whole files
# (TEST_JOBS=0: one process).
TEST_JOBS ?= 2
PYTEST := $(PY) -m pytest -q -p no:cacheprovider -n $(TEST_JOBS) --dist loadfile
test: build tools
	$(PYTEST) $(ARGS)
	$(PYTEST) --loop=uvloop --ignore=tests/fast --ignore=tests/protocol -m "not loop_independent" $(ARGS)
	$(MAKE) testinstalled

# The release wheel for the venv's Python, installed in a fresh venv with no compiler on PATH:
# its file list, the _fast tests and a mosquitto_pub/sub round trip against the installed
# `cymqtt` (TESTINSTALLED_FULL=1: the whole suite). About a minute; scripts/testinstalled.sh.
testinstalled: $(STAMP) tools
	PY=$(PY) ./scripts/testinstalled.sh

# The sdist and one manylinux wheel per CPython found here (3.11-3.14) into wheels/, each built
# from the sdist, repaired and stripped by auditwheel; WHEEL_TEST=1 (or =full) then installs
# and tests each one with no compiler on PATH. scripts/build-wheels.sh.
wheel: $(STAMP)
	PY=$(PY) ./scripts/build-wheels.sh

# cymqtt beside mosquitto, every scenario (about 13 minutes): writes benchmarks/results/<date>.md
# (ARGS="--quick" for 4 s scenarios), after the compiled-core microbenchmarks.
bench: microbench
	$(PY) benchmarks/compare.py $(ARGS)

microbench: build tools
	$(PY) -m pytest -q -p no:cacheprovider benchmarks/ --benchmark-only

venv: $(STAMP)

$(STAMP): requirements-dev.txt pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --disable-pip-version-check -r requirements-dev.txt
	CYMQTT_NO_EXTENSIONS=1 $(PY) -m pip install -q --disable-pip-version-check --no-build-isolation --no-deps -e .
	touch $(STAMP)

# Incremental: Cython and gcc only rerun for changed sources.
build: $(STAMP)
	$(PY) setup.py -q build_ext --inplace -j 2

debug: $(STAMP)
	CYMQTT_DEBUG=1 $(PY) setup.py -q build_ext --inplace --force -j 2

tools:
	./scripts/install-test-tools.sh

clean:
	rm -rf build wheels/*.whl wheels/*.tar.gz src/*.egg-info src/cymqtt/_fast/*.c src/cymqtt/_fast/*.so src/cymqtt/_fast/*.html \
		src/cymqtt/bench/*.c src/cymqtt/bench/*.so src/cymqtt/bench/*.html \
		src/cymqtt/net/*.c src/cymqtt/net/*.so src/cymqtt/net/*.html \
		src/cymqtt/*.c src/cymqtt/*.so src/cymqtt/protocol/*.c src/cymqtt/protocol/*.so \
		src/cymqtt/store/*.c src/cymqtt/store/*.so
