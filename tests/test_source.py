"""Source hygiene as a test (asyncpg's test__sourcecode): ruff's pyflakes and error rules over
the package, the tests and the benchmarks."""
import os
import shutil
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_ruff_finds_nothing():
    ruff = shutil.which("ruff", path=os.path.dirname(sys.executable)) or shutil.which("ruff")
    assert ruff, "ruff is not installed: it is in requirements-dev.txt (make test installs it)"
    proc = subprocess.run([ruff, "check", "--no-cache", "src", "tests", "benchmarks"],
                          cwd=ROOT, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout + proc.stderr
