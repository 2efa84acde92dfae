"""The layering of DESIGN.md, checked on the source: dependencies point down only, no import
cycles (lazy imports inside functions count; `if TYPE_CHECKING:` blocks do not, they never
run), `protocol/` stays sans-I/O, and no source file grows past 1,000 lines."""
from __future__ import annotations

import ast
import os
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PKG = ROOT / "src" / "cymqtt"

# Lowest first. A module may import modules of its own rank or below, never above.
RANKS = [
    ("cymqtt._fast",),
    ("cymqtt._version", "cymqtt.consts", "cymqtt.config", "cymqtt.logs"),
    ("cymqtt.message", "cymqtt.retain", "cymqtt.auth", "cymqtt.access", "cymqtt.metrics",
     "cymqtt.timers", "cymqtt.sys_topics", "cymqtt.passwd", "cymqtt.acl"),
    ("cymqtt.session",),
    ("cymqtt.router",),
    ("cymqtt.registry",),
    ("cymqtt.context",),
    ("cymqtt.protocol",),
    ("cymqtt.net", "cymqtt.http", "cymqtt.cluster", "cymqtt.store"),
    ("cymqtt.broker",),
    ("cymqtt.cli", "cymqtt.__main__", "cymqtt.bench"),
]


def _module_name(path: Path) -> str:
    rel = path.relative_to(PKG.parent).with_suffix("")
    parts = list(rel.parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _is_type_checking(node: ast.If) -> bool:
    t = node.test
    return (isinstance(t, ast.Name) and t.id == "TYPE_CHECKING") or (
        isinstance(t, ast.Attribute) and t.attr == "TYPE_CHECKING")


def _imports(path: Path) -> set[str]:
    """Every module a file imports at run time (anywhere in it, functions included)."""
    tree = ast.parse(path.read_text(), str(path))
    found: set[str] = set()
    package = _module_name(path) if path.name == "__init__.py" else \
        _module_name(path).rpartition(".")[0]

    def visit(node: ast.AST) -> None:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, ast.If) and _is_type_checking(child):
                for sub in child.orelse:
                    visit(sub)
                continue
            if isinstance(child, ast.Import):
                found.update(a.name for a in child.names)
            elif isinstance(child, ast.ImportFrom):
                base = child.module or ""
                if child.level:
                    up = package.split(".")[:len(package.split(".")) - child.level + 1]
                    base = ".".join(up + ([base] if base else []))
                found.add(base)
                # "from cymqtt import sys_topics" imports a module, not a name
                for a in child.names:
                    candidate = f"{base}.{a.name}"
                    if _source_of(candidate) is not None:
                        found.add(candidate)
            visit(child)

    visit(tree)
    return found


def _source_of(module: str) -> Path | None:
    if not module.startswith("cymqtt"):
        return None
    rel = Path(*module.split("."))
    for candidate in (PKG.parent / rel.with_suffix(".py"), PKG.parent / rel / "__init__.py"):
        if candidate.exists():
            return candidate
    return None


SOURCES = sorted(p for p in PKG.rglob("*.py"))
GRAPH = {_module_name(p): {m for m in _imports(p) if m.startswith("cymqtt")} for p in SOURCES}


def _rank(module: str) -> int | None:
    best = None
    for i, names in enumerate(RANKS):
        for name in names:
            if module == name or module.startswith(name + "."):
                if best is None or len(name) > best[1]:
                    best = (i, len(name))
    return None if best is None else best[0]


def test_every_module_has_a_rank():
    unranked = [m for m in GRAPH if m != "cymqtt" and _rank(m) is None]
    assert not unranked, f"add these modules to RANKS in {__file__}: {unranked}"


@pytest.mark.parametrize("module", sorted(m for m in GRAPH if m != "cymqtt"))
def test_imports_point_down(module):
    mine = _rank(module)
    upward = sorted(dep for dep in GRAPH[module]
                    if dep != "cymqtt" and (r := _rank(dep)) is not None and r > mine)
    assert not upward, f"{module} (rank {mine}) imports higher layers: {upward}"


def test_no_import_cycles():
    # Modules of one package __init__ are reached by importing the package; ignore "cymqtt"
    # itself (its __init__ re-exports the public names and imports everything).
    graph = {m: {d for d in deps if d in GRAPH and d not in ("cymqtt", m)}
             for m, deps in GRAPH.items() if m != "cymqtt"}
    seen: dict[str, int] = {}
    stack: list[str] = []

    def walk(m: str) -> None:
        seen[m] = 1
        stack.append(m)
        for d in sorted(graph.get(m, ())):
            if seen.get(d) == 1:
                cycle = stack[stack.index(d):] + [d]
                pytest.fail("import cycle: " + " -> ".join(cycle))
            if d not in seen:
                walk(d)
        stack.pop()
        seen[m] = 2

    for m in sorted(graph):
        if m not in seen:
            walk(m)


def _closure(module: str) -> set[str]:
    out: set[str] = set()
    todo = [module]
    while todo:
        m = todo.pop()
        for dep in GRAPH.get(m, ()):
            if dep not in out and dep != "cymqtt":
                out.add(dep)
                todo.append(dep)
    return out


@pytest.mark.parametrize("module", sorted(m for m in GRAPH if m.startswith("cymqtt.protocol")))
def test_protocol_is_sans_io(module):
    """protocol/ and everything it imports: no asyncio, socket, ssl (nor selectors)."""
    io = {"asyncio", "socket", "ssl", "selectors", "uvloop"}
    offenders = {}
    for m in {module} | _closure(module):
        path = _source_of(m)
        if path is None:
            continue
        bad = {i.split(".")[0] for i in _imports(path)} & io
        if bad:
            offenders[m] = sorted(bad)
    assert not offenders, f"{module} reaches I/O modules: {offenders}"


def test_fast_imports_nothing_above_it():
    for path in (PKG / "_fast").iterdir():
        if path.suffix not in (".py", ".pyx", ".pxd", ".pxi"):
            continue
        for line in path.read_text().splitlines():
            words = line.split()
            if len(words) >= 2 and words[0] in ("import", "from", "cimport") and \
                    words[1].startswith("cymqtt") and not words[1].startswith("cymqtt._fast"):
                pytest.fail(f"{path.name}: {line.strip()}")


def test_no_source_file_over_1000_lines():
    long = []
    for top in ("src", "tests", "benchmarks"):
        for dirpath, dirnames, filenames in os.walk(ROOT / top):
            dirnames[:] = [d for d in dirnames if d not in ("node_modules", "__pycache__")]
            for name in filenames:
                if name.endswith((".py", ".pyx", ".pxd", ".pxi", ".mjs")):
                    path = Path(dirpath) / name
                    n = sum(1 for _ in path.open(errors="replace"))
                    if n > 1000:
                        long.append(f"{path.relative_to(ROOT)}: {n} lines")
    assert not long, "split these by concept: " + "; ".join(long)
