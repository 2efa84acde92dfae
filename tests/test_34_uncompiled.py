"""The shell's compiled modules run as plain Python too.

setup.py compiles every .py under src/cymqtt that has a .pxd beside it (session, router,
protocol/client, ...): the .pxd only adds C types, so the same source must behave the same
uncompiled (a checkout built without them, a debugger stepping through, a platform where they
did not build). This runs the pub/sub and protocol tests against a copy of the package without
those compiled modules, in a fresh interpreter."""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

import cymqtt

# Not run again on uvloop by make test: it runs pytest in a process of its own, on asyncio.
pytestmark = pytest.mark.loop_independent

TESTS = Path(__file__).parent


def _shell_modules(pkg: Path) -> list[Path]:
    return sorted(p.with_suffix(".py") for p in pkg.rglob("*.pxd")
                  if p.with_suffix(".py").exists())


def test_the_shell_runs_uncompiled(tmp_path):
    pkg = Path(cymqtt.__file__).parent
    shell = _shell_modules(pkg)
    assert {p.relative_to(pkg).as_posix() for p in shell} >= {
        "session.py", "router.py", "message.py", "protocol/client.py", "protocol/publish.py",
        "store/journal.py"}
    copy = tmp_path / "cymqtt"
    shutil.copytree(pkg, copy, ignore=shutil.ignore_patterns("__pycache__", "*.c", "*.html"))
    removed = 0
    for py in shell:
        for built in copy.joinpath(py.relative_to(pkg)).parent.glob(py.stem + ".*"):
            if built.suffix in (".so", ".pyd"):
                built.unlink()
                removed += 1
    env = dict(os.environ, PYTHONPATH=str(tmp_path))
    where = subprocess.run(
        [sys.executable, "-c", "import cymqtt.session, cymqtt.protocol.client as c, "
                               "cymqtt._fast.codec as f; print(c.__file__, f.__file__)"],
        env=env, capture_output=True, text=True, timeout=60)
    assert where.returncode == 0, where.stderr
    client_file, codec_file = where.stdout.split()
    assert client_file.endswith("client.py") and client_file.startswith(str(tmp_path))
    assert not codec_file.endswith(".py")          # the _fast core stays compiled
    run = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-x", "-p", "no:cacheprovider",
         str(TESTS / "test_02_pubsub.py"), str(TESTS / "protocol")],
        env=env, capture_output=True, text=True, timeout=600, cwd=TESTS.parent)
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-2000:]
    assert " passed" in run.stdout.splitlines()[-1], run.stdout[-500:]
    print(f"removed {removed} compiled shell modules; {run.stdout.splitlines()[-1]}")
