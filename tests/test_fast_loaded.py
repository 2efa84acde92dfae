"""The compiled core is what gets imported: there is no silent pure-Python fallback."""
import importlib.machinery
import os
import subprocess
import sys

import cymqtt._fast as fast


def test_extensions_are_compiled():
    for name in ("buffer", "codec", "consts", "inflight", "topics"):
        mod = getattr(fast, name)
        assert mod.__file__.endswith(tuple(importlib.machinery.EXTENSION_SUFFIXES)), mod.__file__


def test_missing_build_fails_with_one_clear_line(tmp_path):
    # A copy of the package sources without the compiled modules.
    src = os.path.join(os.path.dirname(fast.__file__), os.pardir)
    pkg = tmp_path / "cymqtt"
    (pkg / "_fast").mkdir(parents=True)
    for rel in ("__init__.py", "_version.py"):
        (pkg / rel).write_text(open(os.path.join(src, rel)).read())
    for rel in ("__init__.py", "errors.py"):
        (pkg / "_fast" / rel).write_text(open(os.path.join(src, "_fast", rel)).read())
    for code in ("import cymqtt._fast", "import cymqtt"):
        proc = subprocess.run(
            [sys.executable, "-c", code],
            cwd=tmp_path, env={**os.environ, "PYTHONPATH": str(tmp_path)},
            capture_output=True, text=True,
        )
        assert proc.returncode != 0
        last = proc.stderr.strip().splitlines()[-1]
        assert last.startswith("ImportError: cymqtt's compiled extensions are not built"), last
        assert "make build" in last
