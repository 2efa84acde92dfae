#!/usr/bin/env python3
"""Test an installed cymqtt wheel from outside the checkout: cibuildwheel's test-command, and
what scripts/testinstalled.sh runs in its fresh, compiler-less venv.

    python scripts/test_wheel.py --project CHECKOUT [--full] [--require-mosquitto]

1. `cymqtt` must be imported from this interpreter's environment, never from CHECKOUT/src, and
   its installed files (RECORD) must be complete (scripts/check_wheel.py --installed).
2. The _fast unit tests (tests/fast, with tests/models and conftest.py) run from a copy of
   CHECKOUT/tests (and benchmarks/, whose sink.py a test runs) in a temporary directory, with PYTHONPATH unset: only the installed package
   is importable. --full runs the whole suite that way instead, then the broker tests again on
   uvloop (the `make test` pair), where uvloop exists.
3. scripts/smoke_test.py: the installed `cymqtt` command serves a publish/subscribe round trip.

uvloop has no Windows build: there the broker and the tests run on asyncio, and this says so.
"""
from __future__ import annotations

import argparse
import importlib.util
import os
import shutil
import subprocess
import sys
import tempfile
import tomllib

SOURCE_TESTS = ("test_layers.py", "test_readme.py", "test_source.py")
PYTEST_INI = """\
[pytest]
addopts = -ra --strict-markers -p no:cacheprovider
python_files = test_*.py
timeout = 300
markers =
"""


def pytest_ini(project: str) -> str:
    """PYTEST_INI with the checkout's markers (pyproject.toml's, the one list of them)."""
    with open(os.path.join(project, "pyproject.toml"), "rb") as f:
        markers = tomllib.load(f)["tool"]["pytest"]["ini_options"]["markers"]
    return PYTEST_INI + "".join(f"    {m}\n" for m in markers)


def run(cmd: list[str], cwd: str, env: dict[str, str]) -> None:
    print("+", " ".join(cmd), flush=True)
    rc = subprocess.call(cmd, cwd=cwd, env=env)
    if rc:
        sys.exit(f"test_wheel: {' '.join(cmd[2:4])} failed (exit {rc})")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--project", required=True, help="the checkout (cibuildwheel's {project})")
    ap.add_argument("--full", action="store_true", help="the whole suite, not just tests/fast")
    ap.add_argument("--require-mosquitto", action="store_true")
    ap.add_argument("pytest_args", nargs="*", help="extra pytest arguments")
    args = ap.parse_args()
    project = os.path.realpath(args.project)
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}

    with tempfile.TemporaryDirectory(prefix="cymqtt-installed-") as tmp:
        # 1. the installed package, not the checkout's
        where = subprocess.run(
            [sys.executable, "-c", "import cymqtt, cymqtt._fast; print(cymqtt.__file__)"],
            cwd=tmp, env=env, capture_output=True, text=True)
        if where.returncode:
            sys.exit("test_wheel: the installed cymqtt does not import:\n" + where.stderr)
        location = os.path.realpath(where.stdout.strip())
        if location.startswith(os.path.join(project, "src") + os.sep):
            sys.exit(f"test_wheel: cymqtt imported from the checkout ({location}), not the wheel")
        if not location.startswith(os.path.realpath(sys.prefix) + os.sep):
            sys.exit(f"test_wheel: cymqtt imported from {location}, outside {sys.prefix}")
        print(f"test_wheel: cymqtt from {location}")
        run([sys.executable, os.path.join(project, "scripts", "check_wheel.py"), "--installed"],
            tmp, env)
        try:
            import uvloop  # noqa: F401
            loops = ["asyncio", "uvloop"]
        except ImportError:
            loops = ["asyncio"]
            why = "uvloop has no Windows build" if sys.platform == "win32" else "uvloop missing"
            print(f"test_wheel: {why}: the broker and its tests run on asyncio only")

        # 2. the tests, from a copy beside nothing but itself
        # tests/ and benchmarks/ (test_10_bench_tool runs benchmarks/sink.py as its peer)
        for top in ("tests", "benchmarks"):
            if os.path.isdir(os.path.join(project, top)):
                shutil.copytree(os.path.join(project, top), os.path.join(tmp, top),
                                ignore=shutil.ignore_patterns("node_modules", "__pycache__",
                                                              "results"))
        js_modules = os.path.join(project, "tests", "js", "node_modules")
        if os.path.isdir(js_modules):   # MQTT.js for the interop tests, when installed
            os.symlink(js_modules, os.path.join(tmp, "tests", "js", "node_modules"))
        with open(os.path.join(tmp, "pytest.ini"), "w") as f:
            f.write(pytest_ini(project))
        pytest = [sys.executable, "-m", "pytest", "-q", "--rootdir", tmp]
        if importlib.util.find_spec("xdist") is not None:     # (as make test: whole files)
            pytest += ["-n", "2", "--dist", "loadfile"]
        if args.full:
            # Checks of the checkout itself (layering, README, ruff over src/): `make test` runs
            # them; against a wheel they would only find that src/ is absent.
            source = ["--ignore=tests/" + t for t in SOURCE_TESTS]
            run(pytest + source + ["tests"] + args.pytest_args, tmp, env)
            if "uvloop" in loops:
                run(pytest + source + ["--loop=uvloop", "--ignore=tests/fast",
                                       "--ignore=tests/protocol", "-m", "not loop_independent",
                                       "tests"] + args.pytest_args,
                    tmp, env)
        else:
            run(pytest + ["tests/fast"] + args.pytest_args, tmp, env)

        # 3. the installed command serves
        smoke = [sys.executable, os.path.join(project, "scripts", "smoke_test.py")]
        run(smoke + (["--require-mosquitto"] if args.require_mosquitto else []), tmp, env)
    print("test_wheel: ok")
    return 0


if __name__ == "__main__":
    sys.exit(main())
